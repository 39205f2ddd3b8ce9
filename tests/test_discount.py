"""The discount ``gamma = "auto"`` resolves from what the env declares: 0 for fixed-length tasks, 0.99 otherwise."""

from __future__ import annotations

from collections.abc import Callable

import gymnasium as gym
import numpy as np
import pytest
import torch

from meta_rl.config import ConfigError, TrainConfig
from meta_rl.contract import MetaVectorEnv, fixed_length
from meta_rl.envs import (
    BernoulliBanditVectorEnv,
    CartPoleTaskVectorEnv,
    FewShotVectorEnv,
    PointNavVectorEnv,
    TabularMDPVectorEnv,
)
from meta_rl.envs.gym_tasks import GymTaskVectorEnv
from meta_rl.rollout import collect
from meta_rl.train import AUTO_GAMMA, build_policy, reinforce_gradients, resolve_gamma


def _gym_cartpole() -> gym.Env:
    return gym.make("CartPole-v1")


def _no_task(env: gym.Env, rng: np.random.Generator) -> None:
    del env, rng


@pytest.mark.parametrize("make", [
    lambda: BernoulliBanditVectorEnv(num_envs=2, arms=5, pulls=10),
    lambda: TabularMDPVectorEnv(num_envs=2),
    lambda: PointNavVectorEnv(num_envs=2),
])
def test_fixed_length_tasks_resolve_auto_to_zero(make: Callable[[], MetaVectorEnv]) -> None:
    env = make()
    assert fixed_length(env) and resolve_gamma("auto", env) == 0.0
    env.close()


def test_classification_streams_declare_a_fixed_length() -> None:
    assert FewShotVectorEnv.fixed_length is True  # a stream shows episode_length images whatever the answers


def test_tasks_that_can_end_early_or_declare_nothing_resolve_auto_to_0_99() -> None:
    cartpole = CartPoleTaskVectorEnv(num_envs=2)
    plug_in = GymTaskVectorEnv(_gym_cartpole, _no_task, num_envs=2, episodes_per_trial=2, max_episode_steps=20)
    for env in (cartpole, plug_in):
        assert not fixed_length(env) and resolve_gamma("auto", env) == AUTO_GAMMA == 0.99
        env.close()
    assert resolve_gamma("auto", object()) == AUTO_GAMMA  # an env that declares nothing


def test_a_number_is_used_as_it_is_whatever_the_env() -> None:
    env = CartPoleTaskVectorEnv(num_envs=2)
    assert resolve_gamma(0.0, env) == 0.0 and resolve_gamma(0.9, env) == 0.9 and resolve_gamma(1, env) == 1.0
    env.close()


def test_config_takes_auto_or_a_unit_number_and_names_the_fix() -> None:
    assert TrainConfig().gamma == "auto"
    assert TrainConfig(gamma=1).validate().gamma == 1.0 and isinstance(TrainConfig(gamma=1).validate().gamma, float)
    with pytest.raises(ConfigError, match=r"gamma must be 'auto' or a number in \[0, 1\], got 'sometimes'; use"):
        TrainConfig(gamma="sometimes").validate()
    with pytest.raises(ConfigError, match=r"gamma must lie in \[0, 1\], got 1.5"):
        TrainConfig(gamma=1.5).validate()
    with pytest.raises(ConfigError, match=r"gamma must lie in \[0, 1\], got nan"):
        TrainConfig(gamma=float("nan")).validate()


def test_the_update_needs_the_resolved_discount_and_uses_it() -> None:
    env = BernoulliBanditVectorEnv(num_envs=4, arms=2, pulls=6)
    cfg = TrainConfig(env_id="meta_rl/Bandit-k5-n10-v0", encoder="mlp", core="gru", hidden=8, encoder_hidden=[8])
    torch.manual_seed(0)
    policy = build_policy(cfg, env, 6)
    optimizer = torch.optim.Adam(policy.parameters(), lr=1e-3)
    ro = collect(env, policy, 6, torch.Generator().manual_seed(0), reset_seed=0)
    with pytest.raises(ValueError, match=r"cfg.gamma is 'auto'.*gamma=resolve_gamma\(cfg.gamma, env\)"):
        reinforce_gradients(policy, optimizer, ro, cfg)
    by_number = reinforce_gradients(policy, optimizer, ro, TrainConfig(**{**cfg.to_dict(), "gamma": 0.0}))
    resolved = reinforce_gradients(policy, optimizer, ro, cfg, gamma=resolve_gamma(cfg.gamma, env))
    assert torch.equal(by_number["losses/value_target_mean"], resolved["losses/value_target_mean"])
    far = reinforce_gradients(policy, optimizer, ro, cfg, gamma=0.99)
    assert far["losses/value_target_mean"] > resolved["losses/value_target_mean"]  # later rewards count at 0.99
    env.close()
