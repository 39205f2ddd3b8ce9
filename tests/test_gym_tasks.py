"""GymTaskVectorEnv: any gymnasium env plus a task sampler as a torch-native trial env for the trainer."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from meta_rl.config import TrainConfig
from meta_rl.envs.checker import check_vector_env
from meta_rl.envs.gym_tasks import GymTaskVectorEnv, register_gym_task
from meta_rl.rollout import collect
from meta_rl.train import build_policy, make_vec_env, train

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def make_pendulum() -> gym.Env:
    return gym.make("Pendulum-v1")


def sample_pendulum(env: gym.Env, rng: np.random.Generator) -> None:
    env.unwrapped.m = rng.uniform(0.5, 2.0)  # type: ignore[attr-defined]
    env.unwrapped.l = rng.uniform(0.5, 2.0)  # type: ignore[attr-defined]


def make_cartpole() -> gym.Env:
    return gym.make("CartPole-v1")


def sample_cartpole(env: gym.Env, rng: np.random.Generator) -> None:
    env.unwrapped.length = rng.uniform(0.25, 1.0)  # type: ignore[attr-defined]
    env.unwrapped.tasks = getattr(env.unwrapped, "tasks", 0) + 1  # type: ignore[attr-defined]


def pendulum(num_envs: int = 3, **kw: object) -> GymTaskVectorEnv:
    kw = {"episodes_per_trial": 2, "max_episode_steps": 5, **kw}
    return GymTaskVectorEnv(make_pendulum, sample_pendulum, num_envs, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("vectorization", ["sync", "async"])
def test_vector_checker_passes(vectorization: str) -> None:
    check_vector_env(lambda: pendulum(vectorization=vectorization))
    check_vector_env(lambda: GymTaskVectorEnv(make_cartpole, sample_cartpole, 3, 2, 10, vectorization))


def test_done_only_at_trial_end_and_inner_episode_info() -> None:
    env = pendulum(2)
    obs, _ = env.reset(seed=0)
    m0 = env.call("get_wrapper_attr", "m")
    assert env.episode_length == 10
    for t in range(10):
        obs, _, terminated, truncated, info = env.step(torch.zeros(2, 1))
        assert torch.equal(info["inner_episode"], torch.full((2,), t // 5))
        assert torch.equal(info["episode_end"], torch.full((2,), t % 5 == 4))
        assert bool(terminated.all()) == bool(terminated.any()) == (t == 9)
        assert not truncated.any()
        if t == 4:  # the inner episode ended: same task
            assert env.call("get_wrapper_attr", "m") == m0
    assert "final_obs" in info and info["final_obs"].shape == obs.shape
    assert env.call("get_wrapper_attr", "m") != m0  # a new task began in the same step
    env.close()


def test_task_sampler_called_at_task_boundaries_only() -> None:
    env = GymTaskVectorEnv(make_cartpole, sample_cartpole, 4, episodes_per_trial=3, max_episode_steps=20)
    env.reset(seed=1)
    tasks = lambda: np.array(env.call("get_wrapper_attr", "tasks"))  # noqa: E731
    start = tasks()
    inner_ends = trial_ends = np.zeros(4, dtype=int)
    for _ in range(200):
        _, _, terminated, truncated, info = env.step(torch.ones(4, dtype=torch.int64))  # always push right: falls fast
        done = (terminated | truncated).numpy()
        trial_ends = trial_ends + done
        inner_ends = inner_ends + (info["episode_end"].numpy() & ~done)
    assert (trial_ends > 0).all() and np.array_equal(tasks() - start, trial_ends)  # one new task per trial
    # every finished trial had 2 inner episode ends that were not reported as done
    assert np.array_equal(inner_ends, 2 * trial_ends + np.array(env.call("get_wrapper_attr", "_episode")))
    env.close()


def test_rollout_keeps_the_hidden_state_within_a_trial() -> None:
    env = pendulum(3)
    cfg = TrainConfig(env_id="x", core="gru", encoder="mlp", encoder_hidden=[16], hidden=16)
    policy = build_policy(cfg, env, env.episode_length)
    ro = collect(env, policy, 2 * env.episode_length, torch.Generator().manual_seed(0), reset_seed=0)
    trial_end = torch.zeros(20, 3, dtype=torch.bool)
    trial_end[[9, 19]] = True
    assert torch.equal(ro.dones, trial_end)  # inner episode ends (steps 4, 14) are not task ends
    assert torch.equal(ro.starts[1:], trial_end[:-1]) and bool(ro.starts[0].all())
    assert torch.equal(ro.inner_episode[:, 0], torch.arange(20) % 10 // 5)
    env.close()


def test_dtypes_devices_and_spaces() -> None:
    env = pendulum(3)
    obs, info = env.reset(seed=2)
    assert isinstance(obs, torch.Tensor) and obs.dtype == torch.float32 and obs.shape == (3, 3) and info == {}
    obs, reward, terminated, truncated, info = env.step(np.zeros((3, 1), dtype=np.float64))
    assert reward.dtype == torch.float32 and terminated.dtype == torch.bool and truncated.dtype == torch.bool
    assert info["inner_episode"].dtype == torch.int64
    assert env.observation_space == gym.vector.utils.batch_space(env.single_observation_space, 3)
    env.close()
    cp = GymTaskVectorEnv(make_cartpole, sample_cartpole, 2, max_episode_steps=10)
    cp.reset(seed=0)
    obs, *_ = cp.step(torch.tensor([0, 1]))
    assert obs.dtype == torch.float32 and obs.device == torch.device("cpu")
    cp.close()


def test_seeding_is_deterministic() -> None:
    def run(seed: int) -> list[torch.Tensor]:
        env = pendulum(2)
        out = [env.reset(seed=seed)[0]]
        gen = torch.Generator().manual_seed(0)
        for _ in range(25):
            obs, reward, *_ = env.step(torch.rand(2, 1, generator=gen) * 4 - 2)
            out += [obs, reward]
        env.close()
        return out

    a, b, c = run(7), run(7), run(8)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))


def test_splits_draw_different_tasks() -> None:
    def masses(split: str) -> tuple[float, ...]:
        env = pendulum(4, split=split)
        env.reset(seed=0)
        m = env.call("get_wrapper_attr", "m")
        env.close()
        return m

    assert masses("train") == masses("train") and masses("train") != masses("val")


@pytest.mark.parametrize(
    ("actions", "error", "match"),
    [
        (torch.zeros(2, 1), ValueError, r"shape \(3, 1\)"),
        (torch.zeros(3), ValueError, r"shape \(3, 1\)"),
        (torch.zeros(3, 1, dtype=torch.int64), TypeError, "floats"),
        (torch.zeros(3, 1, device="meta"), ValueError, "device"),
        ([[0.0]] * 3, TypeError, "actions"),
    ],
)
def test_bad_actions(actions: object, error: type[Exception], match: str) -> None:
    env = pendulum(3)
    env.reset(seed=0)
    with pytest.raises(error, match=match):
        env.step(actions)  # type: ignore[arg-type]
    env.close()


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="episodes_per_trial"):
        pendulum(episodes_per_trial=0)
    with pytest.raises(ValueError, match="vectorization"):
        pendulum(vectorization="threads")
    with pytest.raises(ValueError, match="split"):
        pendulum(split="holdout")
    with pytest.raises(ValueError, match="max_episode_steps"):
        GymTaskVectorEnv(lambda: gym.make("Pendulum-v1", max_episode_steps=None).unwrapped, sample_pendulum)
    with pytest.raises(ValueError, match="options"):
        pendulum().reset(options={"x": 1})
    with pytest.raises(TypeError, match="unknown defaults"):
        register_gym_task("test/Bad-v0", make_pendulum, sample_pendulum, horizon=3)


def test_max_episode_steps_defaults_to_the_spec() -> None:
    env = GymTaskVectorEnv(make_cartpole, sample_cartpole, 1)
    assert env.max_episode_steps == 500 and env.episode_length == 1000
    env.close()


def test_registered_id_builds_through_make_vec_and_the_trainer() -> None:
    register_gym_task("test/Pendulum-v0", make_pendulum, sample_pendulum, max_episode_steps=7)
    vec = gym.make_vec("test/Pendulum-v0", num_envs=2, vectorization_mode="vector_entry_point")
    assert isinstance(vec, GymTaskVectorEnv) and vec.episode_length == 14
    vec.close()
    single = gym.make("test/Pendulum-v0")
    obs, _ = single.reset(seed=0)
    assert isinstance(obs, np.ndarray)
    cfg = TrainConfig(env_id="test/Pendulum-v0", env_module="", env_kwargs={"episodes_per_trial": 3})
    env = make_vec_env(cfg, "val", 2, torch.device("cpu"))
    assert isinstance(env, GymTaskVectorEnv) and env.split == "val" and env.episode_length == 21
    env.close()


def test_example_trains_through_train_and_checkpoints(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(EXPERIMENTS))
    sys.modules.pop("plug_in_pendulum", None)
    example = importlib.import_module("plug_in_pendulum")
    cfg = TrainConfig(env_id="mine/Pendulum-v0", env_module="plug_in_pendulum", core="gru", encoder="mlp",
                      encoder_hidden=[32], hidden=32, num_envs=4, gamma=0.99, total_env_steps=3 * 4 * 100,
                      eval_every=0, torch_threads=1)
    assert example.make_pendulum is not None
    result = train(cfg, tmp_path / "run", progress=False)
    assert result["updates"] == 3 and (tmp_path / "run" / "checkpoint.pt").is_file()
