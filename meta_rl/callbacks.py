"""Callbacks: your code at the phase boundaries of a training run (SB3's ``BaseCallback``), and two ready-made ones.

Pass them to :func:`meta_rl.train.train` (``train(cfg, run_dir, callbacks=[...])``). Each hook receives a
:class:`RunView` (counters, the latest logged figures, the policy, ``save_checkpoint``):

================================  ==========================================================================
``on_training_start(run)``        after the set-up (and a resume), before the first update
``on_rollout_end(run)``           a rollout was collected, before its update (``run.update`` not yet counted)
``on_update(run)``                after each update (and its log, when one is due: ``run.logged_at``)
``on_eval(run)``                  after each held-out evaluation, the final one included (``run.evaluation``)
``on_checkpoint(run)``            after each checkpoint, the final one included
``on_training_end(run)``          the run ended normally (budget, time limit or a callback), all written
================================  ==========================================================================

**Stopping.** ``on_rollout_end``, ``on_update``, ``on_eval`` and ``on_checkpoint`` return ``False`` to end the run
(``None`` or ``True``: go on). It ends *normally*: after the current update, with the final held-out evaluation and
checkpoint, and :func:`~meta_rl.train.train`'s result names the callback (``result["stopped_by"]``). A ``False``
from the final evaluation's or checkpoint's hook has nothing left to stop. Any other return value is a TypeError.

**Cost.** With no callbacks nothing is called; hooks receive figures only where the loop already has them on the
host (logged means at a log, evaluation figures after an evaluation): no device read is added per update. What a
hook does itself (reading ``run.policy``'s parameters, say) is its own cost.

**Several ranks (torchrun).** Callbacks run on rank 0 only (the rank that evaluates and writes). A stop asked there
is shared by the ranks' per-update agreement, so every rank leaves after the same update: a stop from
``on_rollout_end`` or ``on_update`` ends that update; one from ``on_eval`` or ``on_checkpoint`` (which run after the
agreement) ends the next one. Other ranks' results say ``"stopped_by": "a callback on rank 0"``.

**Failures.** An exception in a hook fails the run like any other error (the writers are closed; a run directory
created by a run that fails before its first checkpoint is removed); on Python 3.11+ it carries a note naming the
callback, the hook and the update.
"""

from __future__ import annotations

import math
import numbers
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import numpy as np

from meta_rl.checkpoint import CheckpointError, load_checkpoint
from meta_rl.config import did_you_mean
from meta_rl.errors import ConfigError
from meta_rl.lifecycle import BEST_NAME, CHECKPOINT_NAME

if TYPE_CHECKING:
    from meta_rl.config import TrainConfig
    from meta_rl.policy import MetaPolicy

__all__ = ["HOOKS", "STOPPING_HOOKS", "Callback", "RunView", "SaveBestCheckpoint", "StopOnThreshold",
           "check_callbacks", "run_hook"]

#: The hooks, in the order a run calls them.
HOOKS = ("on_training_start", "on_rollout_end", "on_update", "on_eval", "on_checkpoint", "on_training_end")
#: The hooks whose ``False`` ends the run.
STOPPING_HOOKS = ("on_rollout_end", "on_update", "on_eval", "on_checkpoint")
MODES = ("max", "min")


class RunView:
    """What a callback sees of the run, read-only and always current (the trainer makes one per run).

    Attributes are properties over the trainer's state; the mappings are read-only views of the figures last
    logged and evaluated (host floats: reading them costs nothing).
    """

    def __init__(self, trainer: Any) -> None:
        self._trainer = trainer

    @property
    def update(self) -> int:
        """Updates done (over all ranks together: one update is ``num_envs`` x world size tasks)."""
        return int(self._trainer.update)

    @property
    def env_steps(self) -> int:
        """Env steps done, summed over the tasks of every rank (TensorBoard's x axis)."""
        return int(self._trainer.env_steps)

    @property
    def first_update(self) -> int:
        """The update the run started from (0, or the checkpoint's when resumed)."""
        return int(self._trainer.first_update)

    @property
    def resumed(self) -> bool:
        """Whether this run continues a checkpoint (``--resume``)."""
        return bool(self._trainer.resume)

    @property
    def run_dir(self) -> Path:
        return Path(self._trainer.run_dir)

    @property
    def config(self) -> TrainConfig:
        """The run's config (as saved: the memory-read head's settings as built)."""
        return self._trainer.cfg

    @property
    def policy(self) -> MetaPolicy:
        """The policy being trained (its parameters on the run's device)."""
        return self._trainer.policy

    @property
    def metrics(self) -> Mapping[str, float]:
        """The figures of the latest log (``charts/return``, ``losses/policy``, ...; empty before the first)."""
        return MappingProxyType(self._trainer.logged_means)

    @property
    def logged_at(self) -> int | None:
        """The env step of the latest log (None: none yet); ``== env_steps`` in ``on_update`` when this update
        logged."""
        return self._trainer.logged_at

    @property
    def evaluation(self) -> Mapping[str, float]:
        """The figures of the latest held-out evaluation (``eval/accuracy``, ``eval/return``, ...; empty before
        the first)."""
        return MappingProxyType(self._trainer.final)

    @property
    def evaluated_at(self) -> int | None:
        """The env step of the latest held-out evaluation (None: none yet)."""
        return self._trainer.evaluated_at

    @property
    def evaluates(self) -> bool:
        """Whether this run evaluates on held-out tasks (``eval_every`` and ``eval_episodes`` > 0)."""
        return self._trainer.heldout_env is not None

    @property
    def minutes(self) -> float:
        """Minutes of training so far (from the first update; the set-up does not count)."""
        return float(self._trainer.stopping.minutes())

    @property
    def checkpoint_path(self) -> Path:
        """The run's checkpoint, what ``--resume`` reads (written at ``checkpoint_every`` and at the end)."""
        return Path(self._trainer.ckpt_path)

    def save_checkpoint(self, name: str | Path) -> Path:
        """Write the run's state as now to ``run_dir / name`` atomically, in ``checkpoint.pt``'s format (plus
        ``"evaluation"``: the latest held-out figures), for :func:`meta_rl.load` and ``meta-rl eval``.

        Written by rank 0 alone from its own state (no collective): with several ranks the parameters are every
        rank's, while the action generator and BatchNorm statistics are rank 0's. Resume from ``checkpoint.pt``.

        Returns:
            The file written.

        Raises:
            ValueError: ``name`` is not a plain ``.pt`` file name (a folder, ``config.json``, an absolute path), or is
                the run's own ``checkpoint.pt`` (which only the run writes).
            CheckpointWriteError: the file could not be written (the previous one is intact).
        """
        plain = isinstance(name, (str, Path)) and Path(name).name == str(name) and str(name).endswith(".pt")
        if not plain:
            raise ValueError(f"save_checkpoint({name!r}): name a .pt file of the run directory, without folders "
                             f"(e.g. {BEST_NAME!r} or 'update-100.pt'), so that it replaces none of the run's "
                             "other files.")
        path = self.run_dir / name
        if path.name == CHECKPOINT_NAME:
            raise ValueError(f"save_checkpoint({str(name)!r}) would replace the run's own {CHECKPOINT_NAME}, which "
                             f"the run writes itself at checkpoint_every; pick another name (e.g. {BEST_NAME!r}).")
        self._trainer.save_checkpoint(path)
        return path


class Callback:
    """Base class of callbacks: override the hooks you need (each does nothing by default).

    ``on_rollout_end``, ``on_update``, ``on_eval`` and ``on_checkpoint`` return ``False`` to end the run normally
    (see :mod:`meta_rl.callbacks`); ``repr(callback)`` names it in ``result["stopped_by"]``.
    """

    def on_training_start(self, run: RunView) -> None:
        """After the set-up (and a resume), before the first update."""

    def on_rollout_end(self, run: RunView) -> bool | None:
        """A rollout was collected; its update comes next. False: end the run after that update."""
        return None

    def on_update(self, run: RunView) -> bool | None:
        """An update is done (and logged where ``run.logged_at == run.env_steps``). False: end the run."""
        return None

    def on_eval(self, run: RunView) -> bool | None:
        """A held-out evaluation is done (``run.evaluation``). False: end the run."""
        return None

    def on_checkpoint(self, run: RunView) -> bool | None:
        """A checkpoint was written (``run.checkpoint_path``). False: end the run."""
        return None

    def on_training_end(self, run: RunView) -> None:
        """The run ended normally: its final evaluation and checkpoint are written."""

    def __repr__(self) -> str:
        return type(self).__name__


def check_callbacks(callbacks: Sequence[Callback] | None) -> list[Callback]:
    """``callbacks`` as a list (None: none), each a :class:`Callback` instance whose ``on_*`` methods are all hooks.

    Raises:
        TypeError: not a list of callbacks (a single one, a class, another library's callback), or a method named
            like a hook that is none (``on_step``, SB3's ``_on_step``), which would never be called.
    """
    if callbacks is None:
        return []
    if isinstance(callbacks, Callback) or not isinstance(callbacks, (list, tuple)):
        raise TypeError(f"callbacks must be a list of meta_rl.Callback instances, got {callbacks!r}; pass "
                        "callbacks=[...] (a list, even of one).")
    for cb in callbacks:
        if isinstance(cb, type) and issubclass(cb, Callback):
            raise TypeError(f"callbacks holds the class {cb.__name__}, not an instance; pass {cb.__name__}(...).")
        if not isinstance(cb, Callback):
            raise TypeError(f"callbacks holds {cb!r}, which is not a meta_rl.Callback; subclass meta_rl.Callback and "
                            f"override its hooks ({', '.join(HOOKS)}). SB3's callbacks do not apply to this trainer.")
        for name in dir(type(cb)):
            if name in HOOKS or not name.lstrip("_").startswith("on_"):
                continue
            close = did_you_mean(name.lstrip("_"), list(HOOKS))
            if close or name.lstrip("_") == "on_step":  # a misspelt hook, or SB3's: never called here
                raise TypeError(f"{type(cb).__name__}.{name} is not a hook and would never be called; did you mean "
                                f"{close or 'on_update'}? The hooks are {', '.join(HOOKS)}.")
    return list(callbacks)


def run_hook(callbacks: Sequence[Callback], hook: str, run: RunView) -> Callback | None:
    """Call ``hook`` of every callback in order; the first that returned False (a stopping hook only), or None.

    Raises:
        TypeError: a hook returned something other than None, True or False, or a non-stopping hook returned False.
        Exception: whatever a hook raised (noted with the callback, hook and update on Python 3.11+).
    """
    stopper = None
    for cb in callbacks:
        try:
            verdict = getattr(cb, hook)(run)
        except Exception as exc:
            if sys.version_info >= (3, 11):
                exc.add_note(f"meta-rl: raised by callback {cb!r} in {hook} at update {run.update} (env step "
                             f"{run.env_steps})")
            raise
        if verdict is None or verdict is True or verdict is np.True_:
            continue
        if verdict is not False and verdict is not np.False_:
            raise TypeError(f"{cb!r}.{hook} returned {verdict!r}; a hook returns None or True to go on"
                            + (", False to end the run." if hook in STOPPING_HOOKS else "."))
        if hook not in STOPPING_HOOKS:
            raise TypeError(f"{cb!r}.{hook} returned False, but {hook} cannot end the run; return False from one of "
                            f"{', '.join(STOPPING_HOOKS)}.")
        stopper = stopper or cb
    return stopper


def _check_mode(mode: str, who: str) -> None:
    if mode not in MODES:
        raise ValueError(f"{who}: mode = {mode!r}; use 'max' (higher is better) or 'min' (lower is better).")


def _missing_metric(who: str, metric: str, figures: Mapping[str, float], what: str) -> ConfigError:
    close = did_you_mean(metric, list(figures))
    hint = f"; did you mean {close!r}?" if close else "; pass one of them."
    return ConfigError(f"{who}: {metric!r} is not among this run's {what} ({', '.join(sorted(figures))}){hint}")


def _no_evaluation(who: str, metric: str) -> ConfigError:
    return ConfigError(f"{who} watches {metric!r}, a held-out figure, but this run never evaluates on held-out "
                       "tasks (eval_every = 0 or eval_episodes = 0); set eval_every (e.g. eval_every=100)"
                       + (" or watch a training figure such as 'charts/return'." if who == "StopOnThreshold" else "."))


class StopOnThreshold(Callback):
    """End the run once ``metric`` reaches ``threshold``: ``>=`` with ``mode="max"``, ``<=`` with ``"min"``.

    A held-out figure (``eval/accuracy``, ``eval/return``, ``eval/accuracy_instance_2``, ...) is checked after each
    evaluation; any other (``charts/return``, ``charts/accuracy``, ``losses/value``, ...) at each log. A run that
    never evaluates refuses a held-out metric at its start; a metric absent from the first evaluation's (or log's)
    figures is refused there, with the figures the run has.

    Args:
        metric: the figure's tag, as TensorBoard, ``progress.csv`` and ``progress.jsonl`` name it.
        threshold: the value that ends the run.
        mode: ``"max"`` (stop at ``>= threshold``) or ``"min"`` (stop at ``<= threshold``).

    Attributes:
        reached: (value, env step) of the figure that reached the threshold; None until then.
    """

    def __init__(self, metric: str, threshold: float, *, mode: str = "max") -> None:
        if not isinstance(metric, str) or not metric:
            raise ValueError(f"StopOnThreshold: metric = {metric!r}; name a logged figure, e.g. 'eval/accuracy'.")
        if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or not math.isfinite(threshold):
            raise ValueError(f"StopOnThreshold: threshold = {threshold!r}; pass a finite number, e.g. 0.9.")
        _check_mode(mode, "StopOnThreshold")
        self.metric: str = metric
        self.threshold: float = float(threshold)
        self.mode: str = mode
        self.reached: tuple[float, int] | None = None

    @property
    def heldout(self) -> bool:
        return self.metric.startswith("eval/")

    def on_training_start(self, run: RunView) -> None:
        if self.heldout and not run.evaluates:
            raise _no_evaluation("StopOnThreshold", self.metric)

    def on_update(self, run: RunView) -> bool | None:
        if self.heldout or run.logged_at != run.env_steps:
            return None
        return self._check(run, run.metrics, "logged training figures")

    def on_eval(self, run: RunView) -> bool | None:
        return self._check(run, run.evaluation, "held-out figures") if self.heldout else None

    def _check(self, run: RunView, figures: Mapping[str, float], what: str) -> bool | None:
        if self.metric not in figures:
            raise _missing_metric("StopOnThreshold", self.metric, figures, what)
        value = figures[self.metric]
        if value >= self.threshold if self.mode == "max" else value <= self.threshold:
            self.reached = (value, run.env_steps)
            return False
        return None

    def __repr__(self) -> str:
        text = f"StopOnThreshold({self.metric} {'>=' if self.mode == 'max' else '<='} {self.threshold:g})"
        if self.reached is not None:
            text += f": {self.reached[0]:.4g} at env step {self.reached[1]}"
        return text


class SaveBestCheckpoint(Callback):
    """After each held-out evaluation, where ``metric`` improves on the best so far, write ``best.pt`` atomically.

    ``best.pt`` has ``checkpoint.pt``'s format plus ``"evaluation"`` (the figures that made it best):
    ``meta_rl.load(run_dir, checkpoint="best")`` and ``meta-rl eval RUN --checkpoint best`` read it. A resumed run
    starts from the best ``best.pt`` records; a fresh run replaces one an earlier attempt left.

    Args:
        metric: a held-out figure (``eval/...``); None: ``eval/accuracy`` where the task has labels, else
            ``eval/return``.
        mode: ``"max"`` (higher is better) or ``"min"``.

    Attributes:
        best: the best value so far (None: none yet). best_at: its env step. saves: ``best.pt`` writes by this run.
    """

    def __init__(self, metric: str | None = None, *, mode: str = "max") -> None:
        if metric is not None and (not isinstance(metric, str) or not metric.startswith("eval/")):
            raise ValueError(f"SaveBestCheckpoint: metric = {metric!r}; it keeps the best held-out evaluation, so "
                             "name a held-out figure ('eval/accuracy', 'eval/return', ...) or None for the task's.")
        _check_mode(mode, "SaveBestCheckpoint")
        self.metric, self.mode = metric, mode
        self.best: float | None = None
        self.best_at: int | None = None
        self.saves = 0
        self._recorded: Mapping[str, Any] = {}

    def on_training_start(self, run: RunView) -> None:
        if not run.evaluates:
            raise _no_evaluation("SaveBestCheckpoint", self.metric or "eval/accuracy")
        path = run.run_dir / BEST_NAME
        if run.resumed and path.is_file():  # the best so far is the resumed run's to beat
            try:
                saved = load_checkpoint(path)
            except CheckpointError as exc:
                raise CheckpointError(f"{exc} (SaveBestCheckpoint reads it to resume the best so far: delete it to "
                                      "start a new best at the next evaluation)") from exc
            recorded = saved.get("evaluation")
            # One written after the resumed checkpoint (by a process killed since) belongs to updates the run
            # no longer has, as the log rows after it do: the next evaluation replaces it, whatever its figure.
            later = int(saved.get("counters", {}).get("env_steps", 0)) > run.env_steps
            self._recorded = recorded if isinstance(recorded, dict) and not later else {}

    def on_eval(self, run: RunView) -> bool | None:
        figures = run.evaluation
        metric = self.metric or ("eval/accuracy" if "eval/accuracy" in figures else "eval/return")
        if metric not in figures:
            raise _missing_metric("SaveBestCheckpoint", metric, figures, "held-out figures")
        if self.best is None and isinstance(self._recorded.get(metric), float):
            self.best = self._recorded[metric]
        value = figures[metric]
        better = self.best is None or (value > self.best if self.mode == "max" else value < self.best)
        if math.isfinite(value) and better:
            run.save_checkpoint(BEST_NAME)
            self.best, self.best_at, self.saves = value, run.env_steps, self.saves + 1
        return None

    def __repr__(self) -> str:
        return f"SaveBestCheckpoint({self.metric or 'the task metric'}, {self.mode})"
