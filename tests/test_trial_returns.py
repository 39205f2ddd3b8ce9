"""Returns by inner episode of a trial, counted exactly when inner episodes end early."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch

from meta_rl.config import TrainConfig
from meta_rl.envs.gym_tasks import GymTaskVectorEnv
from meta_rl.evaluation import returns_by_inner_episode, trial_returns
from meta_rl.train import build_policy


def test_returns_by_inner_episode_stops_at_the_first_trial_end() -> None:
    # env 0 ends its trial at t=2 and starts the next task at t=3; env 1's trial fills the rollout
    rewards = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [5.0, 1.0]])  # (T=4, B=2)
    inner = torch.tensor([[0, 0], [1, 0], [1, 1], [0, 1]])
    dones = torch.tensor([[False, False], [False, False], [True, False], [False, True]])
    assert torch.equal(returns_by_inner_episode(rewards, inner, 2, dones), torch.tensor([[1.0, 1.0], [1.0, 1.0]]))
    assert torch.equal(returns_by_inner_episode(rewards, inner, 2), torch.tensor([[6.0, 1.0], [1.0, 1.0]]))


class _GoalEnv(gym.Env):  # type: ignore[type-arg]
    """Reaches its goal after ``length`` steps whatever the action: reward 1 there and 0 before."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
    action_space = gym.spaces.Discrete(2)
    length = 3

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(1, np.float32), {}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        self.t += 1
        goal = self.t >= self.length
        return np.zeros(1, np.float32), float(goal), goal, False, {}


def _sample_goal(env: gym.Env, rng: np.random.Generator) -> None:
    env.unwrapped.length = int(rng.integers(1, 6))  # type: ignore[attr-defined]


def test_trial_returns_are_exact_when_episodes_end_early() -> None:
    """Every inner episode reaches its goal once, so each earns exactly 1, however short it is."""
    env = GymTaskVectorEnv(_GoalEnv, _sample_goal, num_envs=8, episodes_per_trial=3, max_episode_steps=6)
    cfg = TrainConfig(env_id="unused", env_module="", core="gru", encoder="mlp", hidden=8, encoder_hidden=[8])
    policy = build_policy(cfg, env, env.episode_length)
    res = trial_returns(env, policy, trials=16, deterministic=False)
    assert res.trials == 16
    assert res.mean == [1.0, 1.0, 1.0] and res.ci95 == [0.0, 0.0, 0.0] and res.improvement == 0.0
    env.close()
