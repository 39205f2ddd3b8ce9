"""SB3's predict path for any observation space: RL2ObservationWrapper on Box / Discrete envs, predict equal to the
trainer's rollout step by step, evaluate_policy on a Box-observation plug-in (no speed is asserted: see bench.py)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3.common.evaluation import evaluate_policy
from torch import nn

import meta_rl
from meta_rl.config import ModelConfig, TrainConfig
from meta_rl.envs.gym_tasks import GymTaskVectorEnv, register_gym_task
from meta_rl.policy import MetaPolicy
from meta_rl.rollout import collect
from meta_rl.sb3_adapter import OBSERVATION_KEY, PREV_REWARD_KEY, RL2ObservationWrapper
from meta_rl.traced_step import _RECORDINGS
from meta_rl.train import train

ARMS, EPISODES, STEPS = 3, 2, 5


class Beacon(gym.Env):
    """Box observations (noise); ``ARMS`` actions, the task's ``goal`` pays 1. ``box_actions``: a 1-D Box action
    whose first coordinate pays where it is near the goal's position."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)

    def __init__(self, box_actions: bool = False) -> None:
        self.goal = 0
        self.action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32) if box_actions else gym.spaces.Discrete(ARMS)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        return self.np_random.uniform(-1, 1, 3).astype(np.float32), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        if isinstance(self.action_space, gym.spaces.Box):
            reward = float(1.0 - abs(float(action[0]) - (self.goal - 1)))
        else:
            reward = float(int(action) == self.goal)
        return self.np_random.uniform(-1, 1, 3).astype(np.float32), reward, False, False, {}


def box_beacon() -> gym.Env:
    return Beacon(box_actions=True)


def hide_goal(env: gym.Env, rng: np.random.Generator) -> None:
    env.unwrapped.goal = int(rng.integers(ARMS))  # type: ignore[attr-defined]


class Counter(gym.Env):
    """Discrete observations: the step count; reward 1 for action 1."""

    observation_space = gym.spaces.Discrete(4)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[int, dict]:
        super().reset(seed=seed)
        self.t = 0
        return 0, {}

    def step(self, action: int) -> tuple[int, float, bool, bool, dict]:
        self.t += 1
        return self.t % 4, float(action == 1), False, False, {}


def _policy(observation_space: gym.Space, action_space: gym.Space, task_length: int, core: str = "memory"
            ) -> MetaPolicy:
    torch.manual_seed(0)
    model = ModelConfig(encoder="mlp", encoder_hidden=[16], hidden=16, core=core)
    return MetaPolicy(observation_space, action_space, model, task_length=task_length)


def test_the_wrapper_takes_any_observation_space() -> None:
    """Box and Discrete observations come as ``{"observation": obs, "prev_reward": r}``, Dict ones get the entry; the
    entry holds the reward of the step before the observation (0 after reset)."""
    for env_fn, inner in ((Beacon, gym.spaces.Box), (Counter, gym.spaces.Discrete)):
        env = RL2ObservationWrapper(env_fn())
        assert isinstance(env.observation_space[OBSERVATION_KEY], inner)
        obs, _ = env.reset(seed=0)
        assert env.observation_space.contains(obs) and obs[PREV_REWARD_KEY][0] == 0.0
        obs, reward, *_ = env.step(1)
        assert env.observation_space.contains(obs) and obs[PREV_REWARD_KEY][0] == reward
    dict_env = gym.wrappers.TransformObservation(Counter(), lambda o: {"count": o}, gym.spaces.Dict(
        {"count": gym.spaces.Discrete(4)}))
    assert set(RL2ObservationWrapper(dict_env).observation_space.spaces) == {"count", PREV_REWARD_KEY}
    taken = gym.wrappers.TransformObservation(Counter(), lambda o: {PREV_REWARD_KEY: o}, gym.spaces.Dict(
        {PREV_REWARD_KEY: gym.spaces.Discrete(4)}))
    with pytest.raises(ValueError, match="already has a 'prev_reward' entry"):
        RL2ObservationWrapper(taken)


@pytest.mark.parametrize(("env_fn", "core"), [(Beacon, "memory"), (box_beacon, "gru"), (Beacon, "transformer")])
def test_predict_step_by_step_equals_the_trainers_rollout(env_fn: Any, core: str) -> None:
    """Box observations, trials of 2 episodes in 3 envs: ``predict`` fed what the wrapper gives (the observation and
    the previous reward), with ``episode_start`` at each new task, takes the rollout's deterministic actions at every
    step, discrete or continuous, and its state carries the core's memory across the inner episodes."""
    vec = GymTaskVectorEnv(env_fn, hide_goal, 3, EPISODES, STEPS, split="test")
    steps = 2 * vec.episode_length  # two tasks in a row: the state is cleared at the second's start
    policy = _policy(vec.single_observation_space, vec.single_action_space, vec.episode_length, core)
    ro = collect(vec, policy, steps, torch.Generator().manual_seed(0), reset_seed=5, deterministic=True)
    obs, _ = vec.reset(seed=5)
    reward, start, state = np.zeros(3, np.float32), np.ones(3, bool), None
    for t in range(steps):
        wrapped = {OBSERVATION_KEY: obs.numpy(), PREV_REWARD_KEY: reward[:, None]}
        actions, state = policy.predict(wrapped, state=state, episode_start=start, deterministic=True)
        assert np.array_equal(actions, ro.actions[t].numpy()), t
        obs, r, terminated, *_ = vec.step(torch.as_tensor(actions))
        reward, start = np.where(terminated.numpy(), 0.0, r.numpy()).astype(np.float32), terminated.numpy()
    assert policy.training
    vec.close()


def test_predict_takes_a_discrete_observation_and_refuses_a_foreign_dict() -> None:
    policy = _policy(Counter.observation_space, Counter.action_space, 8, "gru")
    action, state = policy.predict(np.int64(2), deterministic=True)
    assert np.ndim(action) == 0 and state.prev_action.shape == (1,)
    again, _ = policy.predict({OBSERVATION_KEY: np.int64(2), PREV_REWARD_KEY: np.zeros(1, np.float32)},
                              deterministic=True)
    assert int(again) == int(action)
    with pytest.raises(ValueError, match=r"built on a Discrete observation space.*keys \['count'\]"):
        policy.predict({"count": np.int64(2)})


class _Noisy(nn.Module):
    """A module that acts differently in training mode, to see the mode predict runs in."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(self.training)
        return x


class _Frozen(_Noisy):
    def train(self, mode: bool = True) -> _Frozen:  # a train() that does more than set the flag
        self.calls = getattr(self, "calls", 0) + 1
        return super().train(mode)


@pytest.mark.parametrize("spy_type", [_Noisy, _Frozen])
def test_predict_runs_in_eval_mode_and_gives_every_module_its_own_mode_back(spy_type: type[_Noisy]) -> None:
    policy = _policy(Beacon.observation_space, Beacon().action_space, 8, "gru")
    spy = spy_type()
    policy.encoder.net.append(spy)  # type: ignore[union-attr]
    policy.policy_head.eval()  # a module the user left in eval mode stays there
    obs = np.zeros(3, np.float32)
    policy.predict(obs)  # the step runs in Python to be recorded (and checked against the recording)
    assert spy.seen and set(spy.seen) == {False} and policy.training and spy.training
    assert not policy.policy_head.training and [m.training for m in policy.modules()].count(False) == 1
    assert getattr(spy, "calls", 2) == 2  # an own train() was called to leave training mode and to come back
    policy.eval()
    policy.predict(obs)
    assert set(spy.seen) == {False} and not any(m.training for m in policy.modules())


class _Branchy(nn.Module):
    """Branches on a tensor's value, which a recording cannot follow."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if bool(x.sum() > 0) else -x


def test_predict_replays_one_recording_that_sees_later_weights_and_steps_eagerly_where_it_cannot_record() -> None:
    """predict records the shipped parts' step once per layout and replays it, following later changes of the
    weights; a policy with a part from elsewhere (here one that branches on a tensor's value, which a recording
    cannot follow) steps eagerly, with the rollout's actions."""
    policy = _policy(Beacon.observation_space, Beacon().action_space, 8)
    obs = np.full((2, 3), 0.5, np.float32)
    first, state = policy.predict(obs, deterministic=True)
    policy.predict(obs, state=state, deterministic=True)
    recordings = [recording for recording, _ in _RECORDINGS[policy].values()]
    assert len(recordings) == 1 and isinstance(recordings[0], torch.jit.ScriptModule)  # one layout, replayed
    with torch.no_grad():
        policy.policy_head.bias.copy_(torch.tensor([0.0, 0.0, 1e4]))  # the recording shares the parameters
    assert policy.predict(obs, deterministic=True)[0].tolist() == [2, 2]
    policy.load_state_dict(_policy(Beacon.observation_space, Beacon().action_space, 8).state_dict())
    assert policy.predict(obs, deterministic=True)[0].tolist() == first.tolist()
    assert len(_RECORDINGS[policy]) == 1
    policy.policy_head = nn.Linear(policy.policy_head.in_features, ARMS)  # a new module and parameters: recorded afresh
    with torch.no_grad():
        policy.policy_head.weight.zero_()
        policy.policy_head.bias.copy_(torch.tensor([0.0, 1e4, 0.0]))
    assert policy.predict(obs, deterministic=True)[0].tolist() == [1, 1] and len(_RECORDINGS[policy]) == 2
    policy.policy_head.bias = nn.Parameter(torch.tensor([1e4, 0.0, 0.0]))  # a new parameter of the same module
    assert policy.predict(obs, deterministic=True)[0].tolist() == [0, 0] and len(_RECORDINGS[policy]) == 3

    branchy = _policy(Beacon.observation_space, Beacon().action_space, 8)
    branchy.encoder.net.append(_Branchy())  # type: ignore[union-attr]
    vec = GymTaskVectorEnv(Beacon, hide_goal, 2, EPISODES, STEPS, split="test")
    ro = collect(vec, branchy, vec.episode_length, torch.Generator().manual_seed(0), reset_seed=1, deterministic=True)
    obs_t, _ = vec.reset(seed=1)
    reward, state = np.zeros(2, np.float32), None
    for t in range(vec.episode_length):
        actions, state = branchy.predict({OBSERVATION_KEY: obs_t.numpy(), PREV_REWARD_KEY: reward[:, None]},
                                         state=state, deterministic=True)
        assert np.array_equal(actions, ro.actions[t].numpy()), t
        obs_t, r, *_ = vec.step(torch.as_tensor(actions))
        reward = r.numpy()
    assert [recording for recording, _ in _RECORDINGS[branchy].values()] == [None]
    vec.close()


def test_evaluate_policy_runs_on_a_box_observation_plug_in(tmp_path: Path) -> None:
    """SB3's ``evaluate_policy`` on a plug-in whose observations are a Box, with a policy trained a few updates:
    ``predict`` reads the previous reward through the wrapper, and every episode (a trial) is scored."""
    register_gym_task("test/Beacon-v0", Beacon, hide_goal, episodes_per_trial=EPISODES, max_episode_steps=STEPS)
    cfg = TrainConfig.load(None, ["env_id=test/Beacon-v0", "env_module=", "num_envs=4", "hidden=8",
                                  "encoder_hidden=[8]", "core_kwargs.key_dim=4", "total_env_steps=120",
                                  "eval_every=0", "torch_threads=1"])
    assert train(cfg, tmp_path / "run", progress=False)["updates"] == 3
    policy = meta_rl.load(tmp_path / "run").policy
    seen: list[tuple[float, float]] = []
    predict = policy.predict

    def spy(observation: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append((float(observation[PREV_REWARD_KEY][0, 0]), float(observation[OBSERVATION_KEY][0, 0])))
        return predict(observation, *args, **kwargs)

    policy.predict = spy  # type: ignore[method-assign]
    env = RL2ObservationWrapper(gym.make("test/Beacon-v0"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "env is not wrapped with a Monitor"
        rewards, lengths = evaluate_policy(policy, env, n_eval_episodes=3, return_episode_rewards=True)  # type: ignore
    assert lengths == [EPISODES * STEPS] * 3 and all(0.0 <= r <= EPISODES * STEPS for r in rewards)  # type: ignore
    assert len(seen) == 3 * EPISODES * STEPS and seen[0][0] == 0.0
    assert {r for r, _ in seen} <= {0.0, 1.0} and any(r == 1.0 for r, _ in seen) == (sum(rewards) > 0)  # type: ignore


def test_bench_predict_reports_sb3_predict_and_the_rollout_side_by_side(capsys: pytest.CaptureFixture[str]) -> None:
    """``experiments/bench.py predict`` on a tiny budget: every figure, wall-clock and CPU (no speed is asserted)."""
    from experiment_scripts import import_script

    import_script("bench").main(["predict", "--json", "--episodes", "1", "--rollouts", "1", "--repeats", "1",
                                 "--batch", "2", "--core", "gru"])
    out = json.loads(capsys.readouterr().out)
    for name in ("sb3_evaluate_policy", "predict", "rollout"):
        for unit in ("s", "cpu_s"):
            assert out[f"{name}_steps_per_{unit}"]["n"] == 1 and out[f"{name}_steps_per_{unit}"]["median"] > 0
    assert out["task_steps"] == 30 and out["batch"] == 2 and out["predict_cpu_ms"] > 0
