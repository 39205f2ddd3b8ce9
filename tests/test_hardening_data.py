"""Hostile inputs to the data layer (issue 33, third pass), each built in its real on-disk form.

Zero-sized IDX and miniImageNet images, 16-bit PNGs in a ``folder:`` dataset, unreadable class
and dataset folders, a killed glyph-cache writer's temporary file, a glyph ``image_size`` too
large to build, and a ``folder:`` dataset of many one-image classes (``split_by_group``).
"""

from __future__ import annotations

import json
import os
import pickle
import random
import struct
import subprocess
import sys
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

import meta_rl
from meta_rl.data import (
    DatasetError,
    ImageDataset,
    glyphs,
    load_idx,
    load_image_folder,
    load_mini_imagenet,
    split_by_group,
)
from meta_rl.data.glyphs import glyph_fonts, load_glyphs

REPO_ROOT = Path(meta_rl.__file__).resolve().parent.parent  # the tree under test (also in subprocesses)


# --------------------------------------------------------------------------------------------
# Zero-sized images (IDX, miniImageNet)
# --------------------------------------------------------------------------------------------


def _write_idx_pair(folder: Path, shape: tuple[int, int, int]) -> tuple[Path, Path]:
    """An IDX images file of ``shape`` (all zeros) and a labels file of ``shape[0]`` labels."""
    n = shape[0]
    images = folder / "images-idx3-ubyte"
    labels = folder / "labels-idx1-ubyte"
    images.write_bytes(struct.pack(">IIII", 0x00000803, *shape) + bytes(int(np.prod(shape))))
    labels.write_bytes(struct.pack(">II", 0x00000801, n) + bytes(i % 2 for i in range(n)))
    return images, labels


@pytest.mark.parametrize("shape", [(4, 0, 0), (4, 28, 0), (4, 0, 28)])
def test_idx_with_zero_sized_images_is_refused(tmp_path: Path, shape: tuple[int, int, int]) -> None:
    images, labels = _write_idx_pair(tmp_path, shape)
    with pytest.raises(DatasetError) as info:
        load_idx(images, labels)
    message = str(info.value)
    assert str(images) in message and str(shape) in message, message
    assert "at least 1 row and 1 column" in message, message


def test_mini_imagenet_with_zero_sized_images_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "mini-imagenet-cache-train.pkl"
    with open(path, "wb") as f:
        pickle.dump({"image_data": np.zeros((4, 0, 0, 3), np.uint8), "class_dict": {"n01": [0, 1], "n02": [2, 3]}}, f)
    with pytest.raises(DatasetError) as info:
        load_mini_imagenet(path)
    message = str(info.value)
    assert str(path) in message and "(4, 0, 0, 3)" in message, message
    assert "H and W at least 1" in message, message


# --------------------------------------------------------------------------------------------
# 16-bit images in a folder dataset
# --------------------------------------------------------------------------------------------


def test_16_bit_pngs_are_scaled_by_the_mode_range_in_every_image(tmp_path: Path) -> None:
    values = [0, 200, 256, 1000, 30000, 65535]
    folder = tmp_path / "a"
    folder.mkdir()
    for i, v in enumerate(values):  # one uniform 16-bit greyscale PNG per value
        Image.fromarray(np.full((4, 4), v, np.uint16)).save(folder / f"{i}.png")
        with Image.open(folder / f"{i}.png") as img:
            assert img.mode.startswith("I;16") or img.mode == "I", img.mode  # really 16-bit on disk
    ds = load_image_folder(tmp_path)
    assert ds.image_shape == (1, 4, 4)
    loaded = [int(ds.images[i].unique().item()) for i in range(len(values))]  # files load in name order
    assert loaded == sorted(loaded), f"not monotonic in the 16-bit value: {dict(zip(values, loaded))}"
    assert loaded == [round(v / 65535 * 255) for v in values], dict(zip(values, loaded))


# --------------------------------------------------------------------------------------------
# Unreadable folders
# --------------------------------------------------------------------------------------------

# Run in a child process: as root, it first drops the capabilities that let root ignore file
# modes (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH), so that chmod 000 means something to it too.
_UNREADABLE_CHILD = textwrap.dedent(
    """
    import ctypes, io, json, os, sys
    from contextlib import redirect_stderr, redirect_stdout

    root, probe, run_dir = sys.argv[1:4]
    if os.geteuid() == 0:
        libc = ctypes.CDLL(None, use_errno=True)
        header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
        data = (ctypes.c_uint32 * 6)()  # (effective, permitted, inheritable) x 2 words
        if libc.capget(header, data) == 0:
            for i in range(3):
                data[i] &= ~0b110  # bits 1, 2: CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
            libc.capset(header, data)
    try:
        os.listdir(probe)
    except PermissionError:
        pass
    else:
        print(json.dumps({"skip": "this process can read a chmod 000 folder"}))
        sys.exit(0)

    from meta_rl.cli import main
    from meta_rl.data import DatasetError, load_image_folder

    try:
        load_image_folder(root)
        loader = ["no error", False, ""]
    except BaseException as exc:
        loader = [type(exc).__name__, isinstance(exc, DatasetError), str(exc)]
    err = io.StringIO()
    try:
        with redirect_stdout(io.StringIO()), redirect_stderr(err):
            code = main(["train", "--run-dir", run_dir, "env_id=meta_rl/FewShot-v0",
                         f"env_kwargs.dataset=folder:{root}", "env_kwargs.n_way=2", "device=cpu", "--no-progress"])
        cli = [code, err.getvalue()]
    except BaseException as exc:
        cli = [type(exc).__name__, str(exc)]
    print(json.dumps({"loader": loader, "cli": cli}))
    """
)


def _write_class_folders(root: Path, n: int = 3) -> None:
    for k in range(n):
        (root / f"class{k}").mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((4, 4), 40 * k + i, np.uint8)).save(root / f"class{k}" / f"{i}.png")


@pytest.mark.parametrize("locked", ["class folder", "dataset folder"])
def test_unreadable_folder_is_a_dataset_error(tmp_path: Path, locked: str) -> None:
    root = tmp_path / "data"
    _write_class_folders(root)
    target = root / "class1" if locked == "class folder" else root
    probe = tmp_path / "probe"
    probe.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    env["META_RL_PROGRESS"] = "0"
    os.chmod(target, 0o000)
    os.chmod(probe, 0o000)
    try:
        result = subprocess.run(
            [sys.executable, "-c", _UNREADABLE_CHILD, str(root), str(probe), str(tmp_path / "run")],
            capture_output=True, text=True, env=env, timeout=120, check=False,
        )
    finally:
        os.chmod(target, 0o755)
        os.chmod(probe, 0o755)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    if "skip" in report:
        pytest.skip(report["skip"])
    kind, is_dataset_error, message = report["loader"]
    assert is_dataset_error, f"load_image_folder raised {kind}: {message}"
    assert f"{locked} {target}" in message and f"chmod u+rx {target}" in message, message
    code, stderr = report["cli"]
    assert code == 2, f"meta-rl train: {code} {stderr}"
    assert "meta-rl: error:" in stderr and f"{locked} {target}" in stderr, stderr


# --------------------------------------------------------------------------------------------
# The glyph cache: a killed writer's temporary file, an image_size too large to build
# --------------------------------------------------------------------------------------------

SMALL: dict[str, Any] = {"max_classes": 42, "instances_per_class": 2, "progress": False, "num_workers": 1}


@pytest.fixture(scope="module")
def dejavu(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of matplotlib's DejaVu fonts (a small, fast glyph build)."""
    folder = tmp_path_factory.mktemp("fonts")
    fonts = [p for p in glyph_fonts() if p.name.lower().startswith("dejavu")]
    assert len(fonts) >= 4, fonts
    for font in fonts:
        (folder / font.name).write_bytes(font.read_bytes())
    return folder


def test_killed_cache_writers_temp_file_is_removed(
    tmp_path: Path, dejavu: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("META_RL_CACHE", str(cache))
    # What write_atomic leaves when its process is killed between mkstemp and rename: a partial file.
    stale = cache / ".glyphs-28px-2x-seed0-0123456789abcdef.pt.k3j2h1x0.tmp"
    stale.write_bytes(b"PK\x03\x04" + bytes(4096))
    hour_ago = time.time() - 3600
    os.utime(stale, (hour_ago, hour_ago))
    # A temp file another process is writing right now: it must survive.
    live = cache / ".glyphs-28px-2x-seed0-fedcba9876543210.pt.a1b2c3d4.tmp"
    live.write_bytes(b"PK\x03\x04")
    data = load_glyphs(font_dirs=[dejavu], **SMALL)
    assert set(data) == {"train", "val", "test"}
    assert not stale.exists(), "the killed writer's temporary file is still in the cache folder"
    assert live.exists(), "a temporary file being written right now was deleted"
    assert len(list(cache.glob("glyphs-*.pt"))) == 1


def _no_build(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("the glyphs were built: the size should have been refused before")


def test_glyph_image_size_above_the_limit_is_refused_before_building(
    tmp_path: Path, dejavu: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(glyphs, "_build", _no_build)
    cache = tmp_path / "cache"
    with pytest.raises(ValueError) as info:
        load_glyphs(image_size=512, font_dirs=[dejavu], cache_dir=cache, **SMALL)
    message = str(info.value)
    assert "image_size=512" in message, message
    assert f"{42 * 2 * 512 * 512:,} bytes" in message, message  # 42 classes x 2 instances x 512 x 512
    assert "image_size <= 128" in message, message
    assert not cache.exists() or not any(cache.iterdir())


def test_glyph_build_too_large_for_memory_is_refused_before_building(
    tmp_path: Path, dejavu: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(glyphs, "_build", _no_build)
    cache = tmp_path / "cache"
    size, instances = 64, 10**6  # 1800 classes x 10**6 instances x 64 x 64: 7.4 TB
    with pytest.raises(ValueError) as info:
        load_glyphs(image_size=size, instances_per_class=instances, font_dirs=[dejavu], cache_dir=cache,
                    progress=False, num_workers=1)
    message = str(info.value)
    assert f"image_size={size}" in message, message
    assert f"{1800 * instances * size * size:,} bytes" in message, message
    assert "smaller image_size" in message, message
    assert not cache.exists() or not any(cache.iterdir())


# --------------------------------------------------------------------------------------------
# split_by_group on many classes
# --------------------------------------------------------------------------------------------


class _CountingGroup(str):
    """A group name that counts the equality tests made on it (the operations a split costs)."""

    eq_calls = 0

    def __eq__(self, other: object) -> bool:
        type(self).eq_calls += 1
        return str.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        type(self).eq_calls += 1
        return str.__ne__(self, other)

    __hash__ = str.__hash__


def _reference_split(groups: Sequence[str], fractions: Sequence[float], n_splits: int, seed: int) -> list[list[int]]:
    """The class ids of each split, by the original (quadratic) algorithm, for comparison."""
    total = float(sum(fractions))
    unique = sorted(set(groups))
    rng = random.Random(seed)
    if len(unique) >= n_splits:
        units = [[c for c, g in enumerate(groups) if g == grp] for grp in unique]
    else:
        units = [[c] for c in range(len(groups))]
    rng.shuffle(units)
    targets = [f / total * len(groups) for f in fractions]
    assigned: list[list[int]] = [[] for _ in range(n_splits)]
    for i in range(n_splits):
        assigned[i].extend(units[i])
    for unit in units[n_splits:]:
        deficits = [targets[i] - len(assigned[i]) for i in range(n_splits)]
        assigned[max(range(n_splits), key=lambda i: deficits[i])].extend(unit)
    return [sorted(ids) for ids in assigned]


def _one_image_classes(groups: Sequence[str]) -> ImageDataset:
    n = len(groups)
    return ImageDataset(
        torch.arange(n, dtype=torch.int64).remainder(256).to(torch.uint8).view(n, 1, 1, 1),
        torch.arange(n, dtype=torch.int64),
        tuple(f"c{i}" for i in range(n)),
        tuple(groups),
        name="folder",
    )


def _split_class_ids(splits: dict[str, ImageDataset]) -> list[list[int]]:
    return [sorted(int(name[1:]) for name in splits[k].class_names) for k in ("train", "val", "test")]


def test_split_by_group_is_linear_in_the_classes_and_splits_as_before() -> None:
    names, fractions = ("train", "val", "test"), (0.6, 0.2, 0.2)
    # A hand example: groups x (classes 0, 3), y (1, 4), z (2), w (5); no group straddles two splits.
    hand = split_by_group(_one_image_classes(["x", "y", "z", "x", "y", "w"]), fractions, names, seed=0)
    ids = _split_class_ids(hand)
    assert ids == _reference_split(["x", "y", "z", "x", "y", "w"], fractions, 3, seed=0)
    assert sorted(c for split in ids for c in split) == list(range(6))
    assert {0, 3} in [set(s) & {0, 3} for s in ids] and {1, 4} in [set(s) & {1, 4} for s in ids]
    # The same split as the original algorithm, on classes in a few hundred groups and one per group.
    rng = random.Random(1)
    for groups in ([f"g{rng.randrange(300)}" for _ in range(3000)], [f"n{i:05d}" for i in range(3000)]):
        for seed in (0, 7):
            got = _split_class_ids(split_by_group(_one_image_classes(groups), fractions, names, seed=seed))
            assert got == _reference_split(groups, fractions, 3, seed), f"seed {seed}"
    # Linear: the group names are compared O(classes) times, not classes x groups (9,000,000 here).
    n = 3000
    _CountingGroup.eq_calls = 0
    counted = [_CountingGroup(f"n{i:05d}") for i in range(n)]
    split_by_group(_one_image_classes(counted), fractions, names, seed=0)
    assert _CountingGroup.eq_calls <= 4 * n, f"{_CountingGroup.eq_calls:,} comparisons of group names for {n} classes"
    # A user's folder of 20,000 one-image classes (each its own group) splits completely.
    big = split_by_group(_one_image_classes([f"n{i:05d}" for i in range(20_000)]), fractions, names, seed=0)
    assert sum(s.num_classes for s in big.values()) == 20_000
    assert [s.num_classes for s in big.values()] == [12_000, 4_000, 4_000]
