"""Fault drills: interrupt, kill, poison, corrupt and crowd tiny training runs and check that nothing is lost.

    python experiments/faults.py          # a table
    python experiments/faults.py --json   # one JSON line

Every scenario runs in its own temporary directory on a tiny synthetic task (registered by a
plug-in module that subprocesses import through ``env_module``), with subprocesses where
signals are involved. A run is *lost* when its final state cannot be brought back, by resuming,
to exactly (``torch.equal``) the state of an uninterrupted reference run on the CPU.
"""

from __future__ import annotations

import argparse
import contextlib
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
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import warnings
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

import meta_rl.atomic as atomic_module
import meta_rl.train as train_module
from meta_rl.checkpoint import CheckpointError, CheckpointWriteError, checksum, load_checkpoint
from meta_rl.config import ConfigError, TrainConfig
from meta_rl.data import DatasetError, load_idx, load_image_folder, load_mini_imagenet
from meta_rl.runlock import LOCK_NAME, RunLockedError, StaleLockWarning
from meta_rl.train import CHECKPOINT_NAME, NonFiniteError, make_vec_env, train

PLUGIN = "meta_rl_fault_drills"
DATASET = "fault-drills"
PLUGIN_SOURCE = f'''
import torch

import meta_rl.envs  # noqa: F401
from meta_rl.data import ImageDataset, register_dataset, split_by_group

_g = torch.Generator().manual_seed(0)
_n, _k = 36, 6
_protos = (torch.rand(_n, 1, 28, 28, generator=_g) < 0.3).float() * 255
_noise = torch.randint(-20, 21, (_n * _k, 1, 28, 28), generator=_g)
_images = (_protos.repeat_interleave(_k, 0) + _noise).clamp(0, 255).to(torch.uint8)
_ds = ImageDataset(_images, torch.arange(_n).repeat_interleave(_k), tuple(f"c{{i}}" for i in range(_n)),
                   tuple(f"g{{i % 12}}" for i in range(_n)), "drills")
register_dataset({DATASET!r}, split_by_group(_ds, (0.6, 0.2, 0.2)))
'''
K = 3
S = 4 * 3 * K  # env steps per update


@dataclasses.dataclass
class Outcome:
    """What one scenario found."""

    name: str
    passed: bool = False
    detail: str = ""
    lost_runs: int = 0
    bad_inputs: int = 0
    faults: int = 0
    seconds: float = 0.0


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
        cfg = TrainConfig(
            env_id="meta_rl/FewShot-v0", env_module=PLUGIN,
            env_kwargs={"dataset": DATASET, "n_way": 3, "instances_per_class": K}, num_envs=4, encoder="mlp",
            encoder_hidden=[16], hidden=8, key_dim=8, total_env_steps=updates * S, log_every=1, eval_every=8,
            eval_episodes=4, checkpoint_every=1, device="cpu", torch_threads=1,
        )
        return dataclasses.replace(cfg, **changes).validate()

    def reference(self, updates: int) -> dict[str, Any]:
        if updates not in self._refs:
            run_dir = self.folder(f"reference{updates}")
            train(self.config(updates), run_dir, progress=False)
            self._refs[updates] = load_checkpoint(run_dir / CHECKPOINT_NAME)
        return self._refs[updates]

    def spawn(self, run_dir: Path, cfg: TrainConfig | None, resume: bool) -> subprocess.Popen[str]:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(self.plugin_dir), os.environ.get("PYTHONPATH", "")]),
               "OMP_NUM_THREADS": "1", "META_RL_PROGRESS": "0"}
        if resume:
            args = ["--resume", str(run_dir), "--env-module", PLUGIN]
        else:
            assert cfg is not None
            toml = run_dir.parent / f"{run_dir.name}.toml"
            toml.write_text(to_toml(cfg))
            args = [str(toml), "--run-dir", str(run_dir)]
        return subprocess.Popen([sys.executable, "-m", "meta_rl.cli", "train", *args, "--no-progress"],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def to_toml(cfg: TrainConfig) -> str:
    lines, tables = [], []
    for key, value in cfg.to_dict().items():
        if isinstance(value, dict):
            tables += [f"[{key}]"] + [f"{k} = {json.dumps(v)}" for k, v in value.items()]
        else:
            lines.append(f"{key} = {json.dumps(value)}")
    return "\n".join(lines + tables) + "\n"


def check(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(message)


def wait_for(condition: Callable[[], bool], proc: subprocess.Popen[str], timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            _, err = proc.communicate()
            raise AssertionError(f"training exited early ({proc.returncode}): {err.strip()[-300:]}")
        if time.monotonic() > deadline:
            proc.kill()
            proc.communicate()
            raise AssertionError("timed out waiting for training to make progress")
        time.sleep(0.02)


def leaves(tree: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from leaves(v, f"{prefix}/{k}")
    elif isinstance(tree, (list, tuple)):
        for i, v in enumerate(tree):
            yield from leaves(v, f"{prefix}[{i}]")
    else:
        yield prefix, tree


def same_state(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Counters, policy, optimizer and RNG state exactly equal (torch.equal on every tensor)."""
    if a["counters"] != b["counters"]:
        return False
    for part in ("policy", "optimizer", "rng"):
        left, right = dict(leaves(a[part])), dict(leaves(b[part]))
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


def clean(run_dir: Path) -> bool:
    names = [p.name for p in run_dir.iterdir()]
    return LOCK_NAME not in names and not any(n.endswith(".tmp") for n in names)


@contextlib.contextmanager
def patched(obj: Any, name: str, value: Any) -> Iterator[None]:
    before = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, before)


# --------------------------------------------------------------------------------------------
# scenarios
# --------------------------------------------------------------------------------------------


def signal_scenario(lab: Lab, out: Outcome, signum: int) -> None:
    """SIGINT/SIGTERM mid-run: exit 128+signum with the resume command, a whole checkpoint, exact resume."""
    out.lost_runs = 1
    run_dir = lab.folder(signal.Signals(signum).name)
    proc = lab.spawn(run_dir, lab.config(100_000, checkpoint_every=3), resume=False)
    wait_for(lambda: (run_dir / CHECKPOINT_NAME).is_file(), proc)
    proc.send_signal(signum)
    out.faults += 1
    _, err = proc.communicate(timeout=60)
    check(proc.returncode == 128 + signum, f"exit code {proc.returncode}, expected {128 + signum}")
    check(f"meta-rl train --resume {run_dir}" in err, f"no resume hint on stderr: {err[-300:]}")
    done = int(load_checkpoint(run_dir / CHECKPOINT_NAME)["counters"]["update"])
    check(scalar_steps(run_dir, "loss/policy")[-1] == done * S, "the checkpoint is not the last completed update")
    check(clean(run_dir), "lock or temporary file left behind")
    train(lab.config(done + 2, checkpoint_every=3), run_dir, resume=True, progress=False)
    check(scalar_steps(run_dir, "loss/policy") == [S * (i + 1) for i in range(done + 2)], "TensorBoard history")
    check(same_state(load_checkpoint(run_dir / CHECKPOINT_NAME), lab.reference(done + 2)), "resumed != reference")
    out.lost_runs = 0
    out.detail = f"stopped after update {done}, exit {128 + signum}, resumed exactly"


def sigkill_scenario(lab: Lab, out: Outcome, kills: int = 4, updates: int = 40) -> None:
    """SIGKILL at seeded random moments, resumed each time; the final state equals the reference."""
    out.lost_runs = 1
    cfg = lab.config(updates)
    run_dir = lab.folder("SIGKILL")
    ckpt = run_dir / CHECKPOINT_NAME
    rng = random.Random(2024)
    targets = sorted(rng.sample(range(3, updates - 10), kills - 1))  # kill once these updates are checkpointed

    def saved() -> int:  # raises CheckpointError if a checkpoint is ever partial
        return int(load_checkpoint(ckpt)["counters"]["update"]) if ckpt.is_file() else -1

    seen: list[int] = []
    for attempt in range(kills):
        proc = lab.spawn(run_dir, cfg, ckpt.is_file())
        if attempt == 0:  # during start-up or the first updates
            wait_for(lambda: (run_dir / LOCK_NAME).is_file(), proc)
            time.sleep(rng.uniform(0.0, 0.3))
        else:  # a random moment after update `target`: mid-update, mid-checkpoint-write, mid-evaluation
            target = targets[attempt - 1]
            wait_for(lambda: saved() >= target, proc)  # noqa: B023
            time.sleep(rng.uniform(0.0, 0.03))
        check(proc.poll() is None, "the run ended before it was killed")
        proc.kill()
        out.faults += 1
        proc.communicate()
        seen.append(saved())
    proc = lab.spawn(run_dir, cfg, ckpt.is_file())
    _, err = proc.communicate(timeout=120)
    check(proc.returncode == 0, f"final resume failed: {err[-300:]}")
    check(seen == sorted(seen), f"checkpoints went backwards: {seen}")
    check(same_state(load_checkpoint(ckpt), lab.reference(updates)), "final state != uninterrupted reference")
    check(scalar_steps(run_dir, "loss/policy") == [S * (i + 1) for i in range(updates)], "TensorBoard gaps/duplicates")
    check(clean(run_dir), "lock or temporary file left behind")
    out.lost_runs = 0
    after = ", ".join("none" if u < 0 else str(u) for u in seen)
    out.detail = f"{out.faults} kills (checkpointed update after each: {after}); final state exact, history continuous"


def nan_scenario(lab: Lab, out: Outcome) -> None:
    """NaN loss, NaN gradient, inf parameter: stop naming it; the last good checkpoint resumes exactly."""
    out.lost_runs = 1
    reference2, reference6 = lab.reference(2), lab.reference(6)
    real_losses, real_collect = train_module.reinforce_losses, train_module.collect
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

        def collect(env: Any, policy: Any, *args: Any, how: str = how, **kwargs: Any) -> Any:
            if calls[0] == 2 and how == "param":  # before update 3
                with torch.no_grad():
                    next(policy.parameters()).view(-1)[0] = float("inf")
            return real_collect(env, policy, *args, **kwargs)

        run_dir = lab.folder(f"nan-{how}")
        with patched(train_module, "reinforce_losses", losses), patched(train_module, "collect", collect):
            try:
                train(lab.config(6), run_dir, progress=False)
                raise AssertionError(f"no NonFiniteError for a non-finite {how}")
            except NonFiniteError as exc:
                messages.append(str(exc).split(";")[0])
                out.faults += 1
                check(exc.update == 3 and "(update 2) is intact" in str(exc), f"wrong report: {exc}")
        check(same_state(load_checkpoint(run_dir / CHECKPOINT_NAME), reference2), "the last good checkpoint changed")
        check(clean(run_dir), "lock or temporary file left behind")
        train(lab.config(6), run_dir, resume=True, progress=False)
        check(same_state(load_checkpoint(run_dir / CHECKPOINT_NAME), reference6), "resumed != reference")
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
    with patched(train_module, "reinforce_losses", skip_losses):
        result = train(lab.config(6, skip_nonfinite_updates=True), run_dir, progress=False)
    out.faults += len(poisoned)
    check(result["skipped_updates"] == len(poisoned), f"skipped {result['skipped_updates']}")
    out.lost_runs = 0
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


def lock_scenario(lab: Lab, out: Outcome) -> None:
    """A live lock is a clear error; a stale one (dead PID) is taken over and the run completes exactly."""
    out.lost_runs = 1
    run_dir = lab.folder("lock")
    run_dir.mkdir()
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        (run_dir / LOCK_NAME).write_text(json.dumps({"pid": sleeper.pid, "host": socket.gethostname()}))
        out.faults += 1
        try:
            train(lab.config(4), run_dir, progress=False)
            raise AssertionError("a second run started beside a live one")
        except RunLockedError as exc:
            check(f"PID {sleeper.pid}" in str(exc), f"the error does not name the PID: {exc}")
    finally:
        sleeper.kill()
        sleeper.wait()
    out.faults += 1  # now stale: its process is gone
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(lab.config(4), run_dir, progress=False)
    check(any(issubclass(w.category, StaleLockWarning) for w in caught), "no warning on taking over a stale lock")
    check(clean(run_dir), "lock left behind")
    check(same_state(load_checkpoint(run_dir / CHECKPOINT_NAME), lab.reference(4)), "run after takeover != reference")
    out.lost_runs = 0
    out.detail = f"live PID {sleeper.pid} refused; stale lock taken over with a warning"


def disk_full_scenario(lab: Lab, out: Outcome) -> None:
    """ENOSPC half-way through a checkpoint write: the previous checkpoint survives, no temp file, clear error."""
    out.lost_runs = 1
    reference2, reference5 = lab.reference(2), lab.reference(5)
    real = atomic_module._write_all
    calls = 0

    def write_all(fd: int, data: memoryview) -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            real(fd, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd, data)

    run_dir = lab.folder("disk-full")
    with patched(atomic_module, "_write_all", write_all):
        try:
            train(lab.config(5), run_dir, progress=False)
            raise AssertionError("no error on a full disk")
        except CheckpointWriteError as exc:
            out.faults += 1
            check("disk is full" in str(exc) and "previous checkpoint" in str(exc) and "intact" in str(exc),
                  f"unclear message: {exc}")
            message = str(exc).split(";")[0]
    check(same_state(load_checkpoint(run_dir / CHECKPOINT_NAME), reference2), "the previous checkpoint changed")
    check(clean(run_dir), "temporary file or lock left behind")
    train(lab.config(5), run_dir, resume=True, progress=False)
    check(same_state(load_checkpoint(run_dir / CHECKPOINT_NAME), reference5), "resumed != reference")
    out.lost_runs = 0
    out.detail = message


def bad_inputs_scenario(lab: Lab, out: Outcome) -> None:
    """Random bad actions, seeds, options, configs and malformed files: ValueError/TypeError with a message."""
    from meta_rl.envs import FewShotEnv

    rng = random.Random(11)
    failures: list[str] = []

    def expect(call: Callable[[], Any], ok: bool, what: str, *types: type[BaseException]) -> None:
        out.bad_inputs += 0 if ok else 1
        try:
            call()
        except types as exc:
            if ok or not str(exc).strip():
                failures.append(f"{what}: {type(exc).__name__}: {exc}")
            return
        except Exception as exc:  # any other type is a failure
            failures.append(f"{what}: unexpected {type(exc).__name__}: {exc}")
            return
        if not ok:
            failures.append(f"{what}: accepted")

    vec = make_vec_env(lab.config(1), "train", 4, torch.device("cpu"))

    def good_seed(seed: Any, lists: bool) -> bool:
        if isinstance(seed, list) and lists:
            if not seed or not all(isinstance(s, int) for s in seed):
                return False
            seed = seed[0]
        return seed is None or bool(isinstance(seed, (int, np.integer)) and not isinstance(seed, bool)
                                    and 0 <= seed < 2**64)

    dtypes = [torch.bool, torch.uint8, torch.int8, torch.int32, torch.int64, torch.uint16, torch.uint64, torch.float16,
              torch.bfloat16, torch.float32, torch.complex64]
    for _ in range(150):
        vec.reset(seed=0)
        kind = rng.choice(["torch", "numpy", "other"])
        shape = rng.choice([(4,), (4,), (), (3,), (4, 1), (0,)])
        values = [rng.randint(-2, 4) for _ in range(math.prod(shape))]
        action: Any
        if kind == "torch":
            dtype = rng.choice(dtypes)
            base = torch.tensor(values).reshape(shape)
            base = base.abs() if dtype == torch.bool or not (dtype.is_signed or dtype.is_floating_point) else base
            action = base.to(dtype).to(rng.choice(["cpu", "cpu", "meta"]))
            ok = (action.shape == (4,) and action.device.type == "cpu" and not action.dtype.is_floating_point
                  and not action.dtype.is_complex and action.dtype != torch.bool
                  and bool(((action.long() >= 0) & (action.long() < 3)).all()))
        elif kind == "numpy":
            dtype_np = np.dtype(rng.choice(["i1", "u2", "i8", ">i4", "f4", "?", "O"]))
            action = np.abs(np.array(values, dtype=np.int64)).reshape(shape).astype(dtype_np)
            ok = dtype_np.kind in "iu" and action.shape == (4,) and bool((action < 3).all())
        else:
            action, ok = rng.choice([None, 3, 2.5, "a", [0, 1, 2, 0]]), False
        expect(functools.partial(vec.step, action), ok, f"step({action!r})", ValueError, TypeError)
    seeds: list[Any] = [None, 0, 7, -1, 2**63, 2**64, 2**70, 1.5, "3", True, [], [1, 2], [-1], np.int64(4)]
    options: list[Any] = [None, {}, {"n_way": 3}, {1: 2, "a": 3}, [], 0, "x"]
    for seed in seeds:
        for option in options:
            ok = good_seed(seed, lists=True) and (option is None or (isinstance(option, dict) and not option))
            expect(functools.partial(vec.reset, seed=seed, options=option), ok, f"reset({seed!r}, {option!r})",
                   ValueError, TypeError)
    single = FewShotEnv(dataset=DATASET, n_way=3, instances_per_class=3)
    expect(lambda: single.step(0), False, "single step before reset", ValueError)
    single.reset(seed=0)
    for _ in range(single.episode_length or 0):
        single.step(0)
    expect(lambda: single.step(0), False, "single step after termination", ValueError)
    for seed in seeds:
        if not isinstance(seed, list):
            expect(functools.partial(single.reset, seed=seed), good_seed(seed, lists=False),
                   f"single reset({seed!r})", ValueError, TypeError)
    # Configs: wrong types, negative sizes, non-finite numbers, unknown keys, impossible tasks.
    bad_configs: list[dict[str, Any]] = [
        {"num_envs": "many"}, {"num_envs": -1}, {"hidden": 0}, {"learning_rate": float("nan")},
        {"gamma": float("inf")}, {"core": "transformer"}, {"encoder_hidden": [8, -1]}, {"num_env": 4},
        {"seed": 2**64}, {"device": "tpu"}, {"checkpoint_every": 0}, {"skip_nonfinite_updates": "yes"},
    ]
    for bad in bad_configs:
        key = next(iter(bad))
        try:
            TrainConfig.from_dict(bad)
            failures.append(f"config {bad} accepted")
        except ConfigError as exc:
            if key not in str(exc):
                failures.append(f"config {bad}: the error does not name {key!r}: {exc}")
        out.bad_inputs += 1
    for kwargs in ({"n_way": 99}, {"instances_per_class": 50}, {"n_wya": 3}, {"feedback": "labels"}):
        cfg = lab.config(1, env_kwargs={"dataset": DATASET, "n_way": 3, "instances_per_class": K, **kwargs})
        key = next(iter(kwargs))
        try:
            make_vec_env(cfg, "train", 2, torch.device("cpu"))
            failures.append(f"env_kwargs {kwargs} accepted")
        except ConfigError as exc:
            inner = str(exc.__cause__) if exc.__cause__ is not None else str(exc)  # the wrapper quotes env_kwargs
            if key not in inner:
                failures.append(f"env_kwargs {kwargs}: the error does not name {key!r}: {inner}")
        out.bad_inputs += 1
    # Loaders: malformed files raise DatasetError naming the file.
    folder = lab.folder("files")
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
    for path, load in files:
        out.bad_inputs += 1
        try:
            load(path)
            failures.append(f"{path.name} loaded")
        except DatasetError as exc:
            if str(path) not in str(exc):
                failures.append(f"{path.name}: the error does not name the file: {exc}")
        except Exception as exc:
            failures.append(f"{path.name}: unexpected {type(exc).__name__}: {exc}")
    check(not failures, f"{len(failures)} bad inputs mishandled: {failures[:3]}")
    out.detail = f"{out.bad_inputs} bad inputs, each refused with a clear ValueError/TypeError/DatasetError"


SCENARIOS: list[tuple[str, Callable[[Lab, Outcome], None]]] = [
    ("SIGINT", lambda lab, out: signal_scenario(lab, out, signal.SIGINT)),
    ("SIGTERM", lambda lab, out: signal_scenario(lab, out, signal.SIGTERM)),
    ("SIGKILL x4", sigkill_scenario),
    ("NaN/inf", nan_scenario),
    ("damaged checkpoints", corrupt_scenario),
    ("two runs, one dir", lock_scenario),
    ("disk full", disk_full_scenario),
    ("bad inputs", bad_inputs_scenario),
]


def run_all(only: list[str] | None = None) -> list[Outcome]:
    outcomes = []
    with tempfile.TemporaryDirectory(prefix="meta-rl-faults-") as tmp:
        lab = Lab(Path(tmp))
        try:
            for name, scenario in SCENARIOS:
                if only and not any(o.lower() in name.lower() for o in only):
                    continue
                out = Outcome(name)
                started = time.monotonic()
                try:
                    scenario(lab, out)
                    out.passed = True
                except Exception as exc:  # report and go on with the next scenario
                    out.detail = f"{type(exc).__name__}: {exc}"[:400]
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
    torch.set_num_threads(1)
    os.environ.setdefault("META_RL_PROGRESS", "0")
    logging.getLogger("tensorboard").setLevel(logging.ERROR)  # expected purges of killed attempts' events
    started = time.monotonic()
    outcomes = run_all(args.only)
    summary = {
        "scenarios": len(outcomes),
        "passed": sum(o.passed for o in outcomes),
        "lost_runs": sum(o.lost_runs for o in outcomes),
        "bad_inputs_tried": sum(o.bad_inputs for o in outcomes),
        "faults_injected": sum(o.faults for o in outcomes),
        "seconds": round(time.monotonic() - started, 1),
        "results": [{"name": o.name, "passed": o.passed, "lost_runs": o.lost_runs, "seconds": o.seconds,
                     "detail": o.detail} for o in outcomes],
    }
    if args.json:
        print(json.dumps(summary))
    else:
        width = max(len(o.name) for o in outcomes) if outcomes else 8
        print(f"{'scenario':<{width}}  result  lost  faults  bad in  secs  detail")
        for o in outcomes:
            print(f"{o.name:<{width}}  {'pass' if o.passed else 'FAIL':<6}  {o.lost_runs:>4}  {o.faults:>6}  "
                  f"{o.bad_inputs:>6}  {o.seconds:>4.0f}  {o.detail}")
        print(f"{summary['passed']}/{summary['scenarios']} passed, {summary['lost_runs']} lost runs, "
              f"{summary['faults_injected']} faults injected, {summary['bad_inputs_tried']} bad inputs tried "
              f"({summary['seconds']:.0f} s)")
    return 0 if summary["passed"] == summary["scenarios"] and summary["lost_runs"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
