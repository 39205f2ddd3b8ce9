"""MNIST-style IDX files (MNIST, Fashion-MNIST, KMNIST), plain or gzipped.

A gzip stream is decompressed no further than the IDX header declares, and the header itself
is checked against a size limit and deflate's maximum ratio first.
"""

from __future__ import annotations

import gzip
import io
import math
import os
import struct
from pathlib import Path

import numpy as np

from meta_rl.data.dataset import ImageDataset
from meta_rl.data.formats.common import DatasetError, StrPath, open_binary, require_exists, short, to_dataset

__all__ = ["load_idx"]


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


def _checked_payload(path: Path, what: str, dims: tuple[int, ...]) -> int:
    """The data bytes the IDX header's ``dims`` declare, refusing zero-sized images and oversized files."""
    if what == "images" and 0 in dims[1:]:
        raise DatasetError(
            f"{path}: its IDX header declares images of shape {tuple(dims)}, that is {dims[1]}x{dims[2]} pixels; "
            "expected (count, rows, cols) with at least 1 row and 1 column (MNIST's are 28x28). The file is "
            "corrupt or not an IDX images file: download it again."
        )
    payload = math.prod(dims)  # Python ints: no overflow
    if payload > _MAX_IDX_BYTES:
        raise DatasetError(
            f"{path}: its IDX header declares shape {tuple(dims)}, {payload:,} bytes of {what}, more than the "
            f"{_MAX_IDX_BYTES >> 20} MiB limit for an IDX file (MNIST's largest is 47 MB); the header is "
            "corrupt: download the file again."
        )
    return payload


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
    payload = _checked_payload(path, what, dims)
    expected = header + payload
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
    require_exists(path, f"an IDX {what} file (e.g. train-{what}-idx{ndim}-ubyte or its .gz)")
    if not path.is_file():
        raise DatasetError(f"{path} is a folder; pass the IDX {what} file itself.")
    with open_binary(path) as file:
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
                f"{path} is a truncated or corrupt {kind} file ({short(exc)}); download it again."
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
        DatasetError: on a missing file, wrong magic number, wrong size, zero-sized images or
            count mismatch.
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
    return to_dataset(images[:, None], inverse.astype(np.int64), class_names, class_names, name)
