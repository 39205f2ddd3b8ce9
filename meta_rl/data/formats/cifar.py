"""CIFAR-10 and CIFAR-100 from their python-pickle release (read with the restricted unpickler)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from meta_rl.data.dataset import ImageDataset
from meta_rl.data.formats.common import DatasetError, StrPath, require_exists, to_dataset
from meta_rl.data.formats.unpickler import as_int_array, as_text, get_key, load_pickle

__all__ = ["load_cifar"]


_CIFAR10_DIR = "cifar-10-batches-py"
_CIFAR100_DIR = "cifar-100-python"
_CIFAR_EXPECTED = (
    f"a {_CIFAR10_DIR} folder (data_batch_1..5, test_batch, batches.meta) or a {_CIFAR100_DIR} "
    "folder (train, test, meta), or the folder holding one of them"
)


def _cifar_kind(folder: Path) -> int | None:
    """10 or 100 if ``folder`` holds CIFAR-10 or CIFAR-100 files, else None."""
    if any((folder / f).is_file() for f in ("batches.meta", "data_batch_1", "test_batch")):
        return 10
    if any((folder / f).is_file() for f in ("meta", "train", "test")):
        return 100
    return None


def _find_cifar(root: Path) -> tuple[Path, int]:
    """The CIFAR folder at or directly under ``root`` and its kind (10 or 100)."""
    if root.is_file():
        raise DatasetError(
            f"{root} is a file; expected {_CIFAR_EXPECTED}. If it is the downloaded .tar.gz archive, "
            f"extract it first (tar -xzf {root.name}) and pass the extracted folder."
        )
    kind = _cifar_kind(root)
    if kind is not None:
        return root, kind
    found = [(root / d, k) for d, k in ((_CIFAR10_DIR, 10), (_CIFAR100_DIR, 100)) if (root / d).is_dir()]
    if len(found) > 1:
        raise DatasetError(
            f"{root} holds both {_CIFAR10_DIR} and {_CIFAR100_DIR}; pass the one you want, e.g. "
            f"load_cifar('{root / _CIFAR10_DIR}')."
        )
    if found and _cifar_kind(found[0][0]) == found[0][1]:
        return found[0]
    where = found[0][0] if found else root
    raise DatasetError(
        f"{where} holds no CIFAR files: expected {_CIFAR_EXPECTED}. Extract the archive again."
    )


def _cifar_names(meta_path: Path, key: str) -> list[str]:
    """The class names stored under ``key`` in a CIFAR meta pickle."""
    if not meta_path.is_file():
        raise DatasetError(
            f"{meta_path} is missing; it holds the CIFAR class names. Extract the CIFAR archive again."
        )
    names = get_key(
        load_pickle(meta_path, encoding="bytes", what="CIFAR meta"), key, meta_path, "CIFAR meta"
    )
    if not isinstance(names, list | tuple) or not names:
        raise DatasetError(f"{meta_path}: {key!r} must be a non-empty list of names; download CIFAR again.")
    return [as_text(n) for n in names]


def _read_cifar_batch(path: Path, label_keys: Sequence[str]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Images (N, 3, 32, 32) and one int64 array per label key of one CIFAR batch pickle."""
    what = "CIFAR batch"
    batch = load_pickle(path, encoding="bytes", what=what)
    data = get_key(batch, "data", path, what)
    if isinstance(data, bytes | bytearray) and len(data) % 3072 == 0:
        data = np.frombuffer(data, dtype=np.uint8).reshape(-1, 3072)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DatasetError(
            f"{path}: 'data' must be a uint8 array of shape (N, 3072), got {got}; the file is corrupt: "
            "download CIFAR again."
        )
    labels = []
    for key in label_keys:
        values = as_int_array(get_key(batch, key, path, what), path, repr(key))
        if len(values) != len(data):
            raise DatasetError(
                f"{path} holds {len(data)} images but {len(values)} {key!r}; the file is corrupt: "
                "download CIFAR again."
            )
        labels.append(values)
    return data.reshape(-1, 3, 32, 32), labels


def _check_range(labels: np.ndarray, n: int, path: Path, what: str) -> None:
    """Refuse labels outside ``[0, n)``, the range of the names in the meta file."""
    if labels.size and (labels.min() < 0 or labels.max() >= n):
        raise DatasetError(
            f"{path}: {what} range over [{labels.min()}, {labels.max()}] but there are {n} names in the "
            "meta file; the files come from different datasets or are corrupt: extract CIFAR again."
        )


@dataclasses.dataclass(frozen=True)
class _Layout:
    """What one CIFAR release holds: its label keys, their names and each split's batch files.

    Attributes:
        label_keys: The label keys of each batch: the class first, then (CIFAR-100) the superclass.
        label_names: The names of each key's labels, from the meta file (aligned with ``label_keys``).
        split_files: Each split's batch files.
    """

    label_keys: list[str]
    label_names: list[list[str]]
    split_files: dict[str, list[Path]]


def _cifar_layout(folder: Path, kind: int) -> _Layout:
    """The layout of the CIFAR-``kind`` release in ``folder``, with its names read from the meta file."""
    if kind == 10:
        return _Layout(
            label_keys=["labels"],
            label_names=[_cifar_names(folder / "batches.meta", "label_names")],
            split_files={
                "train": [folder / f"data_batch_{i}" for i in range(1, 6)],
                "test": [folder / "test_batch"],
            },
        )
    return _Layout(
        label_keys=["fine_labels", "coarse_labels"],
        label_names=[_cifar_names(folder / "meta", "fine_label_names"),
                     _cifar_names(folder / "meta", "coarse_label_names")],
        split_files={"train": [folder / "train"], "test": [folder / "test"]},
    )


def _read_split(files: list[Path], layout: _Layout) -> tuple[np.ndarray, list[np.ndarray]] | None:
    """The images and one label array per key of one split's batches; None if none of its files is there.

    Raises:
        DatasetError: if some of the split's files are missing, or a batch is malformed or has labels
            outside the meta file's names.
    """
    present = [f for f in files if f.is_file()]
    if not present:
        return None
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise DatasetError(
            f"{missing[0]} is missing although {present[0].name} is there; the extraction is "
            "incomplete: extract the CIFAR archive again."
        )
    batches = [_read_cifar_batch(f, layout.label_keys) for f in files]
    for f, (_, labels) in zip(files, batches, strict=True):
        for key, names, values in zip(layout.label_keys, layout.label_names, labels, strict=True):
            _check_range(values, len(names), f, repr(key))
    images = np.concatenate([b[0] for b in batches]) if len(batches) > 1 else batches[0][0]
    label_lists = [np.concatenate([b[1][j] for b in batches]) for j in range(len(layout.label_keys))]
    return images, label_lists


def _superclass_groups(
    folder: Path, splits: dict[str, tuple[np.ndarray, list[np.ndarray]]], class_names: list[str],
    coarse_names: list[str],
) -> list[str]:
    """Each CIFAR-100 class's superclass name (a class absent from every batch is its own group).

    Raises:
        DatasetError: if a class has two superclasses.
    """
    coarse_of: dict[int, int] = {}
    for split, (_, (fine, coarse)) in splits.items():
        for f, c in np.unique(np.stack([fine, coarse], axis=1), axis=0).tolist():
            if coarse_of.setdefault(f, c) != c:
                raise DatasetError(
                    f"{folder}: fine class {class_names[f]!r} has two superclasses "
                    f"({coarse_names[coarse_of[f]]!r} and {coarse_names[c]!r}) in the {split} batch; "
                    "the files are corrupt: extract CIFAR-100 again."
                )
    return [coarse_names[coarse_of[i]] if i in coarse_of else n for i, n in enumerate(class_names)]


def load_cifar(root: StrPath) -> dict[str, ImageDataset]:
    """Load CIFAR-10 or CIFAR-100 from the python-pickle release.

    Args:
        root: a ``cifar-10-batches-py`` folder (``data_batch_1..5``, ``test_batch``,
            ``batches.meta``), a ``cifar-100-python`` folder (``train``, ``test``, ``meta``), or
            the folder holding one of them.

    Returns:
        ``{"train": ..., "test": ...}`` for the splits present, images uint8 (N, 3, 32, 32).
        CIFAR-10: one group per class. CIFAR-100: the 100 fine labels are the classes and the
        coarse (superclass) names their groups.

    Raises:
        DatasetError: if the folder, a batch or the meta file is missing, corrupt or malformed.
    """
    root = Path(root)
    require_exists(root, _CIFAR_EXPECTED)
    folder, kind = _find_cifar(root)
    layout = _cifar_layout(folder, kind)
    splits: dict[str, tuple[np.ndarray, list[np.ndarray]]] = {}
    for split, files in layout.split_files.items():
        read = _read_split(files, layout)
        if read is not None:
            splits[split] = read
    if not splits:
        raise DatasetError(f"{folder} holds no CIFAR batches: expected {_CIFAR_EXPECTED}.")

    class_names = layout.label_names[0]
    groups = (list(class_names) if kind == 10  # CIFAR-10: one group per class
              else _superclass_groups(folder, splits, class_names, layout.label_names[1]))
    prefix = "cifar10" if kind == 10 else "cifar100"
    return {
        split: to_dataset(images, labels[0], class_names, groups, f"{prefix}/{split}")
        for split, (images, labels) in splits.items()
    }
