"""Checks every registered task env must pass, shared by the tests of each env.

Its single-task form passes Gymnasium's and Stable-Baselines3's env checkers; its torch-native
discrete-action vector form refuses bad actions and resets (the error messages start with the env's
class name; :func:`bad_action_cases` gives the rest).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

from meta_rl.envs import SingleTaskEnv

__all__ = ["assert_bad_resets_refused", "assert_single_env_passes_checkers", "bad_action_cases", "no_host_sync"]


@contextlib.contextmanager
def no_host_sync() -> Iterator[None]:
    """Inside, any wait of the host for a CUDA device raises (``set_sync_debug_mode("error")``): the work queued before
    is finished first, and the work queued inside is finished after (CUDA tests only)."""
    torch.cuda.synchronize()
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(previous)
    torch.cuda.synchronize()


def assert_single_env_passes_checkers(env_id: str) -> None:
    """``gym.make(env_id)`` is a :class:`SingleTaskEnv` that passes Gymnasium's and SB3's env checkers.

    Args:
        env_id: A registered id.
    """
    env = gym.make(env_id)
    assert isinstance(env.unwrapped, SingleTaskEnv)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        gym_check_env(env.unwrapped, skip_render_check=True)
        sb3_check_env(env, warn=True)
    env.close()


def bad_action_cases(num_actions: int) -> list[tuple[Any, type[Exception], str]]:
    """Bad actions for an env of 2 tasks with actions ``0..num_actions - 1``.

    Args:
        num_actions: How many actions the env has.

    Returns:
        Each bad action with the error type it must raise and a regex of the message after the class name,
        for ``pytest.mark.parametrize(("actions", "error", "match"), ...)``.
    """
    return [
        (torch.tensor([0, num_actions]), ValueError,
         rf"actions \[{num_actions}\] are out of range; valid actions are 0..{num_actions - 1}"),
        (torch.tensor([-1, 0]), ValueError, r"actions \[-1\] are out of range"),
        (torch.zeros(2), TypeError, r"integer dtype, got torch.float32; cast with actions.long\(\)"),
        (torch.zeros(3, dtype=torch.long), ValueError, r"shape \(2,\), one action per task, got \(3,\)"),
        (np.zeros(2, dtype=np.float32), TypeError, r"must be integers, got numpy dtype float32"),
        ([0, 1], TypeError, r"must be a torch.Tensor .* got list"),
        (torch.zeros(2, dtype=torch.long, device="meta"), ValueError, r"are on meta but the env runs on cpu"),
    ]


def assert_bad_resets_refused(env: Any, options: dict[str, Any]) -> None:
    """``env.reset`` refuses ``options`` (the env takes none) and a negative seed, with a ValueError.

    Args:
        env: The vector env.
        options: Options to pass, e.g. a task parameter the env does not take from reset.
    """
    with pytest.raises(ValueError, match="takes no options"):
        env.reset(options=options)
    with pytest.raises(ValueError, match="seed must be a non-negative int"):
        env.reset(seed=-1)
