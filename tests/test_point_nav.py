"""The point-navigation meta-task, its single-task wrapper, and returns by inner episode."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from meta_rl.envs import PointNavEnv, PointNavVectorEnv
from meta_rl.evaluation import returns_by_inner_episode


def test_trial_structure_rewards_and_resets() -> None:
    env = PointNavVectorEnv(3, episodes_per_trial=2, horizon=4, max_step=0.1)
    obs, _ = env.reset(seed=0)
    goals = env.goals()
    assert torch.allclose(goals.norm(dim=-1), torch.ones(3)) and bool((goals[:, 1] >= 0).all())  # upper half circle
    assert torch.equal(obs[:, :2], torch.zeros(3, 2)) and torch.equal(obs[:, 3], torch.ones(3))
    right = torch.tensor([[1.0, 0.0]] * 3)
    for t in range(8):
        obs, reward, terminated, truncated, info = env.step(right)
        inner, k = divmod(t, 4)
        pos = torch.tensor([0.1 * (k + 1), 0.0])
        assert torch.allclose(reward, -(pos - goals).norm(dim=-1))  # minus the distance after the move
        assert torch.equal(info["inner_episode"], torch.full((3,), inner))
        assert bool(terminated.all()) == (t == 7) and not truncated.any()
        if t == 3:  # the inner episode ended: back to the origin, same goal
            assert torch.equal(obs[:, :2], torch.zeros(3, 2)) and torch.equal(env.goals(), goals)
    assert "final_obs" in info and not torch.equal(env.goals(), goals)  # a new task began


def test_actions_are_clipped_to_the_bounds() -> None:
    env = PointNavVectorEnv(1, max_step=0.1)
    env.reset(seed=1)
    obs, *_ = env.step(torch.tensor([[5.0, -5.0]]))
    assert torch.allclose(obs[0, :2], torch.tensor([0.1, -0.1]))


def test_splits_draw_different_goals_and_seeds_repeat() -> None:
    def goals(split: str, seed: int) -> torch.Tensor:
        env = PointNavVectorEnv(16, split=split)
        env.reset(seed=seed)
        return env.goals()

    assert torch.equal(goals("train", 3), goals("train", 3))
    assert not torch.allclose(goals("train", 3), goals("test", 3))
    assert not torch.allclose(goals("train", 3), goals("train", 4))


@pytest.mark.parametrize(
    ("actions", "error"),
    [
        (torch.zeros(2, 2, dtype=torch.long), TypeError),
        (torch.zeros(3, 2), ValueError),
        (torch.zeros(2, 2, device="meta"), ValueError),
        ([[0.0, 0.0], [0.0, 0.0]], TypeError),
    ],
)
def test_bad_actions(actions: object, error: type[Exception]) -> None:
    env = PointNavVectorEnv(2)
    env.reset(seed=0)
    with pytest.raises(error, match=r"actions"):
        env.step(actions)  # type: ignore[arg-type]


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match=r"horizon"):
        PointNavVectorEnv(2, horizon=0)
    with pytest.raises(ValueError, match=r"split"):
        PointNavVectorEnv(2, split="holdout")


def test_single_env_matches_vector_env() -> None:
    single, vector = PointNavEnv(horizon=3), PointNavVectorEnv(1, horizon=3, device="cpu")
    obs, _ = single.reset(seed=5)
    vobs, _ = vector.reset(seed=5)
    assert isinstance(obs, np.ndarray) and np.allclose(obs, vobs[0].numpy())
    for _ in range(6):
        action = np.array([0.3, 0.7], dtype=np.float32)
        obs, reward, terminated, _, info = single.step(action)
        vobs, vreward, vterm, _, vinfo = vector.step(torch.as_tensor(action).unsqueeze(0))
        assert math.isclose(reward, float(vreward[0]), rel_tol=1e-6)
        assert info["inner_episode"] == int(vinfo["inner_episode"][0])
    assert terminated and bool(vterm[0])
    with pytest.raises(ValueError, match=r"reset\(\)"):
        single.step(np.zeros(2, dtype=np.float32))


def test_returns_by_inner_episode_by_hand() -> None:
    rewards = torch.tensor([[1.0, 0.0], [2.0, 1.0], [3.0, 2.0], [4.0, 3.0]])  # (T=4, B=2)
    inner = torch.tensor([[0, 0], [0, 0], [1, 1], [1, 1]])
    assert torch.equal(returns_by_inner_episode(rewards, inner, 2), torch.tensor([[3.0, 7.0], [1.0, 5.0]]))

