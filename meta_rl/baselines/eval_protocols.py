"""The two protocols the supervised baselines are measured with: K-shot query accuracy and Santoro's streams.

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

import math
import typing
from dataclasses import dataclass

import torch
from torch import nn

from meta_rl.baselines.episodes import Episode, draw_episode, float_images
from meta_rl.baselines.learner import Baseline
from meta_rl.data import EpisodeSampler
from meta_rl.evaluation import MAX_INSTANCE, EvalResult, accuracy_by_instance, summarize

__all__ = [
    "CALIBRATION_SEED",
    "KShotResult",
    "calibrate_stream_threshold",
    "calibrate_threshold",
    "evaluate_kshot",
    "evaluate_stream",
    "stream_predictions",
]

CALIBRATION_SEED = 2_000_000


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
        x = float_images(sampler.dataset, eb.image_index)  # (B, T, C, H, W)
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
