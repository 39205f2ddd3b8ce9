"""Checkpoints written atomically and read back with checks, never silently.

A checkpoint is a ``torch.save`` dict with its format version, the meta-rl version that wrote it and a
SHA-256 checksum of its content (``"checksum"``), so a flipped bit anywhere is caught on load instead
of resuming from silently damaged parameters. A checkpoint of another format version is refused with a
message naming that version and the release that wrote it: meta-rl 0.x keeps no readers of old formats.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import importlib.metadata
import io
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from meta_rl.atomic import WriteError, write_atomic

__all__ = [
    "FORMAT_VERSION",
    "CheckpointError",
    "CheckpointWriteError",
    "check_state_shapes",
    "checksum",
    "load_checkpoint",
    "load_state",
    "malformed_state",
    "read_counters",
    "read_dataset",
    "save_checkpoint",
    "state_leaves",
]

#: 4: the policy's credit baseline (``reward_mean``) and no separate ``gamma`` entry (the config holds it); 3: the
#: config in sections with ``core_kwargs`` and ``read_head``, batch-first core states, the policy's memory-read head
#: as one module (``read_head.*``); 2 had a checksum; 1 had none.
FORMAT_VERSION = 4
REQUIRED_KEYS = ("format_version", "config", "policy", "optimizer", "counters", "rng")
WRITER_KEY = "meta_rl_version"
CHECKSUM_KEY = "checksum"


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, partial or from an incompatible version."""


class CheckpointWriteError(CheckpointError, WriteError):
    """A checkpoint could not be written (disk full, no permission, ...); the previous one is untouched."""


def _feed(h: Any, obj: Any) -> None:
    """Hash ``obj`` (nested dicts, lists, tuples, tensors and plain values) deterministically."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)};".encode())
        for key in sorted(obj, key=repr):
            h.update(f"{key!r}:".encode())
            _feed(h, obj[key])
    elif isinstance(obj, (set, frozenset)):  # iteration order varies between processes: sort
        h.update(f"S{len(obj)};".encode())
        for item in sorted(obj, key=repr):
            _feed(h, item)
    elif isinstance(obj, (list, tuple)):
        h.update(f"{'L' if isinstance(obj, list) else 'U'}{len(obj)};".encode())
        for item in obj:
            _feed(h, item)
    else:
        h.update(f"V{type(obj).__name__}:{obj!r};".encode())


def checksum(data: dict[str, Any]) -> str:
    """SHA-256 of a checkpoint's content (every entry but the checksum itself)."""
    h = hashlib.sha256()
    _feed(h, {k: v for k, v in data.items() if k != CHECKSUM_KEY})
    return "sha256:" + h.hexdigest()


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` atomically: a temporary file in the same folder, fsync, rename.

    A crash (or a full disk) at any moment leaves either the old file or the new one, never a
    partial one, and no temporary file is left behind by a failed write.

    Raises:
        CheckpointWriteError: the file could not be written (the message says why, e.g. disk full).
    """
    path = Path(path)
    data = {"format_version": FORMAT_VERSION, WRITER_KEY: _package_version(), **payload}
    data[CHECKSUM_KEY] = checksum(data)
    buffer = io.BytesIO()
    torch.save(data, buffer)
    kept = (f"the previous checkpoint {path} is intact" if path.is_file()
            else "no previous checkpoint exists (nothing was lost)")
    write_atomic(path, buffer.getbuffer(), what="checkpoint", kept=kept,
                 then=f"resume with meta-rl train --resume {path.parent}", error=CheckpointWriteError)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Raises:
        CheckpointError: the file is missing, truncated or corrupt, lacks a required entry, or
            was written by another format version.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:  # tells "cannot read" apart from "damaged" before torch.load
            f.read(1)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise CheckpointError(
            f"checkpoint {path} does not exist; train first or point at a run directory with one."
        ) from None
    except PermissionError as exc:
        raise CheckpointError(
            f"cannot read checkpoint {path}: permission denied ({errno.errorcode.get(exc.errno or 0, '')}). The "
            f"file is not known to be damaged: ask its owner to make it readable (chmod a+r {path}, and a+x on "
            "its folders) or run as that user."
        ) from exc
    except OSError as exc:
        raise CheckpointError(
            f"cannot read checkpoint {path}: {type(exc).__name__}: {exc}; fix the cause (the file may be intact)."
        ) from exc
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for damaged files
        raise CheckpointError(
            f"checkpoint {path} is unreadable ({type(exc).__name__}: {str(exc)[:200]}); it is truncated or "
            "corrupt. Restore it from a backup or start a new run."
        ) from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(data).__name__}, not a meta-rl checkpoint.")
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {missing}; it was not written by meta-rl's trainer.")
    version = data["format_version"]
    if type(version) is not int or version != FORMAT_VERSION:
        writer = data.get(WRITER_KEY, "0.1.0 before 2026-12-07" if version in (1, 2) else "an unknown version")
        raise CheckpointError(
            f"checkpoint {path} has format version {version!r}, written by meta-rl {writer}; this meta-rl "
            f"{_package_version()} reads format version {FORMAT_VERSION} only. Evaluate or resume it with the "
            "meta-rl release that wrote it, or start a new run."
        )
    if CHECKSUM_KEY not in data:
        raise CheckpointError(
            f"checkpoint {path} lacks its {CHECKSUM_KEY!r}; it is corrupt or was not written by meta-rl's "
            "trainer. Restore it from a backup or start a new run."
        )
    if data[CHECKSUM_KEY] != checksum(data):
        raise CheckpointError(
            f"checkpoint {path} fails its checksum: its content was damaged after it was written (bit "
            "flips, a bad disk or copy). Restore it from a backup or start a new run."
        )
    return data


def _package_version() -> str:
    try:
        return importlib.metadata.version("meta-rl")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree without installing
        return "(not installed)"


_MISMATCH_FIX = (
    "the checkpoint does not match the model its config builds (it is damaged, was edited, or comes from "
    "another meta-rl version); resume it with the meta-rl release that wrote it or start a new run."
)


def check_state_shapes(module: torch.nn.Module, state: Any, path: str | Path, what: str) -> None:
    """Raise a CheckpointError unless ``state`` has exactly ``module``'s entries, each of its shape.

    Works on a module built on the meta device, so a checkpoint can be checked against the model its
    records describe before that model is allocated.
    """
    if not isinstance(state, dict):
        raise CheckpointError(
            f"checkpoint {path}: {what!r} is a {type(state).__name__}, not a state dict; {_MISMATCH_FIX}")
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {path}: {what} entries do not match (missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}); {_MISMATCH_FIX}"
        )
    for key, ref in expected.items():
        got = state[key]
        if not isinstance(got, torch.Tensor) or got.shape != ref.shape:
            shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
            raise CheckpointError(
                f"checkpoint {path}: {what} entry {key!r} has shape {shape} but the model expects "
                f"{tuple(ref.shape)}; {_MISMATCH_FIX}"
            )


def read_counters(data: dict[str, Any], path: str | Path, names: tuple[str, str] = ("update", "env_steps")
                  ) -> tuple[int, int]:
    """The checkpoint's two counters ``names`` (updates, then the steps or episodes they took): whole numbers
    with ``0 <= first <= second`` (every update takes at least one step or episode).

    Raises:
        CheckpointError: a counter is missing, not a whole number, negative, or the two disagree.
    """
    counters = data.get("counters")
    first, second = (counters.get(k) if isinstance(counters, dict) else None for k in names)
    if type(first) is not int or type(second) is not int or not 0 <= first <= second:
        raise CheckpointError(
            f"checkpoint {path} has counters {names[0]} = {first!r}, {names[1]} = {second!r}; expected whole "
            f"numbers with 0 <= {names[0]} <= {names[1]}. It is damaged or was edited: restore it from a backup "
            "or start a new run."
        )
    return first, second


_HASH = re.compile(r"[0-9a-f]{16}")


def read_dataset(data: dict[str, Any], path: str | Path) -> dict[str, str] | None:
    """The checkpoint's record of the dataset its run trained on, ``{"name": ..., "hash": ...}``, or None if it has
    none (a task without a dataset).

    Raises:
        CheckpointError: the record is not a dict of a name and a 16-hex-digit content hash.
    """
    record = data.get("dataset")
    if record is None:
        return None
    if (not isinstance(record, dict) or set(record) != {"name", "hash"} or not isinstance(record["name"], str)
            or not isinstance(record["hash"], str) or not _HASH.fullmatch(record["hash"])):
        raise CheckpointError(
            f"checkpoint {path} records its dataset as {record!r}; expected {{'name': str, 'hash': 16 hex digits}}. "
            "It is damaged or was edited: restore it from a backup or retrain."
        )
    return {"name": record["name"], "hash": record["hash"]}


def load_state(module: Any, state: Any, path: str | Path, what: str) -> None:
    """``module.load_state_dict(state)`` (a torch module or optimizer) or a CheckpointError naming the mismatch.

    For ``nn.Module`` targets, missing and unexpected entries and shape mismatches are named
    before anything is loaded (:func:`check_state_shapes`), so the module is left unchanged on error.
    """
    if isinstance(module, torch.nn.Module):
        check_state_shapes(module, state, path, what)
    elif not isinstance(state, dict):
        raise CheckpointError(
            f"checkpoint {path}: {what!r} is a {type(state).__name__}, not a state dict; {_MISMATCH_FIX}")
    try:
        module.load_state_dict(state)
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as exc:
        raise CheckpointError(
            f"checkpoint {path}: cannot load {what} ({type(exc).__name__}: {exc}); {_MISMATCH_FIX}") from exc


@contextlib.contextmanager
def malformed_state(path: str | Path) -> Iterator[None]:
    """Report a bad entry met while restoring a checkpoint's counters or RNG state as a :class:`CheckpointError`."""
    try:
        yield
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as exc:
        raise CheckpointError(
            f"checkpoint {path} has malformed counters or RNG state ({type(exc).__name__}: {exc}); "
            "it is damaged: restore it from a backup or start a new run."
        ) from exc


def state_leaves(tree: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(path, leaf) for every leaf of a nested checkpoint entry (dicts, lists, tuples), e.g. ``/state/0/exp_avg``."""
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from state_leaves(v, f"{prefix}/{k}")
    elif isinstance(tree, (list, tuple)):
        for i, v in enumerate(tree):
            yield from state_leaves(v, f"{prefix}[{i}]")
    else:
        yield prefix, tree
