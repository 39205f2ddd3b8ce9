"""Loaders for the standard on-disk formats of few-shot image datasets.

Every loader returns :class:`~meta_rl.data.dataset.ImageDataset` objects sorted by class:
Omniglot (``images_background``/``images_evaluation`` folders or zips), CIFAR-10/100 (python
pickles), miniImageNet (``mini-imagenet-cache-*.pkl``), MNIST-style IDX files and
one-folder-per-class image trees.

Pickles are read with a restricted unpickler that only builds numpy arrays, dtypes, scalars
and plain containers, so a malicious file raises :class:`DatasetError` instead of running code.

Hostile files cannot exhaust memory either: every loader's peak memory is a small multiple of
what it returns or of the file's size. Pickled arrays are sized before allocation against the
file's size and shared references are refused; gzip streams are decompressed no further than
the IDX header declares; zip members and image files are size-, ratio- and pixel-capped.
"""

from __future__ import annotations

import gzip
import importlib
import io
import math
import operator
import os
import pickle
import re
import struct
import sys
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import IO, Any, ClassVar

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


_RECONSTRUCT = _numpy_core_attr("multiarray", "_reconstruct")
_SCALAR = _numpy_core_attr("multiarray", "scalar")
_FROMBUFFER = _numpy_core_attr("numeric", "_frombuffer")


def _allowed_globals() -> dict[tuple[str, str], Any]:
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): _safe_dtype,
        ("collections", "OrderedDict"): OrderedDict,
        ("_codecs", "encode"): _latin1_encode,
        ("builtins", "bytes"): _empty_bytes,
    }
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = _RECONSTRUCT
        allowed[(f"{core}.multiarray", "scalar")] = _SCALAR
        allowed[(f"{core}.numeric", "_frombuffer")] = _FROMBUFFER
    return allowed


_ALLOWED_GLOBALS = _allowed_globals()
_PY2_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}

# Arrays built by one pickle, plus every extra reference to a memoised str/bytes/int, may total at most
# _PICKLE_EXPANSION x the file's size + _PICKLE_SLACK bytes: a genuine pickle stores each
# array's raw bytes in the file itself, so real data never comes near this.
_PICKLE_EXPANSION = 2
_PICKLE_SLACK = 1 << 20
# A memo get of one of these means a container is referenced twice: never in a genuine
# dataset pickle, and the way a few KB "billion laughs" pickle expands to gigabytes.
_SHARED_CONTAINERS = (list, dict, set, frozenset, tuple, bytearray, np.ndarray)


def _dims(shape: Any) -> tuple[int, ...]:
    """An array shape (an int or a sequence of at most 64 ints) as a tuple, negatives as 0."""
    if isinstance(shape, int | np.integer):
        shape = (shape,)
    if not isinstance(shape, tuple | list) or len(shape) > 64:
        raise pickle.UnpicklingError(f"an array shape must be a tuple of at most 64 ints, got {type(shape).__name__}")
    return tuple(max(operator.index(d), 0) for d in shape)


def _ndarray_request(shape: Any, dtype: Any = float, *_: Any, **__: Any) -> tuple[Any, Any]:
    """The (shape, dtype) of a call ``numpy.ndarray(shape, dtype=float, buffer, ...)``."""
    return shape, dtype


class _RestrictedUnpickler(pickle._Unpickler):
    """A pure-Python unpickler that only builds numpy arrays, dtypes, scalars and plain containers.

    Besides resolving only the globals numpy arrays need, it bounds memory: arrays are sized
    before they are allocated and may total at most ``_PICKLE_EXPANSION`` x the file size
    (+ ``_PICKLE_SLACK``), and shared references (a memo get of a container, ``DUP``) are
    refused, so a small file cannot expand into a huge object tree.
    """

    dispatch: ClassVar[dict[int, Callable[[Any], None]]] = dict(pickle._Unpickler.dispatch)
    # Set by pickle._Unpickler.load().
    stack: list[Any]
    memo: dict[int, Any]
    read: Callable[[int], bytes]
    readinto: Callable[[bytearray], int]
    readline: Callable[[], bytes]
    append: Callable[[Any], None]

    def __init__(self, file: IO[bytes], *, path: Path, encoding: str, what: str, size: int) -> None:
        super().__init__(file, encoding=encoding)
        self._path, self._what, self._size = path, what, size
        self._limit = _PICKLE_EXPANSION * size + _PICKLE_SLACK
        self._used = 0
        self._hooks: dict[Any, Callable[..., Any]] = {
            _RECONSTRUCT: self._reconstruct,
            _SCALAR: self._scalar,
            _FROMBUFFER: self._frombuffer,
        }

    def find_class(self, module: str, name: str) -> Any:
        obj = _ALLOWED_GLOBALS.get((_PY2_MODULES.get(module, module), name))
        if obj is None:
            raise DatasetError(
                f"{self._path} refers to the global {module}.{name}, which a dataset pickle never "
                "needs; refusing to load it because it could run arbitrary code. Use a copy of the "
                "dataset from a trusted source."
            )
        return self._hooks.get(obj, obj)

    def _refuse(self, problem: str) -> None:
        raise DatasetError(
            f"{self._path} {problem}; refusing to load it before it exhausts memory. This file is not "
            f"a genuine {self._what} pickle: download the dataset again from its official source."
        )

    def _charge(self, nbytes: int, describe: Callable[[], str]) -> None:
        """Count ``nbytes`` more against the file's budget, refusing the file past it."""
        self._used += nbytes
        if self._used <= self._limit:
            return
        scope = "" if nbytes > self._limit else f" on top of {self._used - nbytes:,} bytes already built"
        self._refuse(
            f"{describe()} ({nbytes:,} bytes{scope}), but the file is only {self._size:,} bytes and a "
            f"genuine pickle stores its data in the file (limit: {self._limit:,} bytes = "
            f"{_PICKLE_EXPANSION} x the file size + {_PICKLE_SLACK >> 20} MiB)"
        )

    def _charge_array(self, shape: Any, dtype: Any) -> None:
        dims, dt = _dims(shape), np.dtype(dtype)
        if dt.hasobject:
            raise pickle.UnpicklingError(f"object dtype {dt} is not allowed in dataset pickles")
        self._charge(math.prod(dims) * dt.itemsize, lambda: f"declares a {dt} array of shape {dims}")

    # Hooks for the allowed numpy callables: size the array, then build it.

    def _reconstruct(self, subtype: Any, shape: Any, dtype: Any) -> Any:
        if subtype is not np.ndarray:
            raise pickle.UnpicklingError("_reconstruct only builds numpy.ndarray")
        self._charge_array(shape, dtype)
        return _RECONSTRUCT(subtype, shape, dtype)

    def _frombuffer(self, buf: Any, dtype: Any, shape: Any, order: Any) -> Any:
        self._charge_array(shape, dtype)
        return _FROMBUFFER(buf, dtype, shape, order)

    def _scalar(self, dtype: Any, *obj: Any) -> Any:
        if not isinstance(dtype, np.dtype):
            raise pickle.UnpicklingError("scalar needs a numpy dtype")
        self._charge_array((), dtype)
        return _SCALAR(dtype, *obj)

    def _call(self, func: Any, args: Any, kwargs: Any) -> Any:
        if func is np.ndarray:
            self._charge_array(*_ndarray_request(*args, **kwargs))
        return func(*args, **kwargs)

    # Opcodes that call, share or allocate, overriding pickle._Unpickler's.

    def _load_reduce(self) -> None:
        args = self.stack.pop()
        self.stack[-1] = self._call(self.stack[-1], args, {})

    def _load_newobj(self) -> None:
        args = self.stack.pop()
        cls = self.stack.pop()
        if cls is np.ndarray:
            self._charge_array(*_ndarray_request(*args))
        self.append(cls.__new__(cls, *args))

    def _load_newobj_ex(self) -> None:
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack.pop()
        if cls is np.ndarray:
            self._charge_array(*_ndarray_request(*args, **kwargs))
        self.append(cls.__new__(cls, *args, **kwargs))

    def _instantiate(self, klass: Any, args: list[Any]) -> None:  # INST and OBJ
        self.append(self._call(klass, args, {}))

    def _load_build(self) -> None:
        state = self.stack.pop()
        inst = self.stack[-1]
        if isinstance(inst, np.ndarray):
            # (version, shape, dtype, is_fortran, rawdata) or (shape, dtype, is_fortran, rawdata)
            if not isinstance(state, tuple) or len(state) not in (4, 5):
                raise pickle.UnpicklingError("unexpected numpy array state")
            self._charge_array(state[-4], state[-3])
            inst.__setstate__(state)
        elif isinstance(inst, np.dtype):
            inst.__setstate__(state)  # type: ignore[attr-defined]  # numpy has no stub for it
            if inst.hasobject:
                raise pickle.UnpicklingError(f"object dtype {inst} is not allowed in dataset pickles")
        else:
            self._refuse(f"sets the state of a {type(inst).__name__}, which a dataset pickle never does")

    def _memo_get(self, index: int) -> None:
        try:
            obj = self.memo[index]
        except KeyError:
            raise pickle.UnpicklingError(f"memo value not found at index {index}") from None
        if isinstance(obj, _SHARED_CONTAINERS) and not (isinstance(obj, tuple | frozenset) and not obj):
            self._refuse(
                f"references the same {type(obj).__name__} more than once (pickle memo get {index}); a "
                "genuine dataset pickle never shares containers, and shared nested references can expand "
                "a few KB into gigabytes"
            )
        if isinstance(obj, str | bytes | int):  # a consumer may copy each reference (e.g. decode names)
            cost = len(obj) + 32 if isinstance(obj, str | bytes) else sys.getsizeof(obj)
            self._charge(cost, lambda: f"repeats memoised {type(obj).__name__} values")
        self.append(obj)

    def _load_get(self) -> None:
        self._memo_get(int(self.readline()[:-1]))

    def _load_binget(self) -> None:
        self._memo_get(self.read(1)[0])

    def _load_long_binget(self) -> None:
        self._memo_get(struct.unpack("<I", self.read(4))[0])

    def _load_dup(self) -> None:
        self._refuse("duplicates a reference (DUP opcode), which pickle.dump never writes")

    def _load_ext(self) -> None:
        self._refuse("uses the copyreg extension registry (EXT opcodes), which a dataset pickle never does")

    def _load_bytearray8(self) -> None:
        (n,) = struct.unpack("<Q", self.read(8))
        if n > self._size:
            raise pickle.UnpicklingError(f"a {n:,}-byte BYTEARRAY8 cannot fit in a {self._size:,}-byte file")
        buf = bytearray(n)
        self.readinto(buf)
        self.append(buf)

    for _op, _load in (
        (pickle.REDUCE, _load_reduce),
        (pickle.NEWOBJ, _load_newobj),
        (pickle.NEWOBJ_EX, _load_newobj_ex),
        (pickle.BUILD, _load_build),
        (pickle.GET, _load_get),
        (pickle.BINGET, _load_binget),
        (pickle.LONG_BINGET, _load_long_binget),
        (pickle.DUP, _load_dup),
        (pickle.EXT1, _load_ext),
        (pickle.EXT2, _load_ext),
        (pickle.EXT4, _load_ext),
        (pickle.BYTEARRAY8, _load_bytearray8),
    ):
        dispatch[_op[0]] = _load
    del _op, _load


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
            return _RestrictedUnpickler(reader, path=path, encoding=encoding, what=what, size=size).load()
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
    """A 1-D int64 array from a list/array of integers, or a DatasetError.

    Elements are type-checked before any conversion: ``np.asarray`` of a list mixing one long
    string with many short ones pads them all to the longest, a huge amplification.
    """
    if isinstance(values, np.ndarray):
        arr = values
    elif isinstance(values, list | tuple) and all(
        isinstance(v, int | np.integer) and not isinstance(v, bool) for v in values
    ):
        try:
            arr = np.array(values, dtype=np.int64)
        except OverflowError as exc:
            raise DatasetError(f"{path}: {what} holds an integer beyond int64 ({_short(exc)}).") from exc
    else:
        kind = type(values).__name__
        raise DatasetError(
            f"{path}: {what} must be a flat list of integers, got a {kind} holding other values; the "
            "file is corrupt: download it again."
        )
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

# Limits on image files: genuine Omniglot PNGs are ~1 KB and 105x105 pixels.
_MAX_IMAGE_FILE_BYTES = 64 << 20
_MAX_ZIP_RATIO = 100  # above 1 MiB, a zip member may expand at most 100x (PNGs barely compress)
_ZIP_RATIO_FREE_BYTES = 1 << 20
_MAX_OMNIGLOT_PIXELS = 2048 * 2048
_MAX_IMAGE_PIXELS = 1 << 26  # 8192 x 8192, for image folders


def _check_pixels(img: Image.Image, where: object, limit: int, expected: str) -> None:
    """Refuse an image whose header declares more than ``limit`` pixels, before decoding it."""
    width, height = img.size
    if width * height > limit:
        raise DatasetError(
            f"{where} declares {width}x{height} pixels, more than the {limit:,} allowed ({expected}); "
            "it is corrupt or a decompression bomb: replace or delete it."
        )


def _read_image_file(path: Path) -> bytes:
    """The bytes of an image file of at most ``_MAX_IMAGE_FILE_BYTES``."""
    with open(path, "rb") as file:
        size = os.fstat(file.fileno()).st_size
        if size > _MAX_IMAGE_FILE_BYTES:
            raise DatasetError(
                f"{path} is {size:,} bytes, more than the {_MAX_IMAGE_FILE_BYTES >> 20} MiB an image file may "
                "be (Omniglot images are about 1 KB); it is not an Omniglot image: delete it or extract "
                "the dataset again."
            )
        return file.read(_MAX_IMAGE_FILE_BYTES)


def _check_zip_member(info: zipfile.ZipInfo, where: str) -> None:
    """Refuse a zip member whose header declares an oversized or over-compressed image."""
    if info.file_size > _MAX_IMAGE_FILE_BYTES:
        raise DatasetError(
            f"{where} is {info.file_size:,} bytes uncompressed, more than the {_MAX_IMAGE_FILE_BYTES >> 20} "
            "MiB an image file may be (Omniglot images are about 1 KB); the archive is corrupt or a zip "
            "bomb: download it again."
        )
    if info.file_size > _ZIP_RATIO_FREE_BYTES and info.file_size > _MAX_ZIP_RATIO * info.compress_size:
        raise DatasetError(
            f"{where} expands from {info.compress_size:,} to {info.file_size:,} bytes, more than the "
            f"{_MAX_ZIP_RATIO}x an image file compresses; the archive is corrupt or a zip bomb: download "
            "it again."
        )


def _read_zip_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, where: str) -> bytes:
    """The bytes of a checked zip member, never decompressing past its declared size."""
    with archive.open(info) as member:
        data = member.read(info.file_size)
    if len(data) != info.file_size:
        raise DatasetError(
            f"{where} holds {len(data):,} bytes but its zip header says {info.file_size:,}; the archive is "
            "truncated or corrupt: download it again."
        )
    return data


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
            entries.extend((alphabet.name, character.name, str(f), partial(_read_image_file, f)) for f in files)
    return entries


def _omniglot_zip_entries(archive: zipfile.ZipFile, zip_path: Path) -> list[_OmniglotEntry]:
    entries: list[_OmniglotEntry] = []
    for info in archive.infolist():
        parts = [part for part in info.filename.split("/") if part]
        if info.is_dir() or len(parts) < 3 or not all(_visible(part) for part in parts):
            continue
        if Path(parts[-1]).suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        where = f"{zip_path}:{info.filename}"
        _check_zip_member(info, where)  # all members, before decoding any
        entries.append((parts[-3], parts[-2], where, partial(_read_zip_member, archive, info, where)))
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
                _check_pixels(img, where, _MAX_OMNIGLOT_PIXELS, "Omniglot images are 105x105")
                strokes_bright = 255 - _pil_to_array(img, grayscale=True)  # black-on-white -> bright strokes
        except DatasetError:
            raise
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
# The largest IDX file in use (EMNIST byclass images) holds 547 MB.
_MAX_IDX_BYTES = 1 << 30
# Deflate expands at most 1032:1, so a gzip file of n bytes holds at most about 1032 n bytes.
_MAX_DEFLATE_RATIO = 1032
_IDX_CHUNK = 1 << 20


def _read_up_to(stream: io.BufferedIOBase, n: int) -> bytes:
    """At most ``n`` bytes from ``stream``, fewer only at its end."""
    parts, left = [], n
    while left:
        part = stream.read(left)
        if not part:
            break
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


def _read_idx_stream(stream: io.BufferedIOBase, path: Path, what: str, file_size: int, gz: bool) -> np.ndarray:
    """Parse an IDX stream, reading no more than its header declares (plus one byte)."""
    magic, ndim = _IDX_MAGIC[what], 3 if what == "images" else 1
    size_of = "decompresses to" if gz else "is"
    head = _read_up_to(stream, 4)
    if len(head) < 4:
        raise DatasetError(
            f"{path} {size_of} {len(head)} bytes, too short for an IDX {what} file; the file is truncated "
            "or empty: download it again."
        )
    (found,) = struct.unpack(">I", head)
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
    raw_dims = _read_up_to(stream, header - 4)
    if len(raw_dims) < header - 4:
        raise DatasetError(
            f"{path} {size_of} {4 + len(raw_dims)} bytes, shorter than the {header}-byte IDX {what} header; "
            "the file is truncated or empty: download it again."
        )
    dims = struct.unpack(f">{ndim}I", raw_dims)
    payload = math.prod(dims)  # Python ints: no overflow
    expected = header + payload
    if payload > _MAX_IDX_BYTES:
        raise DatasetError(
            f"{path}: its IDX header declares shape {tuple(dims)}, {payload:,} bytes of {what}, more than the "
            f"{_MAX_IDX_BYTES >> 20} MiB limit for an IDX file (MNIST's largest is 47 MB); the header is "
            "corrupt: download the file again."
        )
    if not gz and file_size != expected:
        problem = "is truncated" if file_size < expected else "has trailing data"
        raise DatasetError(
            f"{path} is {file_size} bytes but its header (shape {tuple(dims)}) implies {expected}; the "
            f"file {problem} or is corrupt: download it again."
        )
    if gz and expected > _MAX_DEFLATE_RATIO * file_size + 1024:
        raise DatasetError(
            f"{path}: its IDX header declares shape {tuple(dims)}, {expected:,} bytes, but a {file_size:,}-byte "
            f"gzip file holds at most ~{_MAX_DEFLATE_RATIO} x that (deflate's maximum ratio); the file is "
            "truncated or corrupt: download it again."
        )
    data = bytearray()  # grown as data arrives: memory follows the data, not the header's claim
    while len(data) < payload:
        chunk = stream.read(min(_IDX_CHUNK, payload - len(data)))
        if not chunk:
            raise DatasetError(
                f"{path} {size_of} {header + len(data)} bytes but its header (shape {tuple(dims)}) implies "
                f"{expected}; the file is truncated or corrupt: download it again."
            )
        data += chunk
    if gz and stream.read(1):  # also makes gzip check the stream's CRC and length
        raise DatasetError(
            f"{path} decompresses to more than the {expected} bytes its header (shape {tuple(dims)}) implies; "
            "the file has trailing data or is corrupt: download it again."
        )
    return np.frombuffer(data, dtype=np.uint8).reshape(dims)  # writeable: bytearray


def _read_idx(path: Path, what: str) -> np.ndarray:
    """The uint8 array of an IDX ``images`` (3-D) or ``labels`` (1-D) file, plain or gzipped.

    A ``.gz`` file is decompressed as a stream, never past the size its IDX header declares,
    which must be at most ``_MAX_IDX_BYTES`` and within deflate's reach of the file size.
    """
    ndim = 3 if what == "images" else 1
    _require_exists(path, f"an IDX {what} file (e.g. train-{what}-idx{ndim}-ubyte or its .gz)")
    if not path.is_file():
        raise DatasetError(f"{path} is a folder; pass the IDX {what} file itself.")
    try:
        file = open(path, "rb")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise DatasetError(f"cannot open {path} ({_short(exc)}); check the path and permissions.") from exc
    with file:
        file_size = os.fstat(file.fileno()).st_size
        gz = file.read(2) == b"\x1f\x8b"
        file.seek(0)
        try:
            if not gz:
                return _read_idx_stream(file, path, what, file_size, gz=False)
            with gzip.GzipFile(fileobj=file, mode="rb") as stream:
                return _read_idx_stream(stream, path, what, file_size, gz=True)
        except DatasetError:
            raise
        except Exception as exc:  # gzip raises OSError, EOFError, zlib.error, ... for corrupt data
            kind = "gzip" if gz else "IDX"
            raise DatasetError(
                f"{path} is a truncated or corrupt {kind} file ({_short(exc)}); download it again."
            ) from exc


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
            _check_pixels(img, f, _MAX_IMAGE_PIXELS, "8192x8192")
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
