"""One training process per run directory: an ``flock`` on ``DIR/.lock`` (via ``filelock``).

The kernel drops the lock when its process dies, however it dies, so a crashed run never blocks
the next one. The lock file holds the owner's PID and host as JSON, so that a second run pointed
at ``DIR`` is told who holds it; a record left by a run that did not exit cleanly is reported
with a warning when the next run takes the lock. A record from another host is refused, because
``flock`` on a network file system may not reach across hosts.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import filelock

from meta_rl.atomic import write_error
from meta_rl.config import ConfigError

__all__ = ["LOCK_NAME", "RunLockedError", "StaleLockWarning", "run_lock"]

LOCK_NAME = ".lock"


class RunLockedError(ConfigError):
    """Another live process is training in the same run directory."""


class StaleLockWarning(UserWarning):
    """The lock file still held the record of a run that did not exit cleanly."""


def _parse(text: str) -> dict[str, Any] | None:
    """A lock record ``{"pid": int, "host": str}``, or None if ``text`` is not one."""
    try:
        data = json.loads(text)
    except ValueError:
        return None
    return data if isinstance(data, dict) and isinstance(data.get("pid"), int) else None


def _read_fd(fd: int) -> str:
    chunks, offset = [], 0
    while chunk := os.pread(fd, 65536, offset):
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks).decode("utf-8", "replace")


def _take(path: Path, fd: int) -> None:
    """Called with the lock just acquired: judge the record left in it, then write ours."""
    host = socket.gethostname()
    left = _read_fd(fd)
    holder = _parse(left)
    if holder is not None and holder.get("host", host) != host:
        raise RunLockedError(
            f"run directory {path.parent} is locked by PID {holder['pid']} on host {holder['host']!r} ({path}); "
            f"wait for that run to finish, or, if it is no longer running, delete {path}."
        )
    if left:  # an empty file is one filelock made; a record is from a run that did not exit cleanly
        what = f"PID {holder['pid']}, no longer running" if holder else "unreadable"
        warnings.warn(f"taking over the stale lock {path} ({what}); the run that left it did not exit cleanly.",
                      StaleLockWarning, stacklevel=2)
    record = json.dumps({"pid": os.getpid(), "host": host}).encode()
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, record, 0)
        os.fsync(fd)
    except BaseException:
        path.unlink(missing_ok=True)  # still ours to remove: filelock releases it as this error passes
        raise


def _refusal(path: Path) -> RunLockedError:
    """The error for a lock another process holds, naming it from its record."""
    try:
        holder = _parse(path.read_text())
    except OSError:
        holder = None
    if holder is None:  # it has the lock but has not written its record yet
        who, stop = "another process", "stop it"
    elif holder.get("host", socket.gethostname()) != socket.gethostname():
        who, stop = f"PID {holder['pid']} on host {holder['host']!r}", "stop it there"
    else:
        who, stop = f"PID {holder['pid']} on this host", f"stop it (kill {holder['pid']})"
    return RunLockedError(
        f"run directory {path.parent} is in use by {who} ({path}); two runs must not write one directory. "
        f"Wait for it to finish or {stop}, or choose another --run-dir."
    )


@contextlib.contextmanager
def run_lock(run_dir: str | Path) -> Iterator[Path]:
    """Hold ``run_dir/.lock`` for the duration of the block; release and remove it on exit, normal or not.

    A second lock on the same directory conflicts even within one process (each ``run_lock`` opens
    its own descriptor).

    Raises:
        RunLockedError: another process (or another ``run_lock`` in this one) holds the lock, or a
            record from another host is in it.
        WriteError: the folder or the lock cannot be written (read-only, permission, disk full).
    """
    run_dir = Path(run_dir)
    path = run_dir / LOCK_NAME
    lock = filelock.FileLock(path, fallback_to_soft=False, on_acquired=lambda fd: _take(path, fd))
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        lock.acquire(blocking=False)
    except filelock.Timeout:
        raise _refusal(path) from None
    except OSError as exc:
        raise write_error("the run lock", path, exc, kept="nothing in it was changed",
                          then="start the run again") from exc
    try:
        yield path
    finally:
        # Unlink while still holding: a contender that opened the old file sees it unlinked and retries.
        with contextlib.suppress(OSError):
            path.unlink()
        lock.release()
