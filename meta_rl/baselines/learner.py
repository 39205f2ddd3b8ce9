"""The interface every supervised few-shot learner implements (:class:`Baseline`): train, answer, score streams."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch
from torch import nn

from meta_rl.baselines.config import BaselineConfig
from meta_rl.baselines.episodes import Episode

__all__ = ["Baseline"]


class Baseline(ABC):
    """A few-shot learner: a trainable ``model``, its training gradients, its predictions."""

    kind: ClassVar[str]
    model: nn.Module
    cfg: BaselineConfig

    @abstractmethod
    def compute_gradients(self, episode: Episode) -> dict[str, float]:
        """Fill ``.grad`` of ``model.parameters()`` for one meta-batch; return loss and query accuracy."""

    @abstractmethod
    def logits(self, episode: Episode) -> torch.Tensor:
        """Query scores (B, N*Q, N) after seeing the support set; higher is more likely."""

    @abstractmethod
    def stream_scores(self, x: torch.Tensor, y: torch.Tensor, n_way: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Score every step of B streams from the steps before it.

        Args:
            x: (B, T, C, H, W) images. y: int64 (B, T) their labels, revealed one step later.

        Returns:
            scores (B, T, N) over labels (only revealed labels are used) and novelty (B, T),
            larger when image t looks unlike every revealed class.
        """

    def extra_state(self) -> dict[str, Any]:
        """Anything besides the model's state dict to checkpoint."""
        return {}
