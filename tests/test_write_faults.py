"""Read-only, permission-denied and full file systems at every place training writes.

Each fault is injected at one system call (the tests run as root in CI, where ``chmod`` does not
stop writes): creating the run directory or its lock, writing or fsyncing the lock, creating,
writing, fsyncing or renaming the temporary file of ``config.json`` or of a checkpoint, and
opening or appending to TensorBoard's event file. Every one must give one :class:`WriteError`
naming the path, the cause and the fix, keep the last checkpoint and leave no temporary file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fault_injection import CAUSES, WRITE_SITES, Fault, inject, named
from tiny_runs import tiny_config

import meta_rl.checkpoint as checkpoint_module
from meta_rl.atomic import WriteError
from meta_rl.checkpoint import CheckpointError, load_checkpoint
from meta_rl.cli import main
from meta_rl.config import TrainConfig
from meta_rl.runlock import LOCK_NAME
from meta_rl.train import CHECKPOINT_NAME, train

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    # TensorBoard's writer thread must not print its own traceback: the trainer reports the error once.
    pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning"),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="maps file descriptors to paths via /proc"),
]

UPDATES = 4


def tiny(dataset: str, **changes: Any) -> TrainConfig:
    """A tiny run of ``UPDATES`` updates with an MLP encoder, checkpointed every update, never evaluated."""
    return tiny_config(dataset, UPDATES, **{"encoder": "mlp", "eval_every": 0, "checkpoint_every": 1, **changes})


def leftovers(run_dir: Path) -> list[str]:
    return sorted(p.name for p in run_dir.glob("*.tmp")) + ([LOCK_NAME] if (run_dir / LOCK_NAME).exists() else [])


@pytest.mark.parametrize("code", list(CAUSES), ids=[errno.errorcode[c] for c in CAUSES])
@pytest.mark.parametrize("where", list(WRITE_SITES))
def test_write_fault_is_one_clear_error_and_loses_nothing(
    proto_dataset: str, tmp_path: Path, where: str, code: int
) -> None:
    site, matches, nth, file_name, had_checkpoint = WRITE_SITES[where]
    run_dir = tmp_path / "run"
    fault = Fault(code, matches, nth)
    with inject(site, fault), pytest.raises(WriteError) as info:
        train(tiny(proto_dataset), run_dir, progress=False)
    assert fault.seen >= nth, f"the fault at {where} was never reached"
    message = str(info.value)
    cause, fix = CAUSES[code]
    assert "cannot write " in message and cause in message and fix in message, message
    assert str(run_dir / file_name) in message
    assert info.value.errno == code
    if run_dir.exists():
        assert leftovers(run_dir) == []
    ckpt = run_dir / CHECKPOINT_NAME
    if had_checkpoint:
        assert "is intact" in message, message
        saved = load_checkpoint(ckpt)  # the last good one, readable
        assert saved["counters"]["update"] >= 1
        # Once the cause is fixed the run resumes and finishes.
        assert train(tiny(proto_dataset), run_dir, resume=True, progress=False)["updates"] == UPDATES
    else:
        assert not ckpt.exists()


@pytest.mark.parametrize("where", ["lock create", "config.json rename", "checkpoint fsync", "events file later"])
def test_cli_reports_a_write_fault_without_a_traceback(
    proto_dataset: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], where: str
) -> None:
    site, matches, nth, _, _ = WRITE_SITES[where]
    args = [f"env_kwargs.dataset={proto_dataset}", "env_kwargs.n_way=3", "env_kwargs.instances_per_class=3",
            "num_envs=4", "encoder=mlp", "encoder_hidden=[16]", "hidden=8", "core_kwargs.key_dim=8",
            f"total_env_steps={UPDATES * 36}", "log_every=1", "eval_every=0", "checkpoint_every=1", "device=cpu"]
    with inject(site, Fault(errno.EROFS, matches, nth)):
        code = main(["train", "--run-dir", str(tmp_path / "run"), "--no-progress", *args])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "meta-rl: error: cannot write" in err and "read-only (EROFS)" in err
    assert "Traceback" not in err, err


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002, 0o077])
def test_files_follow_the_umask(proto_dataset: str, tmp_path: Path, mask: int) -> None:
    with umask(mask):
        train(tiny(proto_dataset, total_env_steps=36), tmp_path / "run", progress=False)
    for name in (CHECKPOINT_NAME, "config.json"):
        assert stat.S_IMODE((tmp_path / "run" / name).stat().st_mode) == 0o666 & ~mask, name


def test_unreadable_checkpoint_is_not_called_corrupt(proto_dataset: str, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    train(tiny(proto_dataset, total_env_steps=36), tmp_path / "run", progress=False)
    path = tmp_path / "run" / CHECKPOINT_NAME
    real_open = open

    def open_(file: Any, *args: Any, **kwargs: Any) -> Any:
        if os.fspath(file) == str(path):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module, "open", open_, raising=False)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert f"cannot read checkpoint {path}: permission denied (EACCES)" in message
    assert "not known to be damaged" in message and "chmod a+r" in message
    assert "corrupt" not in message and "backup" not in message


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_checkpoint_without_read_permission_is_not_called_corrupt(proto_dataset: str, tmp_path: Path) -> None:
    train(tiny(proto_dataset, total_env_steps=36), tmp_path / "run", progress=False)
    path = tmp_path / "run" / CHECKPOINT_NAME
    path.chmod(0)
    try:
        with pytest.raises(CheckpointError, match="permission denied"):
            load_checkpoint(path)
    finally:
        path.chmod(0o644)


def test_resume_in_a_read_only_directory_keeps_the_checkpoint(proto_dataset: str, tmp_path: Path) -> None:
    train(tiny(proto_dataset, total_env_steps=72), tmp_path / "run", progress=False)
    before = (tmp_path / "run" / CHECKPOINT_NAME).read_bytes()
    refused = r"cannot write the run lock .*read-only \(EROFS\); nothing in it was changed"
    with inject("open", Fault(errno.EROFS, named(LOCK_NAME))), pytest.raises(WriteError, match=refused):
        train(tiny(proto_dataset, total_env_steps=144), tmp_path / "run", resume=True, progress=False)
    assert (tmp_path / "run" / CHECKPOINT_NAME).read_bytes() == before
