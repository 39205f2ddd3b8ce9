"""Faults lose nothing: signals, SIGKILL at random moments, NaN/inf, damaged checkpoints, two runs
in one directory and a full disk. Training runs in subprocesses where signals are involved."""

from __future__ import annotations

import dataclasses
import errno
import functools
import io
import json
import os
import random
import signal
import socket
import subprocess
import sys
import warnings
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from tiny_runs import STEPS_PER_UPDATE, tiny_config, with_terms
from train_process import saved_update, spawn_train, wait_for, wait_to_kill

import meta_rl.atomic as atomic_module
import meta_rl.cli as cli_module
from meta_rl.checkpoint import (
    FORMAT_VERSION,
    CheckpointError,
    CheckpointWriteError,
    checksum,
    load_checkpoint,
    state_leaves,
)
from meta_rl.cli import main
from meta_rl.config import ConfigError, TrainConfig
from meta_rl.returns import reinforce_losses
from meta_rl.rollout import collect
from meta_rl.runlock import LOCK_NAME, RunLockedError, StaleLockWarning, run_lock
from meta_rl.train import CHECKPOINT_NAME, NonFiniteError, TrainingInterrupted, train

pytestmark = pytest.mark.usefixtures("one_thread")

PLUGIN = "meta_rl_faults_plugin"
DATASET = "faults-synthetic"
# A plug-in module for subprocesses: registers a small synthetic dataset (and the env ids).
PLUGIN_SOURCE = f'''
import meta_rl.envs  # noqa: F401 - registers meta_rl/FewShot-v0
from meta_rl.data import register_dataset
from meta_rl.data.synthetic import prototype_splits

register_dataset({DATASET!r}, prototype_splits(36, 6, seed=0, class_name="c{{}}", group_name="g{{}}", name="faults"))
'''
S = STEPS_PER_UPDATE  # env steps per update (4 tasks of 9 steps)


def fault_config(updates: int = 6, **changes: Any) -> TrainConfig:
    """A tiny run on the plug-in's dataset with an MLP encoder, checkpointed every update, evaluated every 4."""
    return tiny_config(DATASET, updates, **{"env_module": PLUGIN, "encoder": "mlp", "eval_every": 4,
                                            "eval_episodes": 4, "checkpoint_every": 1, **changes})


@pytest.fixture(scope="module")
def plugin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The folder holding the plug-in module, importable here and in subprocesses."""
    folder = tmp_path_factory.mktemp("plugin")
    (folder / f"{PLUGIN}.py").write_text(PLUGIN_SOURCE)
    sys.path.insert(0, str(folder))
    try:
        yield folder
    finally:
        sys.path.remove(str(folder))
        sys.modules.pop(PLUGIN, None)


def spawn(plugin: Path, run_dir: Path, cfg: TrainConfig | None, *, resume: bool) -> subprocess.Popen[str]:
    """``python -m meta_rl.cli train`` on ``cfg`` (written as TOML) or ``--resume run_dir``."""
    return spawn_train(run_dir, cfg, resume=resume, plugin_dir=plugin, plugin=PLUGIN)


def scalars(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)] if tag in acc.Tags()["scalars"] else []


def assert_same_state(a: dict[str, Any], b: dict[str, Any]) -> None:
    """Exact equality of counters, policy, optimizer and RNG (torch.equal on every tensor)."""
    assert a["counters"] == b["counters"]
    for part in ("policy", "optimizer", "rng"):
        left, right = dict(state_leaves(a[part])), dict(state_leaves(b[part]))
        assert left.keys() == right.keys(), part
        for key, x in left.items():
            if isinstance(x, torch.Tensor):
                assert x.dtype == right[key].dtype and torch.equal(x, right[key]), f"{part}{key}"
            else:
                assert x == right[key], f"{part}{key}"


def no_leftovers(run_dir: Path) -> None:
    names = [p.name for p in run_dir.iterdir()]
    assert not [n for n in names if n.endswith(".tmp")], names
    assert LOCK_NAME not in names, names


@pytest.fixture(scope="module")
def reference(plugin: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[[int], dict[str, Any]]:
    """``reference(n)``: the checkpoint of an uninterrupted in-process run of ``n`` updates (cached)."""
    cache: dict[int, dict[str, Any]] = {}

    def get(updates: int) -> dict[str, Any]:
        if updates not in cache:
            before = torch.get_num_threads()
            run_dir = tmp_path_factory.mktemp(f"reference{updates}")
            try:
                train(fault_config(updates), run_dir, progress=False)
            finally:
                torch.set_num_threads(before)
            cache[updates] = load_checkpoint(run_dir / CHECKPOINT_NAME)
            cache[updates]["run_dir"] = run_dir
        return cache[updates]

    return get


# --------------------------------------------------------------------------------------------
# SIGINT / SIGTERM: stop at the end of the update, checkpoint, say how to resume
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["INT", "TERM"])
def test_signal_checkpoints_and_exits(plugin: Path, tmp_path: Path, reference: Callable[[int], dict[str, Any]],
                                      signum: int, code: int) -> None:
    run_dir = tmp_path / "run"
    cfg = fault_config(100_000, checkpoint_every=3)
    proc = spawn(plugin, run_dir, cfg, resume=False)
    wait_for(lambda: (run_dir / CHECKPOINT_NAME).is_file(), proc)
    holder = json.loads((run_dir / LOCK_NAME).read_text())
    assert holder["pid"] == proc.pid and holder["host"] == socket.gethostname()
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert f"interrupted by {signal.Signals(signum).name}" in err
    assert f"meta-rl train --resume {run_dir}" in err
    no_leftovers(run_dir)
    ckpt = load_checkpoint(run_dir / CHECKPOINT_NAME)
    done = ckpt["counters"]["update"]
    assert done >= 3 and ckpt["counters"]["env_steps"] == done * S
    # The checkpoint is the state after the last completed update (every update logs its loss).
    assert [step for step, _ in scalars(run_dir, "losses/policy")][-1] == done * S

    # Resume (in-process) for two more updates: the same parameters as an uninterrupted run.
    result = train(dataclasses.replace(cfg, total_env_steps=(done + 2) * S), run_dir, resume=True, progress=False)
    assert result["updates"] == done + 2
    ref = reference(done + 2) if done + 2 <= 40 else None
    if ref is not None:
        assert_same_state(load_checkpoint(run_dir / CHECKPOINT_NAME), ref)
    steps = [step for step, _ in scalars(run_dir, "losses/policy")]
    assert steps == [S * (i + 1) for i in range(done + 2)]
    no_leftovers(run_dir)


def test_signal_handlers_are_restored(plugin: Path, tmp_path: Path) -> None:
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    train(fault_config(1), tmp_path / "a", progress=False)
    assert {s: signal.getsignal(s) for s in before} == before
    with pytest.raises(ConfigError):
        train(fault_config(1, env_kwargs={"dataset": DATASET, "n_way": 99}), tmp_path / "b", progress=False)
    assert {s: signal.getsignal(s) for s in before} == before


def test_signal_in_process_raises_training_interrupted(plugin: Path, tmp_path: Path) -> None:
    """A SIGTERM during update 2 stops after it: TrainingInterrupted carries the exit code and the fix."""
    calls = 0

    def collector(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # handled by train(): no default termination
        return collect(*args, **kwargs)

    with pytest.raises(TrainingInterrupted, match=r"SIGTERM after update 2 .*meta-rl train --resume") as info:
        train(fault_config(10, checkpoint_every=100), tmp_path, progress=False, collector=collector)
    assert info.value.exit_code == 143 and info.value.update == 2
    assert load_checkpoint(tmp_path / CHECKPOINT_NAME)["counters"]["update"] == 2
    no_leftovers(tmp_path)


# --------------------------------------------------------------------------------------------
# SIGKILL at random moments, resumed each time: nothing lost, the same final state
# --------------------------------------------------------------------------------------------


def test_sigkill_at_random_moments_loses_nothing(plugin: Path, tmp_path: Path,
                                                 reference: Callable[[int], dict[str, Any]]) -> None:
    updates = 40
    cfg = fault_config(updates, eval_every=8)
    run_dir = tmp_path / "run"
    ckpt_path = run_dir / CHECKPOINT_NAME
    rng = random.Random(1234)
    targets = sorted(rng.sample(range(3, updates - 10), 3))  # kill once these updates are checkpointed
    progress = [-1]
    for target in [None, *targets]:  # first during start-up or the first updates, then after each target
        proc = spawn(plugin, run_dir, cfg, resume=ckpt_path.is_file())
        wait_to_kill(proc, run_dir, target, rng)
        assert proc.poll() is None, "the run ended before it was killed"
        proc.kill()
        proc.communicate()
        progress.append(saved_update(run_dir))  # every checkpoint ever left behind is whole and loadable
        assert progress[-1] >= progress[-2]
    proc = spawn(plugin, run_dir, cfg, resume=ckpt_path.is_file())
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert json.loads(out.strip().splitlines()[-1])["updates"] == updates
    no_leftovers(run_dir)

    ref = reference(updates)
    assert_same_state(load_checkpoint(ckpt_path), ref)
    # TensorBoard: one point per update, in order, without duplicates or gaps, equal to the reference.
    for tag in ("losses/policy", "charts/return", "charts_by_instance/accuracy_1"):
        got, want = scalars(run_dir, tag), scalars(ref["run_dir"], tag)
        assert [s for s, _ in got] == [S * (i + 1) for i in range(updates)], tag
        assert got == want, tag
    held = [s for s, _ in scalars(run_dir, "eval/accuracy")]
    assert held == sorted(set(held)) == [S * 8 * (i + 1) for i in range(updates // 8)]


def test_leftover_temp_files_are_removed_on_start(plugin: Path, tmp_path: Path) -> None:
    train(fault_config(1), tmp_path, progress=False)
    (tmp_path / f".{CHECKPOINT_NAME}.x1y2.tmp").write_bytes(b"half a checkpoint")
    train(fault_config(2), tmp_path, resume=True, progress=False)
    no_leftovers(tmp_path)


def test_fresh_restart_purges_a_killed_attempts_events(plugin: Path, tmp_path: Path) -> None:
    """A run killed before its first checkpoint starts again from scratch; its stale points are hidden."""
    train(fault_config(3), tmp_path, progress=False)
    (tmp_path / CHECKPOINT_NAME).unlink()  # as if killed before the checkpoint was written
    train(fault_config(3), tmp_path, progress=False)
    assert [s for s, _ in scalars(tmp_path, "losses/policy")] == [S, 2 * S, 3 * S]


# --------------------------------------------------------------------------------------------
# NaN / inf
# --------------------------------------------------------------------------------------------


def poison_losses(at: set[int], how: str) -> Callable[..., dict[str, torch.Tensor]]:
    """Loss terms (for ``train(algorithm=with_terms(...))``) whose loss (``how="loss"``) or gradients
    (``how="grad"``) are non-finite at the given calls."""
    real = reinforce_losses
    calls = 0

    def losses(log_probs: torch.Tensor, *args: Any) -> dict[str, torch.Tensor]:
        nonlocal calls
        calls += 1
        out = dict(real(log_probs, *args))
        if calls in at:
            if how == "loss":
                out["policy"] = out["policy"] * float("nan")
            else:  # finite loss, NaN gradients: d sqrt(x)/dx at 0 is inf, times 0
                out["policy"] = out["policy"] + (log_probs.sum() * 0).sqrt()
        return out

    return losses


def poisoned_collect(at: int, value: float, every: bool = False) -> Callable[..., Any]:
    """A collector (for ``train(collector=...)``) that sets a parameter to ``value`` at call ``at`` (or every call)."""
    calls = 0

    def collector(env: Any, policy: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if every or calls == at:
            with torch.no_grad():
                next(policy.parameters()).view(-1)[0] = value
        return collect(env, policy, *args, **kwargs)

    return collector


def test_nan_loss_stops_before_saving(plugin: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      reference: Callable[[int], dict[str, Any]]) -> None:
    ref = reference(2)
    losses = poison_losses({3, 4}, "loss")  # the 4th call: update 3 again, after resuming
    # The CLI's resume below trains with the same poisoned terms.
    monkeypatch.setattr(cli_module, "train", functools.partial(train, algorithm=with_terms(losses)))
    with pytest.raises(NonFiniteError, match=rf"losses/policy is nan at update 3 \(env step {3 * S}\).*"
                                             r"update 2\) is intact.*skip_nonfinite_updates") as info:
        train(fault_config(6), tmp_path, progress=False, algorithm=with_terms(losses))
    assert (info.value.quantity, info.value.update, info.value.env_steps) == ("losses/policy", 3, 3 * S)
    assert_same_state(load_checkpoint(tmp_path / CHECKPOINT_NAME), ref)
    assert [s for s, _ in scalars(tmp_path, "losses/policy")] == [S, 2 * S]
    no_leftovers(tmp_path)
    assert main(["train", "--resume", str(tmp_path), "--no-progress"]) == 1  # the CLI: a message, exit 1


def test_nan_gradient_and_parameter_are_named(plugin: Path, tmp_path: Path) -> None:
    with pytest.raises(NonFiniteError, match=r"gradient of \S+ is nan at update 2 "):
        train(fault_config(4), tmp_path / "grad", progress=False,
              algorithm=with_terms(poison_losses({2}, "grad")))
    assert load_checkpoint(tmp_path / "grad" / CHECKPOINT_NAME)["counters"]["update"] == 1
    with pytest.raises(NonFiniteError, match=r"parameter \S+ is inf at update 3 "):
        train(fault_config(4), tmp_path / "param", progress=False, collector=poisoned_collect(3, float("inf")))
    assert load_checkpoint(tmp_path / "param" / CHECKPOINT_NAME)["counters"]["update"] == 2


def test_skip_nonfinite_updates(plugin: Path, tmp_path: Path) -> None:
    result = train(fault_config(6, skip_nonfinite_updates=True), tmp_path, progress=False,
                   algorithm=with_terms(poison_losses({2, 4}, "grad")))
    assert result["updates"] == 6 and result["skipped_updates"] == 2
    ckpt = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    assert ckpt["faults"] == {"skipped_updates": 2}
    assert all(torch.isfinite(p).all() for p in ckpt["policy"].values() if p.is_floating_point())
    assert {int(s["step"]) for s in ckpt["optimizer"]["state"].values()} == {4}  # Adam stepped 4 times, not 6
    assert scalars(tmp_path, "faults/skipped_updates") == [(S * i, float(n)) for i, n in
                                                           zip(range(1, 7), (0, 1, 1, 2, 2, 2))]
    assert [s for s, _ in scalars(tmp_path, "losses/policy")] == [S, 3 * S, 5 * S, 6 * S]  # skipped ones not logged
    assert all(v == v for _, v in scalars(tmp_path, "losses/policy"))


def test_skip_cannot_skip_a_broken_parameter(plugin: Path, tmp_path: Path) -> None:
    with pytest.raises(NonFiniteError, match=r"parameter \S+ is nan at update 1 .*no checkpoint had been written"):
        train(fault_config(3, skip_nonfinite_updates=True), tmp_path, progress=False,
              collector=poisoned_collect(1, float("nan"), every=True))
    assert not (tmp_path / CHECKPOINT_NAME).exists()


def test_deferred_check_on_accelerators(plugin: Path, tmp_path: Path) -> None:
    """Without a host read per update (as on CUDA) the fault is found at the next checkpoint, named by update."""
    with pytest.raises(NonFiniteError, match=r"losses/policy.* is nan or inf at update 3 .*update 2\) is intact"):
        train(fault_config(8, checkpoint_every=2, log_every=100), tmp_path, progress=False,
              algorithm=with_terms(poison_losses({3}, "loss")), eager_guard=False)
    ckpt = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    assert ckpt["counters"]["update"] == 2
    assert all(torch.isfinite(p).all() for p in ckpt["policy"].values() if p.is_floating_point())


# --------------------------------------------------------------------------------------------
# damaged checkpoints: never a silent load
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def good_checkpoint(plugin: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    before = torch.get_num_threads()
    run_dir = tmp_path_factory.mktemp("good")
    try:
        train(fault_config(2), run_dir, progress=False)
    finally:
        torch.set_num_threads(before)
    return run_dir, (run_dir / CHECKPOINT_NAME).read_bytes()


def loads_unchanged(path: Path, original: dict[str, Any]) -> bool:
    """True if ``path`` loads with content equal to ``original``; False if it raises CheckpointError."""
    try:
        data = load_checkpoint(path)
    except CheckpointError:
        return False
    assert_same_state(data, original)
    assert data["config"] == original["config"]
    return True


def test_truncated_checkpoints(good_checkpoint: tuple[Path, bytes], tmp_path: Path) -> None:
    _, raw = good_checkpoint
    path = tmp_path / CHECKPOINT_NAME
    for length in (0, 1, 22, 100, 1000, len(raw) // 3, len(raw) // 2, len(raw) - 100, len(raw) - 22, len(raw) - 1):
        path.write_bytes(raw[:length])
        with pytest.raises(CheckpointError, match=r"unreadable.*truncated or corrupt"):
            load_checkpoint(path)


def stored_payload_spans(raw: bytes) -> list[tuple[int, int]]:
    """(start, end) byte offsets of each tensor storage's bytes in a torch zip checkpoint.

    Skips the pickle (a flipped memo index can leave what it builds unchanged) and torch's own
    bookkeeping records (``.format_version``, ``serialization_id``), which loading ignores.
    """
    spans = []
    for info in zipfile.ZipFile(io.BytesIO(raw)).infolist():
        if "/data/" not in info.filename:
            continue
        header = info.header_offset
        name_len = int.from_bytes(raw[header + 26 : header + 28], "little")
        extra_len = int.from_bytes(raw[header + 28 : header + 30], "little")
        start = header + 30 + name_len + extra_len
        spans.append((start, start + info.compress_size))
    return spans


def test_bit_flips_never_load_silently(good_checkpoint: tuple[Path, bytes], tmp_path: Path) -> None:
    run_dir, raw = good_checkpoint
    original = load_checkpoint(run_dir / CHECKPOINT_NAME)
    path = tmp_path / CHECKPOINT_NAME
    rng = random.Random(7)

    def flip_loads_unchanged(pos: int) -> bool:
        flipped = bytearray(raw)
        flipped[pos] ^= 1 << rng.randrange(8)
        path.write_bytes(bytes(flipped))
        return loads_unchanged(path, original)  # raises if the flip changed what is loaded

    # A flip anywhere either raises CheckpointError or hits a byte nobody reads (zip alignment
    # padding, unchecked header fields): it never changes what is loaded.
    for _ in range(100):
        flip_loads_unchanged(rng.randrange(len(raw)))
    # A flip inside any tensor's bytes is always caught (by the checksum).
    spans = stored_payload_spans(raw)
    assert sum(end - start for start, end in spans) > len(raw) // 2  # the tensors are most of the file
    for start, end in spans:
        for pos in {start, (start + end) // 2, end - 1, rng.randrange(start, end)}:
            assert not flip_loads_unchanged(pos), f"a flip at byte {pos} of a tensor loaded silently"


def test_checksum_catches_edited_content(good_checkpoint: tuple[Path, bytes], tmp_path: Path) -> None:
    run_dir, _ = good_checkpoint
    data = torch.load(run_dir / CHECKPOINT_NAME, weights_only=True)
    assert data["format_version"] == FORMAT_VERSION and data["checksum"] == checksum(data)
    name = next(iter(data["policy"]))
    data["policy"][name] = data["policy"][name].clone()
    data["policy"][name].view(-1)[0] += 1e-6
    path = tmp_path / CHECKPOINT_NAME
    torch.save(data, path)
    with pytest.raises(CheckpointError, match="fails its checksum"):
        load_checkpoint(path)
    torch.save({k: v for k, v in data.items() if k != "checksum"}, path)
    with pytest.raises(CheckpointError, match="lacks its 'checksum'"):
        load_checkpoint(path)
    # An older format (1: no checksum, 2: the flat config) is refused, naming the version and its writer.
    torch.save({**{k: v for k, v in data.items() if k not in ("checksum", "meta_rl_version")}, "format_version": 2},
               path)
    with pytest.raises(CheckpointError, match=r"format version 2, written by meta-rl 0\.1\.0 before 2026-12-07; "
                                              rf"this meta-rl .* reads format version {FORMAT_VERSION} only"):
        load_checkpoint(path)
    for version in (0, 1, 99, "3", 3.0):
        torch.save({**data, "format_version": version}, path)
        with pytest.raises(CheckpointError, match=rf"format version .* reads format version {FORMAT_VERSION} only"):
            load_checkpoint(path)


def test_zip_with_missing_entries(good_checkpoint: tuple[Path, bytes], tmp_path: Path) -> None:
    run_dir, raw = good_checkpoint
    original = load_checkpoint(run_dir / CHECKPOINT_NAME)
    archive = zipfile.ZipFile(io.BytesIO(raw))
    names = archive.namelist()
    path = tmp_path / CHECKPOINT_NAME
    outcome = {}
    for skip in [None, *names]:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as out:
            for name in names:
                if name != skip:
                    out.writestr(name, archive.read(name))
        path.write_bytes(buffer.getvalue())
        outcome[skip] = loads_unchanged(path, original)
    assert outcome[None]  # the re-zipped archive itself is fine
    data_entries = [n for n in names if n.endswith(("data.pkl", "/version")) or "/data/" in n]
    assert data_entries and not any(outcome[n] for n in data_entries)


def shapes_changed(data: dict[str, Any], change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    data = {**data, "policy": dict(data["policy"])}
    change(data["policy"])
    data["checksum"] = checksum(data)  # a consistent file: only the shapes are wrong
    return data


def test_wrong_shapes_name_the_mismatch(good_checkpoint: tuple[Path, bytes], tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    run_dir, _ = good_checkpoint
    data = load_checkpoint(run_dir / CHECKPOINT_NAME)
    name = next(k for k, v in data["policy"].items() if v.ndim == 2)
    shape = tuple(data["policy"][name].shape)
    cfg = TrainConfig.from_dict(data["config"])
    cases: list[tuple[Callable[[dict[str, Any]], None], str]] = [
        (lambda p: p.__setitem__(name, torch.zeros(shape[0] + 1, shape[1])),
         rf"entry '{name}' has shape \({shape[0] + 1}, {shape[1]}\) but the model expects \({shape[0]}, {shape[1]}\)"),
        (lambda p: p.pop(name), rf"missing \['{name}'\]"),
        (lambda p: p.__setitem__("extra.weight", torch.zeros(1)), r"unexpected \['extra.weight'\]"),
        (lambda p: p.__setitem__(name, [1, 2]), rf"entry '{name}' has shape list"),
    ]
    for i, (change, message) in enumerate(cases):
        folder = tmp_path / f"case{i}"
        folder.mkdir()
        torch.save(shapes_changed(data, change), folder / CHECKPOINT_NAME)
        with pytest.raises(CheckpointError, match=message):
            train(cfg, folder, resume=True, progress=False)
        assert main(["eval", str(folder), "--episodes", "2"]) == 2
        assert "meta-rl: error:" in capsys.readouterr().err
        assert sorted(p.name for p in folder.iterdir()) == [CHECKPOINT_NAME]  # nothing written, lock released


def test_malformed_counters_and_optimizer(good_checkpoint: tuple[Path, bytes], tmp_path: Path) -> None:
    run_dir, _ = good_checkpoint
    data = load_checkpoint(run_dir / CHECKPOINT_NAME)
    cfg = TrainConfig.from_dict(data["config"])
    bad_optimizer = {**data["optimizer"], "param_groups": [*data["optimizer"]["param_groups"]] * 2}
    for change, message in (({"counters": {"update": 2}}, "counters update = 2, env_steps = None; expected whole"),
                            ({"rng": {"actions": torch.zeros(3)}}, "malformed counters or RNG"),
                            ({"optimizer": bad_optimizer}, "cannot load optimizer")):
        broken = {**data, **change}
        broken["checksum"] = checksum(broken)
        torch.save(broken, tmp_path / CHECKPOINT_NAME)
        with pytest.raises(CheckpointError, match=message):
            train(cfg, tmp_path, resume=True, progress=False)


def test_checkpoint_from_another_config(good_checkpoint: tuple[Path, bytes], tmp_path: Path) -> None:
    _, raw = good_checkpoint
    (tmp_path / CHECKPOINT_NAME).write_bytes(raw)
    with pytest.raises(CheckpointError, match=r"another config \(hidden: 8 -> 16\)"):
        train(fault_config(4, hidden=16), tmp_path, resume=True, progress=False)
    # skip_nonfinite_updates may be switched on when resuming.
    assert train(fault_config(3, skip_nonfinite_updates=True), tmp_path, resume=True,
                 progress=False)["updates"] == 3


# --------------------------------------------------------------------------------------------
# two runs, one directory
# --------------------------------------------------------------------------------------------


def write_lock(run_dir: Path, pid: int, host: str | None = None) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / LOCK_NAME).write_text(json.dumps({"pid": pid, "host": host or socket.gethostname()}))


def hold_lock(run_dir: Path) -> subprocess.Popen[str]:
    """Another process that takes ``run_lock(run_dir)`` and sleeps holding it."""
    code = (f"import time; from meta_rl.runlock import run_lock\nwith run_lock({str(run_dir)!r}):\n"
            "    print('held', flush=True); time.sleep(120)")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    return holder


def test_live_lock_is_a_clear_error(plugin: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    holder = hold_lock(tmp_path)
    try:
        with pytest.raises(RunLockedError, match=rf"in use by PID {holder.pid} on this host.*kill {holder.pid}"):
            train(fault_config(2), tmp_path, progress=False)
        assert main(["train", "--run-dir", str(tmp_path), "env_module=" + PLUGIN, "--no-progress"]) == 2
        assert f"PID {holder.pid}" in capsys.readouterr().err
        assert sorted(p.name for p in tmp_path.iterdir()) == [LOCK_NAME]  # nothing else was written
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == holder.pid  # and the lock is theirs
    finally:
        holder.kill()  # SIGKILL: no clean-up runs, the kernel drops the flock, the record stays
        holder.wait()
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == holder.pid
    with pytest.warns(StaleLockWarning, match=rf"PID {holder.pid}, no longer running"):
        train(fault_config(2), tmp_path, progress=False)
    no_leftovers(tmp_path)


def test_stale_lock_is_taken_over(plugin: Path, tmp_path: Path) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    write_lock(tmp_path, dead.pid)
    with pytest.warns(StaleLockWarning, match="taking over the stale lock"):
        assert train(fault_config(2), tmp_path, progress=False)["updates"] == 2
    no_leftovers(tmp_path)
    (tmp_path / LOCK_NAME).write_text('{"pid": 12')  # a writer killed half-way through its record
    with pytest.warns(StaleLockWarning, match="unreadable"):
        train(fault_config(3), tmp_path, resume=True, progress=False)
    no_leftovers(tmp_path)
    (tmp_path / LOCK_NAME).write_text("")  # an empty lock file (filelock's own) is no sign of a crash
    with warnings.catch_warnings():
        warnings.simplefilter("error", StaleLockWarning)
        train(fault_config(4), tmp_path, resume=True, progress=False)
    no_leftovers(tmp_path)


def test_lock_held_in_this_process_or_on_another_host(plugin: Path, tmp_path: Path) -> None:
    with run_lock(tmp_path), pytest.raises(RunLockedError, match=rf"PID {os.getpid()}"):
        train(fault_config(1), tmp_path, progress=False)
    no_leftovers(tmp_path)
    write_lock(tmp_path, 1, host="elsewhere.example")
    with pytest.raises(RunLockedError, match=r"PID 1 on host 'elsewhere.example'.*delete"):
        train(fault_config(1), tmp_path, progress=False)


def test_lock_released_on_errors(plugin: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"n_way=99"):
        train(fault_config(1, env_kwargs={"dataset": DATASET, "n_way": 99}), tmp_path / "a", progress=False)
    assert not (tmp_path / "a").exists()  # a failed start leaves no folder behind
    with pytest.raises(NonFiniteError):
        train(fault_config(2), tmp_path / "b", progress=False, algorithm=with_terms(poison_losses({1}, "loss")))
    assert not (tmp_path / "b").exists()  # failed before its first checkpoint: its config and events go with it
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "keep.txt").write_text("mine")  # (a folder that was there before holds what it held)
    with pytest.raises(ConfigError, match=r"keep\.txt"):
        train(fault_config(2), tmp_path / "c", progress=False)
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["keep.txt"]


# --------------------------------------------------------------------------------------------
# disk full
# --------------------------------------------------------------------------------------------


def fill_disk_at(monkeypatch: pytest.MonkeyPatch, call: int) -> None:
    """The ``call``-th checkpoint write gets half its bytes onto the disk, then ENOSPC.

    Atomic writes before the first checkpoint (``config.json``) are not counted.
    """
    real = atomic_module._write_all
    calls = 0

    def write_all(fd: int, data: memoryview) -> None:
        nonlocal calls
        calls += 1
        if calls == call + 1:  # call 1 writes config.json
            real(fd, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd, data)

    monkeypatch.setattr(atomic_module, "_write_all", write_all)


def test_disk_full_keeps_the_previous_checkpoint(plugin: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 reference: Callable[[int], dict[str, Any]]) -> None:
    refs = reference(2), reference(5)
    fill_disk_at(monkeypatch, 3)
    path = tmp_path / CHECKPOINT_NAME
    with pytest.raises(CheckpointWriteError, match=rf"cannot write checkpoint {path}: the disk is full \(ENOSPC\); "
                                                   rf"the previous checkpoint {path} is intact.*--resume") as info:
        train(fault_config(5), tmp_path, progress=False)
    assert info.value.errno == errno.ENOSPC
    assert_same_state(load_checkpoint(path), refs[0])
    no_leftovers(tmp_path)
    monkeypatch.undo()
    # Space freed: resuming finishes the run exactly.
    train(fault_config(5), tmp_path, resume=True, progress=False)
    assert_same_state(load_checkpoint(path), refs[1])


def test_disk_full_on_the_first_checkpoint(plugin: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    fill_disk_at(monkeypatch, 1)
    toml = tmp_path / "cfg.toml"
    toml.write_text(fault_config(3).to_toml())
    assert main(["train", str(toml), "--run-dir", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "the disk is full" in err and "no previous checkpoint exists" in err
    assert not (tmp_path / "run").exists()  # no checkpoint was ever written: the folder it created goes
