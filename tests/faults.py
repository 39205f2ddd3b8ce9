"""Fault drills: interrupt, kill, poison, corrupt, crowd and starve tiny training runs; feed hostile files and inputs.

    python tests/faults.py                 # a table
    python tests/faults.py --json          # one JSON line
    python tests/faults.py --only SIGKILL  # scenarios whose name contains SIGKILL

Every scenario runs in its own temporary directory on a tiny synthetic task (registered by a
plug-in module that subprocesses import through ``env_module``), with real ``meta-rl train``
subprocesses where signals, kills or a second run are involved.

``lost_runs`` is counted from outcomes: each run a scenario trains is compared, once the
scenario is over (passed or not), with an uninterrupted reference run of the same length. A run
whose final checkpoint is missing, unreadable or not exactly (``torch.equal``) the reference's
is lost. ``bad_inputs`` counts distinct hostile inputs (the same call twice counts once).
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import functools
import io
import json
import logging
import math
import os
import pickle
import random
import re
import resource
import signal
import struct
import subprocess
import sys
import tempfile
import time
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

# The drills' helpers lie beside this file: on sys.path when it runs as a script (python tests/faults.py)
# and when pytest imports it from tests/.
from fault_injection import CAUSES, WRITE_SITES, Fault, inject
from hostile_files import BOMB_BYTES, BOMBS, PEAK_LIMIT, BombFolder, peak_of
from tiny_runs import STEPS_PER_UPDATE as S
from tiny_runs import K, tiny_config, with_terms
from train_process import saved_update, spawn_train, wait_for, wait_to_kill

from meta_rl.atomic import WriteError
from meta_rl.checkpoint import CheckpointError, checksum, load_checkpoint, state_leaves
from meta_rl.config import ConfigError, TrainConfig
from meta_rl.data import DatasetError, load_idx, load_image_folder, load_mini_imagenet
from meta_rl.returns import reinforce_losses
from meta_rl.rollout import collect
from meta_rl.runlock import LOCK_NAME
from meta_rl.train import CHECKPOINT_NAME, NonFiniteError, make_vec_env, train

PLUGIN = "meta_rl_fault_drills"
DATASET = "fault-drills"
# The plug-in registers the drills' dataset. With FAULT_DRILL_SLOW_CHECKPOINT=S set, it also makes
# each checkpoint write pause S seconds half-way (a slow disk), so that a kill can be aimed at it.
PLUGIN_SOURCE = '''
import os

import meta_rl.envs  # noqa: F401
from meta_rl.data import register_dataset
from meta_rl.data.synthetic import prototype_splits

register_dataset("DATASET", prototype_splits(36, 6, seed=0, class_name="c{}", group_name="g{}", name="drills"))

if os.environ.get("FAULT_DRILL_SLOW_CHECKPOINT"):
    import time

    import meta_rl.atomic as _atomic

    _pause = float(os.environ["FAULT_DRILL_SLOW_CHECKPOINT"])
    _real = _atomic._write_all

    def _slow(fd, data):
        if ".checkpoint.pt." in os.readlink(f"/proc/self/fd/{fd}"):
            _real(fd, data[: len(data) // 2])
            time.sleep(_pause)
            data = data[len(data) // 2 :]
        _real(fd, data)

    _atomic._write_all = _slow

# FAULT_DRILL_HANG_AFTER=N: the N+1-th env step of this process sleeps for an hour (a plug-in that hangs);
# FAULT_DRILL_GRACE=S: the watchdog gives a step S seconds past the time limit instead of 30.
if os.environ.get("FAULT_DRILL_HANG_AFTER"):
    import time

    from meta_rl.envs.classification import FewShotVectorEnv

    _hang_after, _steps, _step = int(os.environ["FAULT_DRILL_HANG_AFTER"]), [0], FewShotVectorEnv.step

    def _hanging_step(self, actions):
        _steps[0] += 1
        if _steps[0] > _hang_after:
            time.sleep(3600)
        return _step(self, actions)

    FewShotVectorEnv.step = _hanging_step

if os.environ.get("FAULT_DRILL_GRACE"):
    import meta_rl.lifecycle as _lifecycle

    _lifecycle.TIME_LIMIT_GRACE = float(os.environ["FAULT_DRILL_GRACE"])
'''.replace("DATASET", DATASET)
EVAL_BATCH = 256  # held-out tasks run in parallel by the trainer


@dataclasses.dataclass
class Outcome:
    """What one scenario found.

    Attributes:
        runs: training runs compared with their uninterrupted reference; lost_runs: those that differed.
        bad_inputs: distinct hostile inputs tried. faults: faults injected (signals, kills, errors, files).
    """

    name: str
    passed: bool = False
    detail: str = ""
    lost_runs: int = 0
    faults: int = 0
    seconds: float = 0.0
    expected: list[list[Any]] = dataclasses.field(default_factory=list)  # [run_dir, updates] to compare
    tried: set[str] = dataclasses.field(default_factory=set)  # descriptions of the hostile inputs

    @property
    def runs(self) -> int:
        """Training runs compared with their reference: every one registered with :meth:`expect`."""
        return len(self.expected)

    @property
    def bad_inputs(self) -> int:
        """Distinct hostile inputs tried (:meth:`hostile`)."""
        return len(self.tried)

    def expect(self, run_dir: Path, updates: int | None = None) -> list[Any]:
        """Register a run to compare with the reference of ``updates`` updates (settable later) at the end."""
        entry = [run_dir, updates]
        self.expected.append(entry)
        return entry

    def hostile(self, what: str) -> bool:
        """Count ``what`` once; False if it was tried before (the caller then skips it)."""
        if what in self.tried:
            return False
        self.tried.add(what)
        return True


class Lab:
    """Temporary folders, the plug-in dataset, tiny configs, subprocesses and cached reference runs."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.plugin_dir = root / "plugin"
        self.plugin_dir.mkdir()
        (self.plugin_dir / f"{PLUGIN}.py").write_text(PLUGIN_SOURCE)
        sys.path.insert(0, str(self.plugin_dir))
        self._refs: dict[int, dict[str, Any]] = {}
        self._count = 0

    def folder(self, name: str) -> Path:
        self._count += 1
        return self.root / f"{self._count:02d}-{name}"

    @staticmethod
    def config(updates: int, **changes: Any) -> TrainConfig:
        """A tiny run on the drills' dataset with an MLP encoder, checkpointed every update, evaluated every 8."""
        return tiny_config(DATASET, updates, **{"env_module": PLUGIN, "encoder": "mlp", "eval_every": 8,
                                                "eval_episodes": 4, "checkpoint_every": 1, **changes})

    def reference(self, updates: int) -> dict[str, Any]:
        """The final checkpoint of an uninterrupted in-process run of ``updates`` updates."""
        if updates not in self._refs:
            run_dir = self.folder(f"reference{updates}")
            train(self.config(updates), run_dir, progress=False)
            self._refs[updates] = load_checkpoint(run_dir / CHECKPOINT_NAME)
        return self._refs[updates]

    def matches_reference(self, run_dir: Path, updates: int | None) -> bool:
        """The run's final checkpoint exists, loads and equals the reference's (False otherwise)."""
        if updates is None:
            return False
        try:
            state = load_checkpoint(run_dir / CHECKPOINT_NAME)
        except CheckpointError:
            return False
        return same_state(state, self.reference(updates))

    def spawn(self, run_dir: Path, cfg: TrainConfig | None, resume: bool, *extra: str,
              env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        """``meta-rl train`` on ``cfg`` or ``--resume run_dir``, with the drill's plug-in on the path."""
        return spawn_train(run_dir, cfg, *extra, resume=resume, plugin_dir=self.plugin_dir, plugin=PLUGIN, env=env)


def check(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(message)


def same_state(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Counters, policy, optimizer and RNG state exactly equal (torch.equal on every tensor)."""
    if a["counters"] != b["counters"]:
        return False
    for part in ("policy", "optimizer", "rng"):
        left, right = dict(state_leaves(a[part])), dict(state_leaves(b[part]))
        if left.keys() != right.keys():
            return False
        for key, x in left.items():
            y = right[key]
            if isinstance(x, torch.Tensor):
                if not (isinstance(y, torch.Tensor) and x.dtype == y.dtype and torch.equal(x, y)):
                    return False
            elif x != y:
                return False
    return True


def scalar_steps(run_dir: Path, tag: str) -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return [e.step for e in acc.Scalars(tag)] if tag in acc.Tags()["scalars"] else []


def temp_files(run_dir: Path) -> list[Path]:
    return sorted(run_dir.glob(f".{CHECKPOINT_NAME}.*.tmp")) if run_dir.is_dir() else []


def clean(run_dir: Path) -> bool:
    names = [p.name for p in run_dir.iterdir()] if run_dir.is_dir() else []
    return LOCK_NAME not in names and not any(n.endswith(".tmp") for n in names)



# --------------------------------------------------------------------------------------------
# signals and kills (subprocesses)
# --------------------------------------------------------------------------------------------
def signal_scenario(lab: Lab, out: Outcome, signum: int) -> None:
    """SIGINT/SIGTERM mid-run: exit 128+signum with the resume command, a whole checkpoint, exact resume."""
    run_dir = lab.folder(signal.Signals(signum).name)
    run = out.expect(run_dir)
    proc = lab.spawn(run_dir, lab.config(100_000, checkpoint_every=3), resume=False)
    wait_for(lambda: (run_dir / CHECKPOINT_NAME).is_file(), proc)
    proc.send_signal(signum)
    out.faults += 1
    _, err = proc.communicate(timeout=60)
    check(proc.returncode == 128 + signum, f"exit code {proc.returncode}, expected {128 + signum}")
    check(f"meta-rl train --resume {run_dir}" in err, f"no resume hint on stderr: {err[-300:]}")
    done = saved_update(run_dir)
    check(scalar_steps(run_dir, "losses/policy")[-1] == done * S, "the checkpoint is not the last completed update")
    check(clean(run_dir), "lock or temporary file left behind")
    run[1] = done + 2
    train(lab.config(done + 2, checkpoint_every=3), run_dir, resume=True, progress=False)
    check(scalar_steps(run_dir, "losses/policy") == [S * (i + 1) for i in range(done + 2)], "TensorBoard history")
    out.detail = f"stopped after update {done}, exit {128 + signum}, resumed to update {done + 2}"


def evaluation_stop_scenario(lab: Lab, out: Outcome) -> None:
    """A held-out evaluation far longer than the run honours SIGTERM and max_minutes between its batches."""
    batches = 5000
    cfg = lab.config(3, eval_every=3, eval_episodes=batches * EVAL_BATCH)  # one evaluation, after update 3
    found = []
    for how in ("SIGTERM", "max_minutes"):
        run_dir = lab.folder(f"eval-{how}")
        out.expect(run_dir, 3)  # the evaluation comes before update 3's checkpoint: the run itself is whole
        started = time.monotonic()
        if how == "SIGTERM":
            proc = lab.spawn(run_dir, cfg, resume=False)
            wait_for(lambda: saved_update(run_dir) >= 2, proc)  # noqa: B023 - update 3 and its evaluation follow
            time.sleep(2.0)
            signalled = time.monotonic()
            proc.send_signal(signal.SIGTERM)
        else:
            proc = lab.spawn(run_dir, cfg, False, "--max-minutes", "0.1")
        out.faults += 1
        _, err = proc.communicate(timeout=240)
        elapsed = time.monotonic() - started
        expected_code = 128 + signal.SIGTERM if how == "SIGTERM" else 0
        check(proc.returncode == expected_code,
              f"{how}: exit {proc.returncode}, expected {expected_code}: {err[-300:]}")
        cause = "a signal" if how == "SIGTERM" else "the time limit"
        stopped = re.search(rf"stopped by {cause}.* after (\d+) of (\d+) batches", err)
        check(stopped is not None, f"{how}: no 'evaluation stopped' message: {err[-300:]}")
        assert stopped is not None
        done, total = int(stopped.group(1)), int(stopped.group(2))
        check(total == batches and 0 < done < total, f"{how}: stopped after {done} of {total} batches")
        check(not scalar_steps(run_dir, "eval/accuracy"), f"{how}: an interrupted evaluation was logged")
        check(clean(run_dir), "lock or temporary file left behind")
        if how == "SIGTERM":
            found.append(f"SIGTERM: exit 143 {time.monotonic() - signalled:.1f} s after the signal, "
                         f"evaluation at batch {done} of {total}")
        else:
            check(elapsed < 60, f"max_minutes 0.1: the run took {elapsed:.0f} s")
            found.append(f"max_minutes 0.1: run ended after {elapsed:.0f} s, evaluation at batch {done} of {total}")
    out.detail = "; ".join(found)


def sigkill_scenario(lab: Lab, out: Outcome, kills: int = 4, updates: int = 40) -> None:
    """SIGKILL at seeded random moments, resumed each time; the final state equals the reference."""
    cfg = lab.config(updates)
    run_dir = lab.folder("SIGKILL")
    out.expect(run_dir, updates)
    rng = random.Random(2024)
    targets = sorted(rng.sample(range(3, updates - 10), kills - 1))  # kill once these updates are checkpointed
    seen: list[int] = []
    for target in [None, *targets]:  # first during start-up or the first updates, then after each target
        proc = lab.spawn(run_dir, cfg, (run_dir / CHECKPOINT_NAME).is_file())
        wait_to_kill(proc, run_dir, target, rng)
        check(proc.poll() is None, "the run ended before it was killed")
        proc.kill()
        out.faults += 1
        proc.communicate()
        seen.append(saved_update(run_dir))
    proc = lab.spawn(run_dir, cfg, (run_dir / CHECKPOINT_NAME).is_file())
    _, err = proc.communicate(timeout=120)
    check(proc.returncode == 0, f"final resume failed: {err[-300:]}")
    check(seen == sorted(seen), f"checkpoints went backwards: {seen}")
    check(scalar_steps(run_dir, "losses/policy") == [S * (i + 1) for i in range(updates)],
          "TensorBoard gaps/duplicates")
    check(clean(run_dir), "lock or temporary file left behind")
    after = ", ".join("none" if u < 0 else str(u) for u in seen)
    out.detail = f"{out.faults} kills (checkpointed update after each: {after}); resumed to the end"


def sigkill_mid_checkpoint_scenario(lab: Lab, out: Outcome, updates: int = 12) -> None:
    """SIGKILL aimed at checkpoint writes (a slow disk): proven to land while the temporary file exists."""
    cfg = lab.config(updates)
    run_dir = lab.folder("SIGKILL-checkpoint")
    out.expect(run_dir, updates)
    slow = {"FAULT_DRILL_SLOW_CHECKPOINT": "0.5"}
    landed = []
    for target in (-1, 4, 8):  # the first checkpoint write, then one after update 4 and one after update 8
        proc = lab.spawn(run_dir, cfg, (run_dir / CHECKPOINT_NAME).is_file(), env=slow)
        wait_for(lambda: saved_update(run_dir) >= target and bool(temp_files(run_dir)), proc,  # noqa: B023
                 timeout=120, poll=0.005)
        proc.kill()
        proc.communicate()
        out.faults += 1
        # The process is dead: a temporary file still there was being written when the kill landed
        # (a finished write renames it, a failed one deletes it).
        check(bool(temp_files(run_dir)), "the kill did not land during a checkpoint write")
        on_disk = saved_update(run_dir)  # raises if the checkpoint were partial
        if on_disk >= 0:
            check(same_state(load_checkpoint(run_dir / CHECKPOINT_NAME), lab.reference(on_disk)),
                  f"the checkpoint of update {on_disk} left by the kill differs from the reference's")
        landed.append(f"{temp_files(run_dir)[0].stat().st_size:,} B written, checkpoint on disk: "
                      + ("none" if on_disk < 0 else f"update {on_disk} (exact)"))
    proc = lab.spawn(run_dir, cfg, (run_dir / CHECKPOINT_NAME).is_file())
    _, err = proc.communicate(timeout=120)
    check(proc.returncode == 0, f"final resume failed: {err[-300:]}")
    check(clean(run_dir), "the killed write's temporary file was not removed on restart")
    out.detail = f"{len(landed)} kills mid-write ({'; '.join(landed)}); resumed to the end"


def race_scenario(lab: Lab, out: Outcome, updates: int = 60) -> None:
    """Two real `meta-rl train` processes start on one new directory: one trains, the other is refused."""
    run_dir = lab.folder("race")
    out.expect(run_dir, updates)
    cfg = lab.config(updates)
    procs = [lab.spawn(run_dir, cfg, resume=False) for _ in range(2)]
    out.faults += 1
    results = []
    for proc in procs:
        _, err = proc.communicate(timeout=180)
        results.append((proc.pid, proc.returncode, err))
    codes = sorted(code for _, code, _ in results)
    check(codes == [0, 2], f"exit codes {codes}, expected one 0 and one 2: {[e[-200:] for *_, e in results]}")
    winner = next(pid for pid, code, _ in results if code == 0)
    loser_err = next(err for _, code, err in results if code == 2)
    check(f"in use by PID {winner}" in loser_err, f"the refusal does not name the running PID: {loser_err[-300:]}")
    writers = {int(f.name.split(".")[-2]) for f in run_dir.glob("events.out.tfevents.*")}  # ...<host>.<pid>.<n>
    check(writers == {winner}, f"event files written by PIDs {writers}, expected only {winner}")
    check(clean(run_dir), "lock or temporary file left behind")
    out.detail = f"PID {winner} trained; the other was refused naming it"


def stale_lock_scenario(lab: Lab, out: Outcome, updates: int = 8) -> None:
    """A run killed with SIGKILL leaves its lock; the next start takes it over with a warning and resumes."""
    run_dir = lab.folder("stale-lock")
    out.expect(run_dir, updates)
    proc = lab.spawn(run_dir, lab.config(updates), resume=False)
    wait_for(lambda: saved_update(run_dir) >= 2, proc)
    proc.kill()
    proc.communicate()
    out.faults += 1
    holder = json.loads((run_dir / LOCK_NAME).read_text())
    check(holder["pid"] == proc.pid, f"the lock names PID {holder['pid']}, not the killed {proc.pid}")
    again = lab.spawn(run_dir, None, resume=True)
    _, err = again.communicate(timeout=120)
    check(again.returncode == 0, f"resume failed: {err[-300:]}")
    check(f"taking over the stale lock {run_dir / LOCK_NAME} (PID {proc.pid}, no longer running)" in err,
          f"no stale-lock warning: {err[-300:]}")
    check(clean(run_dir), "lock left behind")
    out.detail = f"lock of killed PID {proc.pid} taken over with a warning; resumed to the end"


# --------------------------------------------------------------------------------------------
# in-process faults: non-finite values, damaged checkpoints, file-system errors
# --------------------------------------------------------------------------------------------
def nan_scenario(lab: Lab, out: Outcome) -> None:
    """NaN loss, NaN gradient, inf parameter: stop naming it; the last good checkpoint resumes exactly."""
    reference2 = lab.reference(2)
    real_losses, real_collect = reinforce_losses, collect
    messages = []
    calls = [0]  # loss computations so far in the current run
    for how in ("loss", "grad", "param"):
        calls[0] = 0

        def losses(log_probs: torch.Tensor, *args: Any, how: str = how) -> dict[str, torch.Tensor]:
            calls[0] += 1
            result = dict(real_losses(log_probs, *args))
            if calls[0] == 3 and how == "loss":
                result["policy"] = result["policy"] * float("nan")
            elif calls[0] == 3 and how == "grad":
                result["policy"] = result["policy"] + (log_probs.sum() * 0).sqrt()  # NaN gradients only
            return result

        def collector(env: Any, policy: Any, *args: Any, how: str = how, **kwargs: Any) -> Any:
            if calls[0] == 2 and how == "param":  # before update 3
                with torch.no_grad():
                    next(policy.parameters()).view(-1)[0] = float("inf")
            return real_collect(env, policy, *args, **kwargs)

        run_dir = lab.folder(f"nan-{how}")
        out.expect(run_dir, 6)
        try:
            train(lab.config(6), run_dir, progress=False, algorithm=with_terms(losses), collector=collector)
            raise AssertionError(f"no NonFiniteError for a non-finite {how}")
        except NonFiniteError as exc:
            messages.append(str(exc).split(";")[0])
            out.faults += 1
            check(exc.update == 3 and "(update 2) is intact" in str(exc), f"wrong report: {exc}")
        check(same_state(load_checkpoint(run_dir / CHECKPOINT_NAME), reference2), "the last good checkpoint changed")
        check(clean(run_dir), "lock or temporary file left behind")
        train(lab.config(6), run_dir, resume=True, progress=False)
    # skip_nonfinite_updates: the same poison twice, skipped and counted.
    poisoned = {2, 4}
    calls[0] = 0

    def skip_losses(log_probs: torch.Tensor, *args: Any) -> dict[str, torch.Tensor]:
        calls[0] += 1
        result = dict(real_losses(log_probs, *args))
        if calls[0] in poisoned:
            result["policy"] = result["policy"] + (log_probs.sum() * 0).sqrt()
        return result

    run_dir = lab.folder("nan-skip")
    result = train(lab.config(6, skip_nonfinite_updates=True), run_dir, progress=False,
                   algorithm=with_terms(skip_losses))
    out.faults += len(poisoned)
    check(result["skipped_updates"] == len(poisoned), f"skipped {result['skipped_updates']}")
    out.detail = "; ".join(messages) + f"; skip mode skipped {result['skipped_updates']} of 6"


def corrupt_scenario(lab: Lab, out: Outcome) -> None:
    """Truncations, bit flips, missing zip entries, wrong shapes, other versions: never a silent load."""
    run_dir = lab.folder("corrupt")
    train(lab.config(2), run_dir, progress=False)
    good = load_checkpoint(run_dir / CHECKPOINT_NAME)
    raw = (run_dir / CHECKPOINT_NAME).read_bytes()
    path = lab.folder("damaged") / CHECKPOINT_NAME
    path.parent.mkdir()
    caught = silent = 0

    def attempt(data: bytes) -> None:
        nonlocal caught, silent
        path.write_bytes(data)
        out.faults += 1
        try:
            loaded = load_checkpoint(path)
        except CheckpointError:
            caught += 1
            return
        silent += not (same_state(loaded, good) and loaded["config"] == good["config"])

    for length in (0, 1, 22, 512, len(raw) // 2, len(raw) - 22, len(raw) - 1):
        attempt(raw[:length])
    rng = random.Random(5)
    for _ in range(200):
        flipped = bytearray(raw)
        flipped[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
        attempt(bytes(flipped))
    archive = zipfile.ZipFile(io.BytesIO(raw))
    for skip in archive.namelist():
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as z:
            for name in archive.namelist():
                if name != skip:
                    z.writestr(name, archive.read(name))
        attempt(buffer.getvalue())
    # Consistent files (valid checksum) with wrong shapes or another version: clear errors at resume.
    name = next(k for k, v in good["policy"].items() if v.ndim == 2)
    variants: list[dict[str, Any]] = [
        {**good, "policy": {**good["policy"], name: torch.zeros(good["policy"][name].shape[0] + 1, 1)}},
        {**good, "policy": {k: v for k, v in good["policy"].items() if k != name}},
        {**good, "format_version": 99},
    ]
    for variant in variants:
        variant = {**variant, "checksum": ""}
        variant["checksum"] = checksum(variant)
        folder = lab.folder("variant")
        folder.mkdir()
        torch.save(variant, folder / CHECKPOINT_NAME)
        out.faults += 1
        try:
            train(lab.config(3), folder, resume=True, progress=False)
            silent += 1
        except CheckpointError:
            caught += 1
    check(silent == 0, f"{silent} damaged checkpoints loaded with changed content")
    out.detail = (f"{caught} refused with CheckpointError, {out.faults - caught} loaded unchanged (bytes or zip "
                  "entries nobody reads), 0 loaded changed")


def write_fault_scenario(lab: Lab, out: Outcome, codes: tuple[int, ...], sites: list[str]) -> None:
    """An OSError at each write site: one clear WriteError, nothing lost, and the run then finishes exactly."""
    updates = 5
    for code in codes:
        for where in sites:
            site, matches, nth, file_name, had_checkpoint = WRITE_SITES[where]
            run_dir = lab.folder(f"{errno.errorcode[code]}-{where.replace(' ', '-')}-run")
            out.expect(run_dir, updates)
            before = {w.name for w in run_dir.parent.iterdir()}
            fault = Fault(code, matches, nth)
            try:
                with inject(site, fault):
                    train(lab.config(updates), run_dir, progress=False)
                raise AssertionError(f"{where}: no error for {errno.errorcode[code]}")
            except WriteError as exc:
                message = str(exc)
            out.faults += 1
            check(fault.seen >= nth, f"{where}: the fault was never reached")
            cause, fix = CAUSES[code]
            check(cause in message and fix in message and str(run_dir / file_name) in message,
                  f"{where}: unclear message: {message}")
            check(clean(run_dir), f"{where}: lock or temporary file left behind")
            check({w.name for w in run_dir.parent.iterdir()} - before <= {run_dir.name},
                  f"{where}: files written outside the run directory")
            if had_checkpoint:
                check("is intact" in message, f"{where}: the message does not say the checkpoint is intact")
                kept = saved_update(run_dir)  # loads: the last good checkpoint
                check(same_state(load_checkpoint(run_dir / CHECKPOINT_NAME), lab.reference(kept)),
                      f"{where}: the kept checkpoint of update {kept} differs from the reference's")
                train(lab.config(updates), run_dir, resume=True, progress=False)
            else:
                check(not (run_dir / CHECKPOINT_NAME).exists(), f"{where}: a checkpoint appeared")
                train(lab.config(updates), run_dir, progress=False)  # the fault is gone: start again
    out.detail = (f"{out.faults} faults ({', '.join(errno.errorcode[c] for c in codes)} at {len(sites)} sites): "
                  "each one clear WriteError naming the file, nothing partial left, every run then finished")


# --------------------------------------------------------------------------------------------
# hostile files, actions and configs
# --------------------------------------------------------------------------------------------


def loader_bombs_scenario(lab: Lab, out: Outcome) -> None:
    """Files in each real format that expand >= 128 MiB when loaded naively: refused, tracemalloc peak < 32 MiB."""
    bombs = BombFolder(lab.folder("bombs"))
    peaks = []
    for what, craft in BOMBS.items():
        if not out.hostile(what):
            continue
        load = craft(bombs)
        out.faults += 1
        error, peak = peak_of(load)
        check(isinstance(error, DatasetError), f"{what}: expected DatasetError, got {error!r:.200}")
        check(peak < PEAK_LIMIT, f"{what}: peak {peak / 2**20:.0f} MiB while refusing it")
        peaks.append(peak)
    out.detail = (f"{len(peaks)} bombs refused with DatasetError; largest tracemalloc peak "
                  f"{max(peaks) / 2**20:.1f} MiB (each expands to >= {BOMB_BYTES >> 20} MiB naively)")


def nonfinite_actions_scenario(lab: Lab, out: Outcome) -> None:
    """NaN / inf Box actions: a ValueError naming the env and the index; the env's state is untouched."""
    import gymnasium as gym

    import meta_rl.envs  # noqa: F401 - registers meta_rl/PointNav-v0
    from meta_rl.envs.gym_tasks import register_gym_task

    def pendulum_task(env: Any, rng: np.random.Generator) -> None:
        env.unwrapped.m = rng.uniform(0.5, 2.0)

    register_gym_task("drills/BoxPendulum-v0", lambda: gym.make("Pendulum-v1"), pendulum_task, max_episode_steps=5)
    makers: dict[str, Callable[[], Any]] = {
        "PointNav": lambda: gym.make("meta_rl/PointNav-v0"),
        "PointNav vector": lambda: gym.make_vec("meta_rl/PointNav-v0", num_envs=3,
                                                vectorization_mode="vector_entry_point"),
        "GymTaskVectorEnv (Pendulum)": lambda: gym.make_vec("drills/BoxPendulum-v0", num_envs=3,
                                                            vectorization_mode="vector_entry_point"),
    }
    refused = 0
    for name, make in makers.items():
        env = make()
        env.reset(seed=0)
        space = env.action_space
        good = np.zeros(space.shape, dtype=space.dtype)
        for bad in (math.nan, math.inf, -math.inf):
            for index in (0, int(np.prod(space.shape)) - 1):
                action = good.copy()
                action.reshape(-1)[index] = bad
                if not out.hostile(f"{name} step with {bad} at flat index {index}"):
                    continue
                out.faults += 1
                try:
                    env.step(action)
                    raise AssertionError(f"{name}: a {bad} action was accepted")
                except ValueError as exc:
                    where = f"actions[{', '.join(str(int(i)) for i in np.unravel_index(index, space.shape))}]"
                    check(type(env.unwrapped).__name__ in str(exc) and where in str(exc),
                          f"{name}: the error does not name the env and index: {exc}")
                    refused += 1
                obs, reward, *_ = env.step(good)
                check(bool(np.isfinite(np.asarray(obs)).all() and np.isfinite(np.asarray(reward)).all()),
                      f"{name}: non-finite state after a refused action")
        env.close()
    out.detail = f"{refused} non-finite actions refused in {len(makers)} envs; state stayed finite"


def oversized_scenario(lab: Lab, out: Outcome) -> None:
    """Sizes beyond the machine: ConfigError before allocation, giving the estimate and the keys to lower."""
    cases: dict[str, tuple[dict[str, Any], str]] = {
        "num_envs=1e9": ({"num_envs": 1_000_000_000}, "num_envs"),
        "hidden=1e7": ({"hidden": 10_000_000}, "hidden"),
        "encoder_hidden=[1e8]": ({"encoder_hidden": [100_000_000]}, "encoder_hidden"),
        "eval_every=1 eval_episodes=1e9": ({"eval_every": 1, "eval_episodes": 1_000_000_000}, "eval_episodes"),
        "rollout_steps=2e7": ({"rollout_steps": 20_000_000}, "rollout_steps"),
        "torch_threads=100000": ({"torch_threads": 100_000}, "torch_threads"),
    }
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for what, (changes, key) in cases.items():
        if not out.hostile(what):
            continue
        out.faults += 1
        run_dir = lab.folder("oversized")
        try:
            train(lab.config(2, **changes), run_dir, progress=False)
            raise AssertionError(f"{what}: accepted")
        except ConfigError as exc:
            check(key in str(exc), f"{what}: the error does not name {key}: {exc}")
            if key != "torch_threads":
                check(bool(re.search(r"needs about [\d.]+ [GM]iB .*only [\d.]+ [GM]iB is free", str(exc))),
                      f"{what}: no estimate and free memory in {exc}")
        check(not run_dir.exists(), f"{what}: a run directory was left behind")
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    check(grown < 512, f"peak RSS grew by {grown:.0f} MiB while refusing")
    out.detail = f"{len(cases)} refused with ConfigError before allocating (peak RSS grew {grown:.0f} MiB)"


def hung_step_scenario(lab: Lab, out: Outcome) -> None:
    """An env step that never returns (the 3rd update's): step_timeout, the time limit, and SIGINT twice each stop
    the run with a checkpoint of update 2 and a message naming the step; each resumes to the reference."""
    hang = {"FAULT_DRILL_HANG_AFTER": str(2 * 3 * K + 2), "FAULT_DRILL_GRACE": "1"}  # 9 steps an update
    cases = {
        "step_timeout=2": (("step_timeout=2",), r"\.step\(\) has not returned after \d+ s \(step_timeout = 2 s\)", 1),
        "max_minutes with no step_timeout": (("step_timeout=0", "--max-minutes", "0.02"),
                                             r"has not returned \d+ s after the time limit \(max_minutes = 0\.02\)", 1),
        "SIGINT twice": (("step_timeout=0",), r"stopped at once by a second SIGINT while collecting a rollout, "
                                              r"waiting for .*\.step\(\)", 130),
    }
    for what, (extra, message, code) in cases.items():
        out.faults += 1
        run_dir = lab.folder("hung")
        run = out.expect(run_dir)
        proc = lab.spawn(run_dir, lab.config(6, checkpoint_every=100), False, *extra, env=hang)
        if code == 130:
            wait_for(lambda: (run_dir / "config.json").is_file(), proc)  # noqa: B023
            time.sleep(4)  # well into the hung step
            proc.send_signal(signal.SIGINT)
            time.sleep(1.5)
            check(proc.poll() is None, f"{what}: the first SIGINT stopped a step in progress")
            proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=180)
        check(proc.returncode == code and re.search(message, err) is not None and "update 2 is saved" in err,
              f"{what}: exit {proc.returncode}, stderr {err[-600:]}")
        if code == 130:
            check("SIGINT received: stopping after the current update" in err and "waiting for" in err,
                  f"{what}: the first SIGINT did not say what it waits for: {err[-600:]}")
        check(saved_update(run_dir) == 2 and clean(run_dir), f"{what}: checkpoint {saved_update(run_dir)}, not 2")
        run[1] = 6
        train(lab.config(6, checkpoint_every=100), run_dir, resume=True, progress=False)
    out.detail = f"{len(cases)} hangs stopped with update 2 saved and named; each resumed to the reference"


def user_folder_scenario(lab: Lab, out: Outcome) -> None:
    """A fresh run into a folder of the user's files, and a config.json edited before --resume: refused, nothing
    the user had is changed; once config.json is restored the run resumes to the reference."""
    project = lab.folder("project")
    project.mkdir()
    mine = {"config.json": b'{"model": "mine", "lr": 0.1}\n', "train.py": b"print('mine')\n"}
    for name, data in mine.items():
        (project / name).write_bytes(data)
    out.hostile("fresh run into a folder holding the user's config.json")
    out.faults += 1
    try:
        train(lab.config(2), project, progress=False)
        raise AssertionError("a fresh run wrote into a folder of the user's files")
    except ConfigError as exc:
        check("config.json, train.py" in str(exc), f"the error does not name the files: {exc}")
    check({p.name: p.read_bytes() for p in project.iterdir()} == mine, "the user's files changed")
    run_dir = lab.folder("edited")
    out.expect(run_dir, 4)
    train(lab.config(2), run_dir, progress=False)
    path = run_dir / "config.json"
    for key, value in (("learning_rate", 0.5), ("hidden", 64), ("env_kwargs", {"n_way": 5})):
        if not out.hostile(f"config.json edited before --resume: {key}"):
            continue
        out.faults += 1
        saved = path.read_text()
        path.write_text(json.dumps({**json.loads(saved), key: value}))
        edited = path.read_bytes()
        try:
            train(lab.config(4), run_dir, resume=True, progress=False)
            raise AssertionError(f"resume ignored an edit of {key}")
        except ConfigError as exc:
            check(f"{key}:" in str(exc) and "edited since the checkpoint" in str(exc), f"{key}: {exc}")
        check(path.read_bytes() == edited and saved_update(run_dir) == 2, f"{key}: the edit or checkpoint changed")
        path.write_text(saved)
    train(lab.config(4), run_dir, resume=True, progress=False)
    out.detail = "user's folder refused byte-for-byte intact; 3 config.json edits refused by key; resumed after"


def tampered_eval_scenario(lab: Lab, out: Outcome) -> None:
    """meta-rl eval and --resume on checkpoints whose records were edited and their checksum recomputed: refused
    (exit 2, naming the entry) under a 6 GiB address-space cap, before allocating."""
    run_dir = lab.folder("tampered-source")
    out.expect(run_dir, 2)
    train(lab.config(2), run_dir, progress=False)
    good = load_checkpoint(run_dir / CHECKPOINT_NAME)
    changes: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
        "spaces.steps=1": (lambda d: d["spaces"].__setitem__("steps", 1), "records tasks of 1 steps"),
        "spaces.steps=1e9": (lambda d: d["spaces"].__setitem__("steps", 10**9), "records tasks of 1000000000"),
        "spaces: image shape 1e5x1e5": (lambda d: d["spaces"]["observation"]["spaces"]["image"].__setitem__(
            "shape", [1, 100_000, 100_000]), "Box shape [1, 100000, 100000]"),
        "counters.env_steps=-7": (lambda d: d["counters"].__setitem__("env_steps", -7), "env_steps = -7"),
        "counters.update=-5": (lambda d: d["counters"].__setitem__("update", -5), "update = -5"),
    }
    env = {"PYTHONPATH": os.pathsep.join([str(lab.plugin_dir), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (6 * 2**30, 6 * 2**30))

    for what, (change, message) in changes.items():
        if not out.hostile(f"checkpoint with {what}"):
            continue
        out.faults += 1
        folder = lab.folder("tampered")
        folder.mkdir()
        data = pickle.loads(pickle.dumps(good))  # a deep copy
        change(data)
        data["checksum"] = checksum(data)
        torch.save(data, folder / CHECKPOINT_NAME)
        before = (folder / CHECKPOINT_NAME).read_bytes()
        for command in (["eval", str(folder), "--episodes", "4", "--batch", "4", "--env-module", PLUGIN],
                        ["train", "--resume", str(folder), "--env-module", PLUGIN, "--no-progress"]):
            proc = subprocess.run([sys.executable, "-m", "meta_rl.cli", *command], capture_output=True, text=True,
                                  timeout=180, env={**os.environ, **env}, preexec_fn=cap, check=False)
            refused = proc.returncode == 2 and message in proc.stderr
            resumable = command[0] == "train" and what.startswith("spaces")  # resume builds the env, not the record
            check(refused or (resumable and proc.returncode == 0),
                  f"{what}: meta-rl {command[0]} exit {proc.returncode}: {proc.stderr[-400:]}")
            if refused:
                check((folder / CHECKPOINT_NAME).read_bytes() == before, f"{what}: the checkpoint changed")
    out.detail = f"{len(changes)} tampered records refused by eval (and counters by resume) before allocating"


EVIL_SOURCE = f'''
import os

import {PLUGIN}  # noqa: F401 - the drills' dataset

if os.environ.get("EVIL_MARK"):
    with open(os.environ["EVIL_MARK"], "a") as f:
        f.write("imported\\n")
'''


def untrusted_module_scenario(lab: Lab, out: Outcome) -> None:
    """A run directory holding evilmod.py and a checkpoint naming it: eval and resume refuse unless it is named."""
    run_dir, src = lab.folder("evil"), lab.folder("evil-src")  # trained from src, then the module joins the run
    src.mkdir()
    (src / "evilmod.py").write_text(EVIL_SOURCE)
    sys.path.insert(0, str(src))
    try:
        train(lab.config(2, env_module="evilmod"), run_dir, progress=False)
    finally:
        sys.path.remove(str(src))
        sys.modules.pop("evilmod", None)
    (run_dir / "evilmod.py").write_text(EVIL_SOURCE)
    mark = run_dir.parent / "evil-mark"
    env = {**os.environ, "EVIL_MARK": str(mark), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(lab.plugin_dir), os.environ.get("PYTHONPATH", "")])}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "meta_rl.cli", *args], cwd=run_dir, env=env,
                              capture_output=True, text=True, timeout=180)

    for args in (("eval", ".", "--episodes", "4", "--batch", "4"), ("train", "--resume", ".", "--no-progress")):
        if not out.hostile(f"meta-rl {' '.join(args)} in a run dir naming evilmod"):
            continue
        out.faults += 1
        proc = cli(*args)
        check(proc.returncode == 2 and "needs module 'evilmod'" in proc.stderr and "--env-module evilmod"
              in proc.stderr, f"{args[0]}: not refused clearly ({proc.returncode}): {proc.stderr[-300:]}")
        check(not mark.exists(), f"{args[0]}: evilmod.py ran")
    proc = cli("eval", ".", "--episodes", "4", "--batch", "4", "--json", "--env-module", "evilmod")
    check(proc.returncode == 0 and mark.read_text() == "imported\n", f"named: did not run ({proc.stderr[-300:]})")
    out.detail = "eval and resume refused, naming the module and --env-module; ran only when named"


#: Seeds for reset: None, ints in and out of [0, 2**64), other types, and lists (the vector env takes them).
SEEDS: list[Any] = [None, 0, 7, -1, 2**63, 2**64, 2**70, 1.5, "3", True, [], [1, 2], [-1], np.int64(4)]
#: Options for reset: only None or an empty dict are valid (the envs take no options).
RESET_OPTIONS: list[Any] = [None, {}, {"n_way": 3}, {1: 2, "a": 3}, [], 0, "x"]
#: The dtypes of random tensor actions: only the integer ones but bool are valid.
ACTION_DTYPES = [torch.bool, torch.uint8, torch.int8, torch.int32, torch.int64, torch.uint16, torch.uint64,
                 torch.float16, torch.bfloat16, torch.float32, torch.complex64]
#: Configs with wrong types, negative sizes, non-finite numbers, unknown keys: the error names the first key.
BAD_CONFIGS: list[dict[str, Any]] = [
    {"num_envs": "many"}, {"num_envs": -1}, {"hidden": 0}, {"learning_rate": float("nan")},
    {"gamma": float("inf")}, {"core": "mamba"}, {"encoder_hidden": [8, -1]}, {"num_env": 4},
    {"seed": 2**64}, {"device": "tpu"}, {"checkpoint_every": 0}, {"skip_nonfinite_updates": "yes"},
]
#: Impossible tasks and unknown keys in env_kwargs: the error names the key.
BAD_ENV_KWARGS: list[dict[str, Any]] = [{"n_way": 99}, {"instances_per_class": 50}, {"n_wya": 3},
                                        {"feedback": "labels"}]


class Refusals:
    """Bad inputs, each tried once (counted by :meth:`Outcome.hostile`), and the ones that were mishandled."""

    def __init__(self, out: Outcome) -> None:
        self.out = out
        self.failures: list[str] = []

    def expect(self, call: Callable[[], Any], ok: bool, what: str, *types: type[BaseException]) -> None:
        """Call ``call``: a valid input (``ok``) must pass; a bad one must raise one of ``types`` with a message.

        A bad input tried before is skipped. Any other outcome is recorded in :attr:`failures`.
        """
        if not ok and not self.out.hostile(what):
            return  # tried already
        try:
            call()
        except types as exc:
            if ok or not str(exc).strip():
                self.failures.append(f"{what}: {type(exc).__name__}: {exc}")
            return
        except Exception as exc:  # any other type is a failure
            self.failures.append(f"{what}: unexpected {type(exc).__name__}: {exc}")
            return
        if not ok:
            self.failures.append(f"{what}: accepted")


def valid_seed(seed: Any, lists: bool) -> bool:
    """Whether reset must accept ``seed``: None, an int in [0, 2**64), or (``lists``) a list of ints led by one."""
    if isinstance(seed, list) and lists:
        if not seed or not all(isinstance(s, int) for s in seed):
            return False
        seed = seed[0]
    return seed is None or bool(isinstance(seed, (int, np.integer)) and not isinstance(seed, bool)
                                and 0 <= seed < 2**64)


def random_tensor_action(rng: random.Random, values: list[int], shape: tuple[int, ...]) -> tuple[torch.Tensor, bool]:
    """``values`` as a tensor of a random dtype and device, and whether the env (4 tasks, 3 actions) must accept it."""
    dtype = rng.choice(ACTION_DTYPES)
    base = torch.tensor(values).reshape(shape)
    base = base.abs() if dtype == torch.bool or not (dtype.is_signed or dtype.is_floating_point) else base
    action = base.to(dtype).to(rng.choice(["cpu", "cpu", "meta"]))
    ok = (action.shape == (4,) and action.device.type == "cpu" and not action.dtype.is_floating_point
          and not action.dtype.is_complex and action.dtype != torch.bool
          and bool(((action.long() >= 0) & (action.long() < 3)).all()))
    return action, ok


def random_array_action(rng: random.Random, values: list[int], shape: tuple[int, ...]) -> tuple[np.ndarray, bool]:
    """``|values|`` as a numpy array of a random dtype, and whether the env (4 tasks, 3 actions) must accept it."""
    dtype = np.dtype(rng.choice(["i1", "u2", "i8", ">i4", "f4", "?", "O"]))
    action = np.abs(np.array(values, dtype=np.int64)).reshape(shape).astype(dtype)
    return action, dtype.kind in "iu" and action.shape == (4,) and bool((action < 3).all())


def random_action(rng: random.Random) -> tuple[Any, bool]:
    """A random action (a tensor, an array or another type, of a random shape) and whether it is valid."""
    kind = rng.choice(["torch", "numpy", "other"])
    shape = rng.choice([(4,), (4,), (), (3,), (4, 1), (0,)])
    values = [rng.randint(-2, 4) for _ in range(math.prod(shape))]
    if kind == "torch":
        return random_tensor_action(rng, values, shape)
    if kind == "numpy":
        return random_array_action(rng, values, shape)
    return rng.choice([None, 3, 2.5, "a", [0, 1, 2, 0]]), False


def try_bad_actions(vec: Any, refusals: Refusals, draws: int = 150) -> None:
    """Random actions on the vector env: each valid one is taken, each bad one refused."""
    rng = random.Random(11)
    for _ in range(draws):
        vec.reset(seed=0)
        action, ok = random_action(rng)
        refusals.expect(functools.partial(vec.step, action), ok, f"step({action!r})", ValueError, TypeError)


def try_bad_resets(vec: Any, refusals: Refusals) -> None:
    """Every seed with every option on the vector env's reset."""
    for seed in SEEDS:
        for option in RESET_OPTIONS:
            ok = valid_seed(seed, lists=True) and (option is None or (isinstance(option, dict) and not option))
            refusals.expect(functools.partial(vec.reset, seed=seed, options=option), ok, f"reset({seed!r}, {option!r})",
                            ValueError, TypeError)


def try_single_env_misuse(refusals: Refusals) -> None:
    """The single env: a step before reset, a step after the episode ended, and every seed but the lists."""
    from meta_rl.envs import FewShotEnv

    single = FewShotEnv(dataset=DATASET, n_way=3, instances_per_class=3)
    refusals.expect(lambda: single.step(0), False, "single step before reset", ValueError)
    single.reset(seed=0)
    for _ in range(single.episode_length or 0):
        single.step(0)
    refusals.expect(lambda: single.step(0), False, "single step after termination", ValueError)
    for seed in SEEDS:
        if not isinstance(seed, list):
            refusals.expect(functools.partial(single.reset, seed=seed), valid_seed(seed, lists=False),
                            f"single reset({seed!r})", ValueError, TypeError)


def try_bad_configs(refusals: Refusals) -> None:
    """Each of :data:`BAD_CONFIGS`: a ConfigError naming its key."""
    for bad in BAD_CONFIGS:
        key = next(iter(bad))
        if not refusals.out.hostile(f"config {bad}"):
            continue
        try:
            TrainConfig.from_dict(bad)
            refusals.failures.append(f"config {bad} accepted")
        except ConfigError as exc:
            if key not in str(exc):
                refusals.failures.append(f"config {bad}: the error does not name {key!r}: {exc}")


def try_bad_env_kwargs(lab: Lab, refusals: Refusals) -> None:
    """Each of :data:`BAD_ENV_KWARGS` when the env is made: a ConfigError whose cause names its key."""
    for kwargs in BAD_ENV_KWARGS:
        cfg = lab.config(1, env_kwargs={"dataset": DATASET, "n_way": 3, "instances_per_class": K, **kwargs})
        key = next(iter(kwargs))
        if not refusals.out.hostile(f"env_kwargs {kwargs}"):
            continue
        try:
            make_vec_env(cfg, "train", 2, torch.device("cpu"))
            refusals.failures.append(f"env_kwargs {kwargs} accepted")
        except ConfigError as exc:
            inner = str(exc.__cause__) if exc.__cause__ is not None else str(exc)  # the wrapper quotes env_kwargs
            if key not in inner:
                refusals.failures.append(f"env_kwargs {kwargs}: the error does not name {key!r}: {inner}")


def write_malformed_files(folder: Path) -> list[tuple[Path, Callable[[Path], Any]]]:
    """Truncated miniImageNet caches, broken IDX headers and unreadable images in an image folder.

    Args:
        folder: Where to write them (created).

    Returns:
        Each file with the loader that must refuse it.
    """
    folder.mkdir()
    cache = {"image_data": np.zeros((4, 4, 4, 3), np.uint8), "class_dict": {"a": [0, 1], "b": [2, 3]}}
    raw = pickle.dumps(cache, protocol=4)
    labels = folder / "labels"
    labels.write_bytes(struct.pack(">II", 0x801, 2) + bytes([0, 1]))
    files: list[tuple[Path, Callable[[Path], Any]]] = []
    for cut in (0, 10, len(raw) // 2, len(raw) - 1):
        p = folder / f"mini-imagenet-cache-train-{cut}.pkl"
        p.write_bytes(raw[:cut])
        files.append((p, load_mini_imagenet))
    for i, header in enumerate((struct.pack(">II", 0x803, 2), struct.pack(">IIII", 0x801, 2, 2, 2) + bytes(8),
                                struct.pack(">IIII", 0x803, 2, 2, 2) + bytes(5), b"\x1f\x8b\x08garbage")):
        p = folder / f"images-{i}"
        p.write_bytes(header)
        files.append((p, lambda p: load_idx(p, labels)))
    for i, content in enumerate((b"", b"not an image", b"\x89PNG\r\n\x1a\n truncated")):
        root = folder / f"tree{i}"
        (root / "cls").mkdir(parents=True)
        p = root / "cls" / "img.png"
        p.write_bytes(content)
        files.append((p, lambda p: load_image_folder(p.parent.parent)))
    return files


def try_malformed_files(lab: Lab, refusals: Refusals) -> None:
    """Each malformed file: a DatasetError naming the file."""
    for path, load in write_malformed_files(lab.folder("files")):
        if not refusals.out.hostile(f"file {path.name}"):
            continue
        try:
            load(path)
            refusals.failures.append(f"{path.name} loaded")
        except DatasetError as exc:
            if str(path) not in str(exc):
                refusals.failures.append(f"{path.name}: the error does not name the file: {exc}")
        except Exception as exc:
            refusals.failures.append(f"{path.name}: unexpected {type(exc).__name__}: {exc}")


def bad_inputs_scenario(lab: Lab, out: Outcome) -> None:
    """Random bad actions, seeds, options, configs and malformed files: ValueError/TypeError with a message.

    Each distinct input is tried once (a random draw that repeats an earlier one is skipped).
    """
    refusals = Refusals(out)
    vec = make_vec_env(lab.config(1), "train", 4, torch.device("cpu"))
    try_bad_actions(vec, refusals)
    try_bad_resets(vec, refusals)
    try_single_env_misuse(refusals)
    try_bad_configs(refusals)
    try_bad_env_kwargs(lab, refusals)
    try_malformed_files(lab, refusals)
    failures = refusals.failures
    check(not failures, f"{len(failures)} bad inputs mishandled: {failures[:3]}")
    out.detail = f"{out.bad_inputs} distinct bad inputs, each refused with a clear ValueError/TypeError/DatasetError"


SCENARIOS: list[tuple[str, Callable[[Lab, Outcome], None]]] = [
    ("SIGINT", lambda lab, out: signal_scenario(lab, out, signal.SIGINT)),
    ("SIGTERM", lambda lab, out: signal_scenario(lab, out, signal.SIGTERM)),
    ("SIGTERM / time limit during evaluation", evaluation_stop_scenario),
    ("SIGKILL x4", sigkill_scenario),
    ("SIGKILL mid-checkpoint", sigkill_mid_checkpoint_scenario),
    ("NaN/inf in training", nan_scenario),
    ("damaged checkpoints", corrupt_scenario),
    ("two runs race for one dir", race_scenario),
    ("stale lock of a killed run", stale_lock_scenario),
    ("disk full at each write site",
     lambda lab, out: write_fault_scenario(lab, out, (errno.ENOSPC,), list(WRITE_SITES))),
    ("read-only / permission denied",
     lambda lab, out: write_fault_scenario(lab, out, (errno.EROFS, errno.EACCES),
                                           ["run directory", "lock create", "config.json rename", "events file later",
                                            "checkpoint temp file", "checkpoint rename"])),
    ("loader bombs", loader_bombs_scenario),
    ("NaN/inf actions", nonfinite_actions_scenario),
    ("oversized configs", oversized_scenario),
    ("module named by a run dir", untrusted_module_scenario),
    ("bad inputs", bad_inputs_scenario),
    ("hung env step", hung_step_scenario),
    ("run dir of the user's files", user_folder_scenario),
    ("tampered checkpoint records", tampered_eval_scenario),
]


def selected(only: list[str] | None) -> list[tuple[str, Callable[[Lab, Outcome], None]]]:
    return [(n, s) for n, s in SCENARIOS if not only or any(o.lower() in n.lower() for o in only)]


def run_all(scenarios: list[tuple[str, Callable[[Lab, Outcome], None]]]) -> list[Outcome]:
    """Run each scenario, then compare every run it registered with its reference (passed or not)."""
    outcomes = []
    with tempfile.TemporaryDirectory(prefix="meta-rl-faults-") as tmp:
        lab = Lab(Path(tmp))
        try:
            for name, scenario in scenarios:
                out = Outcome(name)
                started = time.monotonic()
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")  # expected stale-lock and purge warnings
                        scenario(lab, out)
                    ran = True
                except Exception as exc:  # report and go on with the next scenario
                    out.detail = f"{type(exc).__name__}: {exc}"[:400]
                    ran = False
                for run_dir, updates in out.expected:
                    out.lost_runs += not lab.matches_reference(run_dir, updates)
                out.passed = ran and out.lost_runs == 0
                if ran and out.lost_runs:
                    out.detail = f"{out.lost_runs} of {out.runs} runs differ from their reference; " + out.detail
                out.seconds = round(time.monotonic() - started, 1)
                outcomes.append(out)
        finally:
            sys.path.remove(str(lab.plugin_dir))
    return outcomes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    parser.add_argument("--only", nargs="*", help="run only scenarios whose name contains one of these")
    args = parser.parse_args(argv)
    scenarios = selected(args.only)
    if not scenarios:
        names = ", ".join(repr(n) for n, _ in SCENARIOS)
        print(f"faults.py: --only {' '.join(args.only or [])} matches no scenario; the scenarios are {names}.",
              file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    os.environ.setdefault("META_RL_PROGRESS", "0")
    logging.getLogger("tensorboard").setLevel(logging.ERROR)  # expected purges of killed attempts' events
    started = time.monotonic()
    outcomes = run_all(scenarios)
    summary = {
        "scenarios": len(outcomes),
        "passed": sum(o.passed for o in outcomes),
        "runs_compared": sum(o.runs for o in outcomes),
        "lost_runs": sum(o.lost_runs for o in outcomes),
        "distinct_bad_inputs": sum(o.bad_inputs for o in outcomes),
        "faults_injected": sum(o.faults for o in outcomes),
        "seconds": round(time.monotonic() - started, 1),
        "results": [{"name": o.name, "passed": o.passed, "runs": o.runs, "lost_runs": o.lost_runs,
                     "bad_inputs": o.bad_inputs, "faults": o.faults, "seconds": o.seconds, "detail": o.detail}
                    for o in outcomes],
    }
    if args.json:
        print(json.dumps(summary))
    else:
        width = max(len(o.name) for o in outcomes)
        print(f"{'scenario':<{width}}  result  runs  lost  faults  bad in  secs  detail")
        for o in outcomes:
            print(f"{o.name:<{width}}  {'pass' if o.passed else 'FAIL':<6}  {o.runs:>4}  {o.lost_runs:>4}  "
                  f"{o.faults:>6}  {o.bad_inputs:>6}  {o.seconds:>4.0f}  {o.detail}")
        print(f"{summary['passed']}/{summary['scenarios']} passed; {summary['lost_runs']} of "
              f"{summary['runs_compared']} runs lost (compared with uninterrupted references); "
              f"{summary['faults_injected']} faults injected; {summary['distinct_bad_inputs']} distinct bad inputs "
              f"({summary['seconds']:.0f} s)")
    return 0 if summary["passed"] == summary["scenarios"] else 1


if __name__ == "__main__":
    sys.exit(main())
