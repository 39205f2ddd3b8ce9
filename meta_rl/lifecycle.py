"""One run's lifecycle, the same for every trainer: its directory and lock, stop signals and the time limit.

:func:`locked_run_dir` holds a run directory for one process (removing a killed write's temporary
files and, on failure, a directory it created); :func:`stop_on_signals` turns SIGINT/SIGTERM into a
:class:`StopRequest` read at the loop's safe point; :class:`StopPolicy` adds the time limit and the
agreement of several ranks; :class:`EventWriter` is the TensorBoard writer whose file-system errors
are one clear :class:`~meta_rl.atomic.WriteError` (:class:`NullWriter` for ranks that do not log).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams as hparams_summary

from meta_rl.atomic import write_error
from meta_rl.checkpoint import load_checkpoint
from meta_rl.config import ConfigError
from meta_rl.distributed import World
from meta_rl.metric_writers import CSV_NAME, JSONL_NAME
from meta_rl.runlock import LOCK_NAME, run_lock

__all__ = [
    "BEST_NAME",
    "CHECKPOINT_NAME",
    "CONFIG_NAME",
    "STOP_SIGNALS",
    "EnvStepTimeout",
    "EventWriter",
    "NullWriter",
    "StepWatchdog",
    "StopNow",
    "StopPolicy",
    "StopRequest",
    "TimeCadence",
    "TrainingInterrupted",
    "add_run_arguments",
    "after_existing_event_files",
    "budget_steps",
    "check_config_unedited",
    "check_holds_only_run_files",
    "clock_text",
    "locked_run_dir",
    "si_count",
    "stop_on_signals",
]

CHECKPOINT_NAME = "checkpoint.pt"
#: The checkpoint of the best held-out evaluation so far (:class:`meta_rl.callbacks.SaveBestCheckpoint`).
BEST_NAME = "best.pt"
#: Seconds an env call may run past the time limit before the watchdog stops the run.
TIME_LIMIT_GRACE = 30.0
#: The final held-out evaluation of a time-limited run may run this share of ``max_minutes`` past it, and at
#: least this many seconds (:meth:`StopPolicy.final_allowance`).
FINAL_EVALUATION_SHARE = 0.1
FINAL_EVALUATION_MIN_SECONDS = 10.0
CONFIG_NAME = "config.json"
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def add_run_arguments(parser: argparse.ArgumentParser, *, what: str, config: str, overrides: str) -> None:
    """The command-line arguments of every run on this lifecycle: config, overrides, run dir, resume, limits.

    Args:
        parser: The sub-command's parser.
        what: What a run is called in help texts (``run``, ``baseline run``).
        config: An example config path.
        overrides: Example ``key=value`` overrides.
    """
    parser.add_argument("config", nargs="?", help=f"a TOML config, e.g. {config}")
    parser.add_argument("overrides", nargs="*", help=f"key=value overrides, e.g. {overrides}")
    parser.add_argument("--run-dir", help="where the checkpoint and TensorBoard logs go")
    parser.add_argument("--resume", metavar="DIR", help=f"continue the {what} in DIR from its checkpoint")
    parser.add_argument("--seed", type=int, help="seed (overrides the config)")
    parser.add_argument("--max-minutes", type=float, help="stop training after this many minutes")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


class TrainingInterrupted(Exception):
    """SIGINT or SIGTERM stopped training at the end of an update, after a checkpoint was written.

    Attributes:
        signum: the signal. exit_code: ``128 + signum`` (130 for SIGINT, 143 for SIGTERM).
        run_dir, update, env_steps: where the run stopped; ``resume`` (the command) continues it.
    """

    def __init__(self, signum: int, run_dir: Path, update: int, env_steps: int,
                 resume: str = "meta-rl train --resume", checkpoint_name: str = CHECKPOINT_NAME,
                 unit: str = "env step") -> None:
        self.signum, self.run_dir, self.update, self.env_steps = signum, run_dir, update, env_steps
        super().__init__(
            f"training interrupted by {signal.Signals(signum).name} after update {update} ({unit} {env_steps}); "
            f"checkpoint saved to {run_dir / checkpoint_name}. Resume with: {resume} {run_dir}"
        )

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class StopRequest:
    """Set by the signal handler; read by the loop at its safe point.

    Attributes:
        signum: the first stop signal received (None: none yet).
        phase: what the run is doing now (``"collecting a rollout"``), which the first signal's notice names.
        watchdog: the run's :class:`StepWatchdog`, whose step in progress the notice also names.
    """

    signum: int | None = None
    phase: str = "setting up"
    watchdog: StepWatchdog | None = None

    def doing(self) -> str:
        """What the run is doing now, with the env step it waits for, if one is running."""
        waiting = self.watchdog.waiting() if self.watchdog is not None else ""
        return f"{self.phase}{', ' + waiting if waiting else ''}"


class StopNow(KeyboardInterrupt):
    """A second SIGINT/SIGTERM: the run stops at once, wherever it was (``exit_code`` 128 + signum)."""

    def __init__(self, signum: int, doing: str, kept: str = "") -> None:
        self.signum, self.doing, self.kept = signum, doing, kept
        super().__init__(f"stopped at once by a second {signal.Signals(signum).name} while {doing}"
                         + (f"; {kept}" if kept else ""))

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


@contextlib.contextmanager
def stop_on_signals(stop: StopRequest) -> Iterator[None]:
    """Turn SIGINT/SIGTERM into a stop request for the duration of the block (main thread only).

    The policy: the first signal asks the loop to stop after the current update (then it
    checkpoints), and says on stderr what the run is doing meanwhile (an env step it waits for,
    an update, an evaluation). A second signal raises :class:`StopNow` at once, wherever the run
    is: the trainer then writes what it can (the events; a checkpoint of the last whole update
    where it was collecting a rollout) and the checkpoint on disk stays whole, as writes are
    atomic. After the second, the handlers in place before are back (a third acts as they do);
    they are restored on exit too.
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set in the main thread
        return
    previous: dict[int, Any] = {}

    def restore() -> None:
        for signum, handler in previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)

    def handler(signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if stop.signum is None:
            stop.signum = signum
            _notice(f"meta-rl: {name} received: stopping after the current update, then saving a checkpoint "
                    f"(now {stop.doing()}). Send {name} again (Ctrl-C) to stop at once.")
            return
        restore()
        raise StopNow(signum, stop.doing())

    for signum in STOP_SIGNALS:
        previous[signum] = signal.signal(signum, handler)
    _FORK_RESETS.append(restore)
    try:
        yield
    finally:
        _FORK_RESETS.remove(restore)
        restore()


def _notice(line: str) -> None:
    """One line on stderr from a signal handler (``os.write``: no buffered stream is re-entered)."""
    with contextlib.suppress(OSError):
        os.write(2, (line + "\n").encode())


class EnvStepTimeout(RuntimeError):
    """An env's ``step`` or ``reset`` ran past ``step_timeout``, or past the time limit (see :class:`StepWatchdog`)."""


class StepWatchdog:
    """Stops a run whose env ``step`` or ``reset`` does not return: past ``step_timeout`` seconds, or
    :data:`TIME_LIMIT_GRACE` seconds past the run's time limit.

    :meth:`watch` makes an env's ``step`` and ``reset`` mark when they start and end (two clock
    reads). A daemon thread looks once a second; when a call has run too long it sends SIGALRM to
    the main thread, whose handler raises :class:`EnvStepTimeout` there: a step blocked in Python
    code, a sleep or a pipe to async workers (which are then abandoned) is interrupted. A step
    spinning in C code that never returns to Python cannot be; ``kill`` ends such a run, and its
    last checkpoint stays whole. Main thread and POSIX only (elsewhere nothing is watched).

    Args:
        step_timeout: seconds a call may take (0: no limit). deadline: the monotonic time of the run's
            time limit, or None. max_minutes: the time limit, for the message.
    """

    def __init__(self, step_timeout: float, deadline: Any = None, max_minutes: float = 0.0) -> None:
        self.step_timeout, self.deadline, self.max_minutes = step_timeout, deadline, max_minutes
        self.started: float | None = None  # monotonic start of the call in progress
        self.call = ""
        self.reason = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._previous: Any = None

    def watch(self, env: Any, name: str) -> None:
        """Time ``env``'s ``step`` and ``reset`` calls (named ``name`` in messages)."""
        for method in ("step", "reset"):
            call = getattr(env, method)

            def timed(*args: Any, _call: Any = call, _what: str = f"{name}.{method}()", **kwargs: Any) -> Any:
                self.call, self.started = _what, time.monotonic()
                try:
                    return _call(*args, **kwargs)
                finally:
                    self.started = None

            setattr(env, method, timed)

    def waiting(self) -> str:
        """The call in progress and for how long (``""``: none)."""
        started = self.started
        return "" if started is None else f"waiting for {self.call} ({time.monotonic() - started:.0f} s so far)"

    def overdue(self, now: float) -> str:
        """Why the call in progress has run too long at ``now`` (``""``: it has not, or none runs)."""
        started = self.started
        if started is None:
            return ""
        if self.step_timeout and now - started > self.step_timeout:
            return (f"{self.call} has not returned after {now - started:.0f} s (step_timeout = {self.step_timeout:g} "
                    "s)")
        if self.deadline is not None and now > self.deadline + TIME_LIMIT_GRACE:
            return (f"{self.call} has not returned {now - self.deadline:.0f} s after the time limit (max_minutes = "
                    f"{self.max_minutes:g})")
        return ""

    def __enter__(self) -> StepWatchdog:
        if (self.step_timeout or self.deadline is not None) and hasattr(signal, "pthread_kill") and (
                threading.current_thread() is threading.main_thread()):
            self._previous = signal.signal(signal.SIGALRM, self._raise)
            self._thread = threading.Thread(target=self._run, args=(threading.main_thread().ident,), daemon=True,
                                            name="meta-rl step watchdog")
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            signal.signal(signal.SIGALRM, signal.SIG_DFL if self._previous is None else self._previous)

    def _run(self, main: int) -> None:
        while not self._stop.wait(1.0):
            reason = self.overdue(time.monotonic())
            if reason:
                self.reason = reason
                signal.pthread_kill(main, signal.SIGALRM)
                self._stop.wait(5.0)  # once: the main thread raises; look again only if it did not

    def _raise(self, signum: int, frame: Any) -> None:
        if self.reason and self.started is not None:
            reason, self.reason = self.reason, ""
            raise EnvStepTimeout(reason)


# The restore functions of the stop handlers installed now: a process forked while one is
# installed gets the handlers that were in place before it, so no worker inherits the trainer's.
_FORK_RESETS: list[Any] = []


def _reset_handlers_in_child() -> None:
    for restore in reversed(_FORK_RESETS):
        with contextlib.suppress(ValueError, OSError):  # ValueError: forked from a thread that is not main
            restore()
    _FORK_RESETS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_handlers_in_child)


class StopPolicy:
    """When a run stops: a signal (:class:`StopRequest`), the time limit, a callback's request (:meth:`ask`), or, with
    several ranks, their agreement.

    With several ranks the loop reads only the agreed decision (:meth:`agree`, once per update),
    never a rank's own signal flag, clock or callbacks, so all ranks leave the loop after the same update.
    """

    def __init__(self, stop: StopRequest, world: World, max_minutes: float) -> None:
        self.request, self.world, self.max_minutes = stop, world, max_minutes
        self.started = time.monotonic()
        self._agreed_signum: int | None = None
        self._time_up = False
        self.asked_by: str | None = None  # the callback (of this rank) that asked the run to end
        self._agreed_ask = False

    def start(self) -> None:
        """Start the clock of ``max_minutes`` (the set-up before the loop does not count)."""
        self.started = time.monotonic()

    def over_time(self) -> bool:
        """This process's clock is past ``max_minutes`` (0: no limit)."""
        return bool(self.max_minutes) and time.monotonic() - self.started >= self.max_minutes * 60

    @property
    def signum(self) -> int | None:
        """The signal that stops the run: the agreed one with several ranks, else this process's."""
        return self._agreed_signum if self.world.enabled else self.request.signum

    def ask(self, by: str) -> None:
        """A callback (named ``by``) asks the run to end normally: after the current update, then the final
        evaluation and checkpoint. With several ranks it takes effect at the next :meth:`agree`."""
        if self.asked_by is None:
            self.asked_by = by

    @property
    def asked(self) -> bool:
        """Whether a callback's request ends the run: the agreed one with several ranks, else this process's."""
        return self._agreed_ask if self.world.enabled else self.asked_by is not None

    def before_update(self) -> bool:
        """Whether to start another update (a single process checks its clock here)."""
        if self.signum is not None or self._time_up or self.asked:
            return False
        return self.world.enabled or not self.over_time()

    def agree(self, device: torch.device) -> None:
        """All ranks share their signals, clocks and callbacks' requests (a no-op for one process)."""
        if self.world.enabled:
            self._agreed_signum, self._time_up, self._agreed_ask = self.world.agree_stop(
                self.request.signum, self.over_time(), self.asked_by is not None, device)

    def ends_training(self) -> bool:
        """After an update's agreement: whether training ends normally here (the final evaluation and checkpoint
        follow): a callback asked, or, for one process, the time is up. Several ranks leave on the time limit at
        the next :meth:`before_update`, after the collective checkpoint."""
        return self.asked or (self.over_time() and not self.world.enabled)

    def interrupts_evaluation(self) -> bool:
        """Asked between evaluation batches: a signal arrived or the time is up (this process's view)."""
        return self.request.signum is not None or self.over_time()

    def final_allowance(self) -> float:
        """Seconds the final held-out evaluation may run past ``max_minutes``: a tenth of it, at least 10 s."""
        return max(FINAL_EVALUATION_MIN_SECONDS, FINAL_EVALUATION_SHARE * 60 * self.max_minutes)

    def interrupts_final_evaluation(self) -> bool:
        """Asked between the final evaluation's batches: a signal, or the time limit plus :meth:`final_allowance`."""
        if self.request.signum is not None:
            return True
        return bool(self.max_minutes) and self.minutes() * 60 >= 60 * self.max_minutes + self.final_allowance()

    def minutes(self) -> float:
        return (time.monotonic() - self.started) / 60

    def cadence(self, points: int) -> TimeCadence:
        """``points`` events evenly over ``max_minutes`` from now (none without a time limit or with several
        ranks, whose clocks differ)."""
        return TimeCadence(0.0 if self.world.enabled else 60 * self.max_minutes / points)

    def budget(self, done: int, total: int, per_second: float) -> int:
        """The step (or update) this run will stop at, from ``total`` and the time limit (:func:`budget_steps`)."""
        return budget_steps(done, total, self.max_minutes, self.minutes(), per_second)


def budget_steps(done: int, total: int, max_minutes: float, minutes: float, per_second: float) -> int:
    """The step (or update) a run will stop at: ``total``, or sooner where ``max_minutes`` comes first,
    projected from the current speed, so that a progress bar's total and ETA follow the budget that stops it.

    Args:
        done: steps so far. total, max_minutes: the run's budgets (0 minutes: none).
        minutes: minutes trained so far. per_second: the current speed, in steps per second.
    """
    if max_minutes and per_second > 0:
        left = max(max_minutes - minutes, 0.0) * 60
        total = min(total, done + int(per_second * left))
    return max(total, done)


def clock_text(minutes: float) -> str:
    """``M:SS.s`` of a duration in minutes (``1:59.9``; the seconds carry into the minutes, never ``1:60.0``)."""
    tenths = round(minutes * 600)
    return f"{tenths // 600}:{tenths % 600 / 10:04.1f}"


def si_count(x: float) -> str:
    """A count with a k / M / G suffix (``1.25M``)."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.2f}{unit}"
    return f"{x:.0f}"


class TimeCadence:
    """Events at fixed times: every ``interval`` seconds from its creation (0: never).

    The times are a fixed schedule, not counted from the last event, so slow updates do not thin it out;
    an event missed by more than an interval is not made up.
    """

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.next = time.monotonic() + interval

    def due(self) -> bool:
        """Whether a scheduled time has passed since the last call that said so."""
        if not self.interval:
            return False
        now = time.monotonic()
        if now < self.next:
            return False
        while self.next <= now:
            self.next += self.interval
        return True


@contextlib.contextmanager
def locked_run_dir(run_dir: Path, resume: bool, world: World, checkpoint_name: str = CHECKPOINT_NAME,
                   command: str = "meta-rl train") -> Iterator[StopRequest]:
    """Hold ``run_dir`` for this run and turn SIGINT/SIGTERM into the :class:`StopRequest` it yields.

    Rank 0 takes the lock and removes the temporary files of a write killed half-way; a fresh run
    refuses a directory that already holds a checkpoint, a resumed one a directory without one
    (before creating anything); a fresh run also refuses a directory holding files a run did not write
    (:func:`check_holds_only_run_files`). A run that created its directory and fails before its first
    checkpoint removes it again, with the config and events it wrote there.
    """
    ckpt_path = run_dir / checkpoint_name
    if resume and not ckpt_path.is_file():
        load_checkpoint(ckpt_path)  # raises "does not exist" (or why it cannot be read)
    created = world.is_main and not run_dir.exists()
    try:
        with run_lock(run_dir) if world.is_main else contextlib.nullcontext():
            if not resume and ckpt_path.exists():
                raise ConfigError(
                    f"run directory {run_dir} already holds a checkpoint; resume it with {command} --resume "
                    f"{run_dir} or choose a new --run-dir."
                )
            if not resume and world.is_main:
                check_holds_only_run_files(run_dir)
            if world.is_main:
                for name in (checkpoint_name, BEST_NAME, CSV_NAME, JSONL_NAME):
                    for leftover in run_dir.glob(f".{name}.*.tmp"):  # from a process killed mid-write
                        with contextlib.suppress(OSError):  # a read-only folder fails later, with a clear error
                            leftover.unlink(missing_ok=True)
            stop = StopRequest()
            with stop_on_signals(stop):
                yield stop
    except BaseException:
        if created:
            _remove_failed_run(run_dir, ckpt_path)
        raise


#: What a run writes in its directory besides the checkpoint: TensorBoard events, the lock, temporary files, the CSV and
#: JSON-lines logs (``log_to``) and the best checkpoint (:class:`meta_rl.callbacks.SaveBestCheckpoint`).
_RUN_FILE = re.compile("|".join([r"events\.out\.tfevents\..+", r"\..+\.tmp",
                                 *(re.escape(n) for n in (LOCK_NAME, CSV_NAME, JSONL_NAME, BEST_NAME))]))

#: Keys every saved config has: a training run's (``meta-rl train``) and a baseline run's (``meta-rl baseline``).
_RUN_CONFIG_KEYS = ({"env_id", "seed", "num_envs"}, {"kind", "meta_batch", "dataset"})


def _written_by_a_run(path: Path) -> bool:
    """Whether ``path`` is a file a meta-rl run writes: events, its lock or temporary files, or a ``config.json``
    holding a run's config (a JSON object with the keys of a training or a baseline config)."""
    if not path.is_file():
        return False
    if _RUN_FILE.fullmatch(path.name):
        return True
    if path.name != CONFIG_NAME:
        return False
    try:
        saved = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(saved, dict) and any(keys <= saved.keys() for keys in _RUN_CONFIG_KEYS)


def check_holds_only_run_files(run_dir: Path) -> None:
    """Refuse to start a fresh run in a folder holding anything a meta-rl run did not write.

    A fresh run writes ``config.json`` and event files: in a folder of the user's own (``--run-dir .`` in a
    project) that would overwrite their ``config.json``. What an earlier attempt left without a checkpoint
    (its config, events, lock) is the run's own and is replaced.

    Raises:
        ConfigError: naming the first files that are not a run's, and the fix.
    """
    if not run_dir.is_dir():
        return
    foreign = sorted(p.name for p in run_dir.iterdir() if not _written_by_a_run(p))
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise ConfigError(
            f"run directory {run_dir} holds files a meta-rl run did not write ({shown}); a run writes "
            f"{CONFIG_NAME}, {CHECKPOINT_NAME}, {BEST_NAME}, TensorBoard events, {CSV_NAME} and {JSONL_NAME} "
            f"there and would overwrite files of the same names. Choose an empty or new --run-dir (e.g. "
            f"{run_dir / 'runs' / 'run1'})."
        )


def check_config_unedited(run_dir: Path, saved: dict[str, Any], current: dict[str, Any],
                          command: str = "meta-rl train") -> None:
    """Refuse to resume a run whose ``config.json`` was edited by hand since its checkpoint.

    A resumed run trains with its checkpoint's config (plus the command line's resumable changes) and
    rewrites ``config.json`` from it, so an edit there would be ignored, then lost. A key counts as
    edited where the file differs both from the checkpoint's config and from the config this resume runs
    (so a file written by an earlier resume with the same command-line changes is not an edit). A missing
    file is rewritten.

    Args:
        run_dir: the run directory. saved: the checkpoint's config. current: the config this resume runs.
        command: the command that resumes, for the message.

    Raises:
        ConfigError: naming the edited keys, or an unreadable ``config.json``, and the fix.
    """
    path = run_dir / CONFIG_NAME
    if not path.exists():
        return
    try:
        on_disk = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"{path} cannot be read as the run's config ({exc}); meta-rl resumes from the "
                          f"checkpoint's config and rewrites {CONFIG_NAME}: delete the file and resume again.") from exc
    if not isinstance(on_disk, dict):
        on_disk = {}
    saved, current = json.loads(json.dumps(saved)), json.loads(json.dumps(current))  # as the file holds them
    keys = dict.fromkeys([*saved, *on_disk])
    edited = [k for k in keys if on_disk.get(k) != saved.get(k) and on_disk.get(k) != current.get(k)]
    if edited:
        diffs = ", ".join(f"{k}: {saved.get(k)!r} in the checkpoint, {on_disk.get(k)!r} in {CONFIG_NAME}"
                          for k in edited)
        raise ConfigError(
            f"{path} was edited since the checkpoint ({diffs}); a resumed run trains with the checkpoint's config, "
            f"so the edit would be ignored, then overwritten. Change a resumable setting on the command line "
            f"({command} --resume {run_dir} key=value), start a new --run-dir for another config, or restore "
            f"{CONFIG_NAME} (delete it: the resume rewrites it)."
        )


def _remove_failed_run(run_dir: Path, ckpt_path: Path) -> None:
    """Remove a folder a run created and failed in before its first checkpoint, with the config and events it
    wrote there (anything else, or a checkpoint, keeps the folder)."""
    with contextlib.suppress(OSError):
        if not ckpt_path.exists():
            for path in run_dir.iterdir():
                if _written_by_a_run(path):
                    path.unlink()
        run_dir.rmdir()


class NullWriter:
    """The SummaryWriter of ranks other than 0: they log nothing."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


class EventWriter:
    """A SummaryWriter whose file-system errors are one clear :class:`WriteError` naming the run directory.

    TensorBoard writes from a background thread and re-raises its errors at a later call; every
    call goes through here so that such an error names the path and the fix, not tensorboard's internals.
    While the writer is open, that thread's own report of the error (a traceback on stderr) is
    left out: the next call raises it.
    """

    def __init__(self, run_dir: Path, purge_step: int, checkpoint_name: str = CHECKPOINT_NAME,
                 resume: str = "meta-rl train --resume") -> None:
        self._run_dir, self._checkpoint_name, self._resume = run_dir, checkpoint_name, resume
        self._previous_hook = threading.excepthook
        threading.excepthook = self._thread_hook
        try:
            self._writer = self._guard(lambda: SummaryWriter(str(run_dir), purge_step=purge_step))
        except BaseException:
            threading.excepthook = self._previous_hook
            raise

    def _thread_hook(self, args: Any) -> None:
        if not (type(args.thread).__name__ == "_AsyncWriterThread" and isinstance(args.exc_value, OSError)):
            self._previous_hook(args)

    def _guard(self, call: Any) -> Any:
        try:
            return call()
        except OSError as exc:
            ckpt = self._run_dir / self._checkpoint_name
            raise write_error(
                "TensorBoard events", self._run_dir / "events.out.tfevents.*", exc,
                kept=f"the last checkpoint {ckpt} is intact" if ckpt.is_file() else "no checkpoint was written yet",
                then=f"resume with {self._resume} {self._run_dir}" if ckpt.is_file() else "start again",
            ) from exc

    def add_hparams_linked(self, hparams: dict[str, Any], metrics: dict[str, float], step: int) -> None:
        """The HParams tab's entry: ``hparams`` beside ``metrics``, whose names are tags already logged, so the tab
        reads their curves (SummaryWriter.add_hparams would copy the values to a second run and group)."""
        file_writer = self._guard(self._writer._get_file_writer)
        for summary in hparams_summary(hparams, metrics):
            self._guard(lambda summary=summary: file_writer.add_summary(summary, step))

    def close(self) -> None:
        try:
            self._guard(self._writer.close)
        finally:
            if threading.excepthook == self._thread_hook:
                threading.excepthook = self._previous_hook

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._writer, name)
        return lambda *args, **kwargs: self._guard(lambda: method(*args, **kwargs))


def after_existing_event_files(run_dir: Path) -> None:
    """Wait (at most a second) until a new event file would sort after every existing one.

    TensorBoard reads a run's event files in name order, and the name starts with the creation
    time in whole seconds; a restart within the same second as an earlier writer could sort
    first, and its purge of the earlier attempt's events would then not apply.
    """
    stamps = [int(m.group(1)) for f in run_dir.glob("events.out.tfevents.*")
              if (m := re.match(r"events\.out\.tfevents\.(\d+)\.", f.name))]
    if stamps and max(stamps) >= int(time.time()):
        time.sleep(min(max(stamps) + 1 - time.time(), 1.1))  # capped: a clock set back waits no longer


