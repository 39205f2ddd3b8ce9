"""Small synthetic image datasets for tests, fault drills and benchmarks.

Every function is pure: it draws from its own ``torch.Generator`` seeded with ``seed`` (never the
global RNG), so the same arguments give bitwise the same images, labels, class names and groups.
Classes are contiguous (sorted by class) and class ``c`` belongs to group ``c % groups``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from meta_rl.data.dataset import ImageDataset, split_by_group

__all__ = ["prototype_dataset", "prototype_splits", "random_dataset"]


def _labelled(
    images: torch.Tensor, per_class: int, groups: int, class_name: str, group_name: str, name: str
) -> ImageDataset:
    """``images`` (``per_class`` consecutive images a class) with labels, class names and groups."""
    n_classes = images.shape[0] // per_class
    return ImageDataset(
        images,
        torch.arange(n_classes).repeat_interleave(per_class),
        tuple(class_name.format(c) for c in range(n_classes)),
        tuple(group_name.format(c % groups) for c in range(n_classes)),
        name,
    )


def random_dataset(
    n_classes: int,
    per_class: int,
    *,
    seed: int,
    image_shape: tuple[int, int, int] = (1, 28, 28),
    tag_rows: bool = False,
    groups: int = 8,
    class_name: str = "class{:03d}",
    group_name: str = "group{}",
    name: str = "synthetic",
) -> ImageDataset:
    """Uniformly random uint8 images: no class structure at all (sizes, speed, plumbing).

    Args:
        n_classes: number of classes.
        per_class: images per class.
        seed: seed of the generator that draws the pixels.
        image_shape: (C, H, W) of every image.
        tag_rows: if true, pixels (0, 0, 0) and (0, 0, 1) of each image hold its row in the
            dataset as (row // 256, row % 256), so every image is distinct (up to 65,536 rows)
            and a shown image can be traced back to its row. Needs W >= 2.
        groups: number of groups; class ``c`` is in group ``c % groups``.
        class_name: format string of class ``c``'s name, e.g. ``"class{:03d}"``.
        group_name: format string of group ``g``'s name, e.g. ``"group{}"``.
        name: the dataset's name.

    Returns:
        The dataset, ``n_classes * per_class`` images sorted by class.

    Raises:
        ValueError: if ``tag_rows`` is set and images are narrower than 2 pixels.
    """
    if tag_rows and image_shape[2] < 2:
        raise ValueError(f"tag_rows needs images at least 2 pixels wide, got image_shape {image_shape}.")
    n = n_classes * per_class
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, *image_shape), generator=g, dtype=torch.uint8)
    if tag_rows:
        rows = torch.arange(n)
        images[:, 0, 0, 0] = (rows // 256).to(torch.uint8)
        images[:, 0, 0, 1] = (rows % 256).to(torch.uint8)
    return _labelled(images, per_class, groups, class_name, group_name, name)


def prototype_dataset(
    n_classes: int,
    per_class: int,
    *,
    seed: int,
    image_shape: tuple[int, int, int] = (1, 28, 28),
    density: float = 0.3,
    amplitude: float = 255.0,
    noise: int = 20,
    max_offset: float | None = None,
    groups: int = 12,
    class_name: str = "proto{:03d}",
    group_name: str = "group{}",
    name: str = "prototypes",
) -> ImageDataset:
    """A learnable dataset: one random binary prototype per class, plus per-image noise.

    The generator draws, in this order: the prototypes (``amplitude`` on a random ``density``
    of the pixels, 0 elsewhere), then, unless ``max_offset`` is None, one brightness offset
    per image, uniform in [0, ``max_offset``), then integer pixel noise uniform in
    [-``noise``, ``noise``]. An image is its class's prototype plus its offset plus its noise,
    clamped to [0, 255].

    Args:
        n_classes: number of classes.
        per_class: images per class.
        seed: seed of the generator.
        image_shape: (C, H, W) of every image.
        density: the fraction of a prototype's pixels that are on.
        amplitude: the value of an "on" prototype pixel.
        noise: the largest pixel noise (either sign).
        max_offset: the brightness offset's upper bound, or None to draw no offsets. Note that
            ``0.0`` still draws offsets (all zero), which changes the noise drawn after them:
            None and ``0.0`` give different images.
        groups: number of groups (class ``c`` is in group ``c % groups``).
        class_name, group_name, name: the format strings of the class and group names and the
            dataset's name, as in :func:`random_dataset`.

    Returns:
        The dataset, ``n_classes * per_class`` images, each class's images consecutive.
    """
    g = torch.Generator().manual_seed(seed)
    n = n_classes * per_class
    images = (torch.rand(n_classes, *image_shape, generator=g) < density).float() * amplitude
    images = images.repeat_interleave(per_class, 0)
    if max_offset is not None:
        images = images + torch.rand(n, 1, 1, 1, generator=g) * max_offset
    images = images + torch.randint(-noise, noise + 1, (n, *image_shape), generator=g)
    return _labelled(images.clamp(0, 255).to(torch.uint8), per_class, groups, class_name, group_name, name)


def prototype_splits(
    n_classes: int,
    per_class: int,
    *,
    seed: int,
    fractions: Sequence[float] = (0.6, 0.2, 0.2),
    **options: Any,
) -> dict[str, ImageDataset]:
    """:func:`prototype_dataset` split by group into train/val/test classes.

    Args:
        n_classes: number of classes.
        per_class: images per class.
        seed: seed of the prototype dataset's generator (the split itself uses
            :func:`~meta_rl.data.split_by_group`'s default seed).
        fractions: the train, val and test fractions of the classes.
        **options: the other keyword arguments of :func:`prototype_dataset`.

    Returns:
        ``{"train": ..., "val": ..., "test": ...}``, disjoint in classes and in groups.
    """
    return split_by_group(prototype_dataset(n_classes, per_class, seed=seed, **options), fractions)
