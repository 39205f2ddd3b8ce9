"""Training a supervised baseline on the agents' lifecycle: :func:`train_baseline` and :class:`BaselineRun`."""

from __future__ import annotations

import contextlib
import json
import sys
import typing
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from meta_rl import lifecycle
from meta_rl.atomic import write_atomic
from meta_rl.baselines.config import BaselineConfig
from meta_rl.baselines.episodes import draw_episode, load_split
from meta_rl.baselines.eval_protocols import evaluate_kshot
from meta_rl.baselines.learner import Baseline
from meta_rl.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_state,
    malformed_state,
    read_counters,
    save_checkpoint,
)
from meta_rl.config import ConfigError, resolve_device
from meta_rl.data import EpisodeSampler
from meta_rl.distributed import World
from meta_rl.evaluation import HELDOUT_SEED
from meta_rl.lifecycle import CHECKPOINT_NAME, clock_text, si_count
from meta_rl.memory_estimate import check_threads
from meta_rl.nonfinite_guard import NonFiniteGuard

__all__ = ["CHECKPOINT_NAME", "RESUMABLE_KEYS", "BaselineRun", "train_baseline"]

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
        lifecycle.check_config_unedited(self.run_dir, {"kind": ckpt.get("kind"), **ckpt["config"]},
                                        {"kind": self.cfg.kind, **self.cfg.to_dict()}, command="meta-rl baseline")
        load_state(self.baseline.model, ckpt["policy"], self.ckpt_path, "policy")
        load_state(self.optimizer, ckpt["optimizer"], self.ckpt_path, "optimizer")
        with malformed_state(self.ckpt_path):
            self.generator.set_state(ckpt["rng"]["tasks"].cpu())
            self.update = read_counters(ckpt, self.ckpt_path, ("update", "episodes"))[0]
        self.saved_update = self.first_update = self.update

    def init_logging(self) -> None:
        """config.json and the TensorBoard writer (a resumed run drops events logged after its checkpoint)."""
        cfg = self.cfg
        config = json.dumps({"kind": cfg.kind, **cfg.to_dict()}, indent=2)
        write_atomic(self.run_dir / lifecycle.CONFIG_NAME, config.encode(), what="config")
        lifecycle.after_existing_event_files(self.run_dir)
        self.writer = lifecycle.EventWriter(self.run_dir, purge_step=self.update + 1 if self.resume else 0,
                                  resume="meta-rl baseline --resume")
        if not self.resume:
            self.writer.add_text("config", "```\n" + config + "\n```", 0)
        # A bar where someone watches (a terminal); otherwise (--no-progress, a log file) one line per log.
        self.show_bar = self.progress and sys.stderr.isatty()
        self.bar = tqdm(total=cfg.max_updates, initial=self.update, unit="update", disable=not self.show_bar,
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
        minutes = self.stopping.minutes()
        per_second = (self.update - self.first_update) / max(minutes * 60, 1e-9)
        self.writer.add_scalar("charts/updates_per_second", per_second, self.update)
        loss, accuracy = self._sums["loss"] / n, self._sums["query_accuracy"] / n
        budget = self.stopping.budget(self.update, self.cfg.max_updates, per_second)  # the time limit's too
        if self.show_bar:
            self.bar.total = budget
            self.bar.set_postfix(loss=f"{loss:.3f}", acc=f"{accuracy:.2f}")
        else:
            print(f"meta-rl baseline | update {self.update}/{si_count(budget)} | {per_second:.1f} updates/s | "
                  f"{clock_text(minutes)} | loss {loss:.3f} | accuracy {accuracy:.3f}",
                  file=sys.stderr, flush=True)
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
