"""One training process per run directory: a lock file holding the owner's PID and host.

``DIR/.lock`` is created with ``O_CREAT | O_EXCL``. A second run pointed at ``DIR`` while the
owner lives gets :class:`RunLockedError` naming the PID; a lock left by a process that died
without cleaning up (SIGKILL, power loss) is taken over with a warning.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from meta_rl.atomic import write_error
from meta_rl.config import ConfigError

try:  # POSIX: serialise lock takeovers between processes
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["LOCK_NAME", "RunLockedError", "StaleLockWarning", "pid_alive", "run_lock"]

LOCK_NAME = ".lock"


class RunLockedError(ConfigError):
    """Another live process is training in the same run directory."""


class StaleLockWarning(UserWarning):
    """A lock left by a dead process was taken over."""


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux ``/proc``), or None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
        return int(fields[19])  # field 22 of stat: starttime
    except (OSError, ValueError, IndexError):
        return None


def _zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat[stat.rindex(")") + 2 :].split()[0] in ("Z", "X")
    except (OSError, ValueError, IndexError):
        return False


def pid_alive(pid: int) -> bool:
    """Whether a process with this PID runs on this host (zombies count as dead)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by another user
        return True
    except OSError:
        return False
    return not _zombie(pid)


def _read(path: Path) -> dict[str, Any] | None:
    """The lock's content, or None if it is empty or unparseable (a writer died mid-write)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("pid"), int) else None


def _holder_alive(holder: dict[str, Any]) -> bool:
    pid = int(holder["pid"])
    if not pid_alive(pid):
        return False
    started = holder.get("started")
    if isinstance(started, int):
        now = _start_time(pid)
        if now is not None and now != started:
            return False  # the PID was reused by an unrelated process
    return True


@contextlib.contextmanager
def _serialised(folder: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``folder`` so two processes never take over a lock together."""
    if fcntl is None:  # pragma: no cover
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the flock


def _acquire(run_dir: Path) -> str:
    path = run_dir / LOCK_NAME
    host = socket.gethostname()
    token = secrets.token_hex(8)
    mine = {"pid": os.getpid(), "host": host, "started": _start_time(os.getpid()), "token": token}
    with _serialised(run_dir):
        for _ in range(3):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = _read(path)
                if holder is not None and holder.get("host", host) != host:
                    raise RunLockedError(
                        f"run directory {run_dir} is locked by PID {holder['pid']} on host {holder['host']!r} "
                        f"({path}); wait for that run to finish, or, if it is no longer running, delete {path}."
                    ) from None
                if holder is not None and _holder_alive(holder):
                    raise RunLockedError(
                        f"run directory {run_dir} is in use by PID {holder['pid']} on this host ({path}); "
                        "two runs must not write one directory. Wait for it to finish or stop it "
                        f"(kill {holder['pid']}), or choose another --run-dir."
                    ) from None
                what = f"PID {holder['pid']}, no longer running" if holder else "unreadable"
                warnings.warn(
                    f"taking over the stale lock {path} ({what}); the run that left it did not exit cleanly.",
                    StaleLockWarning,
                    stacklevel=4,
                )
                path.unlink(missing_ok=True)
                continue
            try:
                with os.fdopen(fd, "w") as f:
                    json.dump(mine, f)
                    f.flush()
                    os.fsync(f.fileno())
            except BaseException:
                path.unlink(missing_ok=True)  # a half-written lock would read as stale to the next run
                raise
            return token
    raise RunLockedError(f"could not create the lock {path}; another process keeps re-creating it.")


def _release(run_dir: Path, token: str) -> None:
    path = run_dir / LOCK_NAME
    holder = _read(path)
    if holder is not None and holder.get("token") == token:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def run_lock(run_dir: str | Path) -> Iterator[Path]:
    """Hold ``run_dir/.lock`` for the duration of the block; release it on exit, normal or not.

    Raises:
        RunLockedError: a live process (this host) or any process on another host holds the lock.
        WriteError: the folder or the lock cannot be written (read-only, permission, disk full).
    """
    run_dir = Path(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        token = _acquire(run_dir)
    except OSError as exc:
        raise write_error("the run lock", run_dir / LOCK_NAME, exc, kept="nothing in it was changed",
                          then="start the run again") from exc
    try:
        yield run_dir / LOCK_NAME
    finally:
        _release(run_dir, token)
