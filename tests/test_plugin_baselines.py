"""Plug-in baselines: ``register_gym_task(..., baselines=...)`` plays them beside the agent, on the agent's tasks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from experiment_scripts import EXPERIMENTS
from test_usability import readme_block

from meta_rl.cli import main
from meta_rl.config import ModelConfig, TrainConfig
from meta_rl.env_contract import reference_returns
from meta_rl.envs.gym_tasks import GymTaskVectorEnv, register_gym_task
from meta_rl.envs.undeclared import UndeclaredVectorEnv
from meta_rl.evaluation import evaluate_task, held_out_rollouts, returns_by_inner_episode
from meta_rl.policy import MetaPolicy
from meta_rl.train import train

EPISODES, STEPS = 2, 4  # a trial: 2 inner episodes of 4 steps


class PaysTheTask(gym.Env):
    """Every step pays the task's whole number ``theta``, whatever the action: a trial's return is 8 * theta."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    action_space = gym.spaces.Discrete(3)

    def __init__(self) -> None:
        self.theta = 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        return self.np_random.uniform(-1, 1, 2).astype(np.float32), {}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        return self.np_random.uniform(-1, 1, 2).astype(np.float32), float(self.theta), False, False, {}


def draw_theta(env: gym.Env, rng: np.random.Generator) -> None:
    env.unwrapped.theta = int(rng.integers(0, 1000))  # type: ignore[attr-defined]


def _vec(num_envs: int, baselines: dict[str, Any] | None, split: str = "test") -> GymTaskVectorEnv:
    return GymTaskVectorEnv(PaysTheTask, draw_theta, num_envs, EPISODES, STEPS, split=split, baselines=baselines)


def _policy(env: GymTaskVectorEnv) -> MetaPolicy:
    torch.manual_seed(0)
    model = ModelConfig(encoder="mlp", encoder_hidden=[8], hidden=8, core="gru")
    return MetaPolicy(env.single_observation_space, env.single_action_space, model, task_length=env.episode_length)


@pytest.mark.parametrize(("num_envs", "trials", "seed"), [(3, 7, 11), (4, 4, 0), (5, 12, 2**40)])
def test_baselines_play_exactly_the_tasks_the_agents_evaluation_meets(num_envs: int, trials: int, seed: int) -> None:
    """The agent's return per trial is 8 * theta of its task, and so is the oracle's: they agree trial by trial, and
    the tasks the oracle read through ``env.unwrapped`` are the agent's, batch by batch (7 tasks over 3 envs
    included: the last batch is partial)."""
    seen: list[int] = []

    def oracle(env: gym.Env, observation: np.ndarray, rng: np.random.Generator) -> int:
        assert observation.shape == (2,) and isinstance(rng, np.random.Generator)
        seen.append(int(env.unwrapped.theta))  # type: ignore[attr-defined]
        return int(rng.integers(3))

    env = _vec(num_envs, {"oracle": oracle})
    policy = _policy(env)
    agent = torch.cat([returns_by_inner_episode(ro.rewards, ro.inner_episode, EPISODES, ro.dones).sum(-1)
                       for ro in held_out_rollouts(env, policy, trials, env.episode_length, seed=seed)])[:trials]
    ref = reference_returns(env, trials, seed)
    assert set(ref) == {"oracle"} and ref["oracle"].dtype == torch.float64 and ref["oracle"].shape == (trials,)
    assert torch.equal(ref["oracle"], agent.double())
    assert seen == [t for t in (ref["oracle"] / (EPISODES * STEPS)).long().tolist() for _ in range(EPISODES * STEPS)]
    assert len(set(seen)) > 1  # different tasks, not one constant
    result = evaluate_task(env, policy, trials, seed=seed)  # the public route: the same mean per trial
    assert result.total == pytest.approx(float(ref["oracle"].mean()))  # type: ignore[union-attr]
    assert not torch.equal(reference_returns(env, trials, seed + 100)["oracle"], ref["oracle"])
    env.close()


def test_a_random_baseline_draws_from_its_own_seeded_generator_only() -> None:
    """The same seed gives the same returns, another seed others, and the global numpy RNG is neither read nor
    moved; the splits draw separate tasks."""

    class Coin(PaysTheTask):
        def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
            return np.zeros(2, np.float32), float(action == 1), False, False, {}

    def coin(env: gym.Env, observation: np.ndarray, rng: np.random.Generator) -> int:
        return int(rng.integers(3))

    env = GymTaskVectorEnv(Coin, draw_theta, 2, EPISODES, STEPS, split="test", baselines={"random": coin})
    np.random.seed(0)
    before = np.random.get_state()[1].copy()
    first, again = (reference_returns(env, 30, 5)["random"] for _ in range(2))
    assert np.array_equal(np.random.get_state()[1], before)
    assert torch.equal(first, again) and not torch.equal(first, reference_returns(env, 30, 6)["random"])
    assert 0 < float(first.mean()) < EPISODES * STEPS
    test_tasks = reference_returns(_vec(2, {"theta": lambda e, o, r: 0}, "test"), 6, 1)["theta"]
    val_tasks = reference_returns(_vec(2, {"theta": lambda e, o, r: 0}, "val"), 6, 1)["theta"]
    assert not torch.equal(test_tasks, val_tasks)
    env.close()


class ShiftedGoal(gym.Env):
    """Actions ``Discrete(3, start=1)``, observations ``Discrete(4, start=2)`` (always 2 + goal): pays 1 at the goal."""

    observation_space = gym.spaces.Discrete(4, start=2)
    action_space = gym.spaces.Discrete(3, start=1)

    def __init__(self) -> None:
        self.goal = 1

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[int, dict]:
        super().reset(seed=seed)
        return 2 + self.goal, {}

    def step(self, action: int) -> tuple[int, float, bool, bool, dict]:
        return 2 + self.goal, float(action == self.goal), False, False, {}


def draw_goal(env: gym.Env, rng: np.random.Generator) -> None:
    env.unwrapped.goal = int(rng.integers(1, 4))  # type: ignore[attr-defined]


def test_baselines_see_and_act_in_the_envs_own_terms() -> None:
    """A ``Discrete(n, start=s)`` env: the baseline gets the env's observation (start included) and answers with an
    action of the env's own space; one outside it is refused, naming the baseline and the fix."""
    def oracle(env: gym.Env, observation: Any, rng: np.random.Generator) -> int:
        assert int(observation) == 2 + env.unwrapped.goal  # type: ignore[attr-defined]
        return int(observation) - 2  # the goal, in 1..3

    env = GymTaskVectorEnv(ShiftedGoal, draw_goal, 2, 1, 5, split="test",
                           baselines={"oracle": oracle, "zero": lambda e, o, r: 0})
    with pytest.raises(ValueError, match=r"baseline 'zero' returned the action 0 .*Discrete\(3, start=1\)"):
        reference_returns(env, 4, 0)
    env.baselines.pop("zero")
    assert reference_returns(env, 4, 0)["oracle"].tolist() == [5.0] * 4
    env.close()


@pytest.mark.parametrize(("baselines", "error", "match"), [
    ([("random", print)], TypeError, "must be a dict of name"),
    ({"random": 3}, TypeError, "baseline 'random' must be callable"),
    ({7: print}, TypeError, "names must be non-empty strings, got 7"),
    ({"": print}, TypeError, "names must be non-empty strings"),
    ({}, ValueError, "names no baseline"),
])
def test_bad_baselines_are_refused_by_name(baselines: Any, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        register_gym_task("test/BadBaselines-v0", PaysTheTask, draw_theta, max_episode_steps=3, baselines=baselines)
    with pytest.raises(error, match=match):
        _vec(1, baselines)
    assert "test/BadBaselines-v0" not in gym.registry


def test_reference_returns_checks_its_arguments_and_is_empty_without_baselines() -> None:
    env = _vec(2, None)
    assert reference_returns(env, 3, 0) == {}
    env.close()
    env = _vec(2, {"oracle": lambda e, o, r: 0})
    with pytest.raises(ValueError, match="trials"):
        env.reference_returns(0, 0)
    with pytest.raises(ValueError, match="seed"):
        env.reference_returns(2, -1)
    env.close()


def test_the_undeclared_path_does_not_pass_baselines_on() -> None:
    """A plug-in's baselines feed evaluation only: the env as a learner sees it (``meta_rl.envs.undeclared``) has
    none, and a registered id builds with them."""
    register_gym_task("test/PaysTheTask-v0", PaysTheTask, draw_theta, episodes_per_trial=EPISODES,
                      max_episode_steps=STEPS, baselines={"oracle": lambda e, o, r: 0})
    env = gym.make_vec("test/PaysTheTask-v0", num_envs=2, vectorization_mode="vector_entry_point")
    assert set(reference_returns(env, 2, 0)) == {"oracle"}
    hidden = UndeclaredVectorEnv(env)
    assert not hasattr(hidden, "reference_returns") and reference_returns(hidden, 2, 0) == {}
    env.close()


def test_meta_rl_eval_prints_a_plug_ins_baselines_beside_the_agent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``experiments/plug_in_bandit.py``'s random and oracle rows in ``meta-rl eval``'s table and ``--json``, the
    oracle far above random, and the same figures for a :class:`~meta_rl.trained_agent.TrainedAgent` user."""
    monkeypatch.syspath_prepend(str(EXPERIMENTS))
    cfg = TrainConfig.load(None, ["env_id=mine/Bandit-v0", "env_module=plug_in_bandit", "num_envs=4", "hidden=8",
                                  "encoder_hidden=[8]", "core_kwargs.key_dim=4", "total_env_steps=800",
                                  "eval_every=0", "torch_threads=1"])
    train(cfg, tmp_path / "run", progress=False)
    capsys.readouterr()
    args = ["eval", str(tmp_path / "run"), "--env-module", "plug_in_bandit", "--episodes", "12", "--batch", "4"]
    assert main(args) == 0
    table = capsys.readouterr().out
    rows = {line.split()[0]: line for line in table.splitlines() if line.split()}
    assert "random" in rows and "oracle" in rows and "baselines on the same tasks" in table
    assert main([*args, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["baselines"]) == {"random", "oracle"}
    assert out["baselines"]["oracle"] > out["baselines"]["random"] + 10
    assert f"{out['baselines']['oracle']:.2f}" in rows["oracle"]

    import meta_rl

    agent = meta_rl.load(tmp_path / "run", env_module="plug_in_bandit")
    ref = reference_returns(agent.make_env("test", 4), 12, 12345)  # meta-rl eval's default seed
    assert {k: float(v.mean()) for k, v in ref.items()} == pytest.approx(out["baselines"])


def test_readme_plug_in_baselines_example(capsys: pytest.CaptureFixture[str]) -> None:
    """The README's baselines example runs and prints the oracle above random play."""
    exec(compile(readme_block("### Baselines beside the agent", "python"), "README.md", "exec"), {})
    printed = capsys.readouterr().out.strip().splitlines()[-1]
    figures = eval(printed)  # {'random': ..., 'oracle': ...}
    assert set(figures) == {"random", "oracle"} and figures["oracle"] > figures["random"] > 0
