"""Resolve a dataset source (a name, ``kind:path``, or an ImageDataset) into class splits.

Sources:

* ``"glyphs"``: the Omniglot-style glyph dataset built offline from matplotlib's bundled fonts (default):
  the same images on every machine.
* ``"glyphs-system"``: the same with Debian's Noto, FreeFont and ancient-script fonts where installed
  (more scripts; its content depends on the machine's fonts).
* ``"omniglot:ROOT"``: ``images_background``/``images_evaluation`` folders or zips.
* ``"cifar:ROOT"``: CIFAR-10 or CIFAR-100 python pickles.
* ``"mini_imagenet:PATH"``: miniImageNet pickles.
* ``"idx:IMAGES,LABELS"``: MNIST-style IDX files (MNIST, Fashion-MNIST, KMNIST).
* ``"fashion_mnist"``: Debian's ``dataset-fashion-mnist`` files.
* ``"folder:ROOT"``: one sub-folder of images per class.

Splits are ``train``/``val``/``test`` with disjoint classes. Where the dataset has fewer
than :data:`MIN_CLASSES_FOR_CLASS_SPLIT` classes (MNIST-like), the splits share classes and
differ by image instead (train/val from the training files, test from the test files).

Every dataset has a :func:`content_hash`: 16 hex digits over its splits' images, labels, classes and
split membership, so two machines (or two days) can tell whether one name meant the same images.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from meta_rl.data import formats
from meta_rl.data.dataset import ImageDataset, split_by_group
from meta_rl.data.dataset import content_hash as splits_content_hash

__all__ = [
    "MIN_CLASSES_FOR_CLASS_SPLIT", "SPLITS", "content_hash", "dataset_name", "load_splits", "register_dataset",
    "resolve_split",
]

SPLITS = ("train", "val", "test")
MIN_CLASSES_FOR_CLASS_SPLIT = 30
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
_REGISTERED: dict[str, Mapping[str, ImageDataset]] = {}
_REGISTERED_HASHES: dict[str, str] = {}  # a registered name's content hash, computed when first asked for


def register_dataset(name: str, splits: Mapping[str, ImageDataset]) -> None:
    """Make in-memory splits loadable by name, e.g. ``dataset="my-data"`` in an env or a config.

    Raises:
        ValueError: if ``name`` clashes with a built-in source kind or contains ``:``, or a
            split is missing or not an ImageDataset.
    """
    if not isinstance(name, str) or not name or ":" in name or name in KINDS:
        raise ValueError(f"dataset name {name!r} must be a non-empty string without ':' and not one of {KINDS}.")
    missing = [s for s in SPLITS if not isinstance(splits.get(s), ImageDataset)]
    if missing:
        raise ValueError(f"splits for {name!r} lack ImageDatasets for {missing}; provide train, val and test.")
    _REGISTERED[name] = dict(splits)
    _REGISTERED_HASHES.pop(name, None)


def _merge(parts: list[ImageDataset], name: str) -> ImageDataset:
    """Concatenate datasets that share one class list."""
    first = parts[0]
    return ImageDataset(
        torch.cat([p.images for p in parts]),
        torch.cat([p.labels for p in parts]),
        first.class_names,
        first.groups,
        name,
    ).sorted_by_class()


def _split_images(dataset: ImageDataset, fraction: float, seed: int) -> tuple[ImageDataset, ImageDataset]:
    """Split the images of every class in two parts (same classes), deterministically."""
    g = torch.Generator().manual_seed(seed)
    score = torch.rand(len(dataset), generator=g)
    keep = score >= fraction
    a = ImageDataset(dataset.images[keep], dataset.labels[keep], dataset.class_names, dataset.groups)
    b = ImageDataset(dataset.images[~keep], dataset.labels[~keep], dataset.class_names, dataset.groups)
    return a.sorted_by_class(), b.sorted_by_class()


def _from_train_test(train: ImageDataset, test: ImageDataset, name: str, seed: int) -> dict[str, ImageDataset]:
    """Class splits for many-class datasets; image splits for few-class ones."""
    if train.num_classes >= MIN_CLASSES_FOR_CLASS_SPLIT:
        merged = _merge([train, test], name)
        return split_by_group(merged, (0.64, 0.16, 0.20), SPLITS, seed=seed)
    tr, va = _split_images(train, 0.1, seed)
    return {
        "train": ImageDataset(tr.images, tr.labels, tr.class_names, tr.groups, f"{name}/train"),
        "val": ImageDataset(va.images, va.labels, va.class_names, va.groups, f"{name}/val"),
        "test": ImageDataset(test.images, test.labels, test.class_names, test.groups, f"{name}/test"),
    }


def _rename(ds: ImageDataset, name: str) -> ImageDataset:
    return ImageDataset(ds.images, ds.labels, ds.class_names, ds.groups, name)


def _load_glyphs(source: str, arg: str, image_size: int, seed: int) -> dict[str, ImageDataset]:
    """``glyphs``: the glyph dataset built from matplotlib's fonts, ``glyphs-system`` from those and the installed
    Debian fonts (progress bars only on a terminal, and if ``META_RL_PROGRESS`` is unset or ``1``)."""
    from meta_rl.data.glyphs import load_glyphs

    progress = os.environ.get("META_RL_PROGRESS", "1") == "1" and sys.stderr.isatty()  # no bars into a log file
    return load_glyphs(image_size=image_size, seed=seed, progress=progress,
                       system_fonts=source.partition(":")[0] == "glyphs-system")


def _load_omniglot(source: str, arg: str, image_size: int, seed: int) -> dict[str, ImageDataset]:
    """``omniglot:ROOT``: background split by alphabet into train/val, evaluation as test."""
    parts = formats.load_omniglot(arg, image_size=image_size)
    if "background" in parts and "evaluation" in parts:
        bg = split_by_group(parts["background"], (0.8, 0.2), ("train", "val"), seed=seed)
        return {
            "train": _rename(bg["train"], "omniglot/train"),
            "val": _rename(bg["val"], "omniglot/val"),
            "test": _rename(parts["evaluation"], "omniglot/test"),
        }
    only = next(iter(parts.values()))
    return split_by_group(_rename(only, "omniglot"), (0.6, 0.2, 0.2), SPLITS, seed=seed)


def _load_cifar(source: str, arg: str, image_size: int, seed: int) -> dict[str, ImageDataset]:
    """``cifar:ROOT``: CIFAR-10 or CIFAR-100."""
    parts = formats.load_cifar(arg)
    return _from_train_test(parts["train"], parts["test"], "cifar", seed)


def _load_mini_imagenet(source: str, arg: str, image_size: int, seed: int) -> dict[str, ImageDataset]:
    """``mini_imagenet:PATH``: all three split pickles as they are, or one pickle split by class."""
    parts = formats.load_mini_imagenet(arg)
    if all(s in parts for s in SPLITS):
        return {s: _rename(parts[s], f"mini_imagenet/{s}") for s in SPLITS}
    merged = _merge(list(parts.values()), "mini_imagenet") if len(parts) == 1 else None
    if merged is None:
        raise ValueError(
            f"mini_imagenet source {arg!r} holds splits {sorted(parts)}; provide all of "
            "train/val/test pickles or exactly one pickle to split by class."
        )
    return split_by_group(merged, (0.64, 0.16, 0.20), SPLITS, seed=seed)


def _load_folder(source: str, arg: str, image_size: int, seed: int) -> dict[str, ImageDataset]:
    """``folder:ROOT``: one sub-folder per class, split by class."""
    ds = formats.load_image_folder(arg, image_size=image_size if image_size else None)
    return split_by_group(_rename(ds, "folder"), (0.6, 0.2, 0.2), SPLITS, seed=seed)


def _load_fashion_mnist(source: str, arg: str, image_size: int, seed: int) -> dict[str, ImageDataset]:
    """``fashion_mnist[:ROOT]``: the gzipped IDX files, by default Debian's ``dataset-fashion-mnist``."""
    root = Path(arg) if arg else FASHION_MNIST_DIR
    files = {
        "train": (root / "train-images-idx3-ubyte.gz", root / "train-labels-idx1-ubyte.gz"),
        "test": (root / "t10k-images-idx3-ubyte.gz", root / "t10k-labels-idx1-ubyte.gz"),
    }
    if not root.exists():
        raise ValueError(
            f"Fashion-MNIST folder {root} does not exist; install it with "
            "'apt-get install -y dataset-fashion-mnist' or pass 'fashion_mnist:/path'."
        )
    train = formats.load_idx(*files["train"], name="fashion_mnist")
    test = formats.load_idx(*files["test"], name="fashion_mnist")
    return _from_train_test(train, test, "fashion_mnist", seed)


def _load_idx(source: str, arg: str, image_size: int, seed: int) -> dict[str, ImageDataset]:
    """``idx:IMAGES,LABELS``: one pair of IDX files, 20% of each class's images held out as test."""
    images, sep, labels = arg.partition(",")
    if not sep:
        raise ValueError(f"idx source {source!r} must be 'idx:IMAGES_FILE,LABELS_FILE'.")
    ds = formats.load_idx(images, labels, name="idx")
    tr, te = _split_images(ds, 0.2, seed)
    return _from_train_test(tr, te, "idx", seed)


# The loader of each source kind, called as loader(source, arg, image_size, seed) with
# ``kind:arg = source``; the order is the one error messages list the kinds in.
_LOADERS: dict[str, Callable[[str, str, int, int], dict[str, ImageDataset]]] = {
    "glyphs": _load_glyphs,
    "glyphs-system": _load_glyphs,
    "omniglot": _load_omniglot,
    "cifar": _load_cifar,
    "mini_imagenet": _load_mini_imagenet,
    "idx": _load_idx,
    "fashion_mnist": _load_fashion_mnist,
    "folder": _load_folder,
}
KINDS = tuple(_LOADERS)
_NO_PATH = ("glyphs", "glyphs-system")  # built from fonts, never from a path
_PATH_OPTIONAL = (*_NO_PATH, "fashion_mnist")  # every other kind needs 'kind:PATH'


@functools.lru_cache(maxsize=8)
def _load_cached(source: str, image_size: int, seed: int) -> dict[str, ImageDataset]:
    """The splits of a built-in ``kind`` or ``kind:arg`` source, loaded once per process."""
    kind, _, arg = source.partition(":")
    if kind not in _LOADERS:
        raise ValueError(
            f"unknown dataset source {source!r}; expected one of {', '.join(KINDS)} "
            f"(as 'kind' or 'kind:PATH'), a name given to register_dataset() ({sorted(_REGISTERED)}), "
            "or an ImageDataset."
        )
    if kind in _NO_PATH and arg:
        raise ValueError(f"dataset source {source!r}: {kind!r} takes no path; use dataset={kind!r}.")
    if kind not in _PATH_OPTIONAL and not arg:
        raise ValueError(f"dataset source {source!r} needs a path: use '{kind}:/path/to/data'.")
    return _LOADERS[kind](source, arg, image_size, seed)


def load_splits(source: str = "glyphs", *, image_size: int = 28, seed: int = 0) -> dict[str, ImageDataset]:
    """Load a dataset source and return its ``train``/``val``/``test`` splits (cached per process).

    Args:
        source: see the module docstring.
        image_size: side length for sources that are resized (glyphs, Omniglot, folders).
        seed: seed of the class split (and of the glyph rendering).
    """
    _check_source(source)
    if source in _REGISTERED:
        return dict(_REGISTERED[source])
    return _load_cached(source, int(image_size), int(seed))


def _check_source(source: object) -> None:
    if not isinstance(source, str):
        raise TypeError(f"source must be a str such as 'glyphs' or 'cifar:/data', got {type(source).__name__}.")


@functools.lru_cache(maxsize=8)
def _hash_cached(source: str, image_size: int, seed: int) -> str:
    return splits_content_hash(_load_cached(source, image_size, seed))


def content_hash(
    dataset: str | ImageDataset | Mapping[str, ImageDataset], *, image_size: int = 28, seed: int = 0
) -> str:
    """The content hash of a dataset (:func:`meta_rl.data.dataset.content_hash` of all its splits).

    Computed once per process for a source string or a registered name (registering a name again
    forgets its hash), and each time for splits or an ImageDataset passed in.

    Args:
        dataset: a source string (see the module docstring), a mapping of splits, or an ImageDataset.
        image_size: as for :func:`load_splits`.
        seed: as for :func:`load_splits`.
    """
    if not isinstance(dataset, str):
        return splits_content_hash(dataset)
    if dataset in _REGISTERED:
        if dataset not in _REGISTERED_HASHES:
            _REGISTERED_HASHES[dataset] = splits_content_hash(_REGISTERED[dataset])
        return _REGISTERED_HASHES[dataset]
    return _hash_cached(dataset, int(image_size), int(seed))


def dataset_name(dataset: str | ImageDataset | Mapping[str, ImageDataset]) -> str:
    """How a dataset is named in checkpoints and reports: the source string or registered name itself, an
    ImageDataset's ``name``, or ``"(in-memory splits)"`` for a mapping of splits."""
    if isinstance(dataset, str):
        return dataset
    return dataset.name if isinstance(dataset, ImageDataset) else "(in-memory splits)"


def resolve_split(
    dataset: str | ImageDataset | Mapping[str, ImageDataset],
    split: str,
    *,
    image_size: int = 28,
    seed: int = 0,
) -> ImageDataset:
    """Return one split from a source string, a mapping of splits, or a ready ImageDataset."""
    if isinstance(dataset, ImageDataset):
        return dataset
    if split not in SPLITS and not (isinstance(dataset, Mapping) and split in dataset):
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}.")
    splits: Any = load_splits(dataset, image_size=image_size, seed=seed) if isinstance(dataset, str) else dataset
    if not isinstance(splits, Mapping):
        raise TypeError(
            f"dataset must be a source string, an ImageDataset or a mapping of splits, got {type(dataset).__name__}."
        )
    if split not in splits:
        raise ValueError(f"split {split!r} is not in the dataset; it has {sorted(splits)}.")
    return splits[split]
