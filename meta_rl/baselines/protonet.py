"""Prototypical Networks (Snell et al. 2017) and the raw-pixel nearest-class-mean floor.

A class's prototype is the mean embedding of its support images; a query's logit for a class
is minus its squared Euclidean distance to that prototype. With the identity as embedding this
is the raw-pixel floor: 1-nearest-neighbour for K = 1, nearest class mean for K > 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from meta_rl.baselines.config import BaselineConfig
from meta_rl.baselines.episodes import Episode
from meta_rl.baselines.eval_protocols import KShotResult, evaluate_kshot
from meta_rl.baselines.learner import Baseline
from meta_rl.config import ConfigError
from meta_rl.data import EpisodeSampler
from meta_rl.encoders import make_encoder

__all__ = [
    "PixelNearestMean",
    "ProtoNet",
    "ProtoNetConfig",
    "pixel_nn_accuracy",
    "prototype_logits",
    "prototypes",
]


@dataclass
class ProtoNetConfig(BaselineConfig):
    """Prototypical Networks: the shared settings plus the training way."""

    kind: ClassVar[str] = "protonet"

    train_n_way: int = 0
    """Classes per training task (0: ``n_way``). Snell et al. train with more classes than they test on."""

    @property
    def train_way(self) -> int:
        return self.train_n_way or self.n_way

    def check(self) -> None:
        super().check()
        if self.train_n_way < 0 or self.train_n_way == 1:
            raise ConfigError(f"train_n_way must be 0 (= n_way) or >= 2, got {self.train_n_way}.")


def prototypes(embeddings: torch.Tensor, labels: torch.Tensor, n_way: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean embedding of each class.

    Args:
        embeddings: (B, S, D). labels: int64 (B, S) in [0, n_way).

    Returns:
        prototypes (B, N, D) (zero for a class without support) and support counts (B, N).
    """
    onehot = nn.functional.one_hot(labels, n_way).to(embeddings.dtype)  # (B, S, N)
    counts = onehot.sum(1)  # (B, N)
    sums = onehot.transpose(1, 2) @ embeddings  # (B, N, D)
    return sums / counts.clamp_min(1).unsqueeze(-1), counts


def prototype_logits(queries: torch.Tensor, protos: torch.Tensor) -> torch.Tensor:
    """Minus the squared Euclidean distance of each query to each prototype.

    Args:
        queries: (B, Q, D). protos: (B, N, D).

    Returns:
        (B, Q, N).
    """
    diff = queries.unsqueeze(2) - protos.unsqueeze(1)  # (B, Q, N, D)
    return -(diff * diff).sum(-1)


class _PrototypeLearner(Baseline):
    """Classify by nearest prototype in the space of ``self.model``."""

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, M, C, H, W) -> (B, M, D)."""
        b, m = x.shape[:2]
        return self.model(x.reshape(b * m, *x.shape[2:])).reshape(b, m, -1)  # (B*M, ...) -> (B, M, D)

    def logits(self, episode: Episode) -> torch.Tensor:
        protos, _ = prototypes(self._embed(episode.support_x), episode.support_y, episode.n_way)  # (B, N, D)
        return prototype_logits(self._embed(episode.query_x), protos)  # (B, N*Q, N)

    def stream_scores(self, x: torch.Tensor, y: torch.Tensor, n_way: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Prototypes from the steps before t (running class means); novelty = distance to the nearest one.

        Distances come from the Gram matrix of the stream, O(B T^2 + B T N) memory instead of a
        (B, T, N, D) tensor of running prototypes.
        """
        emb = self._embed(x)  # (B, T, D)
        t = emb.shape[1]
        onehot = nn.functional.one_hot(y, n_way).to(emb.dtype)  # (B, T, N)
        earlier = torch.ones(t, t, dtype=torch.bool, device=emb.device).tril(-1)  # (T, T) [t, s]: s < t
        gram = (emb @ emb.transpose(1, 2)) * earlier  # (B, T, T)
        cross = gram @ onehot  # (B, T, N): e_t . S_tc, S_tc = sum of earlier embeddings of class c
        counts = onehot.cumsum(1) - onehot  # (B, T, N) earlier images of class c
        sq = (emb * emb).sum(-1)  # (B, T)
        own = torch.gather(cross, 2, y.unsqueeze(-1)).squeeze(-1)  # (B, T) e_t . S_{t, y_t}
        grow = onehot * (2 * own + sq).unsqueeze(-1)  # (B, T, N): |S + e_t|^2 - |S|^2 for the class of t
        norm_s = grow.cumsum(1) - grow  # (B, T, N) |S_tc|^2
        n = counts.clamp_min(1)
        scores = -(sq.unsqueeze(-1) - 2 * cross / n + norm_s / (n * n)).clamp_min(0)  # (B, T, N)
        nearest = scores.masked_fill(counts == 0, float("-inf")).amax(-1)  # (B, T)
        novelty = torch.where(torch.isfinite(nearest), -nearest, torch.full_like(nearest, float("inf")))
        return scores, novelty


class ProtoNet(_PrototypeLearner):
    """Prototypical Networks on one of the agents' encoders, trained by cross-entropy over query logits."""

    kind: ClassVar[str] = "protonet"

    def __init__(self, cfg: ProtoNetConfig, input_shape: tuple[int, int, int], device: torch.device) -> None:
        self.cfg = cfg
        self.model = make_encoder(cfg.encoder, input_shape, filters=cfg.conv_filters, hidden=cfg.encoder_hidden,
                                  norm=cfg.conv_norm).to(device)

    def compute_gradients(self, episode: Episode) -> dict[str, float]:
        logits = self.logits(episode)  # (B, N*Q, N)
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), episode.query_y.flatten())
        loss.backward()
        accuracy = (logits.argmax(-1) == episode.query_y).float().mean()
        return {"loss": float(loss.detach()), "query_accuracy": float(accuracy)}


class PixelNearestMean(_PrototypeLearner):
    """The raw-pixel floor: nearest class mean of flattened pixels in [0, 1] (1-NN when K = 1)."""

    kind: ClassVar[str] = "pixel_nn"

    def __init__(self) -> None:
        self.model = nn.Flatten()

    def compute_gradients(self, episode: Episode) -> dict[str, Any]:
        raise TypeError("the raw-pixel floor has no parameters to train.")


def pixel_nn_accuracy(sampler: EpisodeSampler, episodes: int, *, seed: int, batch: int = 100) -> KShotResult:
    """N-way K-shot query accuracy of the raw-pixel floor on the same tasks as :func:`evaluate_kshot`
    with the same ``sampler`` and ``seed``."""
    return evaluate_kshot(PixelNearestMean().logits, sampler, episodes, seed=seed, batch=batch)
