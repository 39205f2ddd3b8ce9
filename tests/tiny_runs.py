"""Tiny few-shot training runs, shared by the tests and the fault drills (``faults.py``).

A tiny run trains on 3-way classification with ``K`` instances per class (9 steps a task),
``NUM_ENVS`` (4) tasks at a time, with a small policy (an encoder hidden layer of 16, a core of 8),
on one CPU thread: an update takes a fraction of a second.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import torch

from meta_rl.algorithms import Algorithm, make_algorithm
from meta_rl.config import TrainConfig

__all__ = ["NUM_ENVS", "STEPS_PER_UPDATE", "K", "tiny_config"]

K = 3  # instances per class
NUM_ENVS = 4  # tasks at a time
STEPS_PER_UPDATE = NUM_ENVS * 3 * K  # env steps per update: 4 tasks of 9 steps


def tiny_config(dataset: str, updates: int, **changes: Any) -> TrainConfig:
    """The validated config of a tiny run of ``updates`` updates on a registered dataset.

    Args:
        dataset: The registered dataset's name (``env_kwargs={"dataset": dataset}``).
        updates: Updates to train (``total_env_steps = updates * STEPS_PER_UPDATE``).
        **changes: Fields to change, e.g. ``env_module``, ``eval_every`` or ``total_env_steps``.

    Returns:
        The config, validated.
    """
    cfg = TrainConfig(
        env_id="meta_rl/FewShot-v0",
        env_kwargs={"dataset": dataset, "n_way": 3, "instances_per_class": K},
        num_envs=NUM_ENVS,
        encoder_hidden=[16],
        hidden=8,
        core_kwargs={"key_dim": 8},
        total_env_steps=updates * STEPS_PER_UPDATE,
        log_every=1,
        device="cpu",
        torch_threads=1,
    )
    return dataclasses.replace(cfg, **changes).validate()


def with_terms(terms: Callable[..., dict[str, torch.Tensor]]) -> Callable[..., Algorithm]:
    """An algorithm factory for ``train(algorithm=...)``: REINFORCE whose loss terms are ``terms`` (a fault to inject
    in :func:`meta_rl.returns.reinforce_losses`'s place)."""
    return functools.partial(make_algorithm, terms=terms)
