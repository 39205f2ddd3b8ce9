"""What every dataset loader shares: :class:`DatasetError`, path checks and the final ImageDataset."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from meta_rl.data.dataset import ImageDataset

__all__ = ["DatasetError", "StrPath", "open_binary", "require_exists", "short", "to_dataset"]

StrPath = str | os.PathLike[str]


class DatasetError(ValueError):
    """A dataset file or folder is missing, corrupt or malformed; the message says how to fix it."""


def short(exc: BaseException, limit: int = 200) -> str:
    """``exc`` as ``"Type: message"``, cut to at most ``limit`` characters."""
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def open_binary(path: Path) -> io.BufferedReader:
    """``open(path, "rb")`` (the caller closes it); an OSError becomes a DatasetError naming the path."""
    try:
        return open(path, "rb")
    except OSError as exc:
        raise DatasetError(f"cannot open {path} ({short(exc)}); check the path and permissions.") from exc


def to_dataset(
    images: np.ndarray, labels: np.ndarray, class_names: Sequence[str], groups: Sequence[str], name: str
) -> ImageDataset:
    """An ImageDataset sorted by class, copying ``images`` only if they are read-only."""
    images = np.ascontiguousarray(images)
    if not images.flags.writeable:
        images = images.copy()
    return ImageDataset(
        torch.from_numpy(images),
        torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64)),
        tuple(class_names),
        tuple(groups),
        name,
    ).sorted_by_class()


def require_exists(path: Path, expected: str) -> None:
    """Raise a DatasetError saying what was ``expected`` at ``path`` if nothing is there (or it cannot be looked up)."""
    try:
        exists = path.exists()
    except OSError as exc:  # a parent folder that is not searchable: EACCES
        raise DatasetError(
            f"cannot look up {path} ({short(exc)}); expected {expected} there. Make its parent folders "
            "searchable by this user (e.g. chmod u+x) or fix the path."
        ) from exc
    if not exists:
        raise DatasetError(f"{path} does not exist; expected {expected} there. Check the path.")
