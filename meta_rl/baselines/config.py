"""The settings every supervised baseline shares (:class:`BaselineConfig`), loaded from TOML and ``key=value``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from meta_rl.config import ConfigBase, ConfigError, RunSettings
from meta_rl.encoders import ENCODERS

__all__ = ["BaselineConfig", "BaselineRunSettings", "BaselineSetup", "load_baseline_config"]


@dataclass
class BaselineSetup:
    """What a supervised baseline learns and how: the task, the model and the optimiser."""

    # --- task -----------------------------------------------------------------------------
    dataset: str = "glyphs"
    """Dataset source, as for the envs (``glyphs``, ``omniglot:/path``, a registered name, ...)."""
    image_size: int = 28
    """Image side for resized sources (the envs' default)."""
    data_seed: int = 0
    """Seed of the class split (the envs' default, so the splits are the agents' splits)."""
    train_split: str = "train"
    """Classes trained on."""
    heldout_split: str = "val"
    """Classes of the held-out accuracy logged during training."""
    n_way: int = 5
    """Classes per task (evaluation, and training unless a baseline says otherwise)."""
    shots: int = 1
    """Labelled support images per class (K)."""
    queries_per_class: int = 15
    """Query images per class (glyph classes have 20 images, so shots + queries <= 20)."""
    stream_instances: int = 10
    """Images per class in the streaming protocol (Santoro et al.: 10)."""

    # --- model ----------------------------------------------------------------------------
    encoder: str = "cnn"
    """``cnn`` (light strided conv net), ``conv4``, ``seed_cnn`` or ``mlp``: the agents' encoders."""
    encoder_hidden: list[int] = field(default_factory=lambda: [256, 256, 64])
    """MLP layer sizes; the last one is also the ``cnn`` encoder's output size."""
    conv_filters: int = 64
    """Filters of each conv4 block."""
    conv_norm: str = "batch"
    """conv4 normalisation: ``batch``, ``group`` or ``none``."""

    # --- optimisation ---------------------------------------------------------------------
    meta_batch: int = 32
    """Tasks per Adam step."""
    learning_rate: float = 1e-3
    """Adam step size (the outer loop)."""
    max_grad_norm: float = 0.0
    """Clip gradients to this global norm (0: no clipping)."""


@dataclass
class BaselineRunSettings(RunSettings):
    """The run settings the baselines share with the agents (:class:`~meta_rl.config.RunSettings`), with the
    baselines' defaults where they differ."""

    device: str = "cpu"
    eval_every: int = 200
    """Held-out K-shot accuracy every this many updates (0: only at the end)."""
    eval_episodes: int = 200
    checkpoint_every: int = 500
    max_minutes: float = 10.0
    """Stop training after this many minutes (0: no limit); by default 10, like the README's agent run."""


@dataclass
class BaselineConfig(ConfigBase, BaselineRunSettings, BaselineSetup):
    """Settings every supervised baseline shares: its setup, the run settings and the baselines' own. Every field
    can be set in TOML or as ``key=value``."""

    kind: ClassVar[str] = "baseline"

    # --- run: the baselines' own ----------------------------------------------------------
    max_updates: int = 20_000
    """Stop after this many Adam steps."""
    eval_batch: int = 100
    """Tasks evaluated at once."""
    calibration_episodes: int = 200
    """Training-split streams used to set the novelty threshold of the streaming protocol (at most as
    many as are evaluated)."""
    stream_eval_episodes: int = 0
    """Streams evaluated by ``meta-rl eval``: at most this many (0: as many as ``--episodes``)."""

    POSITIVE: ClassVar[tuple[str, ...]] = (
        "image_size", "n_way", "shots", "queries_per_class", "stream_instances", "conv_filters", "meta_batch",
        "max_updates", "log_every", "eval_batch", "checkpoint_every", "calibration_episodes",
    )
    NON_NEGATIVE: ClassVar[tuple[str, ...]] = (
        "max_grad_norm", "max_minutes", "torch_threads", "eval_every", "eval_episodes", "stream_eval_episodes",
    )

    @property
    def train_way(self) -> int:
        """Classes per training task."""
        return self.n_way

    STRICTLY_POSITIVE: ClassVar[tuple[str, ...]] = ("learning_rate",)
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {
        "encoder": tuple(ENCODERS), "conv_norm": ("batch", "group", "none"),
    }
    EXAMPLE: ClassVar[str] = "protonet-5way1shot"
    NAMED: ClassVar[str] = "baselines"

    def check(self) -> None:
        if self.n_way < 2:
            raise ConfigError(f"n_way must be >= 2 for a classification task, got {self.n_way}.")

    @classmethod
    def describe(cls, source: str) -> str:
        return f"{source} for the {cls.kind} baseline"

    @classmethod
    def merge(cls, data: dict[str, Any], over: dict[str, Any]) -> None:
        if "env_kwargs" in over:
            raise ConfigError(
                f"baselines take no env_kwargs (got {sorted(over['env_kwargs'])}); set n_way, shots, dataset, ... "
                "directly."
            )
        super().merge(data, over)


def load_baseline_config(
    cls: type[BaselineConfig], path: str | Path | None = None, overrides: list[str] | None = None
) -> BaselineConfig:
    """Load a TOML file (None: the defaults) for config class ``cls``, apply ``key=value`` overrides, validate."""
    return cls.load(path, overrides)
