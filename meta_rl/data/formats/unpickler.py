"""Restricted unpickling of dataset pickles (CIFAR, miniImageNet) and checks on what they hold.

:func:`load_pickle` only builds numpy arrays, dtypes, scalars and plain containers, so a
malicious file raises :class:`DatasetError` instead of running code. Arrays are sized before
allocation against the file's size and shared references are refused, so a small file cannot
expand into a huge object tree.
"""

from __future__ import annotations

import importlib
import io
import math
import operator
import os
import pickle
import struct
import sys
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any, ClassVar, TypeVar

import numpy as np

from meta_rl.data.formats.common import DatasetError, open_binary, short

__all__ = ["as_int_array", "as_text", "get_key", "load_pickle"]


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
    """The callables a dataset pickle may refer to, by (module, name)."""
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


#: The opcode loaders of :class:`_RestrictedUnpickler` that replace pickle._Unpickler's, by opcode (see :func:`_loads`).
_LOADERS: dict[int, Callable[[Any], None]] = {}
_Loader = TypeVar("_Loader", bound=Callable[[Any], None])


def _loads(*opcodes: bytes) -> Callable[[_Loader], _Loader]:
    """Register the decorated method as the restricted unpickler's loader of ``opcodes``."""

    def register(load: _Loader) -> _Loader:
        _LOADERS.update({opcode[0]: load for opcode in opcodes})
        return load

    return register


class _RestrictedUnpickler(pickle._Unpickler):
    """A pure-Python unpickler that only builds numpy arrays, dtypes, scalars and plain containers.

    Besides resolving only the globals numpy arrays need, it bounds memory: arrays are sized
    before they are allocated and may total at most ``_PICKLE_EXPANSION`` x the file size
    (+ ``_PICKLE_SLACK``), and shared references (a memo get of a container, ``DUP``) are
    refused, so a small file cannot expand into a huge object tree.
    """

    dispatch: ClassVar[dict[int, Callable[[Any], None]]] = dict(pickle._Unpickler.dispatch)  # + _LOADERS, below
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

    @_loads(pickle.REDUCE)
    def _load_reduce(self) -> None:
        args = self.stack.pop()
        self.stack[-1] = self._call(self.stack[-1], args, {})

    @_loads(pickle.NEWOBJ)
    def _load_newobj(self) -> None:
        args = self.stack.pop()
        cls = self.stack.pop()
        if cls is np.ndarray:
            self._charge_array(*_ndarray_request(*args))
        self.append(cls.__new__(cls, *args))

    @_loads(pickle.NEWOBJ_EX)
    def _load_newobj_ex(self) -> None:
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack.pop()
        if cls is np.ndarray:
            self._charge_array(*_ndarray_request(*args, **kwargs))
        self.append(cls.__new__(cls, *args, **kwargs))

    def _instantiate(self, klass: Any, args: list[Any]) -> None:  # INST and OBJ
        self.append(self._call(klass, args, {}))

    @_loads(pickle.BUILD)
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

    @_loads(pickle.GET)
    def _load_get(self) -> None:
        self._memo_get(int(self.readline()[:-1]))

    @_loads(pickle.BINGET)
    def _load_binget(self) -> None:
        self._memo_get(self.read(1)[0])

    @_loads(pickle.LONG_BINGET)
    def _load_long_binget(self) -> None:
        self._memo_get(struct.unpack("<I", self.read(4))[0])

    @_loads(pickle.DUP)
    def _load_dup(self) -> None:
        self._refuse("duplicates a reference (DUP opcode), which pickle.dump never writes")

    @_loads(pickle.EXT1, pickle.EXT2, pickle.EXT4)
    def _load_ext(self) -> None:
        self._refuse("uses the copyreg extension registry (EXT opcodes), which a dataset pickle never does")

    @_loads(pickle.BYTEARRAY8)
    def _load_bytearray8(self) -> None:
        (n,) = struct.unpack("<Q", self.read(8))
        if n > self._size:
            raise pickle.UnpicklingError(f"a {n:,}-byte BYTEARRAY8 cannot fit in a {self._size:,}-byte file")
        buf = bytearray(n)
        self.readinto(buf)
        self.append(buf)

    dispatch.update(_LOADERS)


class _BoundedReader:
    """A file reader that never reads (or allocates) past the file's size.

    Corrupt pickles can announce huge lengths; capping reads turns them into a clean
    "pickle data was truncated" error instead of a giant allocation.
    """

    def __init__(self, file: io.BufferedReader, size: int) -> None:
        self._file = file
        self._left = size

    def read(self, n: int | None = -1) -> bytes:
        return self._count(self._file.read(self._capped(n)))

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        got = self._file.readinto(view[: min(len(view), self._left)])
        self._left -= got
        return got

    def readline(self, limit: int | None = -1) -> bytes:
        return self._count(self._file.readline(self._capped(limit)))

    def _capped(self, n: int | None) -> int:
        """At most ``n`` bytes and never past the end of the file (None or negative: up to the end)."""
        return self._left if n is None or n < 0 or n > self._left else n

    def _count(self, data: bytes) -> bytes:
        """``data``, read: what is left shrinks by its length."""
        self._left -= len(data)
        return data


def load_pickle(path: Path, *, encoding: str, what: str) -> Any:
    """Unpickle ``path`` with the restricted unpickler; any failure becomes a DatasetError."""
    with open_binary(path) as file:
        size = os.fstat(file.fileno()).st_size
        try:
            reader: Any = _BoundedReader(file, size)
            return _RestrictedUnpickler(reader, path=path, encoding=encoding, what=what, size=size).load()
        except DatasetError:
            raise
        except Exception as exc:  # corrupt pickles raise many types: normalise them
            raise DatasetError(
                f"{path} is not a readable {what} pickle ({short(exc)}); the file is truncated or "
                "corrupt: download or extract it again."
            ) from exc


def get_key(mapping: object, key: str, path: Path, what: str) -> Any:
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


def as_text(value: object) -> str:
    """A pickled name as str (bytes, as in Python 2 pickles, are decoded as latin-1)."""
    return value.decode("latin-1") if isinstance(value, bytes | bytearray) else str(value)


def as_int_array(values: object, path: Path, what: str) -> np.ndarray:
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
            raise DatasetError(f"{path}: {what} holds an integer beyond int64 ({short(exc)}).") from exc
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
