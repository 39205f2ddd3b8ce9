"""Shared fixtures: a small synthetic image dataset and the real glyph splits."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import torch

from meta_rl.data import ImageDataset, load_splits

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


PROTO_DATASET = "test-prototypes"
OFFSET_DATASET = "test-prototypes-offset"


def make_prototype_splits(
    num_classes: int = 60,
    images_per_class: int = 12,
    seed: int = 0,
    amplitude: float = 255.0,
    max_offset: float = 0.0,
    noise: int = 20,
) -> dict[str, ImageDataset]:
    """1x28x28 classes: a random binary prototype per class (``amplitude`` on 30% of the pixels),
    plus a random brightness offset in [0, ``max_offset``) per image and +-``noise`` pixel noise,
    split by group (12 groups) into train/val/test classes."""
    from meta_rl.data import split_by_group

    g = torch.Generator().manual_seed(seed)
    protos = (torch.rand(num_classes, 1, 28, 28, generator=g) < 0.3).float() * amplitude
    n = num_classes * images_per_class
    offset = torch.rand(n, 1, 1, 1, generator=g) * max_offset
    pixels = torch.randint(-noise, noise + 1, (n, 1, 28, 28), generator=g)
    images = (protos.repeat_interleave(images_per_class, 0) + offset + pixels).clamp(0, 255).to(torch.uint8)
    labels = torch.arange(num_classes).repeat_interleave(images_per_class)
    names = tuple(f"proto{c:03d}" for c in range(num_classes))
    groups = tuple(f"group{c % 12}" for c in range(num_classes))
    return split_by_group(ImageDataset(images, labels, names, groups, "prototypes"), (0.6, 0.2, 0.2))


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
