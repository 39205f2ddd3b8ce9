"""File-system faults injected at one system call, for drills (``faults.py``) and tests.

A :class:`Fault` raises ``OSError(code)`` from the n-th call of one system call whose path
matches; :func:`inject` installs it for the duration of a ``with`` block. The sites are every
call through which training writes: creating the run directory and its lock, fsyncing the lock,
creating, writing, fsyncing and renaming an atomic write's temporary file (``config.json``,
checkpoints) and writing TensorBoard's event file. Injecting at the call works where ``chmod``
cannot (root ignores it) and needs no full disk.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

from tensorboard.compat.tensorflow_stub.io.gfile import LocalFileSystem

import meta_rl.atomic as atomic_module
from meta_rl.lifecycle import CHECKPOINT_NAME
from meta_rl.runlock import LOCK_NAME

__all__ = ["CAUSES", "SITES", "WRITE_SITES", "Fault", "Site", "inject", "named"]

#: What the error message of a write failing with each errno says: its cause and the start of its fix.
CAUSES = {
    errno.ENOSPC: ("the disk is full (ENOSPC)", "Free some space"),
    errno.EROFS: ("the file system is read-only (EROFS)", "Choose a folder on a writable file system"),
    errno.EACCES: ("permission denied (EACCES)", "writable by this user"),
}

class Fault:
    """``OSError(code)`` from the ``nth`` (1-based) call whose path ``matches``; ``seen`` counts matching calls."""

    def __init__(self, code: int, matches: Callable[[str], bool], nth: int = 1) -> None:
        self.code, self.matches, self.nth, self.seen = code, matches, nth, 0

    def hit(self, path: str) -> bool:
        """Count a call on ``path`` if it matches; True if it is the call that fails."""
        if not self.matches(path):
            return False
        self.seen += 1
        return self.seen == self.nth

    def error(self) -> OSError:
        """The error the failing call raises."""
        return OSError(self.code, os.strerror(self.code))


def named(fragment: str) -> Callable[[str], bool]:
    """Matches paths whose file name contains ``fragment``."""
    return lambda path: fragment in os.path.basename(path)


def _fd_path(fd: int) -> str:
    """The path of the file open as ``fd``."""
    return os.readlink(f"/proc/self/fd/{fd}")  # Linux


@contextlib.contextmanager
def _replaced(owner: Any, name: str, value: Any) -> Iterator[None]:
    """``owner.name`` set to ``value`` inside the block, restored after it."""
    before = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, before)


def _failing_mkdir(fault: Fault) -> Callable[..., None]:
    """``Path.mkdir`` that raises ``fault`` for the directory it matches."""
    real_mkdir = Path.mkdir

    def mkdir(self: Path, *args: Any, **kwargs: Any) -> None:
        if fault.hit(str(self)):
            raise fault.error()
        real_mkdir(self, *args, **kwargs)

    return mkdir


def _failing_open(fault: Fault) -> Callable[..., int]:
    """``os.open`` that raises ``fault`` when it creates (``O_CREAT``) a file it matches."""
    real_open = os.open

    def open_(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if flags & os.O_CREAT and fault.hit(os.fspath(path)):
            raise fault.error()
        return real_open(path, flags, *args, **kwargs)

    return open_


def _failing_mkstemp(fault: Fault) -> Callable[..., Any]:
    """``tempfile.mkstemp`` that raises ``fault`` for a ``dir``/``prefix`` it matches."""
    real_mkstemp = tempfile.mkstemp

    def mkstemp(*args: Any, **kwargs: Any) -> Any:
        if fault.hit(os.path.join(str(kwargs.get("dir", "")), str(kwargs.get("prefix", "")))):
            raise fault.error()
        return real_mkstemp(*args, **kwargs)

    return mkstemp


def _failing_write_all(fault: Fault) -> Callable[[int, memoryview], None]:
    """``meta_rl.atomic._write_all`` that writes half the bytes of a file it matches, then raises ``fault``."""
    real_write_all = atomic_module._write_all

    def write_all(fd: int, data: memoryview) -> None:
        if fault.hit(_fd_path(fd)):
            real_write_all(fd, data[: len(data) // 2])
            raise fault.error()
        real_write_all(fd, data)

    return write_all


def _failing_fsync(fault: Fault) -> Callable[[int], None]:
    """``os.fsync`` that raises ``fault`` for a file it matches."""
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if fault.hit(_fd_path(fd)):
            raise fault.error()
        real_fsync(fd)

    return fsync


def _failing_replace(fault: Fault) -> Callable[..., None]:
    """``os.replace`` that raises ``fault`` when the destination matches."""
    real_replace = os.replace

    def replace(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        if fault.hit(os.fspath(dst)):
            raise fault.error()
        real_replace(src, dst, *args, **kwargs)

    return replace


def _failing_event_write(fault: Fault) -> Callable[..., None]:
    """TensorBoard's ``LocalFileSystem._write`` that raises ``fault`` for an event file it matches."""
    real_write = LocalFileSystem._write

    def write(self: Any, filename: str | bytes, *args: Any, **kwargs: Any) -> None:
        if fault.hit(os.fsdecode(filename)):
            raise fault.error()
        real_write(self, filename, *args, **kwargs)

    return write


class Site(NamedTuple):
    """A call a fault can be injected into.

    Attributes:
        description: The call, and what training writes through it.
        owner: The module or class that holds the call.
        attribute: The call's name in ``owner``.
        failing: Builds the stand-in that raises a given :class:`Fault` and otherwise makes the real call.
    """

    description: str
    owner: Any
    attribute: str
    failing: Callable[[Fault], Callable[..., Any]]


#: Where a fault can be injected, by name.
SITES: dict[str, Site] = {
    "mkdir": Site("pathlib.Path.mkdir (the run directory)", Path, "mkdir", _failing_mkdir),
    "open": Site("os.open with O_CREAT (the lock)", os, "open", _failing_open),
    "mkstemp": Site("tempfile.mkstemp (an atomic write's temporary file)", tempfile, "mkstemp", _failing_mkstemp),
    "write": Site("meta_rl.atomic._write_all (half the bytes land, then the error)", atomic_module, "_write_all",
                  _failing_write_all),
    "fsync": Site("os.fsync", os, "fsync", _failing_fsync),
    "rename": Site("os.replace", os, "replace", _failing_replace),
    "events": Site("tensorboard's LocalFileSystem._write (the event file)", LocalFileSystem, "_write",
                   _failing_event_write),
}


@contextlib.contextmanager
def inject(site: str, fault: Fault) -> Iterator[Fault]:
    """Install ``fault`` at ``site`` (a key of :data:`SITES`) inside the block.

    Args:
        site: Which call fails (a key of :data:`SITES`).
        fault: The error, the paths it matches and the matching call it fails on.

    Yields:
        ``fault``, whose ``seen`` counts the matching calls made so far.

    Raises:
        ValueError: ``site`` is not a key of :data:`SITES`.
    """
    if site not in SITES:
        raise ValueError(f"site = {site!r} is not one of {sorted(SITES)}; pick one of those.")
    where = SITES[site]
    with _replaced(where.owner, where.attribute, where.failing(fault)):
        yield fault


def _checkpoint_exists(path: str) -> bool:
    """An event file whose run directory already holds a checkpoint."""
    return "tfevents" in path and (Path(path).parent / CHECKPOINT_NAME).exists()


#: Every place a training run writes, as (site, which path, nth matching call, the file the error names
#: inside the run directory, whether a checkpoint exists before the fault). A run directory's name ends in "run".
WRITE_SITES: dict[str, tuple[str, Callable[[str], bool], int, str, bool]] = {
    "run directory": ("mkdir", lambda p: os.path.basename(p).endswith("run"), 1, LOCK_NAME, False),
    "lock create": ("open", named(LOCK_NAME), 1, LOCK_NAME, False),
    "lock fsync": ("fsync", named(LOCK_NAME), 1, LOCK_NAME, False),
    "config.json temp file": ("mkstemp", named(".config.json."), 1, "config.json", False),
    "config.json write": ("write", named(".config.json."), 1, "config.json", False),
    "config.json fsync": ("fsync", named(".config.json."), 1, "config.json", False),
    "config.json rename": ("rename", named("config.json"), 1, "config.json", False),
    "events file open": ("events", named("tfevents"), 1, "events.out.tfevents.*", False),
    "events file later": ("events", _checkpoint_exists, 1, "events.out.tfevents.*", True),
    "first checkpoint temp file": ("mkstemp", named(f".{CHECKPOINT_NAME}."), 1, CHECKPOINT_NAME, False),
    "checkpoint temp file": ("mkstemp", named(f".{CHECKPOINT_NAME}."), 3, CHECKPOINT_NAME, True),
    "checkpoint write": ("write", named(f".{CHECKPOINT_NAME}."), 3, CHECKPOINT_NAME, True),
    "checkpoint fsync": ("fsync", named(f".{CHECKPOINT_NAME}."), 3, CHECKPOINT_NAME, True),
    "checkpoint rename": ("rename", named(CHECKPOINT_NAME), 3, CHECKPOINT_NAME, True),
}
