"""Files written atomically, with one clear error for every way a write can fail.

:func:`write_atomic` writes a temporary file in the destination's folder, fsyncs it, gives it the
mode the user's umask asks for and renames it over the destination: a crash or a full disk at
any moment leaves the old file or the new one, never a partial one, and a failed write leaves no
temporary file behind. Every ``OSError`` on the way (the folder, the temporary file, the write,
fsync, rename) becomes a :class:`WriteError` that names the path, the cause and the fix.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path

__all__ = ["WriteError", "describe_os_error", "file_mode", "write_atomic", "write_error"]

_CHUNK = 1 << 22  # bytes per write() call
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
_NO_PERMISSION = (errno.EACCES, errno.EPERM)


class WriteError(OSError):
    """A file could not be written (disk full, read-only, no permission, ...); the message says why and what to do."""


def describe_os_error(exc: OSError, folder: Path) -> tuple[str, str]:
    """The cause of an ``OSError`` in words and the fix a user can apply to ``folder``."""
    code = errno.errorcode.get(exc.errno or 0, str(exc.errno))
    if exc.errno in _DISK_FULL:
        return f"the disk is full ({code})", "free some space"
    if exc.errno == errno.EROFS:
        return f"the file system is read-only ({code})", "choose a folder on a writable file system"
    if exc.errno in _NO_PERMISSION:
        return (f"permission denied ({code})",
                f"make {folder} writable by this user (e.g. chmod u+w {folder}) or choose another folder")
    return f"{type(exc).__name__}: {exc.strerror or exc} ({code})", "fix the cause"


def write_error(what: str, path: Path, exc: OSError, *, kept: str = "", then: str = "",
                error: type[WriteError] = WriteError) -> WriteError:
    """A :class:`WriteError` for writing ``what`` at ``path``, carrying ``exc``'s errno.

    Args:
        what: the kind of file, e.g. ``"checkpoint"``.
        path: the file that could not be written.
        exc: the underlying error.
        kept: what is still intact, e.g. ``"the previous checkpoint ... is intact"``.
        then: what to do once fixed, e.g. ``"resume with meta-rl train --resume DIR"``.
        error: the class of the error (a :class:`WriteError`), e.g. a checkpoint's own.
    """
    cause, fix = describe_os_error(exc, path.parent)
    message = f"cannot write {what} {path}: {cause}"
    if kept:
        message += f"; {kept}"
    message += f". {fix[0].upper()}{fix[1:]}"
    message += f", then {then}." if then else "."
    err = error(message)
    err.errno = exc.errno  # (not .filename: OSError would then print "[Errno N] ..." instead of the message)
    return err


def file_mode() -> int:
    """The mode a new regular file gets under the process's umask (``0o666 & ~umask``)."""
    umask: int | None = None
    with contextlib.suppress(OSError, ValueError):  # Linux >= 4.7 shows the umask without changing it
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                umask = int(line.split()[1], 8)
                break
    if umask is None:
        umask = os.umask(0o022)
        os.umask(umask)
    return 0o666 & ~umask


def _write_all(fd: int, data: memoryview) -> None:
    """Write every byte of ``data`` to ``fd`` (``os.write`` may write less than asked)."""
    while data:
        written = os.write(fd, data[:_CHUNK])
        data = data[written:]


def write_atomic(path: str | Path, data: bytes | bytearray | memoryview, *, what: str = "file", kept: str = "",
                 then: str = "", error: type[WriteError] = WriteError) -> None:
    """Write ``data`` to ``path`` atomically (temporary file, fsync, umask mode, rename, fsync of the folder).

    Raises:
        WriteError: any step failed (as ``error``); the message names ``path``, the cause and the fix, and
            says what is intact (``kept``, default: the file as it was) and what to do next (``then``).
    """
    path = Path(path)
    if not kept:
        kept = f"the previous {path.name} is intact" if path.is_file() else "nothing was written"
    kept += " and no temporary file was left behind"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise write_error(what, path, exc, kept=kept, then=then, error=error) from exc
    try:
        try:
            _write_all(fd, memoryview(data).cast("B"))
            os.fsync(fd)
            os.fchmod(fd, file_mode())  # mkstemp makes the file private; follow the user's umask
        finally:
            os.close(fd)
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise write_error(what, path, exc, kept=kept, then=then, error=error) from exc
        raise
