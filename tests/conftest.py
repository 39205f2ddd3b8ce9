"""Shared fixtures: a small synthetic image dataset and the real glyph splits."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch

from meta_rl.data import ImageDataset, load_splits
from meta_rl.data.synthetic import prototype_splits, random_dataset

NUM_CLASSES = 40
IMAGES_PER_CLASS = 12
NUM_GROUPS = 8


def assert_same_splits(a: dict[str, ImageDataset], b: dict[str, ImageDataset]) -> None:
    """The two dicts of splits hold identical images, labels, class names and groups."""
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k].images, b[k].images)
        assert torch.equal(a[k].labels, b[k].labels)
        assert a[k].class_names == b[k].class_names and a[k].groups == b[k].groups


def make_synthetic_dataset(
    num_classes: int = NUM_CLASSES,
    images_per_class: int = IMAGES_PER_CLASS,
    seed: int = 0,
    name: str = "synthetic",
) -> ImageDataset:
    """Random 1x28x28 images, sorted by class, every image distinct (its row tagged in two pixels)."""
    return random_dataset(num_classes, images_per_class, seed=seed, tag_rows=True, groups=NUM_GROUPS, name=name)


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


PROTO_DATASET = "test-prototypes"
OFFSET_DATASET = "test-prototypes-offset"


def make_prototype_splits(
    num_classes: int = 60, images_per_class: int = 12, seed: int = 0, **changes: Any
) -> dict[str, ImageDataset]:
    """1x28x28 classes split by group (12 groups) into train/val/test: a random binary prototype
    per class, a brightness offset per image (0 unless ``max_offset`` is changed) and +-20 pixel
    noise; ``changes`` (``amplitude``, ``max_offset``, ``noise``...) go to :func:`prototype_splits`."""
    return prototype_splits(num_classes, images_per_class, seed=seed, **{"max_offset": 0.0, **changes})


@pytest.fixture(scope="session")
def proto_dataset() -> str:
    """The name under which the prototype splits are registered (``env_kwargs={"dataset": name}``)."""
    from meta_rl.data import register_dataset

    register_dataset(PROTO_DATASET, make_prototype_splits())
    return PROTO_DATASET


@pytest.fixture(scope="session")
def offset_dataset() -> str:
    """Faint class prototypes (amplitude 40) under a large random brightness offset per image: an
    untrained encoder matches images by brightness, not class; a learner must become invariant to it."""
    from meta_rl.data import register_dataset

    register_dataset(OFFSET_DATASET, make_prototype_splits(amplitude=40.0, max_offset=210.0, noise=10))
    return OFFSET_DATASET


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Train on one CPU thread (bit-reproducible, and polite to other jobs); restore afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
