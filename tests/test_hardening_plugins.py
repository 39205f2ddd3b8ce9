"""Issue 33, third pass: hostile plug-in envs, trained for real through ``meta_rl.train.train``.

Each plug-in is an ordinary ``gymnasium.Env`` registered with ``register_gym_task`` (or, once, a
torch-native ``VectorEnv`` registered with gymnasium), trained in tiny runs on the CPU:

- ``Discrete(n, start=s)`` actions and observations reach the env and the policy in their own terms;
  action spaces the policy cannot act in are refused at construction, naming the env (defect 2);
- a NaN reward or observation is blamed on the env, naming it, the step and the quantity, whatever the
  action space; PointNav refuses ``max_step=inf`` (defect 6);
- an observation that breaks its declared space is refused naming the env, the observation and the space,
  not a gymnasium or torch traceback (defect 9).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces

from meta_rl.config import ConfigError, TrainConfig
from meta_rl.envs.checker import EnvCheckError
from meta_rl.envs.gym_tasks import register_gym_task
from meta_rl.train import train

STEPS = 4  # steps of a trial: one inner episode
NUM_ENVS = 2


def no_task(env: gym.Env, rng: np.random.Generator) -> None:
    """Every trial is the same task: these plug-ins test the plumbing, not learning."""


def tiny(env_id: str, updates: int = 3, **changes: Any) -> TrainConfig:
    """A tiny run of ``updates`` updates on a plug-in registered in this process."""
    return TrainConfig(env_id=env_id, env_module="", num_envs=NUM_ENVS, core="gru", encoder="mlp",
                       encoder_hidden=[8], hidden=8, total_env_steps=updates * NUM_ENVS * STEPS, eval_every=0,
                       log_every=1, torch_threads=1, device="cpu", **changes)


def register(env_id: str, env_class: type[gym.Env]) -> str:
    register_gym_task(env_id, env_class, no_task, episodes_per_trial=1, max_episode_steps=STEPS)
    return env_id


class PlugIn(gym.Env):
    """A constant observation, reward 0: subclasses change one thing."""

    observation_space: Any = spaces.Box(-1.0, 1.0, (2,), np.float32)
    action_space: Any = spaces.Discrete(3)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict]:
        super().reset(seed=seed)
        self.t = 0
        return self.observe(), {}

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        self.t += 1
        return self.observe(), self.reward(action), False, False, {}

    def observe(self) -> Any:
        return np.zeros(2, np.float32)

    def reward(self, action: Any) -> float:
        return 0.0


# --- defect 2: Discrete(n, start=s), MultiDiscrete and other spaces the policy cannot act in -----------


class StartedArms(PlugIn):
    """Arms 5, 6, 7; arm 5 pays. Records every action it receives and whether it lay in its space."""

    action_space = spaces.Discrete(3, start=5)
    received: ClassVar[list[tuple[Any, bool]]] = []

    def reward(self, action: Any) -> float:
        StartedArms.received.append((action, self.action_space.contains(action)))
        return float(action == 5)


def test_discrete_actions_with_a_start_reach_the_env_within_its_space(tmp_path: Path) -> None:
    StartedArms.received.clear()
    train(tiny(register("hardening/StartedArms-v0", StartedArms), updates=4), tmp_path / "run", progress=False)
    actions = [int(a) for a, _ in StartedArms.received]
    assert len(actions) == 4 * NUM_ENVS * STEPS
    outside = sorted({a for a, inside in StartedArms.received if not inside})
    assert not outside, f"the env received actions outside Discrete(3, start=5): {outside}"
    assert 5 in actions and set(actions) <= {5, 6, 7}


class StartedCells(PlugIn):
    """Observes its step count as a cell of ``Discrete(4, start=-2)`` (-2, -1, 0, 1), or as such a Dict entry."""

    def observe(self) -> Any:
        return np.int64(self.t % 4 - 2)


class StartedCellsInADict(StartedCells):
    observation_space = spaces.Dict({"cell": spaces.Discrete(4, start=-2), "x": spaces.Box(-1.0, 1.0, (1,))})

    def observe(self) -> Any:
        return {"cell": np.int64(self.t % 4 - 2), "x": np.zeros(1, np.float32)}


@pytest.mark.parametrize("dict_obs", [False, True], ids=["discrete", "dict-entry"])
def test_discrete_observations_with_a_start_reach_the_policy_from_zero(tmp_path: Path, dict_obs: bool) -> None:
    env_class = StartedCellsInADict if dict_obs else type("StartedCellsPlain", (StartedCells,),
                                                           {"observation_space": spaces.Discrete(4, start=-2)})
    env_id = register(f"hardening/StartedCells-{dict_obs}-v0", env_class)
    vec = gym.make_vec(env_id, num_envs=NUM_ENVS, vectorization_mode="vector_entry_point")
    obs, _ = vec.reset(seed=0)
    seen = [obs["cell"] if dict_obs else obs]
    for _ in range(STEPS - 1):
        obs, *_ = vec.step(torch.zeros(NUM_ENVS, dtype=torch.int64))
        seen.append(obs["cell"] if dict_obs else obs)
    vec.close()
    # the env's cells -2, -1, 0, 1 are the policy's 0, 1, 2, 3 (what it one-hot encodes)
    assert torch.equal(torch.stack(seen), torch.arange(STEPS).repeat_interleave(NUM_ENVS).reshape(STEPS, NUM_ENVS))
    result = train(tiny(env_id), tmp_path / "run", progress=False)
    assert result["updates"] == 3 and (tmp_path / "run" / "checkpoint.pt").is_file()


def _refusal(tmp_path: Path, env_class: type[gym.Env], error: type[Exception]) -> tuple[str, str]:
    """Register ``env_class``, train on it expecting ``error``; its id and the error's message."""
    env_id = register(f"hardening/{env_class.__name__}-v0", env_class)
    with pytest.raises(error) as refused:
        train(tiny(env_id), tmp_path / "run", progress=False)
    return env_id, str(refused.value)


class MultiArms(PlugIn):
    action_space = spaces.MultiDiscrete([2, 3], start=[1, 1])


class BitArms(PlugIn):
    action_space = spaces.MultiBinary(3)


@pytest.mark.parametrize(("env_class", "kind"), [(MultiArms, "MultiDiscrete"), (BitArms, "MultiBinary")])
def test_action_spaces_the_policy_cannot_act_in_are_refused_naming_the_env(
    tmp_path: Path, env_class: type[gym.Env], kind: str
) -> None:
    env_id, message = _refusal(tmp_path, env_class, ConfigError)
    assert env_id in message and kind in message  # the env and the space
    assert "Discrete(n)" in message and "1-D Box" in message and "Fix:" in message  # what is supported, the fix
    assert not (tmp_path / "run").exists()  # refused before the run wrote anything


# --- defect 6: a NaN reward or observation is the env's, whatever the action space; PointNav max_step=inf -----


class NaNAtStep3(PlugIn):
    """Returns a NaN reward (or observation) at the third step of a trial."""

    nan_in = "reward"

    def reward(self, action: Any) -> float:
        return math.nan if self.nan_in == "reward" and self.t == 3 else 0.0

    def observe(self) -> Any:
        return np.full(2, math.nan if self.nan_in == "observation" and self.t == 3 else 0.0, np.float32)


@pytest.mark.parametrize("nan_in", ["reward", "observation"])
@pytest.mark.parametrize("actions", ["box", "discrete"])
def test_a_nan_from_the_env_is_blamed_on_the_env_with_the_step(tmp_path: Path, actions: str, nan_in: str) -> None:
    action_space = spaces.Box(-1.0, 1.0, (1,), np.float32) if actions == "box" else spaces.Discrete(3)
    env_class = type(f"NaN{nan_in}{actions}", (NaNAtStep3,), {"action_space": action_space, "nan_in": nan_in})
    env_id = register(f"hardening/NaN-{nan_in}-{actions}-v0", env_class)
    with pytest.raises(EnvCheckError) as refused:
        train(tiny(env_id), tmp_path / "run", progress=False)
    message = str(refused.value)
    assert message.startswith(f"{env_id} ({env_class.__name__}): env 0 returned a{'n' * (nan_in != 'reward')} "
                              f"{nan_in} at step 3 of its trial")  # the env, the quantity and the step
    assert "nan" in message  # the value
    assert "policy" not in message  # not blamed on the policy's outputs


def test_point_nav_refuses_a_max_step_of_inf(tmp_path: Path) -> None:
    cfg = TrainConfig(env_id="meta_rl/PointNav-v0", env_kwargs={"max_step": math.inf, "horizon": STEPS},
                      num_envs=NUM_ENVS, core="gru", encoder="mlp", encoder_hidden=[8], hidden=8,
                      total_env_steps=3 * NUM_ENVS * 2 * STEPS, eval_every=0, torch_threads=1, device="cpu")
    with pytest.raises(ValueError, match=r"PointNav: max_step must be a finite number > 0, got inf; pass a "
                                         r"positive env_kwargs\.max_step"):
        train(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()  # refused at construction: no config.json or events left


class NaNRewardVectorEnv(gym.vector.VectorEnv):
    """A user's torch-native vector env with Box actions whose second step pays NaN."""

    metadata: dict[str, Any] = {"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP}  # noqa: RUF012
    episode_length = STEPS

    def __init__(self, num_envs: int = 1) -> None:
        self.num_envs = num_envs
        self.single_observation_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.single_action_space = spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.observation_space = gym.vector.utils.batch_space(self.single_observation_space, num_envs)
        self.action_space = gym.vector.utils.batch_space(self.single_action_space, num_envs)
        self.t = 0

    def reset(self, *, seed: Any = None, options: Any = None) -> tuple[torch.Tensor, dict]:
        self.t = 0
        return torch.zeros(self.num_envs, 2), {}

    def step(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, dict]:
        if not bool(torch.isfinite(actions).all()):
            raise ValueError(f"actions must be finite, got {actions.tolist()}")
        self.t += 1
        reward = torch.full((self.num_envs,), math.nan if self.t == 2 else 0.0)
        done = torch.full((self.num_envs,), self.t % STEPS == 0)
        info = {"final_obs": torch.zeros(self.num_envs, 2), "_final_obs": done} if bool(done.any()) else {}
        return torch.zeros(self.num_envs, 2), reward, done, torch.zeros_like(done), info


def make_nan_reward_vector_env(num_envs: int = 1, **_: Any) -> gym.vector.VectorEnv:
    return NaNRewardVectorEnv(num_envs)


def test_a_nan_reward_of_a_torch_native_plug_in_is_blamed_on_the_env(tmp_path: Path) -> None:
    gym.register("hardening/NaNRewardVector-v0", vector_entry_point=make_nan_reward_vector_env)
    with pytest.raises(EnvCheckError) as refused:
        train(tiny("hardening/NaNRewardVector-v0"), tmp_path / "run", progress=False)
    message = str(refused.value)
    expected = ("NaNRewardVectorEnv (hardening/NaNRewardVector-v0): env 0 returned a reward at step 2 after reset() "
                "that is nan")
    assert message.startswith(expected), message  # the env, the quantity, the step and the value
    assert "not finite" in message and "Fix:" in message  # why the action was refused; the fix


# --- defect 9: an observation that breaks its declared space ------------------------------------------------


class WrongShapeAtReset(PlugIn):
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict]:
        super().reset(seed=seed)
        return np.zeros(3, np.float32), {}


class WrongShapeAtStep2(PlugIn):
    def observe(self) -> Any:
        return np.zeros((2, 2) if self.t == 2 else 2, np.float32)


class OutOfRangeCell(PlugIn):
    observation_space = spaces.Discrete(4)

    def observe(self) -> Any:
        return 7 if self.t == 2 else 0


class OutOfRangeInTheSecondTrial(OutOfRangeCell):
    """Within its space in the first trial (the one checked in full); 7 at step 2 of later ones."""

    trials = 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict]:
        self.trials = getattr(self, "trials", 0) + 1
        return super().reset(seed=seed)

    def observe(self) -> Any:
        return 7 if self.t == 2 and self.trials > 1 else 0


@pytest.mark.parametrize(("env_class", "expected"), [
    (WrongShapeAtReset, r"env 0 returned an observation at reset\(\) that has shape \(3,\), not the Box's \(2,\)"),
    (WrongShapeAtStep2, r"env 0 returned an observation at step 2 of its trial \(inner episode 0\) that has shape "
                        r"\(2, 2\), not the Box's \(2,\)"),
    (OutOfRangeCell, r"env 0 returned an observation at step 2 of its trial \(inner episode 0\) that is 7, outside "
                     r"the Discrete's 0\.\.3"),
    (OutOfRangeInTheSecondTrial, r"env 0 returned an observation at step 2 of its trial \(inner episode 0\) that is "
                                 r"7, outside the Discrete's 0\.\.3"),
])
def test_an_observation_outside_its_declared_space_is_refused_naming_the_env(
    tmp_path: Path, env_class: type[gym.Env], expected: str
) -> None:
    env_id, message = _refusal(tmp_path, env_class, EnvCheckError)
    assert message.startswith(f"{env_id} ({env_class.__name__}): ")  # the env
    assert re.search(expected, message), message  # the observation and what is wrong with it
    assert str(env_class.observation_space) in message and "Fix:" in message  # the declared space, the fix
