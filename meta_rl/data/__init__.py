"""Image datasets, their on-disk formats, and the few-shot episode sampler."""

from __future__ import annotations

from meta_rl.data.dataset import ImageDataset, split_by_group
from meta_rl.data.episodes import EpisodeBatch, EpisodeSampler, sample_without_replacement
from meta_rl.data.sources import SPLITS, load_splits, resolve_split

__all__ = [
    "SPLITS",
    "EpisodeBatch",
    "EpisodeSampler",
    "ImageDataset",
    "load_splits",
    "resolve_split",
    "sample_without_replacement",
    "split_by_group",
]
