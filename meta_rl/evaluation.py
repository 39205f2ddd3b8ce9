"""Accuracy by instance (Santoro et al. 2016) with confidence intervals, on held-out tasks."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from gymnasium.vector import VectorEnv

from meta_rl.contract import task_length, trial_episodes
from meta_rl.policy import MetaPolicy
from meta_rl.rollout import Rollout, collect

__all__ = [
    "HELDOUT_SEED",
    "MAX_INSTANCE",
    "REFERENCE_ROWS",
    "EvalResult",
    "EvaluationStopped",
    "TrialReturns",
    "accuracy_by_instance",
    "evaluate",
    "held_out_rollouts",
    "returns_by_inner_episode",
    "santoro_table",
    "trial_returns",
]

MAX_INSTANCE = 10
#: Seed of the held-out evaluation during training (agents and baselines alike).
HELDOUT_SEED = 1_000_000
TABLE_INSTANCES = (1, 2, 3, 5, 10)
# Santoro et al. 2016, Omniglot 5-way, 10 instances, as usually quoted (shared/ANCHORS.md).
REFERENCE_ROWS: dict[str, tuple[float, ...]] = {
    "human (Santoro 2016, Omniglot)": (34.5, 57.3, 70.1, 71.8, 81.4),
    "LSTM (Santoro 2016, Omniglot)": (24.4, 49.5, 55.3, 61.0, 63.6),
    "MANN (Santoro 2016, Omniglot)": (36.4, 82.8, 91.0, 92.6, 94.9),
}


def by_number(values: list[float]) -> dict[str, float]:
    """``values`` keyed by their 1-based position, as the JSON reports number instances and episodes."""
    return {str(k + 1): v for k, v in enumerate(values)}


def accuracy_by_instance(
    correct: torch.Tensor, instance: torch.Tensor, max_instance: int = MAX_INSTANCE
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-task sums of correct answers and counts at each instance index.

    Args:
        correct: (T, B) bool, the answer at step t was right.
        instance: (T, B) int, 1-based instance index of the shown class (0 = unknown).
        max_instance: K, the largest instance index counted.

    Returns:
        hits (B, K) and counts (B, K): column k-1 is about the k-th instance.
    """
    valid = (instance >= 1) & (instance <= max_instance)  # (T, B)
    onehot = torch.nn.functional.one_hot((instance - 1).clamp(0, max_instance - 1), max_instance)  # (T, B, K)
    onehot = onehot * valid.unsqueeze(-1)
    hits = (onehot * correct.unsqueeze(-1)).sum(0)  # (B, K)
    return hits, onehot.sum(0)


@dataclass(frozen=True)
class EvalResult:
    """Accuracy at the k-th instance of a class (k = 1..K) over held-out tasks.

    ``ci95[k]`` is the half-width of a normal 95% confidence interval, with tasks as units.
    """

    accuracy_by_instance: list[float]
    ci95: list[float]
    episodes: int
    accuracy: float

    def to_json(self) -> dict[str, object]:
        return {
            "accuracy_by_instance": by_number(self.accuracy_by_instance),
            "ci95": by_number(self.ci95),
            "episodes": self.episodes,
            "accuracy": self.accuracy,
        }


def summarize(hits: torch.Tensor, counts: torch.Tensor) -> EvalResult:
    """Turn per-task (E, K) hits and counts into means and 95% intervals over tasks."""
    per_task = hits.double() / counts.clamp_min(1).double()  # (E, K)
    present = counts > 0  # (E, K)
    n = present.sum(0).clamp_min(1).double()  # (K,)
    mean = (per_task * present).sum(0) / n
    var = (((per_task - mean) ** 2) * present).sum(0) / (n - 1).clamp_min(1)
    ci = 1.96 * torch.sqrt(var / n)
    overall = float(hits.sum() / counts.sum().clamp_min(1))
    return EvalResult(mean[present.any(0)].tolist(), ci[present.any(0)].tolist(), int(hits.shape[0]), overall)


class EvaluationStopped(Exception):
    """An evaluation left before its last batch because ``should_stop()`` said so; it has no result.

    Attributes:
        batches_done: batches completed before the stop.
        batches: batches the evaluation needed.
    """

    def __init__(self, batches_done: int, batches: int) -> None:
        super().__init__(f"evaluation stopped after {batches_done} of {batches} batches")
        self.batches_done = batches_done
        self.batches = batches


def held_out_rollouts(
    env: VectorEnv, policy: MetaPolicy, tasks: int, steps: int, *, seed: int, deterministic: bool = True,
    should_stop: Callable[[], bool] | None = None,
) -> Iterator[Rollout]:
    """Rollouts covering at least ``tasks`` tasks, batch i reset with ``seed + i``, the policy in eval mode.

    Args:
        should_stop: asked before each batch; when it returns True the iteration raises
            :class:`EvaluationStopped` (a signal or a time limit ends a long evaluation early).

    The policy's training mode is restored when the iteration ends.
    """
    generator = torch.Generator(device=policy.value_head.weight.device).manual_seed(seed)
    was_training = policy.training
    batches = math.ceil(tasks / env.num_envs)
    policy.eval()
    try:
        for i in range(batches):
            if should_stop is not None and should_stop():
                raise EvaluationStopped(i, batches)
            yield collect(env, policy, steps, generator, reset_seed=seed + i, deterministic=deterministic)
    finally:
        policy.train(was_training)


def evaluate(
    env: VectorEnv, policy: MetaPolicy, episodes: int, *, seed: int = 0, steps: int | None = None,
    deterministic: bool = True, max_instance: int = MAX_INSTANCE, should_stop: Callable[[], bool] | None = None,
) -> EvalResult:
    """Run ``policy`` on at least ``episodes`` tasks of ``env`` and measure accuracy by instance.

    Each batch of B tasks starts from ``env.reset(seed=seed + i)``, so the result is the same
    for the same seed. Actions are the policy's most likely ones unless ``deterministic=False``.

    Raises:
        EvaluationStopped: ``should_stop()`` returned True before the last batch.
    """
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}.")
    horizon = int(steps or task_length(env))
    if horizon < 1:
        raise ValueError("the env has no episode_length; pass steps= (the length of one task).")
    hits, counts = [], []
    for ro in held_out_rollouts(env, policy, episodes, horizon, seed=seed, deterministic=deterministic,
                                should_stop=should_stop):
        h, c = accuracy_by_instance(ro.correct(), ro.instance, max_instance)
        hits.append(h)
        counts.append(c)
    return summarize(torch.cat(hits)[:episodes].cpu(), torch.cat(counts)[:episodes].cpu())


def santoro_table(result: EvalResult, label: str = "this agent") -> str:
    """Santoro et al.'s layout: accuracy (%) at the 1st, 2nd, 3rd, 5th and 10th instance."""
    head = f"{'learner':<34}" + "".join(f"{k:>8}" for k in ("1st", "2nd", "3rd", "5th", "10th"))
    rows = [head, "-" * len(head)]
    cells = []
    for k in TABLE_INSTANCES:
        if k <= len(result.accuracy_by_instance):
            cells.append(f"{100 * result.accuracy_by_instance[k - 1]:5.1f}±{100 * result.ci95[k - 1]:.1f}")
        else:
            cells.append("-")
    rows.append(f"{label:<34}" + "".join(f"{c:>8}" if len(c) < 8 else f" {c}" for c in cells))
    for name, values in REFERENCE_ROWS.items():
        rows.append(f"{name:<34}" + "".join(f"{v:8.1f}" for v in values))
    rows.append(f"({result.episodes} held-out tasks; ± is the 95% confidence half-width; reference rows are on "
                "Omniglot, a different dataset)")
    return "\n".join(rows)


def returns_by_inner_episode(rewards: torch.Tensor, inner_episode: torch.Tensor, episodes: int) -> torch.Tensor:
    """(B, episodes) the return of each inner episode of each trial, from (T, B) rewards and indices."""
    onehot = torch.nn.functional.one_hot(inner_episode.clamp(0, episodes - 1), episodes)  # (T, B, E)
    return (onehot * rewards.unsqueeze(-1)).sum(0)  # (B, E)


@dataclass(frozen=True)
class TrialReturns:
    """Mean return of the 1st, 2nd, ... episode of a trial over held-out tasks, with 95% intervals.

    ``improvement`` is the mean over tasks of (last episode - first episode), with its interval:
    positive when the agent adapts to the task within the trial.
    """

    mean: list[float]
    ci95: list[float]
    improvement: float
    improvement_ci95: float
    trials: int

    def to_json(self) -> dict[str, object]:
        return {
            "return_by_episode": by_number(self.mean),
            "ci95": by_number(self.ci95),
            "improvement": self.improvement,
            "improvement_ci95": self.improvement_ci95,
            "trials": self.trials,
        }


def trial_returns(
    env: VectorEnv, policy: MetaPolicy, trials: int, *, seed: int = 0, deterministic: bool = True
) -> TrialReturns:
    """Return by inner episode on ``trials`` tasks of an env whose info gives ``"inner_episode"``."""
    episodes, horizon = trial_episodes(env), task_length(env)
    if episodes < 1 or horizon < 1:
        raise ValueError("the env must have episodes_per_trial and episode_length (a multi-episode trial env).")
    parts = [
        returns_by_inner_episode(ro.rewards, ro.inner_episode, episodes)
        for ro in held_out_rollouts(env, policy, trials, horizon, seed=seed, deterministic=deterministic)
    ]
    r = torch.cat(parts)[:trials].double().cpu()  # (N, E)
    n = r.shape[0]
    half = 1.96 * r.std(0, unbiased=True) / math.sqrt(max(n, 1))
    gain = r[:, -1] - r[:, 0]
    return TrialReturns(
        r.mean(0).tolist(), half.tolist(), float(gain.mean()), float(1.96 * gain.std(unbiased=True) / math.sqrt(n)), n
    )
