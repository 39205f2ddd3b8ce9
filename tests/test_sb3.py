"""stable-baselines3 interop: MetaPolicy.predict under SB3's evaluate_policy."""

from __future__ import annotations

import warnings
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3.common.evaluation import evaluate_policy

import meta_rl.envs  # noqa: F401  (registers the ids)
from meta_rl.config import ModelConfig
from meta_rl.data import ImageDataset
from meta_rl.envs import FewShotEnv
from meta_rl.policy import MetaPolicy
from meta_rl.sb3_adapter import PREV_REWARD_KEY, RL2ObservationWrapper, RL2State


def _policy(env: gym.Env[Any, Any], **kwargs: Any) -> MetaPolicy:
    torch.manual_seed(0)
    model = ModelConfig(**{"encoder": "mlp", "encoder_hidden": [32], "hidden": 32, **kwargs})
    return MetaPolicy(env.observation_space, env.action_space, model,
                      task_length=getattr(env.unwrapped, "episode_length", None) or 64)


def _evaluate(policy: MetaPolicy, env: gym.Env[Any, Any], episodes: int) -> tuple[float, float]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "env is not wrapped with a Monitor"
        mean, std = evaluate_policy(policy, env, n_eval_episodes=episodes)  # type: ignore[arg-type]
    return mean, std  # type: ignore[return-value]


@pytest.mark.parametrize("core", ["lstm", "memory"])
def test_evaluate_policy_runs_on_synthetic_env(synthetic: ImageDataset, core: str) -> None:
    env = FewShotEnv(dataset=synthetic, n_way=3, instances_per_class=2)
    mean, std = _evaluate(_policy(env, core=core), env, 4)
    assert isinstance(mean, float) and isinstance(std, float)
    assert 0.0 <= mean <= env.episode_length


def test_evaluate_policy_runs_on_glyphs(glyph_splits: dict[str, ImageDataset]) -> None:
    env = gym.make("meta_rl/Glyphs-5way-v0")
    mean, _ = _evaluate(_policy(env, core="lstm"), env, 2)
    assert isinstance(mean, float) and 0.0 <= mean <= 50.0


def test_wrapper_feeds_previous_reward(synthetic: ImageDataset) -> None:
    env = RL2ObservationWrapper(FewShotEnv(dataset=synthetic, n_way=3, instances_per_class=2, feedback="reward"))
    obs, _ = env.reset(seed=0)
    assert env.observation_space.contains(obs) and obs[PREV_REWARD_KEY][0] == 0.0
    _, reward, *_ = env.step(1)
    obs, *_ = env.step(1)  # the entry holds the reward of the step before this observation
    assert env.observation_space.contains(obs)
    policy = _policy(env.env, core="gru")  # built on the unwrapped space
    mean, _ = _evaluate(policy, env, 3)
    assert isinstance(mean, float)
    boxed = RL2ObservationWrapper(gym.make("CartPole-v1"))  # any space: a Box comes as "observation"
    assert set(boxed.observation_space.spaces) == {"observation", PREV_REWARD_KEY}
    assert reward in (0.0, 1.0)


def test_predict_shapes_and_episode_start(synthetic: ImageDataset) -> None:
    env = FewShotEnv(dataset=synthetic, n_way=3, instances_per_class=2)
    policy = _policy(env, core="gru")
    obs, _ = env.reset(seed=0)
    action, state = policy.predict(obs, deterministic=True)
    assert isinstance(state, RL2State) and np.ndim(action) == 0 and env.action_space.contains(int(action))
    assert state.prev_action.shape == (1,) and not state.starts.any()
    batch = {k: np.stack([v, v]) for k, v in obs.items()}
    actions, state2 = policy.predict(batch, deterministic=True)
    assert actions.shape == (2,) and actions.dtype == np.int64
    assert int(actions[0]) == int(action)
    # A second step, then a reset of env 1 only: env 1 acts as on a fresh task again.
    nxt, *_ = env.step(int(action))
    batch2 = {k: np.stack([nxt[k], v]) for k, v in obs.items()}
    again, _ = policy.predict(batch2, state=state2, episode_start=np.array([False, True]), deterministic=True)
    first, _ = policy.predict(batch, deterministic=True)
    assert int(again[1]) == int(first[1])
    h = state2.core[0]
    fresh = policy.predict(batch, state=None, deterministic=True)[1].core[0]
    assert torch.equal(h, fresh)
    assert policy.training  # predict restores the mode


def test_predict_matches_vector_rollout(synthetic: ImageDataset) -> None:
    """Deterministic predict, step by step in single envs, equals the batched evaluation rollout."""
    from meta_rl.envs import FewShotVectorEnv
    from meta_rl.rollout import collect

    vec = FewShotVectorEnv(num_envs=3, dataset=synthetic, n_way=3, instances_per_class=2)
    policy = _policy(FewShotEnv(dataset=synthetic, n_way=3, instances_per_class=2), core="memory")
    ro = collect(vec, policy, vec.episode_length, torch.Generator().manual_seed(0), reset_seed=5,
                 deterministic=True)
    obs, _ = vec.reset(seed=5)
    state = None
    for t in range(vec.episode_length):
        actions, state = policy.predict({k: v.numpy() for k, v in obs.items()}, state=state, deterministic=True)
        assert np.array_equal(actions, ro.actions[t].numpy())
        obs, reward, *_ = vec.step(torch.as_tensor(actions))
        state.prev_reward = reward.numpy()


def test_predict_with_memory_beats_chance(proto_dataset: str) -> None:
    """The memory core's label-vote priors already match easy prototypes: well above chance (1/5)."""
    env = FewShotEnv(dataset=proto_dataset, split="test")
    policy = _policy(env, core="memory", encoder_hidden=[64])
    mean, _ = _evaluate(policy, RL2ObservationWrapper(env), 10)
    assert mean / env.episode_length > 0.4
