"""Hostile dataset files crafted in the real on-disk formats, for the loader tests and the fault drills.

Each builder returns a small file (or its bytes) that expands enormously when loaded naively:
deflate streams of zeros, PNGs of huge all-black images, pickles whose opcodes build arrays larger
than the file or share references ("billion laughs"). :class:`BombFolder` writes one of each kind
(:data:`BOMBS`) for the fault drills; :func:`peak_of` measures what refusing one costs.
"""

from __future__ import annotations

import gzip
import pickle
import struct
import tracemalloc
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from meta_rl.data import load_cifar, load_idx, load_image_folder, load_mini_imagenet, load_omniglot

__all__ = [
    "BOMBS",
    "BOMB_BYTES",
    "HOSTILE_ARRAYS",
    "LAUGHS",
    "N_HOSTILE",
    "OMNIGLOT_MEMBER",
    "PEAK_LIMIT",
    "BombFolder",
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


class BombFolder:
    """A folder of loader bombs, each expanding to >= ``BOMB_BYTES`` when loaded naively.

    Each method writes one bomb and returns the call that loads it.
    """

    def __init__(self, folder: Path) -> None:
        folder.mkdir()
        self.folder = folder
        self.labels = folder / "labels-idx1-ubyte"  # two labels, for the IDX image files
        self.labels.write_bytes(struct.pack(">II", 0x801, 2) + bytes(2))
        self.gz_zeros = deflated_zeros(BOMB_BYTES, 16 + zlib.MAX_WBITS)

    def idx(self, dims: tuple[int, ...]) -> Callable[[], Any]:
        """A gzipped IDX images file declaring ``dims``, followed by ``BOMB_BYTES`` of zeros."""
        path = self.folder / f"images-{'x'.join(map(str, dims))}-idx3-ubyte.gz"
        path.write_bytes(gzip.compress(struct.pack(">IIII", 0x803, *dims)) + self.gz_zeros)
        return lambda: load_idx(path, self.labels)

    def omniglot_zip(self) -> Callable[[], Any]:
        """An Omniglot ``images_background.zip`` whose one image member holds ``BOMB_BYTES`` of zeros."""
        root = self.folder / "omniglot-zip"
        root.mkdir()
        zip_path = root / "images_background.zip"
        with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf, \
                zf.open(OMNIGLOT_MEMBER, "w") as member:
            for _ in range(BOMB_BYTES >> 20):
                member.write(bytes(1 << 20))
        return lambda: load_omniglot(root)

    def pixels(self) -> Callable[[], Any]:
        """An image folder holding an all-black PNG of 12000x12000 (144 M) pixels."""
        root = self.folder / "png-folder"
        (root / "cls").mkdir(parents=True)
        (root / "cls" / "bomb.png").write_bytes(black_png(12000, 12000))
        return lambda: load_image_folder(root, image_size=8)

    def cifar_array(self, kind: str) -> Callable[[], Any]:
        """A CIFAR-10 test batch whose ``data`` is ``HOSTILE_ARRAYS[kind]``: 307 MB from a few bytes."""
        (self.folder / f"cifar-{kind}").mkdir()
        root = cifar10(self.folder / f"cifar-{kind}",
                       test_batch=dict_pickle((b"data", HOSTILE_ARRAYS[kind]), (b"labels", ops([0] * 10))))
        return lambda: load_cifar(root)

    def cifar_laughs(self, shared: str) -> Callable[[], Any]:
        """A CIFAR-10 test batch whose ``labels`` are a billion laughs (``LAUGHS[shared]``)."""
        batch = dict_pickle((b"data", ops(np.zeros((2, 3072), np.uint8))), (b"labels", LAUGHS[shared]()))
        (self.folder / f"cifar-laughs-{shared}").mkdir()
        root = cifar10(self.folder / f"cifar-laughs-{shared}", test_batch=batch)
        return lambda: load_cifar(root)

    def mini_imagenet_laughs(self, shared: str) -> Callable[[], Any]:
        """A miniImageNet cache whose ``class_dict`` holds a billion laughs (``LAUGHS[shared]``)."""
        path = self.folder / f"laughs-{shared}" / "mini-imagenet-cache-train.pkl"
        path.parent.mkdir()
        class_dict = b"}(" + ops("n01") + LAUGHS[shared]() + b"u"
        path.write_bytes(dict_pickle(("image_data", ops(np.zeros((2, 4, 4, 3), np.uint8))),
                                      ("class_dict", class_dict)))
        return lambda: load_mini_imagenet(path)


#: Each bomb, and how it is written into a :class:`BombFolder`.
BOMBS: dict[str, Callable[[BombFolder], Callable[[], Any]]] = {
    "IDX gzip: 2 images declared, 128 MiB trailing": lambda bombs: bombs.idx((2, 28, 28)),
    "IDX gzip: 1 GB declared in 130 KB": lambda bombs: bombs.idx((1000, 1000, 1000)),
    "Omniglot zip member of 128 MiB zeros": lambda bombs: bombs.omniglot_zip(),
    "PNG of 12000x12000 pixels in an image folder": lambda bombs: bombs.pixels(),
    "CIFAR ndarray((100000, 3072)) reduce": lambda bombs: bombs.cifar_array("ndarray"),
    "CIFAR numpy _reconstruct of (100000, 3072)": lambda bombs: bombs.cifar_array("reconstruct"),
    "CIFAR labels: billion laughs (memo)": lambda bombs: bombs.cifar_laughs("memo"),
    "CIFAR labels: billion laughs (DUP)": lambda bombs: bombs.cifar_laughs("dup"),
    "miniImageNet class_dict: billion laughs (memo)": lambda bombs: bombs.mini_imagenet_laughs("memo"),
    "miniImageNet class_dict: billion laughs (DUP)": lambda bombs: bombs.mini_imagenet_laughs("dup"),
}
