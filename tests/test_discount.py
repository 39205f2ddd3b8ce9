"""The discount ``gamma = "auto"`` resolves from what the env declares: 0 for myopic tasks (classification with label
or reward feedback), 0.9 for other fixed-length tasks, 0.99 otherwise; a resumed run keeps its discount."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import make_synthetic_dataset

from meta_rl.algorithms import make_algorithm
from meta_rl.checkpoint import load_checkpoint, save_checkpoint
from meta_rl.config import ConfigError, TrainConfig
from meta_rl.data import ImageDataset
from meta_rl.env_contract import MetaVectorEnv, fixed_length, myopic
from meta_rl.envs import (
    BernoulliBanditVectorEnv,
    CartPoleTaskVectorEnv,
    FewShotVectorEnv,
    PointNavVectorEnv,
    TabularMDPVectorEnv,
)
from meta_rl.envs.gym_tasks import GymTaskVectorEnv
from meta_rl.rollout import collect
from meta_rl.train import (
    AUTO_GAMMA,
    CHECKPOINT_NAME,
    FIXED_LENGTH_GAMMA,
    build_policy,
    resolve_gamma,
    resolve_index_head,
    train,
)


def _gym_cartpole() -> gym.Env:
    return gym.make("CartPole-v1")


def _no_task(env: gym.Env, rng: np.random.Generator) -> None:
    del env, rng


def _tiny_dataset() -> ImageDataset:
    return make_synthetic_dataset(num_classes=10, images_per_class=12)


@pytest.mark.parametrize("make", [
    lambda: BernoulliBanditVectorEnv(num_envs=2, arms=5, pulls=10),
    lambda: TabularMDPVectorEnv(num_envs=2),
    lambda: PointNavVectorEnv(num_envs=2),
    lambda: FewShotVectorEnv(num_envs=2, dataset=_tiny_dataset(), feedback="active"),
])
def test_fixed_length_tasks_resolve_auto_to_0_9(make: Callable[[], MetaVectorEnv]) -> None:
    env = make()
    assert fixed_length(env) and not myopic(env)
    assert resolve_gamma("auto", env) == FIXED_LENGTH_GAMMA == 0.9
    env.close()


@pytest.mark.parametrize("feedback", ["label", "reward"])
def test_classification_with_label_or_reward_feedback_is_myopic_and_resolves_auto_to_zero(feedback: str) -> None:
    env = FewShotVectorEnv(num_envs=2, dataset=_tiny_dataset(), feedback=feedback)
    assert fixed_length(env) and myopic(env) and resolve_gamma("auto", env) == 0.0
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


def test_the_algorithm_uses_the_discount_it_is_given() -> None:
    env = BernoulliBanditVectorEnv(num_envs=4, arms=2, pulls=6)
    cfg = TrainConfig(env_id="meta_rl/Bandit-k5-n10-v0", encoder="mlp", core="gru", hidden=8, encoder_hidden=[8])
    torch.manual_seed(0)
    policy = build_policy(cfg, env, 6)
    ro = collect(env, policy, 6, torch.Generator().manual_seed(0), reset_seed=0)
    by_number = make_algorithm(TrainConfig(**{**cfg.to_dict(), "gamma": 0.9}), 0.9)(policy, ro)[1]
    resolved = make_algorithm(cfg, resolve_gamma(cfg.gamma, env))(policy, ro)[1]
    assert torch.equal(by_number["losses/value_target_mean"], resolved["losses/value_target_mean"])
    far = make_algorithm(cfg, 0.99)(policy, ro)[1]
    assert far["losses/value_target_mean"] > resolved["losses/value_target_mean"]  # later rewards count at 0.99
    env.close()


def test_a_resumed_run_keeps_the_discount_it_was_trained_with(tmp_path: Path) -> None:
    """The checkpoint records the discount in use, and a resumed ``gamma = "auto"`` run goes on with it whatever
    the rule would give now (here a recorded 0.5 stands in for an earlier rule)."""
    run_dir = tmp_path / "run"
    cfg = TrainConfig(env_id="meta_rl/Bandit-k5-n10-v0", num_envs=4, hidden=8, encoder_hidden=[8],
                      core_kwargs={"key_dim": 4}, total_env_steps=40, eval_every=0, torch_threads=1)
    train(cfg, run_dir, progress=False)
    path = run_dir / CHECKPOINT_NAME
    assert load_checkpoint(path)["gamma"] == FIXED_LENGTH_GAMMA
    assert load_checkpoint(path)["config"]["read_head"]["index_head"] is True  # "auto" recorded as what it built
    ckpt = load_checkpoint(path)
    ckpt["gamma"] = 0.5
    save_checkpoint(path, {k: v for k, v in ckpt.items() if k not in ("checksum", "format_version")})
    train(TrainConfig(**{**cfg.to_dict(), "total_env_steps": 80}), run_dir, resume=True, progress=False)
    resumed = load_checkpoint(path)
    assert resumed["counters"]["update"] == 2 and resumed["gamma"] == 0.5


def test_auto_gives_the_index_head_to_fixed_length_tasks_that_are_not_myopic() -> None:
    """``read_head.index_head = "auto"``: an exploration index on fixed-length tasks that are not myopic (a bandit,
    active classification), none where the likeliest answer is also the most informative (label or reward feedback)
    or where tasks can end early (CartPole); a bool is used as it is."""
    cfg = TrainConfig(encoder="mlp", hidden=8, encoder_hidden=[8], core_kwargs={"key_dim": 4})
    bandit = BernoulliBanditVectorEnv(num_envs=2, arms=3, pulls=4)
    envs = {feedback: FewShotVectorEnv(num_envs=2, dataset=_tiny_dataset(), feedback=feedback)
            for feedback in ("label", "reward", "active")}
    assert resolve_index_head("auto", bandit) and resolve_index_head("auto", envs["active"])
    assert not resolve_index_head("auto", envs["label"]) and not resolve_index_head("auto", envs["reward"])
    assert resolve_index_head(True, envs["label"]) and not resolve_index_head(False, bandit)
    cartpole = CartPoleTaskVectorEnv(num_envs=2)
    assert not resolve_index_head("auto", cartpole) and not resolve_index_head("auto", object())
    cartpole.close()
    assert build_policy(cfg, bandit, 4).read_head_settings["index_head"] is True
    assert build_policy(cfg, envs["reward"], envs["reward"].episode_length).read_head_settings["index_head"] is False
    with pytest.raises(ConfigError, match=r"read_head.index_head must be true, false or 'auto', got 'maybe'"):
        TrainConfig(read_head={"index_head": "maybe"}).validate()
    with pytest.raises(ConfigError, match=r"read_head has no key 'index'; did you mean read_head.index_head\?"):
        TrainConfig(read_head={"index": True}).validate()
    for env in (bandit, *envs.values()):
        env.close()
