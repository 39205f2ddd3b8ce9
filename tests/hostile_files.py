"""Hostile dataset files crafted in the real on-disk formats, for the loader tests and the fault drills.

Each builder returns a small file (or its bytes) that expands enormously when loaded naively:
deflate streams of zeros, PNGs of huge all-black images, pickles whose opcodes build arrays larger
than the file or share references ("billion laughs"). :func:`peak_of` measures what refusing one costs.
"""

from __future__ import annotations

import pickle
import struct
import tracemalloc
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "BOMB_BYTES",
    "HOSTILE_ARRAYS",
    "LAUGHS",
    "N_HOSTILE",
    "OMNIGLOT_MEMBER",
    "PEAK_LIMIT",
    "Reduce",
    "black_png",
    "cifar10",
    "deflated_zeros",
    "dict_pickle",
    "laughs_dup",
    "laughs_memo",
    "ops",
    "peak_of",
]

BOMB_BYTES = 128 << 20  # what each bomb expands to when loaded naively
PEAK_LIMIT = 32 << 20  # the tracemalloc peak allowed while a hostile file is refused
OMNIGLOT_MEMBER = "images_background/Greek/character01/bomb.png"  # an image's place in an Omniglot zip


def deflated_zeros(n: int, wbits: int) -> bytes:
    """``n`` zero bytes deflated (``wbits``: 16 + MAX_WBITS for a gzip member), about n / 1000 bytes."""
    comp = zlib.compressobj(9, zlib.DEFLATED, wbits)
    chunk = bytes(1 << 20)
    return b"".join(comp.compress(chunk) for _ in range(n >> 20)) + comp.flush()


def black_png(width: int, height: int) -> bytes:
    """An all-black 8-bit grey PNG, deflated in row blocks (a 9000x9000 one is ~80 KB)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    comp, rows = zlib.compressobj(9), bytes(1 + width) * 100
    idat = b"".join(comp.compress(rows) for _ in range(height // 100))
    idat += comp.compress(bytes(1 + width) * (height % 100)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


class Reduce:
    """Pickles as ``func(*args)``."""

    def __init__(self, func: Any, args: tuple[Any, ...]) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self.func, self.args


def ops(obj: object) -> bytes:
    """The opcodes that push ``obj`` (its protocol-2 pickle without PROTO and STOP)."""
    return pickle.dumps(obj, protocol=2)[2:-1]


def dict_pickle(*items: tuple[object, bytes]) -> bytes:
    """A protocol-2 pickle of a dict whose values are given as raw opcodes."""
    return b"\x80\x02}(" + b"".join(ops(key) + value for key, value in items) + b"u."


def laughs_memo() -> bytes:
    """Opcodes of [[...[0]*10...]*10]*10 with 10**8 leaves, shared through pickle memo gets."""
    nested: Any = [0] * 10
    for _ in range(7):
        nested = [nested] * 10
    return ops(nested)


def laughs_dup() -> bytes:
    """The same 10**8-leaf tree built with DUP instead of memo gets."""
    return b"(" * 7 + b"](" + b"K\x00" * 10 + b"e" + (pickle.DUP * 9 + pickle.LIST) * 7


def cifar10(parent: Path, *, meta: bytes | None = None, test_batch: bytes | None = None) -> Path:
    """A CIFAR-10 release folder under ``parent`` with a genuine ``batches.meta`` (unless given) and ``test_batch``."""
    folder = parent / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "batches.meta").write_bytes(meta or pickle.dumps({b"label_names": [b"a", b"b"]}, protocol=2))
    if test_batch is not None:
        (folder / "test_batch").write_bytes(test_batch)
    return folder


#: 10**8 leaves shared through pickle memo gets or DUP, by how they are shared.
LAUGHS: dict[str, Callable[[], bytes]] = {"memo": laughs_memo, "dup": laughs_dup}

N_HOSTILE = 100_000  # (N, 3072) uint8: 307 MB
_RECONSTRUCT = np.zeros(1).__reduce__()[0]  # numpy's _reconstruct, wherever this numpy keeps it

#: Opcodes of a (N_HOSTILE, 3072) uint8 array in a few bytes, by how they build it.
HOSTILE_ARRAYS = {
    "ndarray": ops(Reduce(np.ndarray, ((N_HOSTILE, 3072), "u1"))),
    "reconstruct": ops(Reduce(_RECONSTRUCT, (np.ndarray, (N_HOSTILE, 3072), b"B"))),
    "zero_strides": ops(Reduce(np.ndarray, ((N_HOSTILE, 3072), "u1", b"\0", 0, (0, 0)))),
    "newobj": b"cnumpy\nndarray\n" + ops(((N_HOSTILE, 3072), "u1")) + pickle.NEWOBJ,
}


def peak_of(load: Callable[[], object]) -> tuple[BaseException | None, int]:
    """Run ``load`` under tracemalloc.

    Args:
        load: The call to measure, typically a loader on a hostile file.

    Returns:
        The exception it raised (None if it returned) and tracemalloc's peak in bytes.
    """
    tracemalloc.start()
    try:
        load()
        error: BaseException | None = None
    except Exception as exc:  # MemoryError too: the old loaders hit it under ulimit -v
        error = exc
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return error, peak
