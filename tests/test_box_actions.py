"""NaN / inf Box actions are refused with a ValueError, before the env's state changes."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch

import meta_rl.envs  # registers meta_rl/PointNav-v0
from meta_rl.envs.gym_tasks import register_gym_task

BAD = pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf], ids=["nan", "+inf", "-inf"])
FIX = r"finite values within the Box .*Check the policy's outputs; clip or sanitize"


def make_pendulum() -> gym.Env:
    return gym.make("Pendulum-v1")


def sample_pendulum(env: gym.Env, rng: np.random.Generator) -> None:
    env.unwrapped.m = rng.uniform(0.5, 2.0)  # type: ignore[attr-defined]
    env.unwrapped.l = rng.uniform(0.5, 2.0)  # type: ignore[attr-defined]


def point_nav_vec() -> Any:
    return gym.make_vec("meta_rl/PointNav-v0", num_envs=4, vectorization_mode="vector_entry_point")


def pendulum_vec() -> Any:
    register_gym_task("test/BoxPendulum-v0", make_pendulum, sample_pendulum, max_episode_steps=5)
    return gym.make_vec("test/BoxPendulum-v0", num_envs=3, vectorization_mode="vector_entry_point")


def refused_step_changes_nothing(
    make: Callable[[], Any], good: list[Any], bad_action: Any, match: str
) -> None:
    """Steps ``good[0]``, the refused ``bad_action``, then the rest; the same as never trying it."""
    env, ref = make(), make()
    env.reset(seed=0)
    ref.reset(seed=0)
    env.step(good[0])
    ref.step(good[0])
    with pytest.raises(ValueError, match=match) as err:
        env.step(bad_action)
    assert type(env.unwrapped).__name__ in str(err.value) and env.spec.id in str(err.value)
    for action in good[1:]:
        obs, reward, *_ = env.step(action)
        ref_obs, ref_reward, *_ = ref.step(action)
        assert np.isfinite(np.asarray(obs)).all() and np.isfinite(np.asarray(reward)).all()
        np.testing.assert_array_equal(np.asarray(obs), np.asarray(ref_obs))
        np.testing.assert_array_equal(np.asarray(reward), np.asarray(ref_reward))
    env.close()
    ref.close()


@BAD
def test_point_nav_single_env_refuses_non_finite_actions(bad: float) -> None:
    good = [np.array([0.5, 0.25], dtype=np.float32), np.array([-0.3, 1.0], dtype=np.float32)] * 2
    bad_action = np.array([0.5, bad], dtype=np.float32)
    refused_step_changes_nothing(
        lambda: gym.make("meta_rl/PointNav-v0"), good, bad_action, rf"actions\[1\] is {bad}.*component 1\).*{FIX}"
    )


@BAD
@pytest.mark.parametrize("as_numpy", [False, True], ids=["tensor", "numpy"])
def test_point_nav_vector_env_refuses_non_finite_actions(bad: float, as_numpy: bool) -> None:
    gen = torch.Generator().manual_seed(0)
    good = [torch.rand(4, 2, generator=gen) * 2 - 1 for _ in range(4)]
    bad_action = torch.zeros(4, 2)
    bad_action[2, 1] = bad
    refused_step_changes_nothing(
        point_nav_vec, good, bad_action.numpy() if as_numpy else bad_action,
        rf"actions\[2, 1\] is {bad} \(env 2, component 1\).*{FIX}",
    )


@BAD
def test_gym_task_vector_env_refuses_non_finite_actions(bad: float) -> None:
    gen = torch.Generator().manual_seed(0)
    good = [torch.rand(3, 1, generator=gen) * 4 - 2 for _ in range(4)]
    bad_action = torch.zeros(3, 1)
    bad_action[2, 0] = bad
    refused_step_changes_nothing(
        pendulum_vec, good, bad_action, rf"actions\[2, 0\] is {bad} \(env 2, component 0\).*{FIX}"
    )


def test_only_the_first_non_finite_entry_is_named_and_finite_out_of_bounds_actions_still_clip() -> None:
    env = point_nav_vec()
    env.reset(seed=1)
    bad_action = torch.zeros(4, 2)
    bad_action[1, 0], bad_action[3, 1] = math.inf, math.nan
    with pytest.raises(ValueError, match=r"actions\[1, 0\] is inf \(env 1, component 0\)"):
        env.step(bad_action)
    obs, *_ = env.step(torch.full((4, 2), 5.0))  # finite but outside the Box: clipped, as before
    assert torch.allclose(obs[:, :2], torch.full((4, 2), 0.1))
    env.close()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_point_nav_vector_env_on_cuda_refuses_non_finite_actions() -> None:
    env = meta_rl.envs.PointNavVectorEnv(4, device="cuda")
    env.reset(seed=0)
    bad_action = torch.zeros(4, 2, device=env.device)
    bad_action[3, 0] = math.nan
    with pytest.raises(ValueError, match=r"actions\[3, 0\] is nan \(env 3, component 0\)"):
        env.step(bad_action)
    obs, reward, *_ = env.step(torch.zeros(4, 2, device=env.device))
    assert bool(torch.isfinite(obs).all()) and bool(torch.isfinite(reward).all())
