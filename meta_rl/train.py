"""Training: REINFORCE with TD(λ)-learned advantages for a recurrent meta-policy, batched over B tasks.

Reads top to bottom: build the env and the policy, (resume,) then loop: collect a rollout of
B tasks, update, log, evaluate on held-out tasks, checkpoint.

Faults lose nothing: one process per run directory (a lock file), SIGINT/SIGTERM stop at the
end of the current update with a checkpoint (:class:`TrainingInterrupted`), a NaN or inf in a
loss, gradient or parameter stops the run before it is saved (:class:`NonFiniteError`) or skips
the update (``skip_nonfinite_updates``), and checkpoints are atomic and checksummed.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import json
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gymnasium as gym
import torch
from gymnasium.vector import VectorEnv
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

from meta_rl.atomic import write_atomic, write_error
from meta_rl.checkpoint import CheckpointError, load_checkpoint, load_state, save_checkpoint
from meta_rl.config import ConfigError, TrainConfig, resolve_device
from meta_rl.distributed import World, param_digest, rank_seed, setup, teardown
from meta_rl.evaluation import MAX_INSTANCE, EvaluationStopped, accuracy_by_instance, evaluate
from meta_rl.monitoring import accuracy_figure, episode_strip
from meta_rl.policy import MetaPolicy
from meta_rl.resources import check_fits, check_threads, estimate_training_memory
from meta_rl.returns import explained_variance, gae, normalize, reinforce_losses
from meta_rl.rollout import Rollout, collect
from meta_rl.runlock import run_lock

__all__ = [
    "CHECKPOINT_NAME",
    "TRUSTED_ENV_MODULES",
    "NonFiniteError",
    "TrainingInterrupted",
    "build_policy",
    "make_vec_env",
    "reinforce_update",
    "resolve_device",
    "train",
    "untrusted_modules",
]

CHECKPOINT_NAME = "checkpoint.pt"
# Keys that may differ between a run and its resumption: how long it runs, not what it learns.
RESUMABLE_KEYS = ("total_env_steps", "max_minutes", "device", "torch_threads", "skip_nonfinite_updates")
HELDOUT_SEED = 1_000_000
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# Quantities checked for NaN/inf every update, besides the parameters.
GUARDED = ("loss/policy", "loss/value", "policy/entropy", "policy/grad_norm")


class TrainingInterrupted(Exception):
    """SIGINT or SIGTERM stopped training at the end of an update, after a checkpoint was written.

    Attributes:
        signum: the signal. exit_code: ``128 + signum`` (130 for SIGINT, 143 for SIGTERM).
        run_dir, update, env_steps: where the run stopped; ``meta-rl train --resume run_dir`` continues it.
    """

    def __init__(self, signum: int, run_dir: Path, update: int, env_steps: int) -> None:
        self.signum, self.run_dir, self.update, self.env_steps = signum, run_dir, update, env_steps
        super().__init__(
            f"training interrupted by {signal.Signals(signum).name} after update {update} (env step {env_steps}); "
            f"checkpoint saved to {run_dir / CHECKPOINT_NAME}. Resume with: meta-rl train --resume {run_dir}"
        )

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class NonFiniteError(FloatingPointError):
    """A loss, gradient or parameter became NaN or inf; the bad state was not checkpointed."""

    def __init__(self, message: str, quantity: str, update: int, env_steps: int) -> None:
        super().__init__(message)
        self.quantity, self.update, self.env_steps = quantity, update, env_steps


def make_vec_env(cfg: TrainConfig, split: str, num_envs: int, device: torch.device) -> VectorEnv:
    """Build ``cfg.env_id`` as a torch-native VectorEnv on ``device`` with ``num_envs`` tasks.

    ``cfg.env_module`` is imported first so that it can register the id. ``split`` and
    ``device`` are passed where the env's constructor takes them.
    """
    if cfg.env_module:
        try:
            importlib.import_module(cfg.env_module)
        except ImportError as exc:
            raise ConfigError(
                f"env_module = {cfg.env_module!r} cannot be imported ({exc}); fix the module name."
            ) from exc
    try:
        spec = gym.spec(cfg.env_id)
    except gym.error.Error as exc:
        raise ConfigError(f"env_id = {cfg.env_id!r} is not registered ({exc}); check env_id and env_module.") from exc
    if spec.vector_entry_point is None:
        raise ConfigError(
            f"env {cfg.env_id!r} has no vector_entry_point: the trainer needs a torch-native VectorEnv. "
            "Register one with gymnasium.register(..., vector_entry_point=...)."
        )
    entry = spec.vector_entry_point
    creator: Any = gym.envs.registration.load_env_creator(entry) if isinstance(entry, str) else entry
    accepted = inspect.signature(creator).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values()):
        allowed = sorted(k for k in accepted if k not in ("self", "num_envs"))
        unknown = sorted(set(cfg.env_kwargs) - set(allowed))
        if unknown:
            raise ConfigError(
                f"env_kwargs {unknown} are not arguments of {cfg.env_id!r}; allowed keys are: {', '.join(allowed)}"
                + (" (set num_envs as a top-level key)." if "num_envs" in unknown else ".")
            )
    kwargs = dict(cfg.env_kwargs)
    if "split" in accepted:
        kwargs.setdefault("split", split)
    if "device" in accepted:
        kwargs.setdefault("device", device)
    try:
        env = gym.make_vec(cfg.env_id, num_envs=num_envs, vectorization_mode="vector_entry_point", **kwargs)
    except (ValueError, TypeError, gym.error.Error) as exc:  # the env's own checks: n_way, dataset, split, ...
        raise ConfigError(
            f"cannot create env {cfg.env_id!r} for split {split!r} with env_kwargs {cfg.env_kwargs}: {exc}"
        ) from exc
    return env


def build_policy(cfg: TrainConfig, env: VectorEnv, steps: int) -> MetaPolicy:
    return MetaPolicy(
        env.single_observation_space,
        env.single_action_space,
        encoder=cfg.encoder,
        core=cfg.core,
        hidden=cfg.hidden,
        encoder_hidden=cfg.encoder_hidden,
        conv_filters=cfg.conv_filters,
        conv_norm=cfg.conv_norm,
        key_dim=cfg.key_dim,
        memory_capacity=cfg.memory_capacity or steps,
        read_gain=cfg.read_gain,
        taken_gain=cfg.taken_gain,
    )


def reinforce_update(
    policy: MetaPolicy, optimizer: torch.optim.Optimizer, ro: Rollout, cfg: TrainConfig, *, world: World | None = None
) -> dict[str, torch.Tensor]:
    """One REINFORCE step on a rollout: GAE(λ) advantages from the critic, TD(λ) critic targets."""
    stats = reinforce_gradients(policy, optimizer, ro, cfg, world=world)
    optimizer.step()
    return stats


def reinforce_gradients(
    policy: MetaPolicy, optimizer: torch.optim.Optimizer, ro: Rollout, cfg: TrainConfig, *, world: World | None = None
) -> dict[str, torch.Tensor]:
    """The gradients of :func:`reinforce_update` (clipped, in ``.grad``) without the optimizer step.

    With a ``world`` of several ranks the gradients are averaged over the ranks after ``backward``
    and before clipping (see :mod:`meta_rl.distributed` for why not DDP), so every rank clips and
    steps with the same gradient, that of the mean loss over all ranks' tasks. The returned losses
    are this rank's own.
    """
    steps, batch = ro.rewards.shape
    embed = ro.embed if ro.embed is not None else policy.encode(ro.main, (steps, batch))  # (T, B, E)
    context = policy.context(ro.extras, ro.prev_actions, ro.prev_rewards, ro.starts)  # (T, B, U)
    params, values, _ = policy(embed, context, ro.starts, ro.state0, need_state=False)  # (T, B, A), (T, B)
    advantages, returns = gae(ro.rewards, values.detach(), ro.dones.float(), ro.last_value, cfg.gamma, cfg.gae_lambda)
    log_probs = policy.log_prob(params, ro.actions)  # (T, B)
    entropy = policy.entropy(params)  # (T, B)
    adv = normalize(advantages) if cfg.normalize_advantages else advantages
    losses = reinforce_losses(log_probs, entropy, values, adv, returns)
    loss = losses["policy"] + cfg.value_coef * losses["value"] - cfg.entropy_coef * losses["entropy"]
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if world is not None:
        world.average_gradients(list(policy.parameters()))
    grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
    return {
        "loss/policy": losses["policy"].detach(),
        "loss/value": losses["value"].detach(),
        "loss/total": loss.detach(),
        "policy/entropy": losses["entropy"].detach(),
        "policy/grad_norm": grad_norm.detach(),
        "critic/explained_variance": explained_variance(values.detach(), returns),
        "charts/return": ro.rewards.sum(0).mean(),
    }


def _task_seed(seed: int, update: int) -> int:
    return (seed * 1_000_003 + update) % (2**31 - 1)


def _check_resumable(saved: dict[str, Any], cfg: TrainConfig, path: Path) -> None:
    changed = [k for k, v in cfg.to_dict().items() if k not in RESUMABLE_KEYS and saved.get(k) != v]
    if changed:
        diffs = ", ".join(f"{k}: {saved.get(k)!r} -> {getattr(cfg, k)!r}" for k in changed)
        raise CheckpointError(
            f"checkpoint {path} was trained with another config ({diffs}); resume with the saved config "
            f"(only {', '.join(RESUMABLE_KEYS)} may change) or start a new run directory."
        )


#: Env modules that may be imported because a saved config names them: the package's own.
TRUSTED_ENV_MODULES = ("", "meta_rl.envs")


def untrusted_modules(cfg: TrainConfig) -> list[str]:
    """The modules building ``cfg``'s env would import that are neither meta-rl's nor already imported.

    Those are ``env_module`` and the ``module:`` prefix of an ``env_id`` (which gymnasium imports).
    """
    named = [cfg.env_module]
    if ":" in cfg.env_id:
        named.append(cfg.env_id.split(":", 1)[0])
    return [m for m in dict.fromkeys(named) if m not in TRUSTED_ENV_MODULES and m not in sys.modules]


def load_run_config(run_dir: str | Path, *, env_module: str | None = None,
                    flag: str = "--env-module") -> TrainConfig:
    """The config a run directory's checkpoint was trained with, safe to build an env from.

    A checkpoint is data and must not decide what code runs: a plug-in module it names is imported
    only when the caller names the same module (``env_module``, the user's ``--env-module``).

    Args:
        run_dir: a run directory written by :func:`train`.
        env_module: the module the user trusts for this run's env; replaces the saved ``env_module``.
        flag: how the user names it, for the error message.

    Raises:
        CheckpointError: the checkpoint is missing or damaged.
        ConfigError: the run's env needs a module the user did not name.
    """
    path = Path(run_dir) / CHECKPOINT_NAME
    saved = dict(load_checkpoint(path)["config"])
    if env_module is not None:
        saved["env_module"] = env_module
    cfg = TrainConfig.from_dict(saved, source=str(path))
    untrusted = [m for m in untrusted_modules(cfg) if m != env_module]
    if untrusted:
        names = ", ".join(repr(m) for m in untrusted)
        raise ConfigError(
            f"run {run_dir} needs module {names} for its env ({cfg.env_id!r}); meta-rl does not import a module "
            f"because a checkpoint names it (a checkpoint could name any code). If you trust it, name it yourself: "
            f"{flag} {untrusted[0]}."
        )
    return cfg


class _StopRequest:
    """Set by the signal handler; read by the loop at its safe point."""

    signum: int | None = None


@contextlib.contextmanager
def _stop_on_signals(stop: _StopRequest) -> Iterator[None]:
    """Turn SIGINT/SIGTERM into a stop request for the duration of the block (main thread only).

    The first signal asks the loop to stop after the current update; the previous handlers are
    put back at once, so a second signal acts immediately (the checkpoint on disk stays whole:
    writes are atomic). The handlers in place before are restored on exit.
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set in the main thread
        return
    previous: dict[int, Any] = {}

    def restore() -> None:
        for signum, handler in previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)

    def handler(signum: int, frame: Any) -> None:
        if stop.signum is None:
            stop.signum = signum
        restore()

    for signum in STOP_SIGNALS:
        previous[signum] = signal.signal(signum, handler)
    _FORK_RESETS.append(restore)
    try:
        yield
    finally:
        _FORK_RESETS.remove(restore)
        restore()


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


def _check_every_update(device: torch.device, cfg: TrainConfig) -> bool:
    """Whether the NaN/inf check reads its verdict to the host every update.

    On the CPU that read costs nothing, so every update is checked before the optimizer steps.
    On an accelerator it would be a host sync per update: the verdict then stays on the device
    and is read at the next log or checkpoint (both sync anyway), unless updates are to be skipped,
    which needs the verdict before the step.
    """
    return device.type == "cpu" or cfg.skip_nonfinite_updates


def _finite_flags(policy: MetaPolicy, stats: dict[str, torch.Tensor]) -> torch.Tensor:
    """bool (len(GUARDED) + 1,) on the device: each guarded quantity, then all parameters, is finite."""
    params = torch.stack([torch.isfinite(p).all() for p in policy.parameters()]).all()
    return torch.stack([*(torch.isfinite(stats[k]).all() for k in GUARDED), params])


def _first_bad(t: torch.Tensor) -> str:
    bad = t.detach()[~torch.isfinite(t.detach())]
    return str(float(bad[0])) if bad.numel() else "nan or inf"


def _diagnose(policy: MetaPolicy, stats: dict[str, torch.Tensor] | None, flags: torch.Tensor | None) -> tuple[str, str]:
    """Name the first non-finite quantity and its value (only on the failure path: it reads the host).

    ``stats`` None and ``flags`` given: a deferred verdict, named from the flags of that update
    (the parameters have moved on since). Both None: only the parameters are examined.
    """
    if stats is None and flags is not None:
        bad = [name for name, ok in zip((*GUARDED, "parameters"), flags.tolist()) if not ok]
        return " and ".join(bad) or "a guarded quantity", "nan or inf"
    for name, p in policy.named_parameters():
        if not bool(torch.isfinite(p).all()):
            return f"parameter {name}", _first_bad(p)
    if stats is not None:
        for key in GUARDED[:-1]:
            if not bool(torch.isfinite(stats[key]).all()):
                return key, _first_bad(stats[key])
        for name, p in policy.named_parameters():
            if p.grad is not None and not bool(torch.isfinite(p.grad).all()):
                return f"gradient of {name}", _first_bad(p.grad)
        if not bool(torch.isfinite(stats["policy/grad_norm"]).all()):
            return "policy/grad_norm", _first_bad(stats["policy/grad_norm"])
    return "a guarded quantity", "nan or inf"


def train(cfg: TrainConfig, run_dir: str | Path, *, resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Train ``cfg`` writing TensorBoard logs and checkpoints to ``run_dir``; returns final figures.

    With ``resume`` the run continues from ``run_dir/checkpoint.pt``: parameters, optimizer,
    counters and RNG states, so on CPU it ends exactly where an uninterrupted run would.

    Raises:
        ConfigError: a bad setting, or ``run_dir`` already holds a run (RunLockedError: one that is running).
        CheckpointError: the checkpoint to resume is missing, damaged or from another config;
            CheckpointWriteError: a checkpoint could not be written (e.g. disk full).
        TrainingInterrupted: SIGINT/SIGTERM stopped the run after checkpointing it.
        NonFiniteError: a loss, gradient or parameter became NaN or inf (nothing bad was saved).
    """
    cfg.validate()
    run_dir = Path(run_dir)
    ckpt_path = run_dir / CHECKPOINT_NAME
    if resume and not ckpt_path.is_file():
        load_checkpoint(ckpt_path)  # raises "does not exist" without creating the directory
    # Under torchrun (WORLD_SIZE > 1) join the process group. Every rank makes the same read-only
    # checks of run_dir, so a bad invocation fails on all ranks alike; only rank 0 holds the lock
    # and writes there. A rank that fails alone (say rank 0 finds the directory locked) ends its
    # process, and torchrun then stops the other ranks.
    world, device, owns_group = setup(resolve_device(cfg.device))
    try:
        return _train_locked(cfg, run_dir, resume, progress, world, device)
    finally:
        teardown(owns_group)


def _train_locked(
    cfg: TrainConfig, run_dir: Path, resume: bool, progress: bool, world: World, device: torch.device
) -> dict[str, Any]:
    ckpt_path = run_dir / CHECKPOINT_NAME
    created = world.is_main and not run_dir.exists()
    try:
        with run_lock(run_dir) if world.is_main else contextlib.nullcontext():
            if not resume and ckpt_path.exists():
                raise ConfigError(
                    f"run directory {run_dir} already holds a checkpoint; resume it with --resume {run_dir} "
                    "or choose a new --run-dir."
                )
            if world.is_main:
                for leftover in run_dir.glob(f".{CHECKPOINT_NAME}.*.tmp"):  # from a process killed mid-write
                    with contextlib.suppress(OSError):  # a read-only folder fails below, with a clear error
                        leftover.unlink(missing_ok=True)
            stop = _StopRequest()
            with _stop_on_signals(stop):
                return _train(cfg, run_dir, resume, progress, stop, world, device)
    except BaseException:
        if created:  # a run that failed before writing anything leaves no empty folder behind
            with contextlib.suppress(OSError):
                run_dir.rmdir()
        raise


class _NullWriter:
    """The SummaryWriter of ranks other than 0: they log nothing."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


class _EventWriter:
    """A SummaryWriter whose file-system errors are one clear :class:`WriteError` naming the run directory.

    TensorBoard writes from a background thread and re-raises its errors at a later call; every
    call goes through here so that such an error names the path and the fix, not tensorboard's internals.
    While the writer is open, that thread's own report of the error (a traceback on stderr) is
    left out: the next call raises it.
    """

    def __init__(self, run_dir: Path, purge_step: int) -> None:
        self._run_dir = run_dir
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
            ckpt = self._run_dir / CHECKPOINT_NAME
            raise write_error(
                "TensorBoard events", self._run_dir / "events.out.tfevents.*", exc,
                kept=f"the last checkpoint {ckpt} is intact" if ckpt.is_file() else "no checkpoint was written yet",
                then=f"resume with meta-rl train --resume {self._run_dir}" if ckpt.is_file() else "start again",
            ) from exc

    def close(self) -> None:
        try:
            self._guard(self._writer.close)
        finally:
            if threading.excepthook == self._thread_hook:
                threading.excepthook = self._previous_hook

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._writer, name)
        return lambda *args, **kwargs: self._guard(lambda: method(*args, **kwargs))


def _train(
    cfg: TrainConfig, run_dir: Path, resume: bool, progress: bool, stop: _StopRequest, world: World,
    device: torch.device,
) -> dict[str, Any]:
    ckpt_path = run_dir / CHECKPOINT_NAME
    # Rank r runs its own tasks and actions from rank_seed(seed, r); rank 0's stream is the
    # single-process one. The initial parameters come from the seed itself on every rank (and are
    # broadcast from rank 0 below to be safe).
    seed = rank_seed(cfg.seed, world.rank)
    per_update = cfg.num_envs * world.size  # tasks per update over all ranks
    check_threads(cfg.torch_threads, ConfigError)
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)

    # --- env and policy -------------------------------------------------------------------
    # A one-task probe of the env gives the spaces and the task length, from which the memory the
    # config needs is estimated before anything of size B is allocated.
    probe = make_vec_env(cfg, cfg.train_split, 1, device)
    steps = cfg.rollout_steps or int(getattr(probe, "episode_length", 0))
    if steps < 1:
        raise ConfigError(f"env {cfg.env_id!r} has no episode_length; set rollout_steps to the length of a task.")
    eval_envs = min(cfg.eval_episodes, 256) if cfg.eval_every and cfg.eval_episodes and world.is_main else 0
    estimate = estimate_training_memory(lambda: build_policy(cfg, probe, steps), probe.single_observation_space,
                                        steps, cfg.num_envs, eval_envs, cfg.eval_episodes)
    probe.close()
    check_fits(estimate, device, ConfigError)
    env = make_vec_env(cfg, cfg.train_split, cfg.num_envs, device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        policy = build_policy(cfg, env, steps).to(device)
    optimizer = torch.optim.Adam(policy.parameters(), lr=cfg.learning_rate)
    generator = torch.Generator(device=device).manual_seed(seed)
    update, env_steps, skipped = 0, 0, 0
    saved_update: int | None = None  # the update of the checkpoint on disk

    if resume:
        ckpt = load_checkpoint(ckpt_path, map_location=device)
        _check_resumable(ckpt["config"], cfg, ckpt_path)
        load_state(policy, ckpt["policy"], ckpt_path, "policy")
        load_state(optimizer, ckpt["optimizer"], ckpt_path, "optimizer")
        try:
            # Rank r's action generator: its own state, gathered into the checkpoint by rank 0. A run
            # resumed on more ranks than it was saved from derives the new ranks' generators from
            # (seed, rank, update): deterministic, though not the stream an unbroken run would draw.
            by_rank = ckpt["rng"].get("actions_by_rank") or [ckpt["rng"]["actions"]]
            if world.rank < len(by_rank):
                generator.set_state(by_rank[world.rank].cpu())  # generator states live on the host
            else:
                generator.manual_seed(_task_seed(seed, int(ckpt["counters"]["update"])))
            update, env_steps = int(ckpt["counters"]["update"]), int(ckpt["counters"]["env_steps"])
            skipped = int(ckpt.get("faults", {}).get("skipped_updates", 0))
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as exc:
            raise CheckpointError(
                f"checkpoint {ckpt_path} has malformed counters or RNG state ({type(exc).__name__}: {exc}); it is "
                "damaged: restore it from a backup or start a new run."
            ) from exc
        saved_update = update
    world.broadcast_module(policy)
    # purge_step: TensorBoard hides every event from an earlier attempt at a step >= purge_step. A
    # resumed run keeps what was logged up to its checkpoint (steps <= env_steps) and drops what a
    # killed process logged after it; a fresh run drops anything left by an attempt that never
    # checkpointed.
    # Only rank 0 writes to run_dir (config, TensorBoard, checkpoints) and runs the held-out evaluation.
    writer: Any = _NullWriter()
    if world.is_main:
        write_atomic(run_dir / "config.json", json.dumps(cfg.to_dict(), indent=2).encode(), what="config")
        _after_existing_event_files(run_dir)
        writer = _EventWriter(run_dir, purge_step=env_steps + 1 if resume else 0)
        if not resume:
            writer.add_text("config", "```\n" + json.dumps(cfg.to_dict(), indent=2) + "\n```", 0)

    heldout_env = None
    if eval_envs:
        heldout_env = make_vec_env(cfg, cfg.heldout_split, eval_envs, device)

    eager = _check_every_update(device, cfg)
    # Deferred verdict (accelerators): the first update whose check failed (-1: none) and its flags.
    first_bad = torch.full((), -1, dtype=torch.int64, device=device)
    first_flags = torch.ones(len(GUARDED) + 1, dtype=torch.bool, device=device)

    def nonfinite(quantity: str, value: str, at_update: int) -> NonFiniteError:
        at_steps = at_update * steps * per_update
        kept = (f"the last good checkpoint {ckpt_path} (update {saved_update}) is intact" if saved_update is not None
                else "no checkpoint had been written yet")
        return NonFiniteError(
            f"{quantity} is {value} at update {at_update} (env step {at_steps}); training stopped and {kept}: "
            "the bad state was not saved. Lower learning_rate or max_grad_norm, check the env's rewards, or set "
            "skip_nonfinite_updates=true to skip such updates.",
            quantity, at_update, at_steps,
        )

    def check_deferred() -> None:
        if eager:
            return
        bad_update = int(first_bad)  # a host read, done only where the loop syncs anyway
        if bad_update >= 0:
            quantity, value = _diagnose(policy, None, first_flags)
            raise nonfinite(quantity, value, bad_update)

    def checkpoint() -> None:
        # Called at the same updates on every rank: the checks and gathers below are collective
        # or agree by construction (identical parameters, all-reduced finite flags).
        nonlocal saved_update
        check_deferred()
        if not bool(torch.stack([torch.isfinite(p).all() for p in policy.parameters()]).all()):
            quantity, value = _diagnose(policy, None, None)
            raise nonfinite(quantity, value, update)
        world.average_float_buffers(policy)  # BatchNorm statistics, the only per-rank state in the policy
        rng_by_rank = world.gather(generator.get_state())
        digests = world.gather(param_digest(policy)) if world.enabled else []
        if not world.is_main:
            saved_update = update
            return
        if len(set(digests)) > 1:
            print(f"meta-rl: warning: parameters differ between ranks at update {update}: {digests}", file=sys.stderr)
        payload: dict[str, Any] = {
            "config": cfg.to_dict(),
            "policy": policy.state_dict(),
            "optimizer": optimizer.state_dict(),
            "counters": {"update": update, "env_steps": env_steps},
            "rng": {"actions": generator.get_state()},
        }
        if cfg.skip_nonfinite_updates:
            payload["faults"] = {"skipped_updates": skipped}
        if world.enabled:
            payload["rng"]["actions_by_rank"] = rng_by_rank
            payload["distributed"] = {"world_size": world.size, "param_digests": digests}
        save_checkpoint(ckpt_path, payload)
        saved_update = update

    def over_time() -> bool:
        return bool(cfg.max_minutes) and time.monotonic() - started >= cfg.max_minutes * 60

    def held_out_eval(log: bool = True) -> dict[str, float] | None:
        """The held-out evaluation, or None if a signal or the time limit stopped it (nothing is logged)."""
        assert heldout_env is not None
        try:
            res = evaluate(heldout_env, policy, cfg.eval_episodes, seed=HELDOUT_SEED, steps=steps,
                           should_stop=lambda: stop.signum is not None or over_time())
        except EvaluationStopped as exc:
            why = "a signal" if stop.signum is not None else f"the time limit (max_minutes = {cfg.max_minutes})"
            print(f"meta-rl: held-out evaluation at env step {env_steps} stopped by {why} after {exc.batches_done} "
                  f"of {exc.batches} batches; not logged (run meta-rl eval {run_dir} for it).", file=sys.stderr)
            return None
        if log:
            for k, acc in enumerate(res.accuracy_by_instance, start=1):
                writer.add_scalar(f"heldout/accuracy_instance_{k}", acc, env_steps)
            writer.add_scalar("heldout/accuracy", res.accuracy, env_steps)
            writer.add_figure("heldout/accuracy_by_instance", accuracy_figure(
                {"held-out": (res.accuracy_by_instance, res.ci95)}), env_steps)
        return {f"heldout/accuracy_instance_{k}": a for k, a in enumerate(res.accuracy_by_instance, start=1)}

    # --- loop -----------------------------------------------------------------------------
    hits = torch.zeros(MAX_INSTANCE, device=device)
    counts = torch.zeros(MAX_INSTANCE, device=device)
    sums: dict[str, torch.Tensor] = {}
    summed = 0  # updates in sums (skipped ones are left out)
    started = time.monotonic()
    last_log_time, last_log_steps = started, env_steps
    final: dict[str, float] = {}
    evaluated_at: int | None = None  # env step of the last held-out evaluation
    first_update = update
    bar = tqdm(total=cfg.total_env_steps, initial=env_steps, unit="step", unit_scale=True,
               disable=not progress or not world.is_main, mininterval=2.0)
    ro: Rollout | None = None
    # With several ranks the loop reads only the agreed stop decision (agree_stop, once per update),
    # never a rank's own signal flag or clock, so all ranks leave the loop after the same update.
    agreed_signum: int | None = None
    time_up = False
    eval_stopped = False  # a held-out evaluation was cut short: the run is out of time or signalled

    def stop_signum() -> int | None:
        return agreed_signum if world.enabled else stop.signum

    policy.train()
    try:
        while env_steps < cfg.total_env_steps and stop_signum() is None and not time_up:
            if not world.enabled and over_time():
                break
            ro = collect(env, policy, steps, generator, reset_seed=_task_seed(seed, update), embed_with_grad=True)
            stats = reinforce_gradients(policy, optimizer, ro, cfg, world=world)
            # A non-finite loss on any rank poisons the averaged gradient: agree on the verdict.
            flags = world.all_min(_finite_flags(policy, stats))
            good = True
            if eager:
                if not bool(flags.all()):  # the one host read per update (free on the CPU)
                    quantity, value = _diagnose(policy, stats, flags)
                    if not cfg.skip_nonfinite_updates or quantity.startswith("parameter"):
                        raise nonfinite(quantity, value, update + 1)
                    optimizer.zero_grad(set_to_none=True)  # skip: no step, Adam's state untouched
                    skipped += 1
                    good = False
            else:
                newly = (first_bad < 0) & ~flags.all()
                first_bad = torch.where(newly, update + 1, first_bad)
                first_flags = torch.where(newly, flags, first_flags)
            if good:
                optimizer.step()
                for key, value_t in stats.items():
                    sums[key] = sums.get(key, torch.zeros((), device=device)) + value_t
                summed += 1
            h, c = accuracy_by_instance(ro.correct(), ro.instance)  # (B, K) each
            hits += h.sum(0)
            counts += c.sum(0)
            update += 1
            env_steps += steps * per_update
            bar.update(steps * per_update)

            if update % cfg.log_every == 0:
                check_deferred()
                now = time.monotonic()
                if world.enabled and sums:  # the mean over ranks of each rank's mean
                    keys = list(sums)
                    reduced = world.all_sum(torch.stack([sums[k] for k in keys])) / world.size
                    sums = dict(zip(keys, reduced.unbind()))
                if world.enabled:
                    hits.copy_(world.all_sum(hits))
                    counts.copy_(world.all_sum(counts))
                means = {k: float(v) / summed for k, v in sums.items()}
                for key, mean in means.items():
                    writer.add_scalar(key, mean, env_steps)
                if cfg.skip_nonfinite_updates:
                    writer.add_scalar("faults/skipped_updates", skipped, env_steps)
                accuracy = (hits / counts.clamp_min(1)).tolist()
                for k, acc in enumerate(accuracy, start=1):
                    if counts[k - 1] > 0:
                        writer.add_scalar(f"train/accuracy_instance_{k}", acc, env_steps)
                writer.add_scalar("charts/steps_per_second",
                                  (env_steps - last_log_steps) / max(now - last_log_time, 1e-9), env_steps)
                overall = float(hits.sum() / counts.sum().clamp_min(1))
                if "charts/return" in means:
                    bar.set_postfix(ret=f"{means['charts/return']:.1f}", acc=f"{overall:.2f}")
                hits.zero_()
                counts.zero_()
                sums.clear()
                summed = 0
                last_log_time, last_log_steps = now, env_steps
            if world.enabled:
                agreed_signum, time_up = world.agree_stop(stop.signum, over_time(), device)
            if stop_signum() is not None:
                break  # the safe point: this update is complete; checkpoint below, skip the evaluation
            if heldout_env is not None and update % cfg.eval_every == 0:
                scores = held_out_eval()
                if scores is not None:
                    final, evaluated_at = scores, env_steps
                    _log_strip(writer, ro, env_steps)
                else:
                    # Stopped by a signal or the time limit. One process leaves now (checkpoint
                    # below); several ranks go on to the collective checkpoint and leave together
                    # after the next update's agree_stop.
                    eval_stopped = True
                    if not world.enabled:
                        break
            # The last update's checkpoint is written after the final evaluation (below), so a kill
            # during that evaluation resumes before it and logs it once.
            if update % cfg.checkpoint_every == 0 and env_steps < cfg.total_env_steps:
                checkpoint()
        bar.close()
        signum = stop_signum()
        if signum is not None:
            checkpoint()
            raise TrainingInterrupted(signum, run_dir, update, env_steps)
        trained = update > first_update
        if heldout_env is not None and evaluated_at != env_steps and not eval_stopped:
            # A resumed run with nothing left to do evaluates without logging again.
            scores = held_out_eval(log=trained)
            if scores is not None:
                final = scores
                if ro is not None:
                    _log_strip(writer, ro, env_steps)
        if trained and world.is_main:
            hparams = {k: (v if isinstance(v, (int, float, str, bool)) else json.dumps(v))
                       for k, v in cfg.to_dict().items()}
            writer.add_hparams(hparams, {f"hparam/{k.split('/')[-1]}": v for k, v in final.items()}
                               or {"hparam/none": 0.0}, run_name=".", global_step=env_steps)
        writer.flush()
        checkpoint()
        if stop.signum is not None:  # during the final evaluation: the run is complete and saved
            raise TrainingInterrupted(stop.signum, run_dir, update, env_steps)
    except BaseException:
        bar.close()
        with contextlib.suppress(OSError):  # the error in flight says what went wrong, not this one
            writer.close()
        raise
    bar.close()
    writer.close()
    result: dict[str, Any] = {"updates": update, "env_steps": env_steps, "minutes": (time.monotonic() - started) / 60}
    if cfg.skip_nonfinite_updates:
        result["skipped_updates"] = skipped
    return {**result, **final}


def _after_existing_event_files(run_dir: Path) -> None:
    """Wait (at most a second) until a new event file would sort after every existing one.

    TensorBoard reads a run's event files in name order, and the name starts with the creation
    time in whole seconds; a restart within the same second as an earlier writer could sort
    first, and its purge of the earlier attempt's events would then not apply.
    """
    stamps = [int(m.group(1)) for f in run_dir.glob("events.out.tfevents.*")
              if (m := re.match(r"events\.out\.tfevents\.(\d+)\.", f.name))]
    if stamps and max(stamps) >= int(time.time()):
        time.sleep(min(max(stamps) + 1 - time.time(), 1.1))  # capped: a clock set back waits no longer


def _log_strip(writer: Any, ro: Rollout, env_steps: int) -> None:
    """Log the first task of a rollout as a strip of its images with the true and chosen labels."""
    if ro.main is None or ro.main.ndim != 5 or not bool((ro.labels[:, 0] >= 0).all()):
        return
    writer.add_image("episode/strip", episode_strip(ro.main[:, 0], ro.labels[:, 0], ro.actions[:, 0]), env_steps)


if __name__ == "__main__":  # pragma: no cover - ``python -m meta_rl.train ARGS`` = ``meta-rl train ARGS``
    # The entry point for torchrun: torchrun --standalone --nproc-per-node K -m meta_rl.train ARGS
    from meta_rl.cli import main as _cli_main

    sys.exit(_cli_main(["train", *sys.argv[1:]]))
