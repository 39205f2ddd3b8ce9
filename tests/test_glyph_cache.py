"""Tests of the glyph dataset's on-disk cache: a key by font contents, and a checksum."""

from __future__ import annotations

import re
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import assert_same_splits

from meta_rl.data import glyphs
from meta_rl.data.dataset import ImageDataset
from meta_rl.data.glyphs import glyph_fonts, load_glyphs

SMALL: dict[str, Any] = {"max_classes": 42, "instances_per_class": 2, "progress": False, "num_workers": 1}
PARAMS = {"image_size": 28, "instances_per_class": 2, "seed": 0, "max_classes": 42}


def _dejavu() -> list[Path]:
    fonts = [p for p in glyph_fonts() if p.name.lower().startswith("dejavu")]
    assert len(fonts) >= 4, fonts
    return fonts


def _key(fonts: list[Path], params: dict[str, Any]) -> str:
    return glyphs._cache_key(glyphs._font_fingerprints(fonts), params)


def _copy_fonts(dest: Path) -> Path:
    dest.mkdir(parents=True)
    for font in _dejavu():
        shutil.copy2(font, dest / font.name)
    return dest


def _load(fonts: Path, cache_dir: Path) -> dict[str, ImageDataset]:
    return load_glyphs(font_dirs=[fonts], cache_dir=cache_dir, **SMALL)


def _cache_file(cache_dir: Path) -> Path:
    (path,) = cache_dir.glob("glyphs-*.pt")
    return path


@pytest.fixture(scope="module")
def fonts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of matplotlib's DejaVu fonts in a folder of its own."""
    return _copy_fonts(tmp_path_factory.mktemp("fonts") / "dejavu")


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, fonts: Path) -> tuple[Path, dict[str, ImageDataset]]:
    """A small build from ``fonts``: its cache file and its splits."""
    cache_dir = tmp_path_factory.mktemp("reference")
    data = _load(fonts, cache_dir)
    return _cache_file(cache_dir), data


@pytest.fixture
def damaged(
    tmp_path: Path, fonts: Path, reference: tuple[Path, dict[str, ImageDataset]]
) -> Callable[[Callable[[Path], None]], None]:
    """Copy the reference cache into ``tmp_path``, damage it, and check it is rebuilt, with a warning."""

    def check(damage: Callable[[Path], None]) -> None:
        source, expected = reference
        path = tmp_path / source.name
        shutil.copy2(source, path)
        damage(path)
        with pytest.warns(UserWarning, match=re.escape(str(path)) + r".*rebuild"):
            again = _load(fonts, tmp_path)
        assert_same_splits(expected, again)
        assert _cache_file(tmp_path) == path
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the rebuilt file is intact: it loads without a warning
            assert_same_splits(expected, _load(fonts, tmp_path))

    return check


def test_cache_key_ignores_font_folder_and_order(tmp_path: Path) -> None:
    a = glyph_fonts([_copy_fonts(tmp_path / "a")])
    b = glyph_fonts([_copy_fonts(tmp_path / "elsewhere" / "b")])
    assert [p.name for p in a] == [p.name for p in b] and a != b
    key = _key(a, PARAMS)
    assert _key(b, PARAMS) == key
    assert _key(list(reversed(b)), PARAMS) == key
    assert _key(_dejavu(), PARAMS) == key  # the installed originals, too
    assert _key(a, {**PARAMS, "seed": 1}) != key


def test_cache_key_follows_font_contents_and_names(tmp_path: Path) -> None:
    folder = _copy_fonts(tmp_path / "fonts")
    key = _key(glyph_fonts([folder]), PARAMS)
    font = folder / "DejaVuSans.ttf"
    raw = bytearray(font.read_bytes())
    raw[len(raw) // 2] ^= 0x01  # same size, same path, other contents
    font.write_bytes(bytes(raw))
    changed = _key(glyph_fonts([folder]), PARAMS)
    assert changed != key
    font.rename(folder / "Renamed.ttf")
    assert _key(glyph_fonts([folder]), PARAMS) not in (key, changed)


def test_copies_of_the_same_fonts_share_one_cache_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    builds = []
    build = glyphs._build

    def counted(*args: Any, **kwargs: Any) -> dict[str, ImageDataset]:
        builds.append(args)
        return build(*args, **kwargs)

    monkeypatch.setattr(glyphs, "_build", counted)
    cache_dir = tmp_path / "cache"
    first = _load(_copy_fonts(tmp_path / "venv1" / "fonts"), cache_dir)
    path = _cache_file(cache_dir)
    mtime = path.stat().st_mtime_ns
    second = _load(_copy_fonts(tmp_path / "venv2" / "site" / "fonts"), cache_dir)
    assert len(builds) == 1, "the second copy of the fonts rebuilt the dataset"
    assert list(cache_dir.iterdir()) == [path] and path.stat().st_mtime_ns == mtime
    assert_same_splits(first, second)


def test_changed_label_is_rebuilt(damaged: Callable[[Callable[[Path], None]], None]) -> None:
    def bump_label(path: Path) -> None:
        payload = torch.load(path, weights_only=True)
        labels = payload["splits"]["train"]["labels"]
        assert int(labels[0]) < int(labels.max())
        labels[0] += 1  # one label off by one (still a valid class), the stored checksum left as it was
        torch.save(payload, path)

    damaged(bump_label)


def test_flipped_bit_in_image_data_is_rebuilt(
    damaged: Callable[[Callable[[Path], None]], None], reference: tuple[Path, dict[str, ImageDataset]]
) -> None:
    images = reference[1]["train"].images.contiguous().numpy().tobytes()

    def flip_bit(path: Path) -> None:
        raw = bytearray(path.read_bytes())
        offset = raw.find(images)
        assert offset > 0 and raw.find(images, offset + 1) < 0, "the image data is not stored once, as is"
        raw[offset + len(images) // 2] ^= 0x04  # one bit of one pixel in the middle of the file's images
        path.write_bytes(bytes(raw))

    damaged(flip_bit)


def test_truncated_cache_is_rebuilt(damaged: Callable[[Callable[[Path], None]], None]) -> None:
    def truncate(path: Path) -> None:
        raw = path.read_bytes()
        path.write_bytes(raw[: len(raw) // 2])

    damaged(truncate)


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"checksum": None}, id="no-checksum"),
        pytest.param({"checksum": "sha256:" + "0" * 64}, id="wrong-checksum"),
        pytest.param({"format": "glyphs-v1", "checksum": None}, id="old-format"),
    ],
)
def test_cache_without_a_valid_checksum_is_rebuilt(
    damaged: Callable[[Callable[[Path], None]], None], change: dict[str, Any]
) -> None:
    def rewrite(path: Path) -> None:
        payload = torch.load(path, weights_only=True)
        for key, value in change.items():
            if value is None:
                payload.pop(key, None)
            else:
                payload[key] = value
        torch.save(payload, path)

    damaged(rewrite)
