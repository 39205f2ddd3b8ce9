"""What the supervised baselines share: typed configs, episodes, both evaluation protocols, the training loop.

Both baselines draw tasks from :class:`meta_rl.data.EpisodeSampler` on the same class splits
as the RL agents and are measured with the same two protocols:

* **K-shot**: N-way K-shot query accuracy, averaged per task, with a 95% interval over tasks.
* **Streaming** (Santoro et al. 2016): N classes x ``stream_instances`` images in random order;
  at step t the learner predicts the label of image t from images 0..t-1 and their true
  labels (a growing support set), and accuracy is reported by instance (1st, 2nd, ... image
  of its class) with :func:`meta_rl.evaluation.summarize`.

In a stream the class of an image may not have been revealed yet (always so at its 1st
instance). A learner scores only revealed labels, plus a *novelty* score per step (ProtoNet:
squared distance to the nearest revealed prototype; MAML: ``-log p`` of the most likely revealed
label). When the novelty exceeds a threshold, or nothing has been revealed, the learner answers
the lowest unrevealed label instead (labels are permuted at random per task, so this is right
with probability 1 / #unrevealed, the best any learner can do for a new class). The threshold
is calibrated on streams from the *training* split to maximise expected accuracy; it is never
fitted on the evaluation split.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import typing
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

if sys.version_info >= (3, 11):
    pass
else:  # pragma: no cover
    pass

import torch
from torch import nn
from tqdm.auto import tqdm

from meta_rl import lifecycle
from meta_rl.atomic import write_atomic
from meta_rl.checkpoint import CheckpointError, load_checkpoint, load_state, malformed_state, save_checkpoint
from meta_rl.config import ConfigBase, ConfigError, resolve_device
from meta_rl.data import EpisodeSampler, ImageDataset, resolve_split
from meta_rl.distributed import World
from meta_rl.encoders import ENCODERS
from meta_rl.evaluation import HELDOUT_SEED, MAX_INSTANCE, EvalResult, accuracy_by_instance, summarize
from meta_rl.guard import NonFiniteGuard
from meta_rl.lifecycle import CHECKPOINT_NAME
from meta_rl.resources import check_threads

__all__ = [
    "CHECKPOINT_NAME",
    "HELDOUT_SEED",
    "RESUMABLE_KEYS",
    "Baseline",
    "BaselineConfig",
    "BaselineRun",
    "Episode",
    "KShotResult",
    "calibrate_threshold",
    "draw_episode",
    "evaluate_kshot",
    "evaluate_stream",
    "load_baseline_config",
    "load_split",
    "resolve_device",
    "stream_predictions",
    "train_baseline",
]

CALIBRATION_SEED = 2_000_000


# --- configuration ---------------------------------------------------------------------------


@dataclass
class BaselineConfig(ConfigBase):
    """Settings every supervised baseline shares. Every field can be set in TOML or as ``key=value``."""

    kind: ClassVar[str] = "baseline"

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

    # --- run ------------------------------------------------------------------------------
    max_updates: int = 20_000
    """Stop after this many Adam steps."""
    max_minutes: float = 10.0
    """Stop training after this many minutes (0: no limit); by default 10, like the README's agent run."""
    seed: int = 0
    """Seed of parameters and tasks."""
    device: str = "cpu"
    """``cpu``, ``cuda``, ``cuda:N`` or ``auto``."""
    torch_threads: int = 0
    """CPU threads for torch (0: leave torch's default)."""
    log_every: int = 20
    """Log training scalars every this many updates."""
    eval_every: int = 200
    """Held-out K-shot accuracy every this many updates (0: only at the end)."""
    eval_episodes: int = 200
    """Held-out tasks per evaluation during training."""
    eval_batch: int = 100
    """Tasks evaluated at once."""
    checkpoint_every: int = 500
    """Write a checkpoint every this many updates (and always at the end)."""
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


def load_split(cfg: BaselineConfig, split: str) -> ImageDataset:
    """Split ``split`` of ``cfg.dataset``; a bad source or split is a :class:`ConfigError`."""
    try:
        return resolve_split(cfg.dataset, split, image_size=cfg.image_size, seed=cfg.data_seed)
    except (ValueError, TypeError, OSError) as exc:
        raise ConfigError(f"cannot load split {split!r} of dataset = {cfg.dataset!r}: {exc}") from exc


# --- episodes --------------------------------------------------------------------------------


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


def _images(dataset: ImageDataset, rows: torch.Tensor) -> torch.Tensor:
    """uint8 rows (...) -> float images (..., C, H, W) in [0, 1], as the agents' encoders see them."""
    return dataset.images[rows].float() / 255.0


def draw_episode(sampler: EpisodeSampler, batch: int, generator: torch.Generator) -> Episode:
    """Draw ``batch`` shots-mode tasks from ``sampler`` and split them into support and queries."""
    if sampler.shots is None:
        raise ValueError("draw_episode needs a sampler in shots mode; build it with shots=K.")
    eb = sampler.sample(batch, generator)
    s = sampler.n_way * sampler.shots
    x = _images(sampler.dataset, eb.image_index)  # (B, T, C, H, W)
    return Episode(x[:, :s], eb.labels[:, :s], x[:, s:], eb.labels[:, s:], sampler.n_way)


# --- the learner interface -------------------------------------------------------------------


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


# --- the two protocols -----------------------------------------------------------------------


@dataclass(frozen=True)
class KShotResult:
    """N-way K-shot query accuracy over tasks, with a normal 95% interval (tasks as units)."""

    accuracy: float
    ci95: float
    episodes: int


def _kshot_summary(per_task_hits: torch.Tensor, per_task_counts: torch.Tensor) -> KShotResult:
    res = summarize(per_task_hits.unsqueeze(-1), per_task_counts.unsqueeze(-1))  # one "instance" column
    return KShotResult(res.accuracy_by_instance[0], res.ci95[0], res.episodes)


@torch.no_grad()
def evaluate_kshot(
    logits_fn: typing.Callable[[Episode], torch.Tensor], sampler: EpisodeSampler, episodes: int, *, seed: int,
    batch: int = 100,
) -> KShotResult:
    """Query accuracy of ``logits_fn`` on ``episodes`` tasks of ``sampler`` (the same tasks for the same seed)."""
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}.")
    generator = torch.Generator(device=sampler.device).manual_seed(seed)
    hits, counts = [], []
    done = 0
    while done < episodes:
        b = min(batch, episodes - done)
        ep = draw_episode(sampler, b, generator)
        pred = logits_fn(ep).argmax(-1)  # (B, N*Q)
        hits.append((pred == ep.query_y).sum(1).cpu())
        counts.append(torch.full((b,), ep.query_y.shape[1], dtype=torch.int64))
        done += b
    return _kshot_summary(torch.cat(hits), torch.cat(counts))


def _revealed(y: torch.Tensor, n_way: int) -> torch.Tensor:
    """bool (B, T, N): label c was revealed before step t (it is the label of some step < t)."""
    onehot = nn.functional.one_hot(y, n_way)  # (B, T, N)
    before = onehot.cumsum(1) - onehot  # (B, T, N) counts over steps < t
    return before > 0


def stream_predictions(
    scores: torch.Tensor, novelty: torch.Tensor, y: torch.Tensor, n_way: int, threshold: float
) -> torch.Tensor:
    """Labels predicted at every step of B streams (see the module docstring for the rule).

    Args:
        scores: (B, T, N). novelty: (B, T). y: int64 (B, T). threshold: novelty above it means "new class".

    Returns:
        int64 (B, T).
    """
    revealed = _revealed(y, n_way)  # (B, T, N)
    any_revealed = revealed.any(-1)  # (B, T)
    all_revealed = revealed.all(-1)  # (B, T)
    known = scores.masked_fill(~revealed, float("-inf")).argmax(-1)  # (B, T)
    unrevealed = (~revealed).int().argmax(-1)  # (B, T) lowest unrevealed label
    new = ~any_revealed | ((novelty > threshold) & ~all_revealed)  # (B, T)
    return torch.where(new, unrevealed, known)


def calibrate_threshold(scores: torch.Tensor, novelty: torch.Tensor, y: torch.Tensor, n_way: int) -> float:
    """The novelty threshold that maximises expected stream accuracy on these (training) streams.

    Answering "new" at a step is right with probability 1 / #unrevealed when the class is new
    and never otherwise; answering the best revealed label is right when it is the true one.
    """
    revealed = _revealed(y, n_way)  # (B, T, N)
    known_right = scores.masked_fill(~revealed, float("-inf")).argmax(-1) == y  # (B, T)
    is_new = ~torch.gather(revealed, 2, y.unsqueeze(-1)).squeeze(-1)  # (B, T)
    n_unrevealed = (~revealed).sum(-1).clamp_min(1)  # (B, T)
    new_gain = is_new.double() / n_unrevealed.double()  # (B, T)
    free = revealed.any(-1) & ~revealed.all(-1)  # (B, T) steps where the threshold decides
    nov = novelty[free].double()
    known_gain, new_gain = known_right[free].double(), new_gain[free]
    if nov.numel() == 0:
        return math.inf
    order = torch.argsort(nov)
    nov, known_gain, new_gain = nov[order], known_gain[order], new_gain[order]
    # Threshold just below sorted value i: steps < i answer "known", steps >= i answer "new".
    known_prefix = torch.cat([torch.zeros(1, dtype=torch.float64), known_gain.cumsum(0)])  # (M+1,)
    new_suffix = torch.cat([new_gain.flip(0).cumsum(0).flip(0), torch.zeros(1, dtype=torch.float64)])  # (M+1,)
    best = int(torch.argmax(known_prefix + new_suffix))
    if best == nov.numel():
        return math.inf  # never answer "new"
    lower = float(nov[best - 1]) if best > 0 else -math.inf
    upper = float(nov[best])
    return (lower + upper) / 2 if math.isfinite(lower) else upper - 1e-6 * max(1.0, abs(upper))


def _stream_batches(
    baseline: Baseline, sampler: EpisodeSampler, episodes: int, seed: int, batch: int
) -> typing.Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
    generator = torch.Generator(device=sampler.device).manual_seed(seed)
    done = 0
    while done < episodes:
        b = min(batch, episodes - done)
        eb = sampler.sample(b, generator)
        x = _images(sampler.dataset, eb.image_index)  # (B, T, C, H, W)
        scores, novelty = baseline.stream_scores(x, eb.labels, sampler.n_way)
        yield scores, novelty, eb.labels, eb.instance
        done += b


@torch.no_grad()
def evaluate_stream(
    baseline: Baseline, sampler: EpisodeSampler, episodes: int, *, seed: int, threshold: float, batch: int = 100,
    max_instance: int = MAX_INSTANCE,
) -> EvalResult:
    """Santoro's protocol: accuracy by instance over ``episodes`` streams of ``sampler`` (stream mode)."""
    if sampler.shots is not None:
        raise ValueError("evaluate_stream needs a sampler in stream mode (shots=None).")
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}.")
    hits, counts = [], []
    for scores, novelty, y, instance in _stream_batches(baseline, sampler, episodes, seed, batch):
        pred = stream_predictions(scores, novelty, y, sampler.n_way, threshold)  # (B, T)
        h, c = accuracy_by_instance((pred == y).T, instance.T, max_instance)  # (B, K) each
        hits.append(h.cpu())
        counts.append(c.cpu())
    return summarize(torch.cat(hits), torch.cat(counts))


@torch.no_grad()
def calibrate_stream_threshold(baseline: Baseline, sampler: EpisodeSampler, episodes: int, *, batch: int) -> float:
    """:func:`calibrate_threshold` on ``episodes`` streams of ``sampler`` (a training-split sampler)."""
    parts = list(_stream_batches(baseline, sampler, episodes, CALIBRATION_SEED, batch))
    scores, novelty, y = (torch.cat([p[i] for p in parts]) for i in range(3))
    return calibrate_threshold(scores, novelty, y, sampler.n_way)


# --- training ----------------------------------------------------------------------------------


#: Keys that may change when a baseline run is resumed: how long it runs, not what it learns.
RESUMABLE_KEYS = ("max_updates", "max_minutes", "device", "torch_threads")


def train_baseline(
    cfg: BaselineConfig,
    build: typing.Callable[[BaselineConfig, tuple[int, int, int], torch.device], Baseline],
    run_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Train a baseline with Adam on training-split tasks; log to TensorBoard and checkpoint in ``run_dir``.

    The run has the agent's lifecycle (:mod:`meta_rl.lifecycle`): one process per directory,
    SIGINT/SIGTERM stop after the current update with a checkpoint, ``resume`` continues from it
    exactly, ``max_minutes`` bounds it, and a NaN/inf loss or parameter stops it before it is saved.

    Returns the final figures: updates, episodes, minutes, held-out K-shot accuracy.

    Raises:
        ConfigError: a bad setting, or ``run_dir`` already holds a run (use ``resume``).
        CheckpointError: the checkpoint to resume is missing, damaged or from another config.
        TrainingInterrupted: SIGINT/SIGTERM stopped the run after checkpointing it.
        NonFiniteError: the loss or a parameter became NaN or inf (nothing bad was saved).
    """
    cfg.validate()
    run_dir = Path(run_dir)
    with lifecycle.locked_run_dir(run_dir, resume, World(), command="meta-rl baseline") as stop:
        return BaselineRun(cfg, build, run_dir, resume=resume, progress=progress, stop=stop).learn()


class BaselineRun:
    """One baseline training run as named phases: ``init_model``, ``restore``, ``init_logging``, then
    ``train_step`` → ``log`` → ``evaluate_val`` → ``save_checkpoint`` per update."""

    def __init__(self, cfg: BaselineConfig,
                 build: typing.Callable[[BaselineConfig, tuple[int, int, int], torch.device], Baseline],
                 run_dir: Path, *, resume: bool, progress: bool, stop: lifecycle.StopRequest) -> None:
        self.cfg, self.build, self.run_dir, self.resume, self.progress = cfg, build, run_dir, resume, progress
        self.ckpt_path = run_dir / CHECKPOINT_NAME
        self.stopping = lifecycle.StopPolicy(stop, World(), cfg.max_minutes)
        self.device = resolve_device(cfg.device)
        self.update = 0
        self.saved_update: int | None = None
        self.heldout: float | None = None
        self._sums: dict[str, float] = {}
        self._summed = 0  # updates in the sums
        self.first_update = 0  # the update this process started from

    def init_model(self) -> None:
        """Data, task samplers, the learner (from ``cfg.seed``), Adam, the task generator and the NaN guard."""
        cfg, device = self.cfg, self.device
        check_threads(cfg.torch_threads, ConfigError)
        if cfg.torch_threads:
            torch.set_num_threads(cfg.torch_threads)
        train_data = load_split(cfg, cfg.train_split)
        held_data = load_split(cfg, cfg.heldout_split)
        try:
            self.sampler = EpisodeSampler(train_data, cfg.train_way, shots=cfg.shots,
                                          queries_per_class=cfg.queries_per_class, device=device)
            self.held_sampler = EpisodeSampler(held_data, cfg.n_way, shots=cfg.shots,
                                               queries_per_class=cfg.queries_per_class, device=device)
        except ValueError as exc:
            raise ConfigError(f"cannot sample {cfg.kind} tasks: {exc}") from exc
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            self.baseline = self.build(cfg, train_data.image_shape, device)
        self.params = [p for p in self.baseline.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(self.params, lr=cfg.learning_rate)
        self.generator = torch.Generator(device=device).manual_seed(cfg.seed)
        self.guard = NonFiniteGuard(
            self.baseline.model, eager=True, skip=False, steps_per_update=cfg.meta_batch, kept=self._kept,
            device=device, losses=("loss",), grad_norm="grad_norm" if cfg.max_grad_norm else None,
            fix="Lower learning_rate or set max_grad_norm.", unit="episode",
        )

    def _kept(self) -> str:
        if self.saved_update is None:
            return "no checkpoint had been written yet"
        return f"the last good checkpoint {self.ckpt_path} (update {self.saved_update}) is intact"

    def restore(self) -> None:
        """The learner, Adam, the task generator and the update counter from the checkpoint (when resuming)."""
        if not self.resume:
            return
        ckpt = load_checkpoint(self.ckpt_path, map_location=self.device)
        changed = [k for k, v in self.cfg.to_dict().items()
                   if k not in RESUMABLE_KEYS and ckpt["config"].get(k) != v] + (
            ["kind"] if ckpt.get("kind") != self.cfg.kind else [])
        if changed:
            raise CheckpointError(
                f"checkpoint {self.ckpt_path} was trained with another config (changed: {', '.join(changed)}); "
                f"resume with meta-rl baseline --resume {self.run_dir} (only {', '.join(RESUMABLE_KEYS)} may change)."
            )
        load_state(self.baseline.model, ckpt["policy"], self.ckpt_path, "policy")
        load_state(self.optimizer, ckpt["optimizer"], self.ckpt_path, "optimizer")
        with malformed_state(self.ckpt_path):
            self.generator.set_state(ckpt["rng"]["tasks"].cpu())
            self.update = int(ckpt["counters"]["update"])
        self.saved_update = self.first_update = self.update

    def init_logging(self) -> None:
        """config.json and the TensorBoard writer (a resumed run drops events logged after its checkpoint)."""
        cfg = self.cfg
        config = json.dumps({"kind": cfg.kind, **cfg.to_dict()}, indent=2)
        write_atomic(self.run_dir / "config.json", config.encode(), what="config")
        lifecycle.after_existing_event_files(self.run_dir)
        self.writer = lifecycle.EventWriter(self.run_dir, purge_step=self.update + 1 if self.resume else 0,
                                  resume="meta-rl baseline --resume")
        if not self.resume:
            self.writer.add_text("config", "```\n" + config + "\n```", 0)
        self.bar = tqdm(total=cfg.max_updates, initial=self.update, unit="update", disable=not self.progress,
                        mininterval=2.0)

    def train_step(self) -> None:
        """One Adam step on ``meta_batch`` training tasks, through the NaN guard."""
        episode = draw_episode(self.sampler, self.cfg.meta_batch, self.generator)
        self.optimizer.zero_grad(set_to_none=True)
        stats = self.baseline.compute_gradients(episode)
        if self.cfg.max_grad_norm:
            stats["grad_norm"] = float(nn.utils.clip_grad_norm_(self.params, self.cfg.max_grad_norm))
        checked = {k: torch.tensor(v, dtype=torch.float64, device=self.device) for k, v in stats.items()
                   if k in self.guard.guarded}
        self.guard.admit(checked, self.guard.flags(checked), self.update + 1)
        self.optimizer.step()
        self.update += 1
        self.bar.update(1)
        for key, value in stats.items():
            self._sums[key] = self._sums.get(key, 0.0) + value
        self._summed += 1

    def log(self) -> None:
        """Means over the updates since the last log (of this process: a resumed run starts afresh)."""
        n = max(self._summed, 1)
        for key, total in self._sums.items():
            self.writer.add_scalar(f"train/{key}", total / n, self.update)
        self.writer.add_scalar("charts/updates_per_second",
                               (self.update - self.first_update) / max(self.stopping.minutes() * 60, 1e-9),
                               self.update)
        self.bar.set_postfix(loss=f"{self._sums['loss'] / n:.3f}", acc=f"{self._sums['query_accuracy'] / n:.2f}")
        self._sums.clear()
        self._summed = 0

    def evaluate_val(self) -> None:
        """Held-out K-shot query accuracy, logged."""
        self.baseline.model.eval()
        res = evaluate_kshot(self.baseline.logits, self.held_sampler, self.cfg.eval_episodes, seed=HELDOUT_SEED,
                             batch=self.cfg.eval_batch)
        self.baseline.model.train()
        self.writer.add_scalar("eval/query_accuracy", res.accuracy, self.update)
        self.heldout = res.accuracy

    def save_checkpoint(self) -> None:
        self.guard.check_parameters(self.update)
        save_checkpoint(self.ckpt_path, {
            "kind": self.cfg.kind,
            "config": self.cfg.to_dict(),
            "policy": self.baseline.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "counters": {"update": self.update, "episodes": self.update * self.cfg.meta_batch},
            "rng": {"tasks": self.generator.get_state()},
            **self.baseline.extra_state(),
        })
        self.saved_update = self.update

    def interrupted(self, signum: int) -> lifecycle.TrainingInterrupted:
        return lifecycle.TrainingInterrupted(signum, self.run_dir, self.update, self.update * self.cfg.meta_batch,
                                   resume="meta-rl baseline --resume", unit="episode")

    def learn(self) -> dict[str, Any]:
        """Set up, then train → log → evaluate → checkpoint until ``max_updates``, out of time or stopped."""
        cfg = self.cfg
        self.init_model()
        self.restore()
        self.init_logging()
        self.baseline.model.train()
        self.stopping.start()
        try:
            while self.update < cfg.max_updates and self.stopping.before_update():
                self.train_step()
                if self.update % cfg.log_every == 0:
                    self.log()
                if self.stopping.signum is not None:
                    break  # the safe point: checkpoint below
                if cfg.eval_every and cfg.eval_episodes and self.update % cfg.eval_every == 0:
                    self.evaluate_val()
                if self.update % cfg.checkpoint_every == 0:
                    self.save_checkpoint()
            self.bar.close()
            minutes = self.stopping.minutes()
            if self.stopping.signum is not None:
                self.save_checkpoint()
                raise self.interrupted(self.stopping.signum)
            if cfg.eval_episodes and self.update > self.first_update:  # a resumed, finished run: logged already
                self.evaluate_val()
            self.save_checkpoint()
            if self.stopping.request.signum is not None:  # during the final evaluation: complete and saved
                raise self.interrupted(self.stopping.request.signum)
        except BaseException:
            self.bar.close()
            with contextlib.suppress(OSError):
                self.writer.close()
            raise
        self.writer.close()
        return {"kind": cfg.kind, "updates": self.update, "episodes": self.update * cfg.meta_batch,
                "minutes": minutes, "eval/query_accuracy": self.heldout}
