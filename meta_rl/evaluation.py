"""Held-out measures with confidence intervals: accuracy by instance (Santoro et al. 2016) for
classification, return by inner episode of a trial for every other task."""

from __future__ import annotations

import abc
import math
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import torch
from gymnasium import spaces
from gymnasium.vector import VectorEnv

from meta_rl.env_contract import label_request_action, task_length, trial_episodes
from meta_rl.policy import MetaPolicy
from meta_rl.rollout import Rollout, collect

__all__ = [
    "HELDOUT_SEED",
    "MAX_INSTANCE",
    "REFERENCE_ROWS",
    "TABLE_INSTANCES",
    "EvalResult",
    "EvaluationStopped",
    "HeldOutResult",
    "TrialReturns",
    "accuracy_by_instance",
    "evaluate",
    "evaluate_task",
    "first_instance_limit",
    "half_width95",
    "held_out_rollouts",
    "ordinal",
    "query_accuracy",
    "reports_instances",
    "returns_by_inner_episode",
    "returns_table",
    "santoro_table",
    "trial_returns",
]

MAX_INSTANCE = 10
#: Seed of the held-out evaluation during training (agents and baselines alike).
HELDOUT_SEED = 1_000_000
#: The instances of Santoro et al. 2016's Table 1: 1st, 2nd, 3rd, 4th, 5th and 10th.
TABLE_INSTANCES = (1, 2, 3, 4, 5, 10)
#: Santoro et al. 2016, Table 1 (Omniglot, 5-way, 10 instances), accuracy (%) at :data:`TABLE_INSTANCES`.
REFERENCE_ROWS: dict[str, tuple[float, ...]] = {
    "human (Santoro 2016, Omniglot)": (34.5, 57.3, 70.1, 71.8, 81.4, 92.4),
    "LSTM (Santoro 2016, Omniglot)": (24.4, 49.5, 55.3, 61.0, 63.6, 62.5),
    "MANN (Santoro 2016, Omniglot)": (36.4, 82.8, 91.0, 92.6, 94.9, 98.1),
}


def ordinal(k: int) -> str:
    """``1st``, ``2nd``, ``3rd``, ``4th``, ..., ``11th``, ``21st``."""
    suffix = "th" if 10 <= k % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(k % 10, "th")
    return f"{k}{suffix}"


def first_instance_limit(n_way: int) -> float:
    """The best accuracy at the 1st instance of a class with the labels of earlier classes revealed:
    a new class can only exclude the labels already taken, so over the n classes of an episode the
    limit is the mean of 1/n, 1/(n-1), ..., 1 (45.7% for 5-way)."""
    return sum(1.0 / j for j in range(1, n_way + 1)) / n_way


def half_width95(x: torch.Tensor) -> torch.Tensor:
    """Half-width of the normal 95% interval of the mean over axis 0 of ``x`` (zeros for fewer than 2 rows)."""
    n = x.shape[0]
    if n < 2:
        return torch.zeros(x.shape[1:], dtype=x.dtype)
    return 1.96 * x.std(0, unbiased=True) / math.sqrt(n)


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


class HeldOutResult(abc.ABC):
    """What every held-out evaluation returns (:func:`evaluate_task`, ``TrainedAgent.evaluate``): generic code
    reads these, whatever the task; :class:`EvalResult` (classification) and :class:`TrialReturns` (every other
    task) add their own detail.

    Attributes:
        score_name: what :attr:`score` measures: ``"accuracy"`` or ``"return"`` (per trial).
    """

    score_name: typing.ClassVar[str]

    @property
    @abc.abstractmethod
    def score(self) -> float:
        """The headline figure: accuracy over every instance, or the mean return per trial."""

    @property
    @abc.abstractmethod
    def tasks(self) -> int:
        """How many held-out tasks the figures are over."""

    @abc.abstractmethod
    def scalars(self) -> dict[str, float]:
        """Every figure as ``eval/...`` scalars (the training run's TensorBoard tags)."""

    @abc.abstractmethod
    def table(self, label: str = "this agent", baselines: dict[str, torch.Tensor] | None = None) -> str:
        """The figures as a printed table: returns beside ``baselines`` (name -> returns per trial, the task's own
        players), accuracy beside Santoro et al.'s published rows (classification has no return baselines)."""

    @abc.abstractmethod
    def to_json(self) -> dict[str, object]:
        """The figures as plain JSON values."""


@dataclass(frozen=True)
class EvalResult(HeldOutResult):
    """Accuracy at the k-th instance of a class (k = 1..K) over held-out tasks.

    ``ci95[k]`` is the half-width of a normal 95% confidence interval, with tasks as units.
    Where the env lets the agent ask for labels (active mode, Woodward & Finn 2017),
    ``request_rate_by_instance`` is the fraction of the k-th instances it asked about (a request
    is not a correct answer), with its own intervals; elsewhere both are None.
    """

    accuracy_by_instance: list[float]
    ci95: list[float]
    episodes: int
    accuracy: float
    request_rate_by_instance: list[float] | None = None
    request_ci95: list[float] | None = None
    score_name: typing.ClassVar[str] = "accuracy"

    @property
    def score(self) -> float:
        return self.accuracy

    @property
    def tasks(self) -> int:
        return self.episodes

    def scalars(self) -> dict[str, float]:
        out = {f"eval/accuracy_instance_{k}": a for k, a in enumerate(self.accuracy_by_instance, start=1)}
        out["eval/accuracy"] = self.accuracy
        if self.request_rate_by_instance is not None:
            out.update({f"eval/request_rate_instance_{k}": r
                        for k, r in enumerate(self.request_rate_by_instance, start=1)})
        return out

    def table(self, label: str = "this agent", baselines: dict[str, torch.Tensor] | None = None) -> str:
        return santoro_table(self, label)

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "accuracy_by_instance": by_number(self.accuracy_by_instance),
            "ci95": by_number(self.ci95),
            "episodes": self.episodes,
            "accuracy": self.accuracy,
        }
        if self.request_rate_by_instance is not None and self.request_ci95 is not None:
            out["request_rate_by_instance"] = by_number(self.request_rate_by_instance)
            out["request_ci95"] = by_number(self.request_ci95)
        return out


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


def query_accuracy(
    env: VectorEnv, policy: MetaPolicy, tasks: int, steps: int, *, seed: int, shots: int
) -> tuple[float, float, int]:
    """Accuracy on the queries of N-way K-shot tasks (labelled shots, then queries that reveal nothing), with tasks
    as units: the mean over ``tasks`` tasks, its 95% half-width and the number of tasks."""
    per_task = []
    for ro in held_out_rollouts(env, policy, tasks, steps, seed=seed):
        query = ro.instance > shots  # (T, B): the query steps
        per_task.append((ro.correct() & query).sum(0).double() / query.sum(0).double())  # (B,)
    acc = torch.cat(per_task)[:tasks]  # (tasks,)
    return float(acc.mean()), float(half_width95(acc.unsqueeze(-1))[0]), int(acc.numel())


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


def reports_instances(env: VectorEnv, seed: int = 0) -> bool:
    """Whether ``env`` is a classification task: one probe step after ``reset(seed=seed)`` reports ``"instance"``.

    The probe acts with zeros (the middle of a ``Box``); the evaluation resets the env again after it.
    """
    env.reset(seed=seed)
    space = env.single_action_space
    device = getattr(env, "device", torch.device("cpu"))
    if isinstance(space, spaces.Box):
        middle = torch.as_tensor((space.low + space.high) / 2, dtype=torch.float32, device=device)
        action = middle.expand(env.num_envs, *space.shape).clone()  # (B, *shape)
    else:
        action = torch.zeros((env.num_envs, *(space.shape or ())), dtype=torch.int64, device=device)  # (B, ...)
    info = env.step(action)[-1]
    return "instance" in info


def _measure(
    env: VectorEnv, policy: MetaPolicy, tasks: int, *, seed: int, steps: int | None, deterministic: bool | None,
    max_instance: int, should_stop: Callable[[], bool] | None,
) -> tuple[EvalResult | None, TrialReturns]:
    """One pass over held-out tasks: accuracy by instance (None where no step has an instance) and returns.

    ``deterministic=None``: the most likely actions on classification tasks, sampled ones elsewhere.
    """
    if not isinstance(tasks, int) or isinstance(tasks, bool) or tasks < 1:
        raise ValueError(f"the number of held-out tasks must be a positive int, got {tasks!r}.")
    horizon = int(steps or task_length(env))
    if horizon < 1:
        raise ValueError("the env has no episode_length; pass steps= (the length of one task).")
    episodes = max(trial_episodes(env), 1)
    ask = label_request_action(env)
    if deterministic is None:
        deterministic = reports_instances(env, seed)
    hits, counts, asked, returns = [], [], [], []
    for ro in held_out_rollouts(env, policy, tasks, horizon, seed=seed, deterministic=deterministic,
                                should_stop=should_stop):
        h, c = accuracy_by_instance(ro.correct(), ro.instance, max_instance)
        hits.append(h)
        counts.append(c)
        if ask is not None:
            asked.append(accuracy_by_instance(ro.actions == ask, ro.instance, max_instance)[0])
        returns.append(returns_by_inner_episode(ro.rewards, ro.inner_episode, episodes, ro.dones))
    trial = _trial_summary(torch.cat(returns)[:tasks].double().cpu())
    count = torch.cat(counts)[:tasks].cpu()
    if not bool((count > 0).any()):
        return None, trial
    acc = summarize(torch.cat(hits)[:tasks].cpu(), count)
    if asked:
        req = summarize(torch.cat(asked)[:tasks].cpu(), count)
        acc = replace(acc, request_rate_by_instance=req.accuracy_by_instance, request_ci95=req.ci95)
    return acc, trial


def evaluate(
    env: VectorEnv, policy: MetaPolicy, episodes: int, *, seed: int = 0, steps: int | None = None,
    deterministic: bool = True, max_instance: int = MAX_INSTANCE, should_stop: Callable[[], bool] | None = None,
) -> EvalResult:
    """Run ``policy`` on at least ``episodes`` tasks of ``env`` and measure accuracy by instance.

    Each batch of B tasks starts from ``env.reset(seed=seed + i)``, so the result is the same
    for the same seed. Actions are the policy's most likely ones unless ``deterministic=False``.

    Raises:
        ValueError: the env reports no ``"instance"`` (not a classification task: see :func:`evaluate_task`).
        EvaluationStopped: ``should_stop()`` returned True before the last batch.
    """
    acc, _ = _measure(env, policy, episodes, seed=seed, steps=steps, deterministic=deterministic,
                      max_instance=max_instance, should_stop=should_stop)
    if acc is None:
        raise ValueError(f"{type(env).__name__} reports no 'instance' in its info, so it has no accuracy by "
                         "instance; use evaluate_task() or trial_returns() for the return per trial.")
    return acc


def evaluate_task(
    env: VectorEnv, policy: MetaPolicy, tasks: int, *, seed: int = 0, steps: int | None = None,
    deterministic: bool | None = None, max_instance: int = MAX_INSTANCE, should_stop: Callable[[], bool] | None = None,
) -> HeldOutResult:
    """The measure that fits the task: accuracy by instance where the env reports instances, else returns.

    A classification env (its info gives ``"instance"``) yields an :class:`EvalResult`; any other
    (bandits, MDPs, control, a plug-in) the :class:`TrialReturns` of its inner episodes, counted
    exactly per trial. Seeding and ``should_stop`` as in :func:`evaluate`. Actions: by default the most
    likely ones on classification tasks (as classifiers are scored) and sampled ones elsewhere,
    where a meta-RL policy explores by sampling (as Duan et al. 2016 score RL²).
    """
    acc, trial = _measure(env, policy, tasks, seed=seed, steps=steps, deterministic=deterministic,
                          max_instance=max_instance, should_stop=should_stop)
    return trial if acc is None else acc


def returns_table(result: TrialReturns, baselines: dict[str, torch.Tensor] | None = None,
                  label: str = "this agent") -> str:
    """Return per trial (and by inner episode where a trial has several) beside the task's baselines."""
    episodes = len(result.mean)
    cols = ["per trial"] + ([f"ep {k}" for k in range(1, episodes + 1)] if episodes > 1 else [])
    head = f"{'learner':<26}" + "".join(f"{c:>16}" for c in cols)
    cells = [f"{result.total:.2f} ± {result.total_ci95:.2f}"]
    if episodes > 1:
        cells += [f"{m:.2f} ± {c:.2f}" for m, c in zip(result.mean, result.ci95)]
    rows = [head, "-" * len(head), f"{label:<26}" + "".join(f"{c:>16}" for c in cells)]
    for name, totals in (baselines or {}).items():
        t = totals.double()
        rows.append(f"{name:<26}{float(t.mean()):>9.2f} ± {float(half_width95(t)):.2f}".ljust(26 + 16))
    note = f"({result.trials} held-out trials; ± is the 95% confidence half-width"
    if episodes > 1:
        note += f"; 2nd - 1st episode {result.mean[1] - result.mean[0]:+.2f}, last - 1st {result.improvement:+.2f}"
        note += f" ± {result.improvement_ci95:.2f}"
    rows.append(note + "; baselines on the same tasks)" if baselines else note + ")")
    return "\n".join(rows)


def santoro_table(result: EvalResult, label: str = "this agent") -> str:
    """Santoro et al.'s layout: accuracy (%) at the 1st, 2nd, 3rd, 4th, 5th and 10th instance."""
    head = f"{'learner':<34}" + "".join(f"{ordinal(k):>8}" for k in TABLE_INSTANCES)
    rows = [head, "-" * len(head)]
    cells = []
    for k in TABLE_INSTANCES:
        if k <= len(result.accuracy_by_instance):
            cells.append(f"{100 * result.accuracy_by_instance[k - 1]:5.1f}±{100 * result.ci95[k - 1]:.1f}")
        else:
            cells.append("-")
    rows.append(f"{label:<34}" + "".join(f"{c:>8}" if len(c) < 8 else f" {c}" for c in cells))
    if result.request_rate_by_instance is not None:
        rates = result.request_rate_by_instance
        rows.append(f"{'  label requests (%)':<34}" + "".join(
            f"{100 * rates[k - 1]:8.1f}" if k <= len(rates) else f"{'-':>8}" for k in TABLE_INSTANCES))
    for name, values in REFERENCE_ROWS.items():
        rows.append(f"{name:<34}" + "".join(f"{v:8.1f}" for v in values))
    rows.append(f"({result.episodes} held-out tasks; ± is the 95% confidence half-width; reference rows are on "
                "Omniglot, a different dataset)")
    return "\n".join(rows)


def returns_by_inner_episode(
    rewards: torch.Tensor, inner_episode: torch.Tensor, episodes: int, dones: torch.Tensor | None = None
) -> torch.Tensor:
    """(B, episodes) the return of each inner episode of each env's first trial.

    Args:
        rewards: (T, B) rewards; inner_episode: (T, B) the inner episode of each step.
        episodes: inner episodes per trial.
        dones: (T, B) the last step of a trial. Where given, only the steps up to and including
            each env's first done count: an env whose episodes ended early has already started
            its next trial within the rollout, and those steps belong to another task.
    """
    if dones is not None:
        ended_before = (dones.long().cumsum(0) - dones.long()) > 0  # (T, B) a done came before this step
        rewards = rewards.masked_fill(ended_before, 0.0)
    onehot = torch.nn.functional.one_hot(inner_episode.clamp(0, episodes - 1), episodes)  # (T, B, E)
    return (onehot * rewards.unsqueeze(-1)).sum(0)  # (B, E)


@dataclass(frozen=True)
class TrialReturns(HeldOutResult):
    """Mean return of the 1st, 2nd, ... episode of a trial over held-out tasks, with 95% intervals.

    ``improvement`` is the mean over tasks of (last episode - first episode), with its interval:
    positive when the agent adapts to the task within the trial. ``total`` is the mean return of
    a whole trial (the figure bandit and MDP papers report), with its interval.
    """

    mean: list[float]
    ci95: list[float]
    improvement: float
    improvement_ci95: float
    trials: int
    total: float = 0.0
    total_ci95: float = 0.0
    score_name: typing.ClassVar[str] = "return"

    @property
    def score(self) -> float:
        return self.total

    @property
    def tasks(self) -> int:
        return self.trials

    def scalars(self) -> dict[str, float]:
        out = {"eval/return": self.total}
        if len(self.mean) > 1:
            out.update({f"eval/return_episode_{k}": r for k, r in enumerate(self.mean, start=1)})
            out["eval/improvement"] = self.improvement
        return out

    def table(self, label: str = "this agent", baselines: dict[str, torch.Tensor] | None = None) -> str:
        return returns_table(self, baselines, label)

    def to_json(self) -> dict[str, object]:
        return {
            "return_by_episode": by_number(self.mean),
            "ci95": by_number(self.ci95),
            "improvement": self.improvement,
            "improvement_ci95": self.improvement_ci95,
            "return_per_trial": self.total,
            "return_per_trial_ci95": self.total_ci95,
            "trials": self.trials,
        }


def _trial_summary(r: torch.Tensor) -> TrialReturns:
    """(N, E) float64 returns of N trials by inner episode -> means and 95% intervals over trials."""
    n = r.shape[0]
    gain, total = r[:, -1] - r[:, 0], r.sum(1)  # (N,) each
    return TrialReturns(r.mean(0).tolist(), half_width95(r).tolist(), float(gain.mean()), float(half_width95(gain)), n,
                        float(total.mean()), float(half_width95(total)))


def trial_returns(
    env: VectorEnv, policy: MetaPolicy, trials: int, *, seed: int = 0, deterministic: bool | None = None
) -> TrialReturns:
    """Return by inner episode on ``trials`` tasks of an env whose info gives ``"inner_episode"``.

    Each env runs ``task_length(env)`` steps, the longest a trial can last; the steps after its
    first trial ends (episodes that ended early) are not counted, so the figures are exact per trial.
    Actions as in :func:`evaluate_task`.
    """
    if trial_episodes(env) < 1 or task_length(env) < 1:
        raise ValueError("the env must have episodes_per_trial and episode_length (a multi-episode trial env).")
    return _measure(env, policy, trials, seed=seed, steps=None, deterministic=deterministic,
                    max_instance=MAX_INSTANCE, should_stop=None)[1]
