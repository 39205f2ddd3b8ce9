"""``meta-rl train`` in a child process, for the fault drills (``faults.py``) and the tests: start it,
wait for its progress, and pick a moment to kill it."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from meta_rl.checkpoint import load_checkpoint
from meta_rl.config import TrainConfig
from meta_rl.lifecycle import CHECKPOINT_NAME
from meta_rl.runlock import LOCK_NAME

__all__ = ["saved_update", "spawn_train", "wait_for", "wait_to_kill"]


def spawn_train(
    run_dir: Path,
    cfg: TrainConfig | None,
    *extra: str,
    resume: bool,
    plugin_dir: Path,
    plugin: str,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[str]:
    """Start ``python -m meta_rl.cli train`` on ``cfg`` (written beside ``run_dir`` as TOML) or ``--resume run_dir``.

    Args:
        run_dir: The run directory.
        cfg: The config of a new run; None with ``resume``.
        *extra: More command-line arguments.
        resume: Continue the run in ``run_dir`` instead of starting one.
        plugin_dir: The folder holding the plug-in env module, put on the child's ``PYTHONPATH``.
        plugin: The plug-in module's name (``--env-module`` on resume).
        env: More environment variables for the child.

    Returns:
        The child, with text pipes for stdout and stderr.
    """
    environ = {**os.environ, "OMP_NUM_THREADS": "1", "META_RL_PROGRESS": "0", **(env or {}),
               "PYTHONPATH": os.pathsep.join([str(plugin_dir), os.environ.get("PYTHONPATH", "")])}
    if resume:
        args = ["--resume", str(run_dir), "--env-module", plugin]
    else:
        if cfg is None:
            raise ValueError("cfg is None for a new run; pass a TrainConfig, or resume=True to continue one.")
        toml = run_dir.parent / f"{run_dir.name}.toml"
        toml.write_text(cfg.to_toml())
        args = [str(toml), "--run-dir", str(run_dir)]
    return subprocess.Popen([sys.executable, "-m", "meta_rl.cli", "train", *args, *extra, "--no-progress"],
                            env=environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(condition: Callable[[], bool], proc: subprocess.Popen[str], timeout: float = 90.0,
             poll: float = 0.02) -> None:
    """Poll ``condition`` until it holds; fail (killing ``proc``) if the child exits first or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            _, err = proc.communicate()
            raise AssertionError(f"training exited early ({proc.returncode}): {err.strip()[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            proc.communicate()
            raise AssertionError("timed out waiting for training to make progress")
        time.sleep(poll)


def saved_update(run_dir: Path) -> int:
    """The update of the checkpoint in ``run_dir`` (-1: none yet).

    Raises:
        CheckpointError: The checkpoint is damaged (never so, if writes are atomic).
    """
    path = run_dir / CHECKPOINT_NAME
    return int(load_checkpoint(path)["counters"]["update"]) if path.is_file() else -1


def wait_to_kill(proc: subprocess.Popen[str], run_dir: Path, target: int | None, rng: random.Random) -> None:
    """Wait until a random moment to kill ``proc``, training in ``run_dir``.

    Args:
        proc: The training child.
        run_dir: Its run directory.
        target: None: during start-up or the first updates (up to 0.3 s after the lock appears, before
            or after the first checkpoint). An update: up to 0.03 s after its checkpoint is on disk
            (mid-update, mid-checkpoint-write or mid-evaluation).
        rng: Draws the delay.
    """
    if target is None:
        wait_for(lambda: (run_dir / LOCK_NAME).is_file(), proc)
        time.sleep(rng.uniform(0.0, 0.3))
    else:
        wait_for(lambda: saved_update(run_dir) >= target, proc)
        time.sleep(rng.uniform(0.0, 0.03))
