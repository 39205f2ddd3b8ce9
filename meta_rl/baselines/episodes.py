"""Where a baseline's tasks come from: the dataset split of its config, and N-way K-shot episodes drawn from it."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from meta_rl.baselines.config import BaselineConfig
from meta_rl.config import ConfigError
from meta_rl.data import EpisodeSampler, ImageDataset, resolve_split

__all__ = ["Episode", "draw_episode", "float_images", "load_split"]


def load_split(cfg: BaselineConfig, split: str) -> ImageDataset:
    """Split ``split`` of ``cfg.dataset``; a bad source or split is a :class:`ConfigError`."""
    try:
        return resolve_split(cfg.dataset, split, image_size=cfg.image_size, seed=cfg.data_seed)
    except (ValueError, TypeError, OSError) as exc:
        raise ConfigError(f"cannot load split {split!r} of dataset = {cfg.dataset!r}: {exc}") from exc


@dataclass(frozen=True)
class Episode:
    """B N-way K-shot tasks as float images in [0, 1].

    Attributes:
        support_x: (B, N*K, C, H, W). support_y: int64 (B, N*K) in [0, N).
        query_x: (B, N*Q, C, H, W). query_y: int64 (B, N*Q).
    """

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor
    n_way: int


def float_images(dataset: ImageDataset, rows: torch.Tensor) -> torch.Tensor:
    """uint8 rows (...) -> float images (..., C, H, W) in [0, 1], as the agents' encoders see them."""
    return dataset.images[rows].float() / 255.0


def draw_episode(sampler: EpisodeSampler, batch: int, generator: torch.Generator) -> Episode:
    """Draw ``batch`` shots-mode tasks from ``sampler`` and split them into support and queries."""
    if sampler.shots is None:
        raise ValueError("draw_episode needs a sampler in shots mode; build it with shots=K.")
    eb = sampler.sample(batch, generator)
    s = sampler.n_way * sampler.shots
    x = float_images(sampler.dataset, eb.image_index)  # (B, T, C, H, W)
    return Episode(x[:, :s], eb.labels[:, :s], x[:, s:], eb.labels[:, s:], sampler.n_way)
