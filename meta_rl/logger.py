"""Metrics averaged over updates on the device and written to every writer at ``dump`` (SB3's Logger, batched).

``record_mean`` adds a device tensor to a running sum without a host read; ``dump`` averages,
reduces over ranks where there are several, and writes the means as one row to every writer
(:mod:`meta_rl.metric_writers`: TensorBoard, CSV, JSON lines, stdout). A rank that does not log
simply has no writers.
"""

from __future__ import annotations

import time

import torch

from meta_rl.distributed import World
from meta_rl.evaluation import MAX_INSTANCE, accuracy_by_instance
from meta_rl.metric_writers import MetricWriter

__all__ = ["INSTANCE_GROUP", "MetricLogger"]

#: TensorBoard group of the training accuracy by instance: its own, so that its ten cards do not push the headline
#: ``charts/`` curves (return, accuracy, steps per second) to a second page.
INSTANCE_GROUP = "charts_by_instance"


class MetricLogger:
    """Running means of per-update metrics and accuracy by instance, dumped to ``writers``.

    Args:
        writers: :class:`~meta_rl.metric_writers.MetricWriter` s, each given a dump as one row; none on ranks that
            do not log.
        world: the ranks whose values :meth:`dump` averages.
        device: where the running sums live.
        start_step: the env step the run starts from (for the first steps-per-second figure).
    """

    def __init__(self, writers: list[MetricWriter], world: World, device: torch.device, start_step: int) -> None:
        self.writers, self.world, self.device = writers, world, device
        self._sums: dict[str, torch.Tensor] = {}
        self._count = 0  # updates in the sums (skipped ones are left out)
        self._hits = torch.zeros(MAX_INSTANCE, device=device)
        self._counts = torch.zeros(MAX_INSTANCE, device=device)
        self._last_time, self._last_step = time.monotonic(), start_step
        self.last_return = float("nan")  # the mean training return at the last dump

    def start_clock(self) -> None:
        """Measure the first steps per second from now (the start of the loop)."""
        self._last_time = time.monotonic()

    def record_mean(self, values: dict[str, torch.Tensor]) -> None:
        """Add one update's scalar tensors to the running means."""
        for key, value in values.items():
            self._sums[key] = self._sums.get(key, torch.zeros((), device=self.device)) + value
        self._count += 1

    def record_accuracy(self, correct: torch.Tensor, instance: torch.Tensor) -> None:
        """Add a rollout's (T, B) correct answers by instance index to the accuracy tally."""
        h, c = accuracy_by_instance(correct, instance)  # (B, K) each
        self._hits += h.sum(0)
        self._counts += c.sum(0)

    def write(self, values: dict[str, float], step: int) -> None:
        """One row of figures (a dump, or a held-out evaluation's) to every writer."""
        for writer in self.writers:
            writer.write(values, step)

    def dump(self, step: int, extra: dict[str, float] | None = None) -> dict[str, float]:
        """Write the means since the last dump (over all ranks), accuracy, throughput and ``extra``; reset.

        Returns:
            the row written: the means, ``extra``, ``"charts/steps_per_second"``, and where the task has labels
            ``"charts/accuracy"`` over all instances and ``"charts_by_instance/accuracy_k"``.
        """
        now = time.monotonic()
        if self.world.enabled and self._sums:  # the mean over ranks of each rank's mean
            keys = list(self._sums)
            reduced = self.world.all_sum(torch.stack([self._sums[k] for k in keys])) / self.world.size
            self._sums = dict(zip(keys, reduced.unbind()))
        if self.world.enabled:
            self._hits.copy_(self.world.all_sum(self._hits))
            self._counts.copy_(self.world.all_sum(self._counts))
        means = {k: float(v) / self._count for k, v in self._sums.items()}
        means.update(extra or {})
        accuracy, counts = (self._hits / self._counts.clamp_min(1)).tolist(), self._counts.tolist()
        means.update({f"{INSTANCE_GROUP}/accuracy_{k}": acc
                      for k, (acc, n) in enumerate(zip(accuracy, counts), start=1) if n > 0})
        means["charts/steps_per_second"] = (step - self._last_step) / max(now - self._last_time, 1e-9)
        if sum(counts) > 0:  # the accuracy over every instance, where the task has labels
            means["charts/accuracy"] = float(self._hits.sum() / self._counts.sum())
        self.write(means, step)
        self.last_return = means.get("charts/return", self.last_return)
        self._hits.zero_()
        self._counts.zero_()
        self._sums.clear()
        self._count = 0
        self._last_time, self._last_step = now, step
        return means
