"""Image datasets, their on-disk formats, and the few-shot episode sampler."""

from __future__ import annotations

from meta_rl.data.dataset import ImageDataset, split_by_group
from meta_rl.data.episodes import EpisodeBatch, EpisodeSampler, sample_without_replacement
from meta_rl.data.formats import (
    DatasetError,
    load_cifar,
    load_idx,
    load_image_folder,
    load_mini_imagenet,
    load_omniglot,
)
from meta_rl.data.sources import SPLITS, content_hash, dataset_name, load_splits, register_dataset, resolve_split

__all__ = [
    "SPLITS",
    "DatasetError",
    "EpisodeBatch",
    "EpisodeSampler",
    "ImageDataset",
    "content_hash",
    "dataset_name",
    "load_cifar",
    "load_idx",
    "load_image_folder",
    "load_mini_imagenet",
    "load_omniglot",
    "load_splits",
    "register_dataset",
    "resolve_split",
    "sample_without_replacement",
    "split_by_group",
]
