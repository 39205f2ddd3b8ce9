"""Hostile dataset files, crafted in each real on-disk format, must not exhaust memory.

Each case builds a small file that expands enormously when loaded naively (gzip and zip
bombs, pickled arrays larger than their file, "billion laughs" pickles of shared references,
decompression-bomb PNGs) and checks that the loader raises :class:`DatasetError` with a
useful message while tracemalloc's peak stays under ``PEAK_LIMIT``. The builders of the hostile
files and the limits are shared with the fault drills (``hostile_files.py``).
"""

from __future__ import annotations

import gzip
import io
import pickle
import re
import struct
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from hostile_files import (
    BOMB_BYTES,
    HOSTILE_ARRAYS,
    LAUGHS,
    N_HOSTILE,
    PEAK_LIMIT,
    black_png,
    cifar10,
    deflated_zeros,
    dict_pickle,
    ops,
    peak_of,
)
from hostile_files import OMNIGLOT_MEMBER as MEMBER
from PIL import Image

from meta_rl.data import DatasetError, load_cifar, load_idx, load_image_folder, load_mini_imagenet, load_omniglot


def assert_refused(load: Callable[[], object], match: str) -> str:
    """``load`` raises a DatasetError matching ``match`` (and naming a fix) with a small peak."""
    error, peak = peak_of(load)
    assert peak < PEAK_LIMIT, f"peak memory {peak / 2**20:.0f} MiB (error: {error!r:.300})"
    assert isinstance(error, DatasetError), f"expected DatasetError, got {error!r:.300}"
    message = str(error)
    assert re.search(match, message), message
    assert re.search(r"download|delete|replace", message), message
    return message


@pytest.fixture(scope="module")
def zeros_gz() -> bytes:
    """A gzip member holding BOMB_BYTES zeros (~130 KB)."""
    return deflated_zeros(BOMB_BYTES, 16 + zlib.MAX_WBITS)


@pytest.fixture(scope="module")
def bomb_zip() -> bytes:
    """An Omniglot zip whose one image member holds BOMB_BYTES zeros (~130 KB)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        zf.writestr("images_background/Greek/", b"")
        with zf.open(MEMBER, "w") as member:
            chunk = bytes(1 << 20)
            for _ in range(BOMB_BYTES >> 20):
                member.write(chunk)
    return buf.getvalue()


@pytest.fixture(scope="module")
def pixel_bomb_png() -> bytes:
    """81M pixels: under PIL's own decompression-bomb threshold, 81 MB (L) once decoded."""
    return black_png(9000, 9000)


# --------------------------------------------------------------------------------------------
# IDX (gzip)
# --------------------------------------------------------------------------------------------


def idx_header(*dims: int) -> bytes:
    return struct.pack(f">I{len(dims)}I", 0x803 if len(dims) == 3 else 0x801, *dims)


def labels_file(tmp_path: Path, n: int = 2) -> Path:
    path = tmp_path / "labels-idx1-ubyte"
    path.write_bytes(idx_header(n) + bytes(n))
    return path


def test_idx_gzip_bomb_with_modest_header_stops_at_the_header_size(tmp_path: Path, zeros_gz: bytes) -> None:
    path = tmp_path / "images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(idx_header(2, 28, 28)) + zeros_gz)  # 2 images, then 128 MiB more
    assert_refused(lambda: load_idx(path, labels_file(tmp_path)), r"images-idx3-ubyte\.gz.*trailing data")


def test_idx_gzip_header_beyond_deflate_ratio_is_refused_unread(tmp_path: Path, zeros_gz: bytes) -> None:
    path = tmp_path / "images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(idx_header(1000, 1000, 1000)) + zeros_gz)  # claims 1 GB in ~130 KB
    message = assert_refused(lambda: load_idx(path, labels_file(tmp_path)), r"images-idx3-ubyte\.gz")
    assert "(1000, 1000, 1000)" in message and "deflate" in message


@pytest.mark.parametrize("gz", [False, True])
def test_idx_header_beyond_size_cap_is_refused(tmp_path: Path, gz: bool) -> None:
    raw = idx_header(60000, 28000, 28000) + bytes(100)
    path = tmp_path / ("images-idx3-ubyte" + (".gz" if gz else ""))
    path.write_bytes(gzip.compress(raw) if gz else raw)
    message = assert_refused(lambda: load_idx(path, labels_file(tmp_path)), r"\(60000, 28000, 28000\)")
    assert "MiB limit" in message


def test_idx_truncated_gzip_uses_memory_for_the_data_not_the_claim(tmp_path: Path) -> None:
    path = tmp_path / "images-idx3-ubyte.gz"
    noise = np.random.default_rng(2).bytes(1 << 20)  # incompressible: the claim is within deflate's reach
    path.write_bytes(gzip.compress(idx_header(1000, 100, 1000) + noise))  # claims 100 MB, holds 1 MiB
    assert_refused(lambda: load_idx(path, labels_file(tmp_path)), r"decompresses to 1048592 bytes.*truncated")


def test_idx_gzip_larger_than_a_read_chunk_round_trips_with_bounded_memory(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(3000, 28, 28), dtype=np.uint8)  # 2.4 MB: several read chunks
    labels = (np.arange(3000) % 10).astype(np.uint8)
    images_path, labels_path = tmp_path / "images.gz", tmp_path / "labels.gz"
    images_path.write_bytes(gzip.compress(idx_header(*images.shape) + images.tobytes(), compresslevel=1))
    labels_path.write_bytes(gzip.compress(idx_header(3000) + labels.tobytes()))
    error, peak = peak_of(lambda: load_idx(images_path, labels_path))
    assert error is None and peak < 4 * images.nbytes
    ds = load_idx(images_path, labels_path)
    order = np.argsort(labels, kind="stable")
    assert torch.equal(ds.images[:, 0], torch.from_numpy(images[order]))


# --------------------------------------------------------------------------------------------
# Omniglot (zip members, image files, pixels)
# --------------------------------------------------------------------------------------------


def test_omniglot_zip_member_over_size_cap_is_refused_unread(tmp_path: Path, bomb_zip: bytes) -> None:
    (tmp_path / "images_background.zip").write_bytes(bomb_zip)
    message = assert_refused(lambda: load_omniglot(tmp_path), r"images_background\.zip:.*bomb\.png")
    assert f"{BOMB_BYTES:,} bytes uncompressed" in message and "64 MiB" in message


def test_omniglot_zip_member_over_compression_ratio_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "images_background.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(MEMBER, bytes(8 << 20))  # under the size cap, but expands ~1000x
    message = assert_refused(lambda: load_omniglot(tmp_path), r"bomb\.png expands from")
    assert "100x" in message


def test_omniglot_zip_member_lying_about_its_size_is_read_only_that_far(tmp_path: Path, bomb_zip: bytes) -> None:
    raw = bytearray(bomb_zip)
    patch_zip_size(raw, MEMBER, 1000)  # both headers say 1000 bytes: the data is 128 MiB
    (tmp_path / "images_background.zip").write_bytes(bytes(raw))
    assert_refused(lambda: load_omniglot(tmp_path), r"bomb\.png.*corrupt")


def patch_zip_size(raw: bytearray, name: str, size: int) -> None:
    """Overwrite ``name``'s uncompressed size in its local and central zip headers."""
    local = zipfile.ZipFile(io.BytesIO(bytes(raw))).getinfo(name).header_offset
    key = name.encode()
    central = next(m.start() for m in re.finditer(b"PK\x01\x02", raw) if raw[m.start() + 46 :].startswith(key))
    struct.pack_into("<I", raw, local + 22, size)
    struct.pack_into("<I", raw, central + 24, size)


def test_omniglot_zip_member_shorter_than_its_header_is_refused(tmp_path: Path) -> None:
    png = io.BytesIO()
    Image.new("L", (105, 105), 255).save(png, format="PNG")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(MEMBER, png.getvalue())
    raw = bytearray(buf.getvalue())
    patch_zip_size(raw, MEMBER, len(png.getvalue()) + 1000)  # CRC still matches the real data
    (tmp_path / "images_background.zip").write_bytes(bytes(raw))
    assert_refused(lambda: load_omniglot(tmp_path), rf"bomb\.png holds {len(png.getvalue())} bytes but its zip header")


def test_omniglot_folder_image_file_over_size_cap_is_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / MEMBER
    path.parent.mkdir(parents=True)
    with open(path, "wb") as f:
        f.truncate(BOMB_BYTES)  # sparse: no disk used
    message = assert_refused(lambda: load_omniglot(tmp_path), r"bomb\.png is 134,217,728 bytes")
    assert "64 MiB" in message


def test_omniglot_png_pixel_bomb_is_refused_before_decoding(tmp_path: Path, pixel_bomb_png: bytes) -> None:
    with zipfile.ZipFile(tmp_path / "images_background.zip", "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(MEMBER, pixel_bomb_png)
    assert_refused(lambda: load_omniglot(tmp_path), r"bomb\.png declares 9000x9000 pixels.*105x105")


def test_image_folder_png_pixel_bomb_is_refused_before_decoding(tmp_path: Path, pixel_bomb_png: bytes) -> None:
    (tmp_path / "cls").mkdir()
    (tmp_path / "cls" / "bomb.png").write_bytes(pixel_bomb_png)
    assert_refused(lambda: load_image_folder(tmp_path, image_size=8), r"bomb\.png declares 9000x9000 pixels")


# --------------------------------------------------------------------------------------------
# Pickles (CIFAR, miniImageNet)
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", sorted(HOSTILE_ARRAYS))
def test_cifar_array_larger_than_its_file_is_refused_before_allocation(tmp_path: Path, variant: str) -> None:
    batch = dict_pickle((b"data", HOSTILE_ARRAYS[variant]), (b"labels", ops([0] * N_HOSTILE)))
    folder = cifar10(tmp_path, test_batch=batch)
    match = rf"test_batch declares a uint8 array of shape \({N_HOSTILE}, 3072\)"
    message = assert_refused(lambda: load_cifar(folder), match)
    assert f"file is only {len(batch):,} bytes" in message and "not a genuine CIFAR batch" in message


SHARED = {"memo": r"references the same list more than once", "dup": r"duplicates a reference \(DUP opcode\)"}


@pytest.mark.parametrize("variant", sorted(LAUGHS))
def test_cifar_billion_laughs_labels_are_refused(tmp_path: Path, variant: str) -> None:
    batch = dict_pickle((b"data", ops(np.zeros((2, 3072), np.uint8))), (b"labels", LAUGHS[variant]()))
    assert len(batch) < 7000
    folder = cifar10(tmp_path, test_batch=batch)
    assert_refused(lambda: load_cifar(folder), rf"test_batch {SHARED[variant]}.*not a genuine CIFAR batch")


@pytest.mark.parametrize("variant", sorted(LAUGHS))
def test_mini_imagenet_billion_laughs_class_dict_is_refused(tmp_path: Path, variant: str) -> None:
    path = tmp_path / "mini-imagenet-cache-train.pkl"
    class_dict = b"}(" + ops("n01") + LAUGHS[variant]() + b"u"
    path.write_bytes(dict_pickle(("image_data", ops(np.zeros((2, 4, 4, 3), np.uint8))), ("class_dict", class_dict)))
    assert_refused(
        lambda: load_mini_imagenet(path), rf"cache-train\.pkl {SHARED[variant]}.*not a genuine miniImageNet cache"
    )


def test_cifar_meta_repeating_one_long_name_is_refused(tmp_path: Path) -> None:
    meta = pickle.dumps({b"label_names": [b"x" * 10_000] * 50_000}, protocol=2)  # 500 MB once decoded
    assert len(meta) < 200_000
    folder = cifar10(tmp_path, meta=meta)
    assert_refused(lambda: load_cifar(folder), r"batches\.meta repeats memoised bytes values")


def test_cifar_labels_padding_bomb_is_refused(tmp_path: Path) -> None:
    labels = [b"x" * 100_000] + [b"a"] * 2999  # np.asarray pads all to 100 KB: 300 MB
    batch = pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": labels}, protocol=2)
    folder = cifar10(tmp_path, test_batch=batch)
    assert_refused(lambda: load_cifar(folder), r"test_batch: 'labels' must be a flat list of integers")


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_genuine_pickles_load_with_memory_a_small_multiple_of_the_output(tmp_path: Path, protocol: int) -> None:
    rng = np.random.default_rng(1)
    data = rng.integers(0, 256, size=(2000, 3072), dtype=np.uint8)  # 6 MB
    labels = [int(x) for x in rng.integers(0, 2, size=2000)]
    batch = {b"batch_label": b"test", b"labels": labels, b"data": data, b"filenames": [b"x.png"] * 2000}
    folder = cifar10(tmp_path, test_batch=pickle.dumps(batch, protocol=protocol))
    error, peak = peak_of(lambda: load_cifar(folder))
    assert error is None and peak < 6 * data.nbytes, f"{error!r} peak {peak / 2**20:.1f} MiB"
    test = load_cifar(folder)["test"]
    order = np.argsort(labels, kind="stable")
    assert torch.equal(test.images, torch.from_numpy(data[order].reshape(-1, 3, 32, 32)))

    images = rng.integers(0, 256, size=(300, 84, 84, 3), dtype=np.uint8)  # 6 MB
    path = tmp_path / "mini-imagenet-cache-val.pkl"
    class_dict = {"n1": list(range(1, 300, 2)), "n0": list(range(0, 300, 2))}
    path.write_bytes(pickle.dumps({"image_data": images, "class_dict": class_dict}, protocol=protocol))
    error, peak = peak_of(lambda: load_mini_imagenet(path))
    assert error is None and peak < 6 * images.nbytes, f"{error!r} peak {peak / 2**20:.1f} MiB"
    val = load_mini_imagenet(path)["val"]
    order = class_dict["n0"] + class_dict["n1"]
    assert torch.equal(val.images, torch.from_numpy(images[order].transpose(0, 3, 1, 2).copy()))
