"""Shared fixtures: a small synthetic image dataset and the real glyph splits."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from meta_rl.data import ImageDataset, load_splits

NUM_CLASSES = 40
IMAGES_PER_CLASS = 12
NUM_GROUPS = 8


def make_synthetic_dataset(
    num_classes: int = NUM_CLASSES,
    images_per_class: int = IMAGES_PER_CLASS,
    seed: int = 0,
    name: str = "synthetic",
) -> ImageDataset:
    """Random 1x28x28 images, sorted by class, every image distinct.

    Pixels (0, 0, 0) and (0, 0, 1) encode the image's row (row // 256, row % 256), so every
    image is distinct and a shown image can be traced back to its dataset row.
    """
    n = num_classes * images_per_class
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 1, 28, 28), generator=g, dtype=torch.uint8)
    rows = torch.arange(n)
    images[:, 0, 0, 0] = (rows // 256).to(torch.uint8)
    images[:, 0, 0, 1] = (rows % 256).to(torch.uint8)
    labels = torch.arange(num_classes).repeat_interleave(images_per_class)
    class_names = tuple(f"class{c:03d}" for c in range(num_classes))
    groups = tuple(f"group{c % NUM_GROUPS}" for c in range(num_classes))
    return ImageDataset(images, labels, class_names, groups, name)


@pytest.fixture(scope="session")
def synthetic() -> ImageDataset:
    """40 classes x 12 distinct random 1x28x28 images in 8 groups."""
    return make_synthetic_dataset()


@pytest.fixture(scope="session")
def make_dataset() -> Callable[..., ImageDataset]:
    """The synthetic dataset factory, for tests that need other sizes."""
    return make_synthetic_dataset


@pytest.fixture(scope="session")
def glyph_splits() -> dict[str, ImageDataset]:
    """The real glyph dataset's train/val/test splits (built once, then cached on disk)."""
    return load_splits("glyphs")
