"""``GymTaskVectorEnv(vectorization="async", num_workers=W)``: B envs in W worker processes (envs/worker_pool.py).

The same results as sync for any W, the worker count's rules, errors from inside a worker, a worker stuck in a step
terminated by ``close(terminate=True)`` with no child process left, and the config / CLI route.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from experiment_scripts import import_script
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, SyncVectorEnv

import meta_rl.train as train_module
from meta_rl.cli import main
from meta_rl.config import ConfigError, load_config
from meta_rl.env_contract import EnvCheckError
from meta_rl.env_factory import make_vec_env
from meta_rl.envs import worker_pool
from meta_rl.envs.gym_tasks import GymTaskVectorEnv, register_gym_task
from meta_rl.envs.worker_pool import WorkerPoolVectorEnv, resolve_workers, shares

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc for child processes")


class Flicker(gym.Env):
    """A Dict observation (a 1x4x4 uint8 image, a ``Discrete(3, start=1)`` tag), episodes that end at random
    steps, and an info key that only some steps carry: every path of the batching is exercised."""

    observation_space = spaces.Dict({"image": spaces.Box(0, 255, (1, 4, 4), np.uint8),
                                     "tag": spaces.Discrete(3, start=1)})
    action_space = spaces.Discrete(3)

    def __init__(self, bad_env: int = -1, fail_at: int = 0, failure: str = "") -> None:
        # bad_env: the env that fails (reset with seed 0, env i's np_random_seed is i), from its step fail_at on
        self.level = 0
        self.steps = 0
        self.bad_env, self.fail_at, self.failure = bad_env, fail_at, failure

    def _obs(self) -> dict[str, Any]:
        tag = int(self.np_random.integers(1, 4))
        if self.failure == "tag" and self.steps >= self.fail_at and self.np_random_seed == self.bad_env:
            tag = 7
        return {"image": self.np_random.integers(0, 256, (1, 4, 4), dtype=np.uint8), "tag": tag}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict]:
        super().reset(seed=seed)
        return self._obs(), {"level": self.level}

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        self.steps += 1
        if self.failure == "raise" and self.steps >= self.fail_at and self.np_random_seed == self.bad_env:
            raise ValueError(f"boom: the flicker broke at its step {self.steps}")
        info = {"odd": int(self.np_random.integers(10))} if self.np_random.random() < 0.3 else {}
        return self._obs(), float(action) + self.level, bool(self.np_random.random() < 0.15), False, info


def make_flicker() -> gym.Env:
    return Flicker()


def random_level(env: gym.Env, rng: np.random.Generator) -> None:
    env.unwrapped.level = int(rng.integers(0, 10))  # type: ignore[attr-defined]


class Sleepy(gym.Env):
    """Steps sleep for a minute: a worker stuck in a step."""

    observation_space = spaces.Box(0.0, 1.0, (1,), np.float32)
    action_space = spaces.Discrete(2)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict]:
        super().reset(seed=seed)
        return np.zeros(1, np.float32), {}

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        time.sleep(60)
        return np.zeros(1, np.float32), 0.0, False, False, {}


def same_task(env: gym.Env, rng: np.random.Generator) -> None:
    pass


def flicker_env(vectorization: str = "sync", num_envs: int = 5, sampler: Any = random_level,
                **kw: Any) -> GymTaskVectorEnv:
    return GymTaskVectorEnv(make_flicker, sampler, num_envs, episodes_per_trial=2, max_episode_steps=6,
                            vectorization=vectorization, **kw)


def children() -> set[int]:
    """This process's child processes, zombies included (a zombie is still listed until it is reaped), less
    multiprocessing's resource tracker (spawn starts it once, for the life of this process)."""
    pids: set[int] = set()
    for task in Path("/proc/self/task").iterdir():
        pids |= {int(p) for p in (task / "children").read_text().split()}
    return {p for p in pids if b"resource_tracker" not in _cmdline(p)}


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


@pytest.fixture
def no_children_left() -> Iterator[None]:
    before = children()
    yield
    assert children() <= before, "a worker process outlived its env"


def rollout(env: GymTaskVectorEnv, steps: int = 40) -> list[torch.Tensor]:
    """Everything the env returns over ``steps`` fixed random actions, flattened to tensors."""
    obs, _ = env.reset(seed=3)
    out = [obs["image"], obs["tag"]]
    actions = np.random.default_rng(0).integers(0, 3, (steps, env.num_envs))
    for a in actions:
        obs, reward, terminated, truncated, info = env.step(torch.as_tensor(a))
        out += [obs["image"], obs["tag"], reward, terminated, truncated, info["inner_episode"], info["episode_end"]]
        if "final_obs" in info:
            out += [info["final_obs"]["image"], info["final_obs"]["tag"], info["_final_obs"]]
    out.append(torch.tensor(env.call("get_wrapper_attr", "level")))
    return out


@pytest.mark.usefixtures("no_children_left")
def test_async_gives_what_sync_gives_for_any_worker_count() -> None:
    sync = flicker_env()
    expected = rollout(sync)
    sync.close()
    for workers in (1, 2, 3):
        env = flicker_env("async", num_workers=workers)
        assert env.num_workers == workers and env._vec.shares[-1][1] == 5
        got = rollout(env)
        env.close()
        assert len(got) == len(expected) and all(torch.equal(a, b) for a, b in zip(got, expected)), workers


def _same(a: Any, b: Any) -> bool:
    """Deep equality of batched infos: dict keys in order, arrays with their dtypes, object arrays element-wise."""
    if isinstance(a, dict):
        return isinstance(b, dict) and list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, np.ndarray):
        if not isinstance(b, np.ndarray) or a.dtype != b.dtype or a.shape != b.shape:
            return False
        return all(_same(x, y) for x, y in zip(a, b)) if a.dtype == object else bool(np.array_equal(a, b))
    return bool(type(a) is type(b) and a == b) if a is not None else b is None


@pytest.mark.usefixtures("no_children_left")
@pytest.mark.parametrize("context", [None, "spawn"])
def test_the_pool_batches_infos_as_sync_vector_env_does(context: str | None) -> None:
    """The raw pool against gymnasium's SyncVectorEnv: observations, rewards, flags and every info key, its mask,
    ``final_obs`` and ``final_info`` alike; under spawn too (nothing relies on fork)."""
    fns = [make_flicker] * 5
    sync = SyncVectorEnv(fns, autoreset_mode=AutoresetMode.SAME_STEP)
    pool = WorkerPoolVectorEnv(fns, 1 if context else 3, context=context)  # spawn: a second or two per worker
    assert pool.single_observation_space == sync.single_observation_space
    a, b = sync.reset(seed=11), pool.reset(seed=11)
    assert _same(a[0], b[0]) and _same(a[1], b[1])
    finals = 0
    for action in np.random.default_rng(1).integers(0, 3, (30, 5)):
        a, b = sync.step(action), pool.step(action)
        assert all(_same(x, y) for x, y in zip(a, b))
        finals += "final_obs" in b[4]
    assert finals > 3 and pool.get_attr("np_random_seed") == sync.get_attr("np_random_seed") == tuple(range(11, 16))
    sync.close()
    pool.close()


def test_worker_counts_default_clamp_and_refuse(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(worker_pool.os, "cpu_count", lambda: 3)
    assert resolve_workers(None, 64) == 3 and resolve_workers(None, 2) == 2  # min(B, cores)
    assert resolve_workers(8, 5) == 5  # W > B: one worker per env (the trainer's one-env probe shares the setting)
    assert shares(5, 3) == [(0, 2), (2, 4), (4, 5)] and shares(4, 4) == [(0, 1), (1, 2), (2, 3), (3, 4)]
    for bad in (0, -2):
        with pytest.raises(ValueError, match=rf"num_workers must be >= 1 \(worker processes\), got {bad}"):
            flicker_env("async", num_workers=bad)
    for bad in (2.0, "2", True):
        with pytest.raises(TypeError, match="num_workers must be a whole number of worker processes"):
            flicker_env("async", num_workers=bad)
    with pytest.raises(ValueError, match=r"num_workers=2 does nothing with vectorization='sync'"):
        flicker_env("sync", num_workers=2)


@pytest.mark.usefixtures("no_children_left")
def test_more_workers_than_envs_runs_one_per_env() -> None:
    env = flicker_env("async", num_envs=2, num_workers=5)
    assert env.num_workers == 2 and len({p.pid for p in env._vec._processes}) == 2
    env.close()


def _error(vectorization: str, failure: str, **kw: Any) -> BaseException:
    env = GymTaskVectorEnv(FailingFlicker(failure), same_task, 5, episodes_per_trial=2, max_episode_steps=50,
                           vectorization=vectorization, **kw)
    env.reset(seed=0)
    with pytest.raises(Exception) as info:  # sync's exception, whatever it is, is the reference
        for _ in range(10):
            env.step(torch.zeros(5, dtype=torch.int64))
    env.close()
    return info.value


class FailingFlicker:
    """A picklable env_fn with settings, as a user would write one: env 3 fails from its 4th step on."""

    def __init__(self, failure: str) -> None:
        self.failure = failure

    def __call__(self) -> gym.Env:
        return Flicker(bad_env=3, fail_at=4, failure=self.failure)


@pytest.mark.usefixtures("no_children_left")
@pytest.mark.parametrize("failure", ["raise", "tag"])
def test_errors_in_a_worker_reach_the_caller_as_in_sync(failure: str) -> None:
    """An env's own exception keeps its type and message; the trainer-facing check still names the global env
    index and the step (env 3 sits in the second of 2 workers)."""
    expected = _error("sync", failure)
    got = _error("async", failure, num_workers=2)
    assert type(got) is type(expected) and str(got) == str(expected)
    if failure == "tag":
        assert isinstance(got, EnvCheckError)
        assert "env 3 returned an observation at step 4 of its trial (inner episode 0)" in str(got)
    else:
        assert str(got) == "boom: the flicker broke at its step 4"
    assert any("Raised by env 3 in env worker 1" in note for note in getattr(got, "__notes__", [])), got


class Locked:
    """A task sampler that holds a lock: it cannot be pickled."""

    def __init__(self) -> None:
        self.lock = threading.Lock()

    def __call__(self, env: gym.Env, rng: np.random.Generator) -> None:
        pass


def test_an_unpicklable_sampler_is_refused_by_name() -> None:
    before = children()
    with pytest.raises(TypeError, match=r"so task_sampler must be picklable.*Fix: define it at module level"):
        flicker_env("async", sampler=Locked(), num_workers=2)
    assert children() == before  # refused before any worker started
    flicker_env("sync", sampler=Locked()).close()  # sync needs no pickle


def _interrupt_after(seconds: float) -> Any:
    def alarm(signum: int, frame: Any) -> None:
        raise TimeoutError("the step watchdog's stand-in")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    return previous


@pytest.mark.parametrize("terminate", [True, False])
def test_close_after_a_step_stuck_in_a_worker_is_prompt_and_leaves_no_process(terminate: bool) -> None:
    """As the trainer's step watchdog does: SIGALRM interrupts the wait for the workers, then close(). A later
    call is refused (the workers' replies are unread); a plain close() terminates too instead of waiting a minute."""
    before = children()
    env = GymTaskVectorEnv(Sleepy, same_task, 3, episodes_per_trial=1, max_episode_steps=5, vectorization="async",
                           num_workers=2)
    pids = {p.pid for p in env._vec._processes}
    assert pids <= children() - before and len(pids) == 2
    env.reset(seed=0)
    previous = _interrupt_after(0.5)
    try:
        with pytest.raises(TimeoutError):
            env.step(torch.zeros(3, dtype=torch.int64))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    with pytest.raises(RuntimeError, match=r"a step\(\) of the env workers was left before they all replied"):
        env.reset(seed=0)
    t0 = time.monotonic()
    env.close(terminate=True) if terminate else env.close()
    assert time.monotonic() - t0 < 5.0
    assert children() == before
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def boom() -> gym.Env:
    raise OSError("no such simulator on this machine")


def test_an_env_that_fails_to_build_leaves_no_process() -> None:
    before = children()
    fns = [make_flicker, make_flicker, boom, make_flicker]
    with pytest.raises(OSError, match="no such simulator on this machine") as info:
        WorkerPoolVectorEnv(fns, 2)
    assert any("Raised by env 2 in env worker 1" in n for n in info.value.__notes__)
    assert children() == before


def test_a_worker_that_dies_is_named_and_closing_reaps_it() -> None:
    before = children()
    pool = WorkerPoolVectorEnv([make_flicker] * 3, 2)
    pool.reset(seed=0)
    os.kill(pool._processes[1].pid, signal.SIGKILL)
    with pytest.raises(RuntimeError, match=r"env worker 1 \(envs 2\.\.2, pid \d+\) ended during step\(\) with exit "
                                           r"code -9"):
        pool.step(np.zeros(3, dtype=np.int64))
    pool.close()
    assert children() == before


# --- the config and the command line --------------------------------------------------------------------------------
PLUGIN = '''
import gymnasium as gym
import numpy as np

from meta_rl.envs.gym_tasks import register_gym_task


class Coin(gym.Env):
    observation_space = gym.spaces.Box(0.0, 1.0, (1,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(1, np.float32), {}

    def step(self, action):
        return np.zeros(1, np.float32), float(action == 1), False, False, {}


def make_coin():
    return Coin()


def same_task(env, rng):
    pass


register_gym_task("workers/Coin-v0", make_coin, same_task, episodes_per_trial=1, max_episode_steps=5)
'''
ARGS = ["env_module=coin_plugin", "env_id=workers/Coin-v0", "num_envs=3", "hidden=8", "eval_every=0",
        "total_env_steps=30", "torch_threads=1", "device=cpu"]


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "coin_plugin.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("coin_plugin", None)
    return tmp_path


@pytest.mark.usefixtures("plugin", "no_children_left")
def test_env_kwargs_set_async_and_the_worker_count() -> None:
    cfg = load_config(None, [*ARGS, "env_kwargs.vectorization=async", "env_kwargs.num_workers=2"])
    env = make_vec_env(cfg, "train", 3, torch.device("cpu"))
    assert isinstance(env, GymTaskVectorEnv) and env.num_workers == 2 and env.vectorization == "async"
    env.close()
    probe = make_vec_env(cfg, "train", 1, torch.device("cpu"))  # the trainer's one-env probe: one worker
    assert probe.num_workers == 1  # type: ignore[attr-defined]
    probe.close()
    for extra, match in [(["env_kwargs.num_workers=2"], r"num_workers=2 does nothing with vectorization='sync'"),
                         (["env_kwargs.vectorization=async", "env_kwargs.num_workers=0"], r"num_workers must be >= 1"),
                         (["env_kwargs.vectorization=async", "env_kwargs.num_workers=1.5"], r"whole number")]:
        with pytest.raises(ConfigError, match=match):
            make_vec_env(load_config(None, [*ARGS, *extra]), "train", 3, torch.device("cpu"))


@pytest.fixture
def built(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """(num_envs, num_workers) of every env the trainer builds, in order."""
    envs: list[tuple[int, int]] = []

    def spy(cfg: Any, split: str, num_envs: int, device: torch.device) -> Any:
        env = make_vec_env(cfg, split, num_envs, device)
        envs.append((num_envs, env.num_workers))
        return env

    monkeypatch.setattr(train_module, "make_vec_env", spy)
    return envs


@pytest.mark.usefixtures("no_children_left")
def test_meta_rl_train_runs_a_plugin_in_workers_and_refuses_workers_for_sync(
        plugin: Path, built: list[tuple[int, int]], capsys: pytest.CaptureFixture[str]) -> None:
    run = ["train", "--run-dir", str(plugin / "run"), "--no-progress", *ARGS]
    assert main([*run, "env_kwargs.vectorization=async", "env_kwargs.num_workers=2"]) == 0
    assert built == [(1, 1), (3, 2)]  # the one-env probe, then the training env: 3 envs in 2 workers
    saved = json.loads((plugin / "run" / "config.json").read_text())
    assert saved["env_kwargs"] == {"vectorization": "async", "num_workers": 2}
    capsys.readouterr()
    run[2] = str(plugin / "refused")
    assert main([*run, "env_kwargs.num_workers=2"]) == 2
    assert "num_workers=2 does nothing with vectorization='sync'" in capsys.readouterr().err


def test_register_gym_task_takes_num_workers() -> None:
    register_gym_task("workers/Flicker-v0", make_flicker, random_level, episodes_per_trial=2, max_episode_steps=6,
                      vectorization="async", num_workers=2)
    env = gym.make_vec("workers/Flicker-v0", num_envs=3, vectorization_mode="vector_entry_point")
    assert env.num_workers == 2  # type: ignore[attr-defined]
    env.close()


README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


@pytest.mark.usefixtures("no_children_left")
def test_the_readme_command_trains_the_bandit_plugin_in_two_workers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, built: list[tuple[int, int]]) -> None:
    """The README's command, as written, at a tiny size (appended overrides): its envs run in 2 workers."""
    after = README[README.index("**Worker processes.**"):]
    line = after[after.index("```bash\n") + 8:after.index("```", after.index("```bash\n") + 8)].strip()
    env_var, exe, *args = shlex.split(line)
    assert env_var == "PYTHONPATH=experiments" and exe == "meta-rl" and args[:3] == ["train", "--run-dir",
                                                                                       "runs/bandit-async"]
    monkeypatch.syspath_prepend(str(EXPERIMENTS))
    monkeypatch.chdir(tmp_path)
    assert main([*args, "num_envs=3", "hidden=8", "total_env_steps=300", "eval_every=0", "torch_threads=1",
                 "--no-progress"]) == 0
    assert built[:2] == [(1, 1), (3, 2)] and (tmp_path / "runs" / "bandit-async" / "checkpoint.pt").is_file()


def make_pendulum() -> gym.Env:
    return gym.make("Pendulum-v1")


def sample_pendulum(env: gym.Env, rng: np.random.Generator) -> None:
    env.unwrapped.m = rng.uniform(0.5, 2.0)  # type: ignore[attr-defined]


@pytest.mark.usefixtures("no_children_left")
def test_box_actions_step_alike_in_workers() -> None:
    """Box actions go to the workers as row slices: the same trajectories as sync, clipping included."""
    actions = torch.as_tensor(np.random.default_rng(2).uniform(-3, 3, (12, 3, 1)), dtype=torch.float32)

    def run(vectorization: str, **kw: Any) -> list[torch.Tensor]:
        env = GymTaskVectorEnv(make_pendulum, sample_pendulum, 3, 2, 4, vectorization, **kw)
        out = [env.reset(seed=5)[0]]
        for a in actions:
            obs, reward, *_ = env.step(a)
            out += [obs, reward]
        env.close()
        return out

    assert all(torch.equal(a, b) for a, b in zip(run("sync"), run("async", num_workers=2)))


# --- experiments/bench.py plugin --------------------------------------------------------------------------------------
def test_bench_plugin_times_sync_and_each_worker_count(capsys: pytest.CaptureFixture[str]) -> None:
    """Tiny sizes: every mode is timed raw and in the collect loop, with the spread over the rounds; a worker count
    above B is timed as B; the table has a row per mode. No speed is asserted."""
    bench = import_script("bench")
    bench.main(["plugin", "--json", "--num-envs", "3", "--workers", "5", "--seconds", "0.01", "--warmup", "0",
                "--repeats", "2", "--hidden", "8", "--threads", "1"])
    out = json.loads(capsys.readouterr().out)
    assert [(r["vectorization"], r["workers"]) for r in out["rows"]] == [("sync", 0), ("async", 3)]
    for row in out["rows"]:
        for key in ("env_steps_per_s", "collect_steps_per_s"):
            assert row[key]["n"] == 2 and 0 < row[key]["min"] <= row[key]["median"] <= row[key]["max"]
    table = bench.format_plugin_table(out).splitlines()
    assert table[1].startswith("sync ") and "x1.00" in table[1] and table[2].startswith("async, 3 workers")
    assert table[-1].startswith("B = 3, 2 rounds")
    assert bench.plugin_modes(64, [1, 2, 0]) == [("sync", 0), ("async", 1), ("async", 2)] + (
        [("async", min(os.cpu_count() or 1, 64))] if (os.cpu_count() or 1) > 2 else [])
