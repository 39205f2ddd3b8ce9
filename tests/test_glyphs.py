"""Tests of the font-rendered, Omniglot-style glyph dataset (meta_rl.data.glyphs)."""

from __future__ import annotations

import itertools
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
from conftest import assert_same_splits

from meta_rl.data import glyphs
from meta_rl.data.dataset import ImageDataset
from meta_rl.data.glyphs import (
    canonical_glyph,
    dedup_near_duplicates,
    glyph_fonts,
    letter_script,
    load_glyphs,
    render_glyph_instances,
)

MPL_FONTS = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
DEJAVU = MPL_FONTS / "DejaVuSans.ttf"
SMALL = {"max_classes": 60, "instances_per_class": 5, "font_dirs": [MPL_FONTS], "progress": False}


def _build(cache_dir: Path, **overrides: object) -> dict[str, ImageDataset]:
    kwargs: dict = {**SMALL, "num_workers": 1, "cache_dir": cache_dir}
    kwargs.update(overrides)
    return load_glyphs(**kwargs)


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ImageDataset]:
    return _build(tmp_path_factory.mktemp("glyphs"))


def test_fonts_listed_and_filtered() -> None:
    fonts = glyph_fonts()
    names = {p.name for p in fonts}
    assert "DejaVuSans.ttf" in names and "STIXGeneral.ttf" in names
    assert all(isinstance(p, Path) and p.is_file() for p in fonts)
    assert fonts == sorted(fonts, key=str)
    mpl_only = {p.name for p in glyph_fonts([MPL_FONTS])}
    # TeX fonts with non-Unicode cmaps and the last-resort box font never draw letters.
    assert not {"cmr10.ttf", "cmsy10.ttf", "LastResortHE-Regular.ttf"} & mpl_only
    assert mpl_only <= names


def test_letter_script() -> None:
    assert letter_script(ord("A")) == "LATIN"
    assert letter_script(ord("Ж")) == "CYRILLIC"
    assert letter_script(ord("Ω")) == "GREEK"
    assert letter_script(ord("ა")) == "GEORGIAN"
    assert letter_script(ord("á")) is None  # decomposes into a + accent
    assert letter_script(ord("1")) is None
    assert letter_script(ord("ʰ")) is None  # modifier letter
    assert letter_script(0x1D400) is None  # MATHEMATICAL BOLD CAPITAL A: a <font> variant


def test_shapes_dtypes_labels(small: dict[str, ImageDataset]) -> None:
    assert set(small) == {"train", "val", "test"}
    for split in small.values():
        assert split.images.dtype == torch.uint8 and split.labels.dtype == torch.int64
        assert split.images.shape[1:] == (1, 28, 28)
        assert len(split) == split.num_classes * 5
        assert torch.equal(split.class_counts(), torch.full((split.num_classes,), 5))
        assert len(set(split.class_names)) == split.num_classes
    assert sum(s.num_classes for s in small.values()) <= 60


def test_image_size_is_configurable(tmp_path: Path) -> None:
    data = _build(tmp_path, image_size=20, max_classes=42, instances_per_class=2)
    for split in data.values():
        assert split.images.shape[1:] == (1, 20, 20) and len(split) > 0


def test_strokes_bright_on_dark_and_not_blank(small: dict[str, ImageDataset]) -> None:
    images = torch.cat([s.images for s in small.values()]).float()
    flat = images.flatten(1)
    assert torch.all(flat.max(dim=1).values == 255)  # every image has full-brightness strokes
    ink = (flat > 127).float().mean(dim=1)
    assert torch.all(ink > 0.02) and torch.all(ink < 0.6)  # not blank, not inverted
    border = torch.cat([images[:, 0, 0], images[:, 0, -1], images[:, 0, :, 0], images[:, 0, :, -1]], 1)
    assert border.mean() < 10  # dark background


def test_splits_disjoint_by_script_and_class(small: dict[str, ImageDataset]) -> None:
    for split in small.values():
        assert split.num_classes > 0 and len(split) > 0
    for a, b in itertools.combinations(small.values(), 2):
        assert not set(a.groups) & set(b.groups)
        assert not set(a.class_names) & set(b.class_names)


def test_same_seed_same_tensors_any_worker_count(tmp_path: Path, small: dict[str, ImageDataset]) -> None:
    assert_same_splits(small, _build(tmp_path / "a"))
    assert_same_splits(small, _build(tmp_path / "b", num_workers=2))


def test_different_seed_different_distortions(tmp_path: Path, small: dict[str, ImageDataset]) -> None:
    other = _build(tmp_path, seed=1)
    for k in small:
        assert small[k].class_names == other[k].class_names  # the split ignores the seed
        assert not torch.equal(small[k].images, other[k].images)


def test_second_call_loads_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = _build(tmp_path)
    files = list(tmp_path.glob("glyphs-*.pt"))
    assert len(files) == 1 and not list(tmp_path.glob("*.tmp"))

    def no_build(*args: object, **kwargs: object) -> None:
        raise AssertionError("the dataset was rebuilt instead of loaded from the cache")

    monkeypatch.setattr(glyphs, "_build", no_build)
    assert_same_splits(first, _build(tmp_path))


def test_corrupt_cache_is_rebuilt(tmp_path: Path) -> None:
    first = _build(tmp_path)
    (path,) = tmp_path.glob("glyphs-*.pt")
    path.write_bytes(b"not a torch file")
    with pytest.warns(UserWarning, match="rebuilding"):
        again = _build(tmp_path)
    assert_same_splits(first, again)
    assert_same_splits(first, _build(tmp_path))  # the rebuilt file is readable


def test_cache_key_covers_parameters_and_fonts() -> None:
    fonts = glyph_fonts([MPL_FONTS])
    params = {"image_size": 28, "instances_per_class": 20, "seed": 0, "max_classes": 1800}
    prints = glyphs._font_fingerprints(fonts)
    key = glyphs._cache_key(prints, params)
    assert key == glyphs._cache_key(glyphs._font_fingerprints(list(fonts)), dict(params))
    assert key != glyphs._cache_key(glyphs._font_fingerprints(fonts[:-1]), params)
    assert key != glyphs._cache_key(prints, {**params, "seed": 1})


def test_dedup_drops_lookalikes_keeps_distinct_letters() -> None:
    chars = ["O", "Θ", "Q", "A", "Ж", "О", "Ο", "Օ", "Α", "А"]  # Latin, Greek, Latin, ..., Cyrillic A
    images = [canonical_glyph(c, [DEJAVU]) for c in chars]
    assert all(im is not None and im.shape == (24, 24) for im in images)
    keep = dedup_near_duplicates(np.stack(images))  # type: ignore[arg-type]
    assert keep.tolist() == [True] * 5 + [False] * 5
    assert canonical_glyph("\U00013000", [DEJAVU]) is None  # not in the font: no tofu


def test_dataset_has_no_cross_script_lookalikes(tmp_path: Path) -> None:
    data = _build(tmp_path, max_classes=None, instances_per_class=1)
    names = {n.split(" ", 1)[1] for split in data.values() for n in split.class_names}
    assert sum(s.num_classes for s in data.values()) > 500
    for group in (
        {"LATIN CAPITAL LETTER O", "CYRILLIC CAPITAL LETTER O", "GREEK CAPITAL LETTER OMICRON"},
        {"LATIN CAPITAL LETTER A", "CYRILLIC CAPITAL LETTER A", "GREEK CAPITAL LETTER ALPHA"},
        {"LATIN CAPITAL LETTER P", "CYRILLIC CAPITAL LETTER ER", "GREEK CAPITAL LETTER RHO"},
    ):
        assert len(group & names) == 1, group & names


def test_instances_of_a_class_differ(small: dict[str, ImageDataset]) -> None:
    split = small["train"]
    for c in range(split.num_classes):
        imgs = split.images[split.labels == c].flatten(1)
        for i, j in itertools.combinations(range(len(imgs)), 2):
            assert not torch.equal(imgs[i], imgs[j])


def test_stroke_weight_varies(monkeypatch: pytest.MonkeyPatch) -> None:
    # With every other distortion off, ink area varies only through the random stroke weight.
    for name in ("_SCALE_JITTER", "_ASPECT_JITTER", "_ROTATION_DEG", "_SHEAR", "_ELASTIC_SIGMA"):
        monkeypatch.setattr(glyphs, name, 0.0)
    images = render_glyph_instances("H", [DEJAVU], 24, seed=3)
    assert images is not None and images.shape == (24, 28, 28) and images.dtype == np.uint8
    ink = (images > 127).reshape(24, -1).sum(axis=1)
    assert ink.max() > 1.5 * ink.min()


def test_stroke_weight_thickens_and_thins() -> None:
    x = np.zeros((3, 20, 20), np.float32)
    x[:, 5:15, 9:12] = 1.0  # a vertical bar 3 px wide
    out = glyphs._stroke_weight(x, np.array([-1.0, 0.0, 1.0]))
    assert out[0].sum() < x[0].sum() == out[1].sum() < out[2].sum()


def test_bad_arguments_raise(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="image_size"):
        _build(tmp_path, image_size=7)
    with pytest.raises(ValueError, match="instances_per_class"):
        _build(tmp_path, instances_per_class=0)
    with pytest.raises(ValueError, match="does-not-exist"):
        _build(tmp_path, font_dirs=[tmp_path / "does-not-exist"])
    with pytest.raises(ValueError, match="max_classes=10"):
        _build(tmp_path, max_classes=10)
    with pytest.raises(ValueError, match="num_workers"):
        _build(tmp_path, num_workers=0)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=r"no \.ttf/\.otf fonts"):
        _build(tmp_path, font_dirs=[empty])
    assert not list(tmp_path.glob("glyphs-*.pt"))
