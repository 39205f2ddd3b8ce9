"""Supervised few-shot baselines on the agents' tasks: Prototypical Networks, MAML and a raw-pixel floor."""

from __future__ import annotations

from meta_rl.baselines.config import BaselineConfig, load_baseline_config
from meta_rl.baselines.episodes import Episode, draw_episode
from meta_rl.baselines.eval_protocols import (
    KShotResult,
    calibrate_threshold,
    evaluate_kshot,
    evaluate_stream,
    stream_predictions,
)
from meta_rl.baselines.learner import Baseline
from meta_rl.baselines.maml import MAML, MAMLConfig, adapt, adapted_outputs, meta_gradient
from meta_rl.baselines.protonet import (
    PixelNearestMean,
    ProtoNet,
    ProtoNetConfig,
    pixel_nn_accuracy,
    prototype_logits,
    prototypes,
)

__all__ = [
    "MAML",
    "Baseline",
    "BaselineConfig",
    "Episode",
    "KShotResult",
    "MAMLConfig",
    "PixelNearestMean",
    "ProtoNet",
    "ProtoNetConfig",
    "adapt",
    "adapted_outputs",
    "calibrate_threshold",
    "draw_episode",
    "evaluate_kshot",
    "evaluate_stream",
    "load_baseline_config",
    "meta_gradient",
    "pixel_nn_accuracy",
    "prototype_logits",
    "prototypes",
    "stream_predictions",
    "train_baseline",
]
