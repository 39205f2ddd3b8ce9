"""Issue 33's run-level defects, each built in its real form: a real CLI run under a memory cap, a real run
directory holding a user's files, a hung plug-in env, a tampered checkpoint with its checksum recomputed."""

from __future__ import annotations

import json
import os
import re
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from meta_rl.config import TrainConfig
from meta_rl.train import build_policy, make_vec_env

CPU = torch.device("cpu")
ROOT = Path(__file__).resolve().parents[1]


def _cli(*args: str, cwd: Path, limit_bytes: int | None = None, timeout: float = 240,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m meta_rl ARGS`` in ``cwd`` (address space capped at ``limit_bytes``)."""

    def cap() -> None:
        if limit_bytes is not None:
            resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))

    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "meta_rl", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, preexec_fn=cap, env=full_env, check=False)


# --- 1. the memory pre-check is arithmetic on shapes -------------------------------------------------------------
def test_a_task_of_twenty_million_steps_is_refused_without_allocating_it(tmp_path: Path) -> None:
    """The pre-check of a 2e7-step task must not itself allocate the task: under a 6 GiB address-space cap the
    run is refused with the estimate (rc 2), where measuring at the full length ran out of memory."""
    proc = _cli("train", "env_id=meta_rl/Bandit-k5-n100-v0", "rollout_steps=20000000", "--run-dir",
                str(tmp_path / "run"), "--no-progress", cwd=tmp_path, limit_bytes=6 * 2**30)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "needs about" in proc.stderr and "rollout_steps" in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "run").exists()


def test_the_estimate_measures_a_few_short_passes_whatever_the_task_length(monkeypatch: pytest.MonkeyPatch) -> None:
    """The forward passes on the meta device run at most 48 steps for a task of 10**9 steps, and the extrapolated
    bytes match (and never undercut) a direct measurement at a length beyond the probes."""
    import meta_rl.envs  # noqa: F401 - registers the bandit
    from meta_rl import memory_estimate

    cfg = TrainConfig(env_id="meta_rl/Bandit-k5-n100-v0", device="cpu")
    probe = make_vec_env(cfg, cfg.train_split, 1, CPU)
    space = probe.single_observation_space
    with torch.device("meta"):
        policy = build_policy(cfg, probe, 200)
    probe.close()
    direct = memory_estimate._saved_bytes(policy, space, 200, 8)
    extrapolated = memory_estimate._activation_bytes(policy, space, 200, 8)
    assert direct <= extrapolated <= 1.1 * direct

    lengths: list[int] = []
    real = memory_estimate._saved_bytes

    def spy(policy: object, space: object, steps: int, batch: int) -> int:
        lengths.append(steps)
        return real(policy, space, steps, batch)

    monkeypatch.setattr(memory_estimate, "_saved_bytes", spy)
    huge = memory_estimate._activation_bytes(policy, space, 10**9, 8)
    assert max(lengths) <= 48 and len(lengths) == 3
    assert huge >= direct / 200 * 10**9


# --- 3. a fresh run never overwrites the user's files; a hand-edited config.json is refused on resume ----------
def _tiny(proto_dataset: str, updates: int, **changes: object) -> TrainConfig:
    from tiny_runs import tiny_config  # beside this file

    return tiny_config(proto_dataset, updates, eval_every=0, **changes)


def test_a_fresh_run_refuses_a_folder_of_the_users_own_files(proto_dataset: str, tmp_path: Path) -> None:
    """``--run-dir .`` in a project: the user's config.json and notes stay byte for byte, and the error names them."""
    from meta_rl.config import ConfigError
    from meta_rl.train import train

    project = tmp_path / "project"
    project.mkdir()
    mine = {"config.json": b'{"lr": 0.1, "model": "mine"}\n', "notes.md": b"my notes\n"}
    for name, data in mine.items():
        (project / name).write_bytes(data)
    with pytest.raises(ConfigError, match=r"holds files a meta-rl run did not write \(config\.json, notes\.md\)"
                                          r".*empty or new --run-dir"):
        train(_tiny(proto_dataset, 2), project, progress=False)
    assert {p.name: p.read_bytes() for p in project.iterdir()} == mine


def test_a_fresh_run_replaces_what_an_attempt_without_a_checkpoint_left(proto_dataset: str, tmp_path: Path) -> None:
    """A run's own leftovers (its config.json and events, no checkpoint) are not the user's: a new run proceeds."""
    from meta_rl.train import train

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps(_tiny(proto_dataset, 5).to_dict()))
    (run_dir / "events.out.tfevents.1.host.1.0").write_bytes(b"")
    assert train(_tiny(proto_dataset, 2), run_dir, progress=False)["updates"] == 2


def test_resume_refuses_a_hand_edited_config_and_keeps_the_edit(proto_dataset: str, tmp_path: Path) -> None:
    """An edit of config.json before --resume is named (key, both values), not ignored then overwritten."""
    from meta_rl.config import ConfigError
    from meta_rl.train import train

    run_dir = tmp_path / "run"
    train(_tiny(proto_dataset, 2), run_dir, progress=False)
    path = run_dir / "config.json"
    edited = json.loads(path.read_text())
    edited["learning_rate"] = 0.5
    path.write_text(json.dumps(edited, indent=2))
    before = path.read_bytes()
    with pytest.raises(ConfigError, match=r"config\.json was edited since the checkpoint \(learning_rate: 0\.002 in "
                                          r"the checkpoint, 0\.5 in config\.json\).*key=value"):
        train(_tiny(proto_dataset, 4), run_dir, resume=True, progress=False)
    assert path.read_bytes() == before


def test_resume_with_the_same_command_line_change_twice_is_not_an_edit(proto_dataset: str, tmp_path: Path) -> None:
    """config.json written by a resume that changed total_env_steps, killed before its next checkpoint, is the
    run's own: resuming again with the same change goes on."""
    from meta_rl.train import train

    run_dir = tmp_path / "run"
    train(_tiny(proto_dataset, 2), run_dir, progress=False)
    longer = _tiny(proto_dataset, 4)
    written = {**json.loads((run_dir / "config.json").read_text()), "total_env_steps": longer.total_env_steps}
    (run_dir / "config.json").write_text(json.dumps(written, indent=2))  # as that resume wrote it
    assert train(longer, run_dir, resume=True, progress=False)["updates"] == 4


# --- 8 and 11. eval and resume validate a tampered checkpoint (checksum recomputed) before allocating ------------
@pytest.fixture(scope="module")
def bandit_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real 3-update run on a 10-pull bandit (the checkpoint every tampering starts from)."""
    import meta_rl.envs  # noqa: F401 - registers the bandit
    from meta_rl.train import train

    run_dir = tmp_path_factory.mktemp("bandit") / "run"
    cfg = TrainConfig(env_id="meta_rl/Bandit-k5-n10-v0", num_envs=8, hidden=16, total_env_steps=3 * 80, eval_every=0,
                      device="cpu", torch_threads=1)
    train(cfg.validate(), run_dir, progress=False)
    return run_dir


def _tampered(run_dir: Path, into: Path, **entries: object) -> Path:
    """A copy of ``run_dir`` whose checkpoint has ``entries`` (``"spaces.steps": 1``) replaced and its checksum
    recomputed, as anyone can."""
    import shutil

    from meta_rl.checkpoint import checksum

    shutil.copytree(run_dir, into)
    data = torch.load(into / "checkpoint.pt", weights_only=True)
    for dotted, value in entries.items():
        *parents, last = dotted.split(".")
        node = data
        for key in parents:
            node = node[key]
        node[last] = value
    data["checksum"] = checksum(data)
    torch.save(data, into / "checkpoint.pt")
    return into


@pytest.mark.parametrize(("entries", "message"), [
    ({"spaces.steps": 1}, r"records tasks of 1 steps, but 'meta_rl/Bandit-k5-n10-v0' runs tasks of 10 steps"),
    ({"spaces.steps": 10**9}, r"records tasks of 1000000000 steps"),
    ({"spaces.steps": "10"}, r"records a task length of '10' steps, expected a whole number >= 1"),
    ({"spaces.observation.shape": [100_000, 100_000]}, r"Box shape \[100000, 100000\] is not a list"),
    ({"spaces.action.n": 10**7}, r"policy entry .* has shape .* but the model expects"),
    ({"counters.env_steps": -7}, r"counters update = 3, env_steps = -7; expected whole numbers"),
])
def test_eval_refuses_a_tampered_checkpoint_before_allocating(bandit_run: Path, tmp_path: Path,
                                                              entries: dict[str, object], message: str) -> None:
    """A recorded task length, space or counter that disagrees with the run is refused (rc 2, naming it) under a
    6 GiB cap, instead of allocating for it, failing raw, or printing wrong numbers with rc 0."""
    import re

    run = _tampered(bandit_run, tmp_path / "run", **entries)
    proc = _cli("eval", str(run), "--episodes", "8", "--batch", "8", cwd=tmp_path, limit_bytes=6 * 2**30)
    assert proc.returncode == 2 and re.search(message, proc.stderr), (proc.returncode, proc.stderr[-1500:])


@pytest.mark.parametrize(("entries", "message"), [
    ({"counters.update": -5}, r"counters update = -5, env_steps = 240; expected whole numbers with 0 <= update"),
    ({"counters.env_steps": 2}, r"counters update = 3, env_steps = 2"),
    ({"config.gamma": -3.0}, r"gamma must lie in \[0, 1\], got -3\.0"),
    ({"config.gamma": float("nan")}, r"gamma must be a finite number, got nan"),
    ({"config.gamma": "abc"}, r"gamma must be of type float, got str 'abc'"),
])
def test_resume_refuses_tampered_counters_and_discount(bandit_run: Path, tmp_path: Path,
                                                       entries: dict[str, object], message: str) -> None:
    """Negative or inconsistent counters and an impossible discount end in a clear error, not a silent resume or a
    raw ValueError."""
    import re

    run = _tampered(bandit_run, tmp_path / "run", **entries)
    before = (run / "checkpoint.pt").read_bytes()
    proc = _cli("train", "--resume", str(run), "total_env_steps=400", "--no-progress", cwd=tmp_path)
    assert proc.returncode == 2 and re.search(message, proc.stderr), (proc.returncode, proc.stderr[-1500:])
    assert (run / "checkpoint.pt").read_bytes() == before


# --- 14. command-line inputs that ended in raw tracebacks --------------------------------------------------------
@pytest.mark.parametrize(("args", "message"), [
    (["train", "--run-dir", "R", "env_kwargs.x=" + "[" * 3000 + "]" * 3000],
     r"override 'env_kwargs\.x' cannot be read: its arrays or tables nest too deeply"),
    (["train", "--run-dir", "R", "num_envs=" + "9" * 5000], r"override 'num_envs' cannot be read: .*5000 digits"),
    (["eval", "R", "--seed", "-1"], r"argument --seed: '-1' is not a seed: use a whole number from 0 to 2\*\*64 - 1"),
    (["eval", "R", "--seed", "18446744073709551616"], r"'18446744073709551616' is not a seed"),
    (["eval", "R", "--episodes", "-4"], r"argument --episodes: '-4' is not a count"),
])
def test_hostile_command_lines_get_a_clear_error(bandit_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                 args: list[str], message: str) -> None:
    """Each ends with rc 2 and a message naming the input and the fix, before any run directory is made."""
    import re

    from meta_rl.cli import main

    args = [str(bandit_run) if a == "R" and args[0] == "eval" else str(tmp_path / "run") if a == "R" else a
            for a in args]
    try:
        rc = main(args)
    except SystemExit as exc:  # argparse's own errors
        rc = int(exc.code or 0)
    err = capsys.readouterr().err
    assert rc == 2 and re.search(message, err), (rc, err[-1500:])
    assert "Traceback" not in err and not (tmp_path / "run").exists()


# --- 7. an env step that never returns: step_timeout, the time limit, and the two-signal policy -------------------
HANGING_PLUGIN = '''
import os
import re
import time

import gymnasium as gym
import numpy as np

from meta_rl.envs.gym_tasks import register_gym_task

STEPS = [0]


class HangingBandit(gym.Env):
    """Two arms; from the HANG_AFTER-th step of this process on, step() sleeps for an hour."""

    observation_space = gym.spaces.Box(0.0, 1.0, (1,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(1, np.float32), {}

    def step(self, action):
        STEPS[0] += 1
        if STEPS[0] > int(os.environ.get("HANG_AFTER", "1000000000")):
            time.sleep(3600)
        return np.zeros(1, np.float32), float(action == 1), False, False, {}


def same_task(env, rng):
    pass


ASYNC = os.environ.get("HANG_VECTORIZATION", "sync") == "async"
register_gym_task("hang/Bandit-v0", HangingBandit, same_task, episodes_per_trial=1, max_episode_steps=5,
                  vectorization="async" if ASYNC else "sync", **({"num_workers": 2} if ASYNC else {}))
'''
# 2 tasks of 5 steps: 10 env steps an update, so HANG_AFTER=25 hangs in the 3rd update, after 2 whole ones.
HANG_ARGS = ["env_module=hanging_plugin", "env_id=hang/Bandit-v0", "num_envs=2", "hidden=8", "eval_every=0",
             "checkpoint_every=1000", "total_env_steps=1000", "torch_threads=1", "device=cpu"]


def _plugin_env(tmp_path: Path, hang_after: int) -> dict[str, str]:
    (tmp_path / "hanging_plugin.py").write_text(HANGING_PLUGIN)
    return {"PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
            "HANG_AFTER": str(hang_after)}


def _saved_update(run_dir: Path) -> int:
    from meta_rl.checkpoint import load_checkpoint

    return int(load_checkpoint(run_dir / "checkpoint.pt")["counters"]["update"])


@pytest.mark.parametrize("vectorization", ["sync", "async"])
def test_a_hung_step_stops_at_step_timeout_and_keeps_the_last_whole_update(tmp_path: Path, vectorization: str) -> None:
    """Sync: the main thread's step is interrupted. Async: the wait on the workers is, and they are abandoned
    (terminated) without a traceback at exit."""
    hang_after = 25 if vectorization == "sync" else 12  # 2 async workers count their own steps: 5 an update each
    proc = _cli("train", *HANG_ARGS, "step_timeout=2", "--run-dir", str(tmp_path / "run"), "--no-progress",
                cwd=tmp_path, env={**_plugin_env(tmp_path, hang_after), "HANG_VECTORIZATION": vectorization},
                timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert re.search(r"'hang/Bandit-v0'\.step\(\) has not returned after \d+ s \(step_timeout = 2 s\); the run's "
                     r"last whole update 2 is saved in .*checkpoint\.pt\. Fix or speed up the env", proc.stderr), \
        proc.stderr[-2000:]
    assert _saved_update(tmp_path / "run") == 2


def test_a_hung_step_does_not_outlive_the_time_limit(tmp_path: Path, proto_dataset: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """With no step_timeout, a step still running past max_minutes (plus the grace) stops the run all the same."""
    import meta_rl.lifecycle as lifecycle
    from meta_rl.config import parse_overrides
    from meta_rl.lifecycle import EnvStepTimeout
    from meta_rl.train import train

    for key, value in _plugin_env(tmp_path, 25).items():
        monkeypatch.setenv(key, value)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(lifecycle, "TIME_LIMIT_GRACE", 1.0)
    cfg = TrainConfig.from_dict({**TrainConfig().to_dict(), **parse_overrides(HANG_ARGS), "step_timeout": 0.0,
                                 "max_minutes": 0.02})
    with pytest.raises(EnvStepTimeout, match=r"has not returned \d+ s after the time limit \(max_minutes = 0\.02\)"):
        train(cfg, tmp_path / "run", progress=False)
    assert _saved_update(tmp_path / "run") == 2


def test_first_signal_says_what_it_waits_for_and_the_second_stops_at_once(tmp_path: Path) -> None:
    import signal
    import time

    env = {**os.environ, "OMP_NUM_THREADS": "1", **_plugin_env(tmp_path, 25)}
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "meta_rl", "train", *HANG_ARGS, "--run-dir", str(run_dir),
                             "--no-progress"], cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (run_dir / "config.json").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(3)  # well into the hung step of the 3rd update
        proc.send_signal(signal.SIGINT)
        time.sleep(1.5)
        assert proc.poll() is None  # the first signal asks; it does not stop a step in progress
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert re.search(r"SIGINT received: stopping after the current update, then saving a checkpoint \(now "
                     r"collecting a rollout, waiting for 'hang/Bandit-v0'\.step\(\) \(\d+ s so far\)\)\. Send SIGINT "
                     r"again", err), err[-2000:]
    assert proc.returncode == 130 and re.search(r"stopped at once by a second SIGINT while collecting a rollout.*; "
                                                r"the run's last whole update 2 is saved", err), err[-2000:]
    assert _saved_update(run_dir) == 2


# --- issue 34 (item 6): an evaluation override that changes a space is named as such ------------------------------
def test_an_override_that_changes_the_action_space_is_named(bandit_run: Path) -> None:
    import meta_rl
    from meta_rl.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match=r"changes the task's action space from Discrete\(5\) to Discrete\(10\)"
                                              r".*trained for Discrete\(5\)"):
        meta_rl.load(bandit_run, device="cpu", overrides=["env_id=meta_rl/Bandit-k10-n10-v0"])


def test_register_gym_task_is_exported_by_meta_rl_envs() -> None:
    from meta_rl.envs import register_gym_task
    from meta_rl.envs.gym_tasks import register_gym_task as defined

    assert register_gym_task is defined


def test_the_train_command_prints_rounded_figures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The summary line carries no float noise (``0.5624000000000001``): every figure has at most 6 decimals."""
    from meta_rl.cli import main

    rc = main(["train", "env_id=meta_rl/Bandit-k5-n10-v0", "num_envs=8", "hidden=8", "total_env_steps=160",
               "eval_every=1", "eval_episodes=8", "device=cpu", "torch_threads=1", "--run-dir", str(tmp_path / "r"),
               "--no-progress"])
    out = capsys.readouterr().out.strip().splitlines()[-1]
    floats = [v for v in json.loads(out).values() if isinstance(v, float)]
    assert rc == 0 and floats and all(len(repr(v).split(".")[-1]) <= 6 for v in floats), out


def test_the_eval_header_names_the_encoder_built(bandit_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``encoder = "auto"`` is reported as what it built (an MLP for the bandit's Box(1) observation)."""
    from meta_rl.cli import main

    assert main(["eval", str(bandit_run), "--episodes", "8", "--batch", "8"]) == 0
    header = capsys.readouterr().out.splitlines()[0]
    assert "memory core, mlp encoder" in header and "auto" not in header, header


def test_version_answers_without_importing_torch() -> None:
    """``meta-rl --version`` (issue 34): the same answer as the parser's, with torch never imported."""
    code = ("import sys; from meta_rl.__main__ import main; rc = main(['--version']); "
            "print('torch' in sys.modules, rc)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    from meta_rl import __version__

    assert proc.stdout.split("\n")[:2] == [f"meta-rl {__version__}", "False 0"], proc.stdout + proc.stderr


def test_baseline_help_lists_its_named_configs_and_keys(capsys: pytest.CaptureFixture[str]) -> None:
    """``meta-rl baseline --help`` (issue 34): the shipped names and every key, and no path that does not exist."""
    from meta_rl.cli import main
    from meta_rl.config import named_configs

    with pytest.raises(SystemExit) as done:
        main(["baseline", "--help"])
    out = capsys.readouterr().out
    assert done.value.code == 0
    assert all(name in out for name in named_configs("baselines")) and "protonet-5way1shot" in out
    assert "maml (MAMLConfig):" in out and "protonet (ProtoNetConfig):" in out
    assert "meta_batch (int" in out and "inner_steps" in out
    assert "experiments/baselines" not in out
