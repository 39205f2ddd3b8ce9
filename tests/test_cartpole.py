"""The CartPole meta-task (physics and actuator sign per task), its registration and its baselines."""

from __future__ import annotations

import math
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from env_checks import assert_bad_resets_refused, assert_single_env_passes_checkers, bad_action_cases
from gymnasium import spaces

from meta_rl.envs import CartPoleTaskEnv, CartPoleTaskVectorEnv
from meta_rl.envs.baseline_harness import mean_ci
from meta_rl.envs.cartpole_baselines import CONTROL_BASELINES, cartpole_lqr_gain, cartpole_oracle, cartpole_random
from meta_rl.envs.cartpole_physics import cartpole_linearization
from meta_rl.envs.checker import check_vector_env

GYM_PHYSICS = {"length": 0.5, "masspole": 0.1, "masscart": 1.0, "force_mag": 10.0, "sign": 1.0}


def _set_task(env: CartPoleTaskVectorEnv, i: int, **physics: float) -> None:
    for name, value in physics.items():
        env._task[name][i] = value


# -- contract and checkers ---------------------------------------------------------------------


def test_registered_id_and_spaces() -> None:
    vec = gym.make_vec("meta_rl/CartPole-v0", num_envs=3, vectorization_mode="vector_entry_point")
    assert isinstance(vec, CartPoleTaskVectorEnv)
    assert (vec.episodes_per_trial, vec.max_episode_steps, vec.episode_length, vec.num_envs) == (2, 100, 200, 3)
    assert vec.single_action_space == spaces.Discrete(2)
    assert vec.single_observation_space == spaces.Box(-np.inf, np.inf, (5,), np.float32)
    assert vec.action_space == spaces.MultiDiscrete([2, 2, 2])
    single = gym.make("meta_rl/CartPole-v0")
    assert isinstance(single.unwrapped, CartPoleTaskEnv) and single.unwrapped.episode_length == 200


def test_vector_env_passes_the_checker() -> None:
    check_vector_env(lambda: CartPoleTaskVectorEnv(4, episodes_per_trial=2, max_episode_steps=30))
    check_vector_env(lambda: gym.make_vec("meta_rl/CartPole-v0", num_envs=4, vectorization_mode="vector_entry_point"))


def test_single_env_passes_gymnasium_and_sb3_checkers() -> None:
    assert_single_env_passes_checkers("meta_rl/CartPole-v0")


def test_single_env_matches_the_vector_env() -> None:
    single = CartPoleTaskEnv(max_episode_steps=8)
    vec = CartPoleTaskVectorEnv(1, max_episode_steps=8)
    obs, _ = single.reset(seed=4)
    vobs, _ = vec.reset(seed=4)
    terminated = False
    for t in range(16):
        assert obs.dtype == np.float32 and np.array_equal(obs, vobs[0].numpy())
        obs, reward, terminated, truncated, info = single.step(t % 2)
        vobs, vreward, vterm, _, vinfo = vec.step(torch.tensor([t % 2]))
        assert reward == float(vreward[0]) == 1.0 and terminated == bool(vterm[0]) and not truncated
        assert info["inner_episode"] == int(vinfo["inner_episode"][0])
        assert info["episode_end"] == bool(vinfo["episode_end"][0])
        if terminated:
            break
    assert terminated and np.array_equal(obs, vinfo["final_obs"][0].numpy())


# -- dynamics -----------------------------------------------------------------------------------


def test_dynamics_match_gymnasium_cartpole_step_for_step() -> None:
    reference = gym.make("CartPole-v1").unwrapped
    ref_obs, _ = reference.reset(seed=3)
    env = CartPoleTaskVectorEnv(2, max_episode_steps=500, flip_actions=False)
    env.reset(seed=0)
    _set_task(env, 1, **GYM_PHYSICS)
    state = np.asarray(reference.state)  # type: ignore[attr-defined]
    env._state[1] = torch.as_tensor(state, dtype=torch.float32)
    actions = [1, 1, 0, 1, 0, 0, 0, 1, 1, 1, 0, 1, 1, 0, 0, 1, 0, 1, 1, 1, 0, 0]
    for a in actions:
        ref_obs, ref_reward, ref_terminated, _, _ = reference.step(a)
        obs, reward, _, _, info = env.step(torch.tensor([0, a]))
        assert np.allclose(obs[1, :4].numpy(), ref_obs, rtol=0, atol=1e-5), (obs[1], ref_obs)
        assert float(reward[1]) == ref_reward and bool(info["episode_end"][1]) == ref_terminated
        assert float(obs[1, 4]) == 0.0


def test_a_falling_pole_ends_the_inner_episode_like_gymnasium() -> None:
    env = CartPoleTaskVectorEnv(3, max_episode_steps=500)
    env.reset(seed=1)
    env._state[:] = torch.tensor([[2.399, 1.0, 0.0, 0.0], [0.0, 0.0, 0.2, 1.0], [0.0, 0.0, -0.2, -1.0]])
    _, reward, terminated, _, info = env.step(torch.zeros(3, dtype=torch.long))
    assert torch.equal(info["episode_end"], torch.ones(3, dtype=torch.bool)) and not terminated.any()
    assert torch.equal(reward, torch.ones(3))  # the step that falls still pays 1
    assert math.isclose(12 * 2 * math.pi / 360, 0.20943951, rel_tol=1e-7)


def test_the_actuator_sign_flips_the_effect_of_an_action() -> None:
    env = CartPoleTaskVectorEnv(2, max_episode_steps=500)
    env.reset(seed=0)
    _set_task(env, 0, **GYM_PHYSICS)
    _set_task(env, 1, **{**GYM_PHYSICS, "sign": -1.0})
    env._state[:] = 0.0
    ones = torch.ones(2, dtype=torch.long)
    for _ in range(3):
        obs, *_ = env.step(ones)
    assert float(obs[0, 1]) > 0 and float(obs[1, 1]) < 0  # action 1 pushes right, or left when flipped
    assert torch.allclose(obs[0, :4], -obs[1, :4])  # the mirror image
    physics = env.tasks()
    assert set(physics) == {"length", "masspole", "masscart", "force_mag", "sign"}
    physics["sign"][:] = 5.0  # a copy: the env's own tensors are untouched
    assert torch.equal(env.tasks()["sign"], torch.tensor([1.0, -1.0]))


def test_task_distribution_and_flip_flag() -> None:
    env = CartPoleTaskVectorEnv(4000)
    env.reset(seed=2)
    tasks = env.tasks()
    for name, (low, high) in {"length": (0.25, 1.0), "masspole": (0.05, 0.5), "masscart": (0.5, 2.0),
                              "force_mag": (5.0, 15.0)}.items():
        v = tasks[name]
        assert v.shape == (4000,) and v.dtype == torch.float32 and float(v.min()) >= low and float(v.max()) <= high
        assert abs(float(v.mean()) - (low + high) / 2) < 0.03 * (high - low)
    assert set(tasks["sign"].tolist()) == {-1.0, 1.0} and abs(float(tasks["sign"].mean())) < 0.06
    fixed = CartPoleTaskVectorEnv(500, flip_actions=False)
    fixed.reset(seed=2)
    assert torch.equal(fixed.tasks()["sign"], torch.ones(500))
    obs, _ = env.reset(seed=3)
    assert float(obs[:, :4].abs().max()) <= 0.05 and torch.equal(obs[:, 4], torch.ones(4000))


# -- trials -------------------------------------------------------------------------------------


def test_trial_structure_by_hand() -> None:
    env = CartPoleTaskVectorEnv(3, episodes_per_trial=2, max_episode_steps=4)
    env.reset(seed=5)
    tasks = env.tasks()
    zero = torch.zeros(3, dtype=torch.long)

    def step(fall: int | None = None) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        if fall is not None:
            env._state[fall, 2] = 0.5  # past 12 degrees: the pole is down after this step
        obs, reward, terminated, truncated, info = env.step(zero)
        assert torch.equal(reward, torch.ones(3)) and not truncated.any()
        assert torch.equal(info["_final_obs"], terminated) and info["final_obs"].shape == (3, 5)
        return obs, terminated, info

    obs, terminated, info = step(fall=1)  # t=0: env 1 ends its first inner episode
    assert torch.equal(info["inner_episode"], torch.tensor([0, 0, 0]))
    assert torch.equal(info["episode_end"], torch.tensor([False, True, False])) and not terminated.any()
    assert torch.equal(obs[:, 4], torch.tensor([0.0, 1.0, 0.0])) and float(obs[1, :4].abs().max()) <= 0.05
    assert all(torch.equal(v, tasks[k]) for k, v in env.tasks().items())  # same tasks

    obs, terminated, info = step(fall=1)  # t=1: env 1 ends its last inner episode, hence its trial
    assert torch.equal(info["inner_episode"], torch.tensor([0, 1, 0]))
    assert torch.equal(terminated, torch.tensor([False, True, False]))
    assert float(info["final_obs"][1, 2]) > 0.4 and float(info["final_obs"][1, 4]) == 0.0  # the fallen state
    assert float(obs[1, :4].abs().max()) <= 0.05 and float(obs[1, 4]) == 1.0  # the new trial's first obs
    new = env.tasks()
    for k in new:  # a new task for env 1 only
        assert torch.equal(new[k][[0, 2]], tasks[k][[0, 2]]), k
    assert not any(torch.equal(new[k][1], tasks[k][1]) for k in ("length", "masspole", "masscart", "force_mag"))

    ends, inner, dones = [], [], []
    for _ in range(2, 10):
        obs, terminated, info = step()
        ends.append(info["episode_end"].tolist())
        inner.append(info["inner_episode"].tolist())
        dones.append(terminated.tolist())
    # env 0 and 2: inner episodes of 4 steps end at t=3 and t=7 (the trial); env 1 restarted at t=2.
    assert [e for e, _, _ in ends] == [False, True, False, False, False, True, False, False]
    assert [e for _, e, _ in ends] == [False, False, False, True, False, False, False, True]
    assert [e for *_, e in ends] == [e for e, _, _ in ends]
    assert inner == [[0, 0, 0], [0, 0, 0], [1, 0, 1], [1, 0, 1], [1, 1, 1], [1, 1, 1], [0, 1, 0], [0, 1, 0]]
    assert dones == [[False] * 3] * 5 + [[True, False, True], [False] * 3, [False, True, False]]


def test_same_seed_repeats_and_splits_differ() -> None:
    def run(split: str, seed: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        env = CartPoleTaskVectorEnv(6, max_episode_steps=10, split=split)
        obs, _ = env.reset(seed=[seed])
        tasks = env.tasks()
        pattern = torch.tensor([0, 1, 1, 0, 1, 0])
        trace = [obs] + [env.step((pattern + t) % 2)[0] for t in range(40)]
        return tasks, torch.stack(trace)

    tasks, trace = run("train", 3)
    tasks2, trace2 = run("train", 3)
    assert torch.equal(trace, trace2) and all(torch.equal(tasks[k], tasks2[k]) for k in tasks)
    for other in (run("test", 3)[0], run("val", 3)[0], run("train", 4)[0]):
        assert not torch.allclose(other["length"], tasks["length"])


@pytest.mark.parametrize(("actions", "error", "match"), bad_action_cases(2))
def test_bad_actions_are_refused(actions: Any, error: type[Exception], match: str) -> None:
    env = CartPoleTaskVectorEnv(2)
    obs, _ = env.reset(seed=0)
    with pytest.raises(error, match=f"CartPoleTaskVectorEnv: .*{match}"):
        env.step(actions)
    assert torch.equal(env._observe(), obs)  # the refused step changed nothing
    env.step(np.array([0, 1]))  # numpy ints are fine


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"episodes_per_trial": 0}, ValueError, r"episodes_per_trial must be an int >= 1, got 0"),
        ({"max_episode_steps": 2.5}, ValueError, r"max_episode_steps must be an int >= 1, got 2.5"),
        ({"split": "dev"}, ValueError, r"unknown split 'dev'"),
        ({"flip_actions": "yes"}, TypeError, r"flip_actions must be a bool"),
        ({"render_mode": "human"}, ValueError, r"render_mode 'human' is not supported"),
    ],
)
def test_bad_constructor_arguments(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        CartPoleTaskVectorEnv(**kwargs)


def test_bad_reset_arguments() -> None:
    assert_bad_resets_refused(CartPoleTaskVectorEnv(2), options={"length": 1.0})


# -- baselines -----------------------------------------------------------------------------------


def test_lqr_gain_stabilises_the_default_cartpole_and_is_the_riccati_fixed_point() -> None:
    tasks = {k: torch.tensor([v]) for k, v in GYM_PHYSICS.items()}
    a, b = cartpole_linearization(tasks)
    assert torch.allclose(a[0, 3, 2], torch.tensor(0.02 * 9.8 / (0.5 * (4 / 3 - 0.1 / 1.1)), dtype=torch.float64))
    assert torch.allclose(b[0, 1], torch.tensor(0.02 * (1 / 1.1 + 0.05 / (1.1**2 * 0.5 * (4 / 3 - 0.1 / 1.1))),
                                                dtype=torch.float64))
    q, r = (1.0, 1.0, 10.0, 1.0), 0.01
    k = cartpole_lqr_gain(tasks, q, r)  # (1, 4)
    closed = a[0] - b[0].unsqueeze(1) @ k  # (4, 4)
    assert float(torch.linalg.eigvals(closed).abs().max()) < 1.0
    assert float(torch.linalg.eigvals(a[0]).abs().max()) > 1.0  # upright is unstable without control
    assert bool((k[0] < 0).all())  # a pole leaning right (theta > 0) calls for a push right
    # Policy evaluation of K (a Lyapunov solve) gives P_K; the optimal K is greedy with respect to it.
    cost = torch.diag(torch.tensor(q, dtype=torch.float64)) + r * k.T @ k
    lyap = torch.eye(16, dtype=torch.float64) - torch.kron(closed.T, closed.T)
    p = torch.linalg.solve(lyap, cost.reshape(-1)).reshape(4, 4)
    bt = b[0].unsqueeze(0)  # (1, 4)
    greedy = (bt @ p @ a[0]) / (r + bt @ p @ bt.T)
    assert torch.allclose(greedy, k, rtol=1e-6)


def test_oracle_beats_random_by_a_wide_margin() -> None:
    env = CartPoleTaskVectorEnv(150, split="test")
    oracle = cartpole_oracle(env, seed=0, trials=300)  # two rounds of 150
    random = cartpole_random(env, seed=0, trials=300)
    assert oracle.shape == random.shape == (300, 2) and oracle.dtype == torch.float64
    assert float(oracle.mean()) >= 95 and float(random.mean()) < 40
    assert float(random.min()) >= 1 and float(oracle.max()) <= 100
    assert mean_ci(oracle[:, 0]).low > mean_ci(random[:, 0]).high
    assert set(CONTROL_BASELINES) == {"random", "oracle"}
    assert torch.equal(cartpole_random(env, seed=0, trials=300), random)  # seeded
    reference = env.reference_returns(300, seed=0)  # what an evaluation report shows beside an agent
    assert set(reference) == {"random", "oracle"} and torch.equal(reference["oracle"], oracle.sum(-1))


def test_ignoring_the_sign_fails_where_the_actuator_is_flipped() -> None:
    env = CartPoleTaskVectorEnv(200, split="test")
    env.reset(seed=1)
    tasks = env.tasks()
    gain = cartpole_lqr_gain(tasks)
    lengths = torch.zeros(200)
    alive = torch.ones(200, dtype=torch.bool)
    obs = env._observe()
    for _ in range(100):  # the first inner episode, pushing as if every sign were +1
        action = (-(gain * obs[:, :4].double()).sum(-1) > 0).long()
        obs, reward, _, _, info = env.step(action)
        lengths += reward * alive
        alive &= ~info["episode_end"]
    flipped = tasks["sign"] < 0
    assert float(lengths[~flipped].min()) == 100 and float(lengths[flipped].max()) < 40


def test_baselines_count_each_trial_once_when_trials_end_early() -> None:
    env = CartPoleTaskVectorEnv(7, episodes_per_trial=3, max_episode_steps=20)
    returns = cartpole_random(env, seed=2, trials=10)  # rounds of 7: 14 played, 10 kept
    assert returns.shape == (10, 3) and bool((returns >= 1).all()) and bool((returns <= 20).all())
    with pytest.raises(ValueError, match="trials must be a positive int"):
        cartpole_random(env, trials=0)
    with pytest.raises(TypeError, match="env must be a CartPoleTaskVectorEnv"):
        cartpole_oracle(object(), trials=1)
