"""Loaders for the standard on-disk formats of few-shot image datasets.

Every loader returns :class:`~meta_rl.data.dataset.ImageDataset` objects sorted by class:
Omniglot (``images_background``/``images_evaluation`` folders or zips), CIFAR-10/100 (python
pickles), miniImageNet (``mini-imagenet-cache-*.pkl``), MNIST-style IDX files and
one-folder-per-class image trees.

Pickles are read with a restricted unpickler that only builds numpy arrays, dtypes, scalars
and plain containers, so a malicious file raises :class:`DatasetError` instead of running code.
"""

from __future__ import annotations

import gzip
import importlib
import io
import math
import os
import pickle
import re
import struct
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from PIL import Image

from meta_rl.data.dataset import ImageDataset

__all__ = [
    "IMAGE_EXTENSIONS",
    "DatasetError",
    "load_cifar",
    "load_idx",
    "load_image_folder",
    "load_mini_imagenet",
    "load_omniglot",
]

StrPath = str | os.PathLike[str]

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"})
_SINGLE_CHANNEL_MODES = frozenset({"1", "L", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})


class DatasetError(ValueError):
    """A dataset file or folder is missing, corrupt or malformed; the message says how to fix it."""


# --------------------------------------------------------------------------------------------
# Restricted unpickling
# --------------------------------------------------------------------------------------------


def _numpy_core_attr(submodule: str, name: str) -> Any:
    """``numpy._core.<submodule>.<name>`` (numpy >= 2) or ``numpy.core.<submodule>.<name>``."""
    try:
        module = importlib.import_module(f"numpy._core.{submodule}")
    except ImportError:  # numpy < 2
        module = importlib.import_module(f"numpy.core.{submodule}")
    return getattr(module, name)


def _latin1_encode(obj: object, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """Stand-in for ``_codecs.encode``: Python 3 pickles bytes as ``encode(str, 'latin1')``
    at protocols < 3; only that use is allowed."""
    if not isinstance(obj, str) or encoding.lower().replace("-", "").replace("_", "") not in {
        "latin1",
        "iso88591",
    }:
        raise pickle.UnpicklingError(
            f"_codecs.encode is only allowed as encode(str, 'latin1'), got {encoding!r}"
        )
    return obj.encode("latin-1")


def _empty_bytes(*args: object) -> bytes:
    """Stand-in for ``bytes``: protocol-2 pickles write ``b''`` as ``bytes()``."""
    if args:
        raise pickle.UnpicklingError("builtins.bytes is only allowed without arguments")
    return b""


def _safe_dtype(*args: Any, **kwargs: Any) -> np.dtype[Any]:
    """``numpy.dtype`` that refuses object dtypes (they could hold arbitrary objects)."""
    dtype: np.dtype[Any] = np.dtype(*args, **kwargs)
    if dtype.hasobject:
        raise pickle.UnpicklingError(f"object dtype {dtype} is not allowed in dataset pickles")
    return dtype


def _allowed_globals() -> dict[tuple[str, str], Any]:
    reconstruct = _numpy_core_attr("multiarray", "_reconstruct")
    scalar = _numpy_core_attr("multiarray", "scalar")
    frombuffer = _numpy_core_attr("numeric", "_frombuffer")
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): _safe_dtype,
        ("collections", "OrderedDict"): OrderedDict,
        ("_codecs", "encode"): _latin1_encode,
        ("builtins", "bytes"): _empty_bytes,
    }
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{core}.multiarray", "scalar")] = scalar
        allowed[(f"{core}.numeric", "_frombuffer")] = frombuffer
    return allowed


_ALLOWED_GLOBALS = _allowed_globals()
_PY2_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that only resolves the globals numpy arrays need."""

    def __init__(self, file: IO[bytes], *, path: Path, encoding: str) -> None:
        super().__init__(file, encoding=encoding)
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        obj = _ALLOWED_GLOBALS.get((_PY2_MODULES.get(module, module), name))
        if obj is None:
            raise DatasetError(
                f"{self._path} refers to the global {module}.{name}, which a dataset pickle never "
                "needs; refusing to load it because it could run arbitrary code. Use a copy of the "
                "dataset from a trusted source."
            )
        return obj


class _BoundedReader:
    """A file reader that never reads (or allocates) past the file's size.

    Corrupt pickles can announce huge lengths; capping reads turns them into a clean
    "pickle data was truncated" error instead of a giant allocation.
    """

    def __init__(self, file: io.BufferedReader, size: int) -> None:
        self._file = file
        self._left = size

    def read(self, n: int | None = -1) -> bytes:
        if n is None or n < 0 or n > self._left:
            n = self._left
        data = self._file.read(n)
        self._left -= len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        got = self._file.readinto(view[: min(len(view), self._left)])
        self._left -= got
        return got

    def readline(self, limit: int | None = -1) -> bytes:
        if limit is None or limit < 0 or limit > self._left:
            limit = self._left
        data = self._file.readline(limit)
        self._left -= len(data)
        return data


def _short(exc: BaseException, limit: int = 200) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _load_pickle(path: Path, *, encoding: str, what: str) -> Any:
    """Unpickle ``path`` with the restricted unpickler; any failure becomes a DatasetError."""
    try:
        file = open(path, "rb")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise DatasetError(f"cannot open {path} ({_short(exc)}); check the path and permissions.") from exc
    with file:
        size = os.fstat(file.fileno()).st_size
        try:
            reader: Any = _BoundedReader(file, size)
            return _RestrictedUnpickler(reader, path=path, encoding=encoding).load()
        except DatasetError:
            raise
        except Exception as exc:  # corrupt pickles raise many types: normalise them
            raise DatasetError(
                f"{path} is not a readable {what} pickle ({_short(exc)}); the file is truncated or "
                "corrupt: download or extract it again."
            ) from exc


def _get_key(mapping: object, key: str, path: Path, what: str) -> Any:
    """``mapping[key]`` accepting both str and bytes keys (Python 2 pickles have bytes keys)."""
    if not isinstance(mapping, Mapping):
        raise DatasetError(
            f"{path} holds a {type(mapping).__name__}, not the dict a {what} file holds; "
            "check that you passed the right file."
        )
    for candidate in (key.encode(), key):
        if candidate in mapping:
            return mapping[candidate]
    raise DatasetError(
        f"{path} has no {key!r} entry (keys: {sorted(map(str, mapping))[:8]}); it is not a {what} "
        "file, or it is corrupt: download it again."
    )


def _as_text(value: object) -> str:
    return value.decode("latin-1") if isinstance(value, bytes | bytearray) else str(value)


def _as_int_array(values: object, path: Path, what: str) -> np.ndarray:
    """A 1-D int64 array from a list/array of integers, or a DatasetError."""
    try:
        arr = np.asarray(values)
    except Exception as exc:
        raise DatasetError(f"{path}: {what} is not a list of integers ({_short(exc)}).") from exc
    if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
        raise DatasetError(
            f"{path}: {what} must be a flat list of integers, got dtype {arr.dtype} shape {arr.shape}; "
            "the file is corrupt: download it again."
        )
    return arr.astype(np.int64)


def _to_dataset(
    images: np.ndarray, labels: np.ndarray, class_names: Sequence[str], groups: Sequence[str], name: str
) -> ImageDataset:
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


def _require_exists(path: Path, expected: str) -> None:
    if not path.exists():
        raise DatasetError(f"{path} does not exist; expected {expected} there. Check the path.")


# --------------------------------------------------------------------------------------------
# PIL helpers
# --------------------------------------------------------------------------------------------


def _resample() -> Any:
    return Image.Resampling.LANCZOS


def _pil_to_array(img: Image.Image, grayscale: bool) -> np.ndarray:
    """uint8 array (H, W) for grey or (H, W, 3) for colour."""
    if grayscale:
        if img.mode.startswith("I;16") or img.mode == "I":
            arr = np.asarray(img, dtype=np.int64)
            if arr.size and arr.max() > 255:
                arr = arr >> 8
            return np.clip(arr, 0, 255).astype(np.uint8)
        if img.mode == "F":
            return np.clip(np.asarray(img), 0, 255).astype(np.uint8)
        return np.asarray(img.convert("L"), dtype=np.uint8)
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        grey = Image.fromarray(_pil_to_array(img, grayscale=True))
        return np.asarray(grey.convert("RGB"), dtype=np.uint8)
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def _resize(arr: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    if arr.shape[:2] == size_hw:
        return arr
    resized = Image.fromarray(arr).resize((size_hw[1], size_hw[0]), _resample())
    return np.asarray(resized, dtype=np.uint8)


# --------------------------------------------------------------------------------------------
# Omniglot
# --------------------------------------------------------------------------------------------


_OMNIGLOT_SPLITS = {"background": "images_background", "evaluation": "images_evaluation"}
_OMNIGLOT_EXPECTED = (
    "images_background/ or images_background.zip (and/or images_evaluation/ or images_evaluation.zip)"
)
# (alphabet, character, where the file is, a function returning its bytes)
_OmniglotEntry = tuple[str, str, str, Callable[[], bytes]]


def _visible(name: str) -> bool:
    return not name.startswith(".") and name != "__MACOSX"


def _image_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and _visible(p.name) and p.suffix.lower() in IMAGE_EXTENSIONS
    )


def _omniglot_dir_entries(folder: Path) -> list[_OmniglotEntry]:
    entries: list[_OmniglotEntry] = []
    for alphabet in sorted(p for p in folder.iterdir() if p.is_dir() and _visible(p.name)):
        for character in sorted(p for p in alphabet.iterdir() if p.is_dir() and _visible(p.name)):
            files = _image_files(character)
            if not files:
                raise DatasetError(
                    f"Omniglot character folder {character} holds no .png images; delete the folder "
                    f"or extract {folder.name} again."
                )
            entries.extend((alphabet.name, character.name, str(f), f.read_bytes) for f in files)
    return entries


def _omniglot_zip_entries(archive: zipfile.ZipFile, zip_path: Path) -> list[_OmniglotEntry]:
    entries: list[_OmniglotEntry] = []
    for info in archive.infolist():
        parts = [part for part in info.filename.split("/") if part]
        if info.is_dir() or len(parts) < 3 or not all(_visible(part) for part in parts):
            continue
        if Path(parts[-1]).suffix.lower() not in IMAGE_EXTENSIONS:
            continue

        def read(info: zipfile.ZipInfo = info) -> bytes:
            return archive.read(info)

        entries.append((parts[-3], parts[-2], f"{zip_path}:{info.filename}", read))
    entries.sort(key=lambda entry: (entry[0], entry[1], entry[2]))
    return entries


def _decode_omniglot(entries: list[_OmniglotEntry], source: Path, image_size: int, name: str) -> ImageDataset:
    if not entries:
        raise DatasetError(
            f"{source} holds no Omniglot images (expected Alphabet/character/*.png inside); "
            "extract or download it again."
        )
    keys = sorted({(alphabet, character) for alphabet, character, _, _ in entries})
    index = {key: i for i, key in enumerate(keys)}
    images = np.empty((len(entries), 1, image_size, image_size), dtype=np.uint8)
    labels = np.empty(len(entries), dtype=np.int64)
    for i, (alphabet, character, where, read) in enumerate(entries):
        try:
            with Image.open(io.BytesIO(read())) as img:
                strokes_bright = 255 - _pil_to_array(img, grayscale=True)  # black-on-white -> bright strokes
        except Exception as exc:  # PIL and zipfile raise many types for corrupt data
            raise DatasetError(
                f"cannot decode Omniglot image {where} ({_short(exc)}); the file is corrupt: extract or "
                "download the dataset again."
            ) from exc
        images[i, 0] = _resize(strokes_bright, (image_size, image_size))
        labels[i] = index[(alphabet, character)]
    class_names = [f"{alphabet}/{character}" for alphabet, character in keys]
    groups = [alphabet for alphabet, _ in keys]
    return _to_dataset(images, labels, class_names, groups, name)


def _load_omniglot_split(source: Path, image_size: int, name: str) -> ImageDataset:
    if source.is_dir():
        return _decode_omniglot(_omniglot_dir_entries(source), source, image_size, name)
    try:
        archive = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DatasetError(
            f"{source} is not a readable zip archive ({_short(exc)}); it is truncated or corrupt: "
            "download it again."
        ) from exc
    with archive:
        return _decode_omniglot(_omniglot_zip_entries(archive, source), source, image_size, name)


def load_omniglot(root: StrPath, *, image_size: int = 28) -> dict[str, ImageDataset]:
    """Load Omniglot from its original folders or zips.

    Args:
        root: folder holding ``images_background/`` and/or ``images_evaluation/`` (each
            ``Alphabet/character/*.png``, 105x105 black strokes on white) or the matching
            ``.zip`` files; ``root/omniglot-py`` and ``root/python`` are searched too, and
            ``root`` may also be one of those folders or zips itself.
        image_size: side of the square output images (resized with PIL's LANCZOS filter).

    Returns:
        ``{"background": ..., "evaluation": ...}`` for the splits present: 1-channel uint8
        images with bright (255) strokes on a dark (0) background, one class per character
        named ``"Alphabet/character01"``, grouped by alphabet.

    Raises:
        DatasetError: if no split is found, or a folder, zip or image is empty or corrupt.
    """
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}.")
    root = Path(root)
    _require_exists(root, _OMNIGLOT_EXPECTED)
    sources: dict[str, Path] = {}
    for key, folder in _OMNIGLOT_SPLITS.items():
        if root.name in (folder, f"{folder}.zip"):
            sources[key] = root
            continue
        for base in (root, root / "omniglot-py", root / "python"):
            if (base / folder).is_dir():
                sources[key] = base / folder
                break
            if (base / f"{folder}.zip").is_file():
                sources[key] = base / f"{folder}.zip"
                break
    if not sources:
        raise DatasetError(
            f"found no Omniglot data in {root}: expected {_OMNIGLOT_EXPECTED} there. Get them from "
            "github.com/brendenlake/omniglot (python/ folder) and pass the folder that holds them."
        )
    return {key: _load_omniglot_split(src, image_size, f"omniglot/{key}") for key, src in sources.items()}


# --------------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100
# --------------------------------------------------------------------------------------------

_CIFAR10_DIR = "cifar-10-batches-py"
_CIFAR100_DIR = "cifar-100-python"
_CIFAR_EXPECTED = (
    f"a {_CIFAR10_DIR} folder (data_batch_1..5, test_batch, batches.meta) or a {_CIFAR100_DIR} "
    "folder (train, test, meta), or the folder holding one of them"
)


def _cifar_kind(folder: Path) -> int | None:
    if any((folder / f).is_file() for f in ("batches.meta", "data_batch_1", "test_batch")):
        return 10
    if any((folder / f).is_file() for f in ("meta", "train", "test")):
        return 100
    return None


def _find_cifar(root: Path) -> tuple[Path, int]:
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
    if not meta_path.is_file():
        raise DatasetError(
            f"{meta_path} is missing; it holds the CIFAR class names. Extract the CIFAR archive again."
        )
    names = _get_key(
        _load_pickle(meta_path, encoding="bytes", what="CIFAR meta"), key, meta_path, "CIFAR meta"
    )
    if not isinstance(names, list | tuple) or not names:
        raise DatasetError(f"{meta_path}: {key!r} must be a non-empty list of names; download CIFAR again.")
    return [_as_text(n) for n in names]


def _read_cifar_batch(path: Path, label_keys: Sequence[str]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Images (N, 3, 32, 32) and one int64 array per label key of one CIFAR batch pickle."""
    what = "CIFAR batch"
    batch = _load_pickle(path, encoding="bytes", what=what)
    data = _get_key(batch, "data", path, what)
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
        values = _as_int_array(_get_key(batch, key, path, what), path, repr(key))
        if len(values) != len(data):
            raise DatasetError(
                f"{path} holds {len(data)} images but {len(values)} {key!r}; the file is corrupt: "
                "download CIFAR again."
            )
        labels.append(values)
    return data.reshape(-1, 3, 32, 32), labels


def _check_range(labels: np.ndarray, n: int, path: Path, what: str) -> None:
    if labels.size and (labels.min() < 0 or labels.max() >= n):
        raise DatasetError(
            f"{path}: {what} range over [{labels.min()}, {labels.max()}] but there are {n} names in the "
            "meta file; the files come from different datasets or are corrupt: extract CIFAR again."
        )


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
    _require_exists(root, _CIFAR_EXPECTED)
    folder, kind = _find_cifar(root)
    if kind == 10:
        class_names = _cifar_names(folder / "batches.meta", "label_names")
        coarse_names: list[str] = []
        split_files = {
            "train": [folder / f"data_batch_{i}" for i in range(1, 6)],
            "test": [folder / "test_batch"],
        }
        label_keys = ["labels"]
    else:
        class_names = _cifar_names(folder / "meta", "fine_label_names")
        coarse_names = _cifar_names(folder / "meta", "coarse_label_names")
        split_files = {"train": [folder / "train"], "test": [folder / "test"]}
        label_keys = ["fine_labels", "coarse_labels"]

    splits: dict[str, tuple[np.ndarray, list[np.ndarray]]] = {}
    for split, files in split_files.items():
        present = [f for f in files if f.is_file()]
        if not present:
            continue
        missing = [f for f in files if not f.is_file()]
        if missing:
            raise DatasetError(
                f"{missing[0]} is missing although {present[0].name} is there; the extraction is "
                "incomplete: extract the CIFAR archive again."
            )
        batches = [_read_cifar_batch(f, label_keys) for f in files]
        for f, (_, labels) in zip(files, batches, strict=True):
            _check_range(labels[0], len(class_names), f, repr(label_keys[0]))
            if kind == 100:
                _check_range(labels[1], len(coarse_names), f, repr(label_keys[1]))
        images = np.concatenate([b[0] for b in batches]) if len(batches) > 1 else batches[0][0]
        label_lists = [np.concatenate([b[1][j] for b in batches]) for j in range(len(label_keys))]
        splits[split] = (images, label_lists)
    if not splits:
        raise DatasetError(f"{folder} holds no CIFAR batches: expected {_CIFAR_EXPECTED}.")

    if kind == 10:
        groups = list(class_names)
    else:
        coarse_of: dict[int, int] = {}
        for split, (_, (fine, coarse)) in splits.items():
            for f, c in np.unique(np.stack([fine, coarse], axis=1), axis=0).tolist():
                if coarse_of.setdefault(f, c) != c:
                    raise DatasetError(
                        f"{folder}: fine class {class_names[f]!r} has two superclasses "
                        f"({coarse_names[coarse_of[f]]!r} and {coarse_names[c]!r}) in the {split} batch; "
                        "the files are corrupt: extract CIFAR-100 again."
                    )
        # A class absent from every batch is its own group.
        groups = [coarse_names[coarse_of[i]] if i in coarse_of else n for i, n in enumerate(class_names)]
    prefix = "cifar10" if kind == 10 else "cifar100"
    return {
        split: _to_dataset(images, labels[0], class_names, groups, f"{prefix}/{split}")
        for split, (images, labels) in splits.items()
    }


# --------------------------------------------------------------------------------------------
# miniImageNet
# --------------------------------------------------------------------------------------------

_MINI_SPLITS = ("train", "val", "test")
_MINI_EXPECTED = (
    "mini-imagenet-cache-train.pkl, mini-imagenet-cache-val.pkl and/or mini-imagenet-cache-test.pkl "
    "(or pass one such file)"
)


def _read_mini_imagenet(path: Path, name: str) -> ImageDataset:
    what = "miniImageNet cache"
    cache = _load_pickle(path, encoding="latin1", what=what)
    data = _get_key(cache, "image_data", path, what)
    class_dict = _get_key(cache, "class_dict", path, what)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 4 or data.shape[3] != 3:
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DatasetError(
            f"{path}: 'image_data' must be a uint8 array (N, H, W, 3), got {got}; the file is corrupt "
            "or not a miniImageNet cache: download it again."
        )
    if not isinstance(class_dict, Mapping) or not class_dict:
        raise DatasetError(
            f"{path}: 'class_dict' must be a non-empty dict {{wnid: [image indices]}}, got "
            f"{type(class_dict).__name__}; the file is corrupt: download it again."
        )
    n = len(data)
    items = sorted(((_as_text(k), v) for k, v in class_dict.items()), key=lambda kv: kv[0])
    index_arrays = []
    for wnid, indices in items:
        arr = _as_int_array(indices, path, f"class_dict[{wnid!r}]")
        if arr.size == 0:
            raise DatasetError(
                f"{path}: class {wnid!r} lists no images; the file is corrupt: download it again."
            )
        if arr.min() < 0 or arr.max() >= n:
            raise DatasetError(
                f"{path}: class {wnid!r} lists image indices outside [0, {n}) ('image_data' holds {n} "
                "images); the file is truncated or corrupt: download it again."
            )
        index_arrays.append(arr)
    order = np.concatenate(index_arrays)
    counts = np.bincount(order, minlength=n)
    if counts.max() > 1:
        raise DatasetError(
            f"{path}: image {int(counts.argmax())} is listed under more than one class; the file is "
            "corrupt: download it again."
        )
    labels = np.repeat(np.arange(len(items), dtype=np.int64), [len(a) for a in index_arrays])
    images = np.empty((len(order), 3, data.shape[1], data.shape[2]), dtype=np.uint8)
    chunk = 1024  # gather + transpose in chunks to keep peak memory near one copy of the data
    for start in range(0, len(order), chunk):
        images[start : start + chunk] = data[order[start : start + chunk]].transpose(0, 3, 1, 2)
    class_names = [wnid for wnid, _ in items]
    return _to_dataset(images, labels, class_names, class_names, name)


def load_mini_imagenet(path: StrPath) -> dict[str, ImageDataset]:
    """Load miniImageNet from the common ``mini-imagenet-cache-{train,val,test}.pkl`` pickles.

    Each pickle is a dict ``{"image_data": uint8 (N, 84, 84, 3), "class_dict": {wnid: [indices]}}``.

    Args:
        path: a folder holding any of the three pickles, or one pickle (its split is read from
            its name: ``train``, ``val`` or ``test``; else the file's stem is the key).

    Returns:
        ``{"train": ..., "val": ..., "test": ...}`` for the pickles present, images uint8
        (N, 3, 84, 84), classes sorted by wnid, one group per class.

    Raises:
        DatasetError: if no pickle is found or one is corrupt, malformed or unsafe.
    """
    path = Path(path)
    _require_exists(path, _MINI_EXPECTED)
    if path.is_file():
        found = re.findall(r"train|val|test", path.name)
        files = {found[-1] if found else path.stem: path}
    else:
        files = {
            s: path / f"mini-imagenet-cache-{s}.pkl"
            for s in _MINI_SPLITS
            if (path / f"mini-imagenet-cache-{s}.pkl").is_file()
        }
        if not files:
            raise DatasetError(f"{path} holds no miniImageNet pickles: expected {_MINI_EXPECTED} there.")
    return {key: _read_mini_imagenet(f, f"mini_imagenet/{key}") for key, f in files.items()}


# --------------------------------------------------------------------------------------------
# IDX (MNIST, Fashion-MNIST, KMNIST)
# --------------------------------------------------------------------------------------------

_IDX_MAGIC = {"images": 0x00000803, "labels": 0x00000801}


def _read_idx(path: Path, what: str) -> np.ndarray:
    """The uint8 array of an IDX ``images`` (3-D) or ``labels`` (1-D) file, plain or gzipped."""
    magic, ndim = _IDX_MAGIC[what], 3 if what == "images" else 1
    _require_exists(path, f"an IDX {what} file (e.g. train-{what}-idx{ndim}-ubyte or its .gz)")
    if not path.is_file():
        raise DatasetError(f"{path} is a folder; pass the IDX {what} file itself.")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise DatasetError(
                f"{path} is a truncated or corrupt gzip file ({_short(exc)}); download it again."
            ) from exc
    if len(raw) < 4:
        raise DatasetError(
            f"{path} is {len(raw)} bytes, too short for an IDX {what} file; the file is truncated or "
            "empty: download it again."
        )
    (found,) = struct.unpack(">I", raw[:4])
    if found != magic:
        other = "labels" if what == "images" else "images"
        hint = (
            f" (that is an IDX {other} file: pass it as {other}_path)"
            if found == _IDX_MAGIC[other]
            else "; it is not an uncompressed or .gz IDX file with uint8 data"
        )
        raise DatasetError(
            f"{path} starts with magic number 0x{found:08x}, expected 0x{magic:08x} for IDX {what}{hint}. "
            f"Pass the right file as {what}_path."
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetError(
            f"{path} is {len(raw)} bytes, shorter than the {header}-byte IDX {what} header; the file is "
            "truncated or empty: download it again."
        )
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = header + math.prod(dims)  # Python ints: no overflow
    if len(raw) != expected:
        problem = "is truncated" if len(raw) < expected else "has trailing data"
        raise DatasetError(
            f"{path} is {len(raw)} bytes but its header (shape {tuple(dims)}) implies {expected}; the "
            f"file {problem} or is corrupt: download it again."
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def load_idx(images_path: StrPath, labels_path: StrPath, *, name: str = "idx") -> ImageDataset:
    """Load an MNIST-style pair of IDX files (MNIST, Fashion-MNIST, KMNIST), plain or ``.gz``.

    Args:
        images_path: IDX images file (magic 0x00000803, header: magic, count, rows, cols).
        labels_path: IDX labels file (magic 0x00000801, header: magic, count).
        name: dataset name for logs.

    Returns:
        Images uint8 (N, 1, rows, cols); one class per distinct label, named ``str(label)``
        (``"0"``..``"9"`` for MNIST) and sorted by label value, one group per class.

    Raises:
        DatasetError: on a missing file, wrong magic number, wrong size or count mismatch.
    """
    images_file, labels_file = Path(images_path), Path(labels_path)
    images = _read_idx(images_file, "images")
    labels = _read_idx(labels_file, "labels")
    if len(images) != len(labels):
        raise DatasetError(
            f"{images_file} holds {len(images)} images but {labels_file} holds {len(labels)} labels; "
            "pass matching files (e.g. train-images with train-labels)."
        )
    if len(images) == 0:
        raise DatasetError(f"{images_file} holds no images; pass a non-empty IDX file.")
    classes, inverse = np.unique(labels, return_inverse=True)
    class_names = [str(int(c)) for c in classes]
    return _to_dataset(images[:, None], inverse.astype(np.int64), class_names, class_names, name)


# --------------------------------------------------------------------------------------------
# One folder per class
# --------------------------------------------------------------------------------------------


def _size_hw(image_size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    if image_size is None:
        return None
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(size) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size):
        raise ValueError(f"image_size must be a positive int or (height, width), got {image_size!r}.")
    return (int(size[0]), int(size[1]))


@contextmanager
def _open_image(path: Path) -> Iterator[Image.Image]:
    """Open ``path`` with PIL, turning any failure into a DatasetError naming the file."""
    try:
        with Image.open(path) as img:
            yield img
    except DatasetError:
        raise
    except Exception as exc:  # PIL raises many types for corrupt files
        raise DatasetError(
            f"cannot decode image {path} ({_short(exc)}); the file is corrupt or not an image: fix or "
            "delete it."
        ) from exc


def load_image_folder(
    root: StrPath,
    *,
    image_size: int | tuple[int, int] | None = None,
    grayscale: bool | None = None,
) -> ImageDataset:
    """Load a one-folder-per-class image tree (``root/<class>/<image>``).

    Classes are the sub-folders of ``root`` sorted by name; their image files
    (png/jpg/jpeg/bmp/gif/webp) are read in name order. Other files and hidden entries are
    skipped.

    Args:
        root: the folder holding one sub-folder per class.
        image_size: output size, an int for squares or ``(height, width)``; ``None`` keeps the
            images' own size, which must then be the same for all.
        grayscale: ``True`` for 1 channel, ``False`` for RGB, ``None`` for 1 channel exactly
            when every image has a grey mode (1, L, LA, I, I;16, F).

    Returns:
        Images uint8 (N, C, H, W), one group per class.

    Raises:
        DatasetError: if ``root`` is missing or has no class folders, a class folder has no
            images, an image does not decode, or sizes differ while ``image_size`` is None.
    """
    root = Path(root)
    expected = "one sub-folder per class with image files inside"
    _require_exists(root, expected)
    if not root.is_dir():
        raise DatasetError(f"{root} is a file; pass a folder holding {expected}.")
    size_hw = _size_hw(image_size)
    class_dirs = sorted((p for p in root.iterdir() if p.is_dir() and _visible(p.name)), key=lambda p: p.name)
    if not class_dirs:
        raise DatasetError(f"{root} holds no class folders; expected {expected}.")
    files: list[tuple[int, Path]] = []
    for label, class_dir in enumerate(class_dirs):
        found = _image_files(class_dir)
        if not found:
            raise DatasetError(
                f"class folder {class_dir} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))}); "
                "add images or remove the folder."
            )
        files.extend((label, f) for f in found)

    sizes, modes = [], []
    for _, f in files:  # headers only: cheap
        with _open_image(f) as img:
            sizes.append(img.size)
            modes.append(img.mode)
    if size_hw is None:
        first_file, (w0, h0) = files[0][1], sizes[0]
        for (_, f), (w, h) in zip(files, sizes, strict=True):
            if (w, h) != (w0, h0):
                raise DatasetError(
                    f"images differ in size: {first_file} is {w0}x{h0} but {f} is {w}x{h} (width x "
                    f"height); pass image_size= (an int or (height, width), e.g. image_size={h0}) to "
                    "resize them all."
                )
        size_hw = (h0, w0)
    gray = all(m in _SINGLE_CHANNEL_MODES or m == "LA" for m in modes) if grayscale is None else grayscale

    images = np.empty((len(files), 1 if gray else 3, *size_hw), dtype=np.uint8)
    for i, (_, f) in enumerate(files):
        with _open_image(f) as img:
            arr = _pil_to_array(img, gray)
        arr = _resize(arr, size_hw)
        images[i] = arr[None] if gray else arr.transpose(2, 0, 1)
    labels = np.array([label for label, _ in files], dtype=np.int64)
    class_names = [d.name for d in class_dirs]
    return _to_dataset(images, labels, class_names, class_names, root.name or "image_folder")
