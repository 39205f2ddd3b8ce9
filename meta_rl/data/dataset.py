"""The in-memory image dataset every loader returns and every task samples from."""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

__all__ = ["CONTENT_HASH_CHARS", "ImageDataset", "content_hash", "split_by_group"]

#: Hex digits of a dataset's :func:`content_hash` (64 bits of SHA-256).
CONTENT_HASH_CHARS = 16


@dataclass(frozen=True)
class ImageDataset:
    """All images of a dataset as one uint8 tensor, sorted by class.

    Args:
        images: uint8 tensor of shape (num_images, C, H, W).
        labels: int64 tensor of shape (num_images,), the class index of each image in
            ``[0, num_classes)``. Images of one class need not be contiguous on input; use
            :meth:`sorted_by_class` to get the contiguous layout the task sampler needs.
        class_names: one name per class.
        groups: one group per class (Omniglot's alphabet, a glyph's script, CIFAR-100's
            superclass); splits are made by group so that related classes never straddle them.
        name: a short name for logs.
    """

    images: torch.Tensor
    labels: torch.Tensor
    class_names: tuple[str, ...]
    groups: tuple[str, ...]
    name: str = "dataset"

    def __post_init__(self) -> None:
        if not isinstance(self.images, torch.Tensor) or self.images.dtype != torch.uint8:
            raise TypeError(
                f"images must be a torch.uint8 tensor, got {type(self.images).__name__} "
                f"{getattr(self.images, 'dtype', '')}; convert with torch.as_tensor(x, dtype=torch.uint8)."
            )
        if self.images.ndim != 4:
            raise ValueError(
                f"images must have shape (num_images, C, H, W), got {tuple(self.images.shape)}; "
                "add a channel axis with images.unsqueeze(1) for grey images."
            )
        if self.labels.dtype != torch.int64 or self.labels.shape != (self.images.shape[0],):
            raise ValueError(
                f"labels must be an int64 tensor of shape ({self.images.shape[0]},), got "
                f"{self.labels.dtype} {tuple(self.labels.shape)}."
            )
        if len(self.class_names) != len(self.groups):
            raise ValueError(
                f"class_names ({len(self.class_names)}) and groups ({len(self.groups)}) must "
                "have one entry per class."
            )
        if self.labels.numel() and (
            int(self.labels.min()) < 0 or int(self.labels.max()) >= len(self.class_names)
        ):
            raise ValueError(
                f"labels must lie in [0, {len(self.class_names)}), got range "
                f"[{int(self.labels.min())}, {int(self.labels.max())}]."
            )

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        c, h, w = self.images.shape[1:]
        return (int(c), int(h), int(w))

    @property
    def device(self) -> torch.device:
        return self.images.device

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def class_counts(self) -> torch.Tensor:
        """int64 tensor (num_classes,): how many images each class has."""
        return torch.bincount(self.labels, minlength=self.num_classes)

    def sorted_by_class(self) -> ImageDataset:
        """The same dataset with the images of each class contiguous (stable order)."""
        order = torch.argsort(self.labels, stable=True)
        if torch.equal(order, torch.arange(len(self), device=order.device)):
            return self
        return ImageDataset(self.images[order], self.labels[order], self.class_names, self.groups, self.name)

    def to(self, device: torch.device | str) -> ImageDataset:
        device = torch.device(device)
        if self.images.device == device and self.labels.device == device:
            return self
        return ImageDataset(
            self.images.to(device), self.labels.to(device), self.class_names, self.groups, self.name
        )

    def subset(self, class_ids: Sequence[int], name: str | None = None) -> ImageDataset:
        """Keep only ``class_ids`` and renumber them 0..len(class_ids)-1 in that order."""
        ids = [int(c) for c in class_ids]
        bad = [c for c in ids if not 0 <= c < self.num_classes]
        if bad:
            raise ValueError(f"class ids {bad[:5]} are out of range [0, {self.num_classes}).")
        if len(set(ids)) != len(ids):
            raise ValueError("class_ids contains duplicates; pass each class once.")
        remap = torch.full((self.num_classes,), -1, dtype=torch.int64)
        remap[torch.tensor(ids, dtype=torch.int64)] = torch.arange(len(ids))
        remap = remap.to(self.labels.device)
        new_labels = remap[self.labels]
        keep = new_labels >= 0
        return ImageDataset(
            self.images[keep],
            new_labels[keep],
            tuple(self.class_names[c] for c in ids),
            tuple(self.groups[c] for c in ids),
            name or self.name,
        ).sorted_by_class()


def split_by_group(
    dataset: ImageDataset,
    fractions: Sequence[float] = (0.6, 0.2, 0.2),
    names: Sequence[str] = ("train", "val", "test"),
    seed: int = 0,
) -> dict[str, ImageDataset]:
    """Split classes into disjoint sets by group, so no group spans two splits.

    Groups are shuffled with ``seed`` and assigned greedily until each split holds about
    its fraction of the classes. With a single group the classes themselves are split.
    Time is linear in the number of classes (plus sorting the group names).

    Raises:
        ValueError: if fractions and names differ in length, a fraction is not positive, or
            there are fewer groups (or classes) than splits.
    """
    if len(fractions) != len(names):
        raise ValueError(f"fractions {list(fractions)} and names {list(names)} must have the same length.")
    if any(f <= 0 for f in fractions):
        raise ValueError(f"every fraction must be > 0, got {list(fractions)}.")
    total = float(sum(fractions))
    members: dict[str, list[int]] = {}  # group -> its classes in increasing order, in one pass
    for c, g in enumerate(dataset.groups):
        members.setdefault(g, []).append(c)
    unique_groups = sorted(members)
    rng = random.Random(seed)
    if len(unique_groups) >= len(names):
        units = [members[grp] for grp in unique_groups]
    else:
        units = [[c] for c in range(dataset.num_classes)]
    if len(units) < len(names):
        raise ValueError(
            f"cannot split {dataset.num_classes} classes in {len(unique_groups)} groups into "
            f"{len(names)} splits; use fewer splits or a dataset with more classes."
        )
    rng.shuffle(units)
    targets = [f / total * dataset.num_classes for f in fractions]
    assigned: list[list[int]] = [[] for _ in names]
    # Give every split one unit first, then fill the split furthest below its target.
    for i in range(len(names)):
        assigned[i].extend(units[i])
    for unit in units[len(names) :]:
        deficits = [targets[i] - len(assigned[i]) for i in range(len(names))]
        assigned[max(range(len(names)), key=lambda i: deficits[i])].extend(unit)
    return {
        name: dataset.subset(sorted(ids), name=f"{dataset.name}/{name}") for name, ids in zip(names, assigned)
    }


def _feed_tensor(h: hashlib._Hash, t: torch.Tensor, dtype: torch.dtype) -> None:
    """Hash a tensor's dtype, shape and bytes (little-endian, whatever the machine)."""
    array = t.detach().to("cpu", dtype).contiguous().numpy()
    array = array.astype(array.dtype.newbyteorder("<"), copy=False)
    h.update(f"{array.dtype.str}{tuple(array.shape)};".encode())
    h.update(array.data)


def content_hash(data: ImageDataset | Mapping[str, ImageDataset]) -> str:
    """A short, stable digest of a dataset's content: the first :data:`CONTENT_HASH_CHARS` hex digits of a SHA-256.

    It covers, split by split (in sorted order of their names): the split's name, which is its
    membership, and its images (dtype, shape and every pixel), labels, class names and groups. It leaves
    out the datasets' ``name`` and their devices, so the same images give the same hash on every machine,
    and any changed pixel, label, class or split membership gives another.

    Args:
        data: an ImageDataset (hashed as one split named ``""``) or a mapping of split names to ImageDatasets.

    Raises:
        TypeError: ``data`` is neither, or a split is not an ImageDataset.
    """
    splits = {"": data} if isinstance(data, ImageDataset) else data
    if not isinstance(splits, Mapping) or not all(isinstance(v, ImageDataset) for v in splits.values()):
        raise TypeError(f"content_hash takes an ImageDataset or a mapping of split names to ImageDatasets, "
                        f"got {type(data).__name__}.")
    h = hashlib.sha256()
    for split in sorted(splits):
        ds = splits[split]
        h.update(json.dumps([split, list(ds.class_names), list(ds.groups)]).encode())
        _feed_tensor(h, ds.images, torch.uint8)
        _feed_tensor(h, ds.labels, torch.int64)
    return h.hexdigest()[:CONTENT_HASH_CHARS]
