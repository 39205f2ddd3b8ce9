"""Training: REINFORCE with TD(λ)-learned advantages for a recurrent meta-policy, batched over B tasks.

:class:`Trainer` is the run as named phases: build the env and the policy, (resume,) then loop:
collect a rollout of B tasks, update (through the NaN guard), log, evaluate on held-out tasks,
checkpoint. The run's directory, lock, signals and time limit are :mod:`meta_rl.lifecycle`'s.

Faults lose nothing: one process per run directory (a lock file), SIGINT/SIGTERM stop at the
end of the current update with a checkpoint (:class:`TrainingInterrupted`), a NaN or inf in a
loss, gradient or parameter stops the run before it is saved (:class:`NonFiniteError`) or skips
the update (``skip_nonfinite_updates``), and checkpoints are atomic and checksummed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from gymnasium.vector import VectorEnv
from tqdm.auto import tqdm

from meta_rl.algorithms import Algorithm, LossFn, compile_failures, compile_loss, make_algorithm
from meta_rl.atomic import write_atomic
from meta_rl.callbacks import Callback, RunView, check_callbacks, run_hook
from meta_rl.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_state,
    malformed_state,
    read_counters,
    read_dataset,
    save_checkpoint,
)
from meta_rl.config import ConfigError, ModelConfig, TrainConfig, check_cuda_graphs, resolve_device
from meta_rl.distributed import World, param_digest, rank_seed, setup, teardown
from meta_rl.env_contract import check_same_dataset, dataset_record, task_length
from meta_rl.env_factory import make_vec_env
from meta_rl.evaluation import (
    HELDOUT_SEED,
    REFERENCE_ROWS,
    EvalResult,
    EvaluationStopped,
    evaluate_task,
)
from meta_rl.lifecycle import (
    CHECKPOINT_NAME,
    CONFIG_NAME,
    EnvStepTimeout,
    EventWriter,
    NullWriter,
    StepWatchdog,
    StopNow,
    StopPolicy,
    StopRequest,
    TrainingInterrupted,
    after_existing_event_files,
    check_config_unedited,
    clock_text,
    locked_run_dir,
    si_count,
)
from meta_rl.logger import MetricLogger
from meta_rl.memory_estimate import check_fits, check_threads, estimate_training_memory
from meta_rl.metric_writers import MetricWriter, TensorBoardScalars, file_writers
from meta_rl.nonfinite_guard import NonFiniteError, NonFiniteGuard, eager_by_default
from meta_rl.policy import MetaPolicy
from meta_rl.registry import import_plugin
from meta_rl.rollout import Rollout, collect
from meta_rl.spaces import space_to_dict
from meta_rl.tensorboard_figures import accuracy_figure, episode_strip

__all__ = [
    "CHECKPOINT_NAME",
    "TRUSTED_MODULES",
    "NonFiniteError",
    "Trainer",
    "TrainingInterrupted",
    "build_policy",
    "make_vec_env",
    "optimize",
    "policy_for_spaces",
    "resolve_device",
    "train",
    "untrusted_modules",
]

#: A time-limited run (one process) logs at least this many times and evaluates at least this many times
#: (then once more at the end), evenly over ``max_minutes``, besides every ``log_every`` / ``eval_every`` updates.
LOG_POINTS = 20
EVAL_POINTS = 10

# Keys that may differ between a run and its resumption: how long and how it runs, not what it learns
# (compile_update computes the same loss, to float tolerance, as the device and encoder_precision do).
RESUMABLE_KEYS = ("total_env_steps", "max_minutes", "device", "torch_threads", "skip_nonfinite_updates", "step_timeout",
                  "encoder_precision", "log_to", "compile_update", "cuda_graphs")
Collector = Callable[..., Rollout]  # meta_rl.rollout.collect's signature
AlgorithmFactory = Callable[[TrainConfig], Algorithm]  # meta_rl.algorithms.make_algorithm's signature


def build_policy(cfg: ModelConfig, env: VectorEnv, steps: int) -> MetaPolicy:
    """The policy ``cfg`` describes for ``env``'s spaces, for tasks of ``steps`` steps."""
    return policy_for_spaces(cfg, env.single_observation_space, env.single_action_space, steps)


def policy_for_spaces(cfg: ModelConfig, observation_space: Any, action_space: Any, steps: int) -> MetaPolicy:
    """The policy ``cfg`` describes for one task's observation and action spaces, after importing
    ``cfg.model_module`` (where a user's core or encoder registers itself)."""
    if cfg.model_module:
        import_plugin(cfg.model_module, "model_module")
    return MetaPolicy(observation_space, action_space, cfg, task_length=steps)


def with_built_read_head(cfg: TrainConfig, env: VectorEnv, steps: int) -> TrainConfig:
    """``cfg`` with its ``read_head`` table replaced by what the policy builds on ``env`` (``{}``: no memory-read
    head), so the saved config records what was built. Built on the meta device: nothing is allocated."""
    with torch.device("meta"):
        policy = build_policy(cfg, env, steps)
    return dataclasses.replace(cfg, read_head=policy.read_head_settings)


Admit = Callable[[dict[str, torch.Tensor]], bool]


def optimize(
    policy: MetaPolicy, optimizer: torch.optim.Optimizer, algorithm: Algorithm, ro: Rollout, cfg: TrainConfig, *,
    world: World | None = None, admit: Admit | None = None, compiled: LossFn | None = None,
) -> list[dict[str, torch.Tensor]]:
    """The update on one rollout: for each of the algorithm's epochs and minibatches of tasks, its loss, the
    gradients (averaged over ranks, clipped), then, if ``admit`` lets them through (the NaN guard; default: all),
    the optimizer step and the critic's target statistics. Returns each step's figures.

    With a ``world`` of several ranks the gradients are averaged over the ranks after ``backward``
    and before clipping (see :mod:`meta_rl.distributed` for why not DDP), so every rank clips and
    steps with the same gradient, that of the mean loss over all ranks' tasks.

    ``compiled``: the algorithm's loss compiled (:func:`~meta_rl.algorithms.compile_loss`, ``compile_update``), called
    in its place.

    Raises:
        ConfigError: the rollout's tasks do not split into the algorithm's minibatches, or ``compiled`` fails to
            compile on this platform.
    """
    world = world or World()
    if algorithm.epochs * algorithm.minibatches > 1 and ro.embed is not None and ro.embed.requires_grad:
        ro = dataclasses.replace(ro, embed=None)  # a graph is backpropagated once: each pass encodes anew
    batch = ro.rewards.shape[1]
    if batch % algorithm.minibatches:
        raise ConfigError(f"algo_kwargs.minibatches = {algorithm.minibatches} does not divide num_envs = {batch}; "
                          "pick a divisor of num_envs.")
    size = batch // algorithm.minibatches
    out = []
    for epoch in range(algorithm.epochs):
        order = torch.arange(batch, device=ro.rewards.device)
        if algorithm.minibatches > 1:
            order = torch.randperm(batch, generator=torch.Generator().manual_seed(epoch)).to(ro.rewards.device)
        for k in range(algorithm.minibatches):
            part = ro if algorithm.minibatches == 1 else ro.select(order[k * size:(k + 1) * size])
            stats = gradients(policy, optimizer, algorithm, part, cfg, world, compiled)
            if admit is None or admit(stats):
                optimizer.step()
                update_running_stats(policy, stats, cfg, world)
            else:
                optimizer.zero_grad(set_to_none=True)  # skip: no step, Adam's state untouched
            out.append(stats)
    return out


def gradients(
    policy: MetaPolicy, optimizer: torch.optim.Optimizer, algorithm: Algorithm, ro: Rollout, cfg: TrainConfig,
    world: World, compiled: LossFn | None = None,
) -> dict[str, torch.Tensor]:
    """The algorithm's loss on ``ro`` (``compiled``'s, where given) and its gradients in ``.grad`` (averaged over
    ranks, clipped), without a step.

    Raises:
        ConfigError: ``compiled`` fails to compile (:func:`~meta_rl.algorithms.compile_failures`).
    """
    with compile_failures() if compiled is not None else contextlib.nullcontext():
        loss, stats = (compiled or algorithm)(policy, ro)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # (a compiled loss's backward pass may be compiled here, at its first call)
    world.average_gradients(list(policy.parameters()))
    grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
    return {**stats, "losses/grad_norm": grad_norm.detach()}


def update_running_stats(policy: MetaPolicy, stats: dict[str, torch.Tensor], cfg: TrainConfig, world: World) -> None:
    """After an admitted step: the mean reward credits are measured against and the critic's target statistics
    move towards this update's (over all ranks)."""
    names = ("losses/reward_mean", "losses/value_target_mean", "losses/value_target_second")
    means = world.all_sum(torch.stack([stats[k] for k in names])) / world.size  # one collective for all three
    policy.update_reward_mean(means[0], cfg.return_norm_rate)
    if cfg.normalize_returns:
        policy.update_return_stats(means[1], means[2], cfg.return_norm_rate)


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


#: Modules that may be imported because a saved config names them: the package's own.
TRUSTED_MODULES = ("", "meta_rl.envs")


def untrusted_modules(cfg: TrainConfig) -> list[str]:
    """The modules building ``cfg``'s env would import that are neither meta-rl's nor already imported.

    Those are ``env_module``, ``model_module`` and the ``module:`` prefix of an ``env_id`` (which gymnasium imports).
    """
    named = [cfg.env_module, cfg.model_module]
    if ":" in cfg.env_id:
        named.append(cfg.env_id.split(":", 1)[0])
    return [m for m in dict.fromkeys(named) if m not in TRUSTED_MODULES and m not in sys.modules]


def load_run_config(run_dir: str | Path, *, env_module: str | None = None, model_module: str | None = None,
                    flag: str = "--env-module", checkpoint_name: str = CHECKPOINT_NAME) -> TrainConfig:
    """The config a run directory's checkpoint was trained with, safe to build an env and a policy from.

    A checkpoint is data and must not decide what code runs: a plug-in module it names is imported
    only when the caller names the same module (the user's ``--env-module`` or ``--model-module``).

    Args:
        run_dir: a run directory written by :func:`train`.
        env_module: the module the user trusts for this run's env; replaces the saved ``env_module``.
        model_module: the module the user trusts for this run's core or encoder; replaces the saved one.
        flag: how the user names the env module, for the error message (the model module's is
            ``--model-module``).
        checkpoint_name: the checkpoint file to read (``best.pt`` for the best evaluation's).

    Raises:
        CheckpointError: the checkpoint is missing or damaged.
        ConfigError: the run needs a module the user did not name.
    """
    path = Path(run_dir) / checkpoint_name
    saved = load_checkpoint(path)["config"]
    named = {"env_module": env_module, "model_module": model_module}
    saved.update({k: v for k, v in named.items() if v is not None})
    cfg = TrainConfig.from_dict(saved, source=str(path))
    untrusted = [m for m in untrusted_modules(cfg) if m not in named.values()]
    if untrusted:
        names = ", ".join(repr(m) for m in untrusted)
        how = "--model-module" if untrusted[0] == cfg.model_module else flag
        raise ConfigError(
            f"run {run_dir} needs module {names} ({cfg.env_id!r}, core {cfg.core!r}); meta-rl does not import a module "
            f"because a checkpoint names it (a checkpoint could name any code). If you trust it, name it yourself: "
            f"{how} {untrusted[0]}."
        )
    return cfg


def train(
    cfg: TrainConfig, run_dir: str | Path, *, resume: bool = False, progress: bool = True,
    collector: Collector = collect, algorithm: AlgorithmFactory = make_algorithm, eager_guard: bool | None = None,
    callbacks: Sequence[Callback] | None = None,
) -> dict[str, Any]:
    """Train ``cfg`` writing logs (``log_to``) and checkpoints to ``run_dir``; returns final figures.

    With ``resume`` the run continues from ``run_dir/checkpoint.pt``: parameters, optimizer,
    counters and RNG states, so on CPU it ends exactly where an uninterrupted run would.

    ``callbacks`` (:class:`meta_rl.callbacks.Callback` instances) are called at the phase boundaries on rank 0; one
    may end the run normally, and the result's ``"stopped_by"`` then names it (:mod:`meta_rl.callbacks`).

    Raises:
        ConfigError: a bad setting, or ``run_dir`` already holds a run (RunLockedError: one that is running).
        CheckpointError: the checkpoint to resume is missing, damaged or from another config;
            CheckpointWriteError: a checkpoint could not be written (e.g. disk full).
        TrainingInterrupted: SIGINT/SIGTERM stopped the run after checkpointing it.
        NonFiniteError: a loss, gradient or parameter became NaN or inf (nothing bad was saved).
        TypeError: ``callbacks`` is not a list of callbacks; anything a callback raises fails the run as it is.

    ``collector``, ``algorithm`` and ``eager_guard`` replace the rollout collector, the algorithm and
    the NaN guard's mode (see :class:`Trainer`), e.g. to inject faults in tests.
    """
    cfg.validate()
    callbacks = check_callbacks(callbacks)
    run_dir = Path(run_dir)
    # Under torchrun (WORLD_SIZE > 1) join the process group. Every rank makes the same read-only
    # checks of run_dir, so a bad invocation fails on all ranks alike; only rank 0 holds the lock
    # and writes there. A rank that fails alone (say rank 0 finds the directory locked) ends its
    # process, and torchrun then stops the other ranks.
    world, device, owns_group = setup(resolve_device(cfg.device))
    try:
        with locked_run_dir(run_dir, resume, world) as stop:
            trainer = Trainer(cfg, run_dir, resume=resume, stop=stop, world=world, device=device, progress=progress,
                              collector=collector, algorithm=algorithm, eager_guard=eager_guard, callbacks=callbacks)
            result = trainer.learn()
    except BaseException:
        teardown(owns_group)
        raise
    teardown(owns_group, synchronize=True)
    return result



class Trainer:
    """One training run as named phases (AMAGO's ``Experiment``): each can be read, tested and replaced.

    :meth:`learn` is the loop; the phases it calls keep their state on the trainer, not in closures:
    ``init_envs`` → ``init_model`` → ``restore`` → ``init_logging``, then per update
    ``collect_new_training_data`` → ``train_step`` (which holds the NaN guard) → ``log`` →
    ``evaluate_val`` → ``save_checkpoint``, and ``finish``.

    Args:
        cfg: the run's config. run_dir: where it writes. resume: continue from ``run_dir``'s checkpoint.
        stop: the run's :class:`StopRequest` (set by the signal handlers of :func:`locked_run_dir`).
        world: the ranks. device: where tensors live. progress: show a progress bar (rank 0).
        collector: gathers a rollout (:func:`meta_rl.rollout.collect`'s signature).
        algorithm: builds the algorithm from the config (:func:`meta_rl.algorithms.make_algorithm`).
        eager_guard: read the NaN verdict every update (default: on the CPU or when skipping).
        callbacks: :class:`~meta_rl.callbacks.Callback` s, called at the phase boundaries (rank 0 only).
    """

    def __init__(
        self, cfg: TrainConfig, run_dir: Path, *, resume: bool, stop: StopRequest, world: World, device: torch.device,
        progress: bool = False, collector: Collector = collect, algorithm: AlgorithmFactory = make_algorithm,
        eager_guard: bool | None = None, callbacks: Sequence[Callback] = (),
    ) -> None:
        check_cuda_graphs(cfg.cuda_graphs, device, cfg.device)
        self.cfg, self.run_dir, self.resume, self.world, self.device = cfg, run_dir, resume, world, device
        self.progress, self.collector, self.make_algorithm = progress, collector, algorithm
        self.eager_guard = eager_by_default(device, cfg.skip_nonfinite_updates) if eager_guard is None else eager_guard
        self.ckpt_path = run_dir / CHECKPOINT_NAME
        self.stopping = StopPolicy(stop, world, cfg.max_minutes)
        # Rank r runs its own tasks and actions from rank_seed(seed, r); rank 0's stream is the
        # single-process one. The initial parameters come from the seed itself on every rank (and
        # are broadcast from rank 0 to be safe).
        self.seed = rank_seed(cfg.seed, world.rank)
        self.per_update = cfg.num_envs * world.size  # tasks per update over all ranks
        self.update = self.env_steps = 0
        self.saved_update: int | None = None  # the update of the checkpoint on disk
        self.evaluated_at: int | None = None  # env step of the last held-out evaluation
        self.final: dict[str, float] = {}
        self.last_rollout: Rollout | None = None
        self.callbacks = list(callbacks) if world.is_main else []  # rank 0 alone calls them
        self.view = RunView(self)
        self.logged_means: dict[str, float] = {}  # the latest log's figures, for callbacks
        self.logged_at: int | None = None
        self.finishing = False  # the final evaluation and checkpoint: a callback's stop has nothing left to stop
        # What close() closes, from the start: a set-up that fails after init_envs closes what it built.
        self.heldout_env: VectorEnv | None = None
        self.writer: Any = NullWriter()
        self.bar = tqdm(disable=True)

    # --- set-up phases --------------------------------------------------------------------
    def init_envs(self) -> None:
        """The training env (and held-out env), after checking the config fits the machine.

        A one-task probe of the env gives the spaces and the task length, from which the memory the
        config needs is estimated before anything of size B is allocated.
        """
        cfg = self.cfg
        check_threads(cfg.torch_threads, ConfigError)
        if cfg.torch_threads:
            torch.set_num_threads(cfg.torch_threads)
        probe = make_vec_env(cfg, cfg.train_split, 1, self.device)
        try:
            self.steps = cfg.rollout_steps or task_length(probe)
            if self.steps < 1:
                raise ConfigError(f"env {cfg.env_id!r} has no episode_length; set rollout_steps to the length of a "
                                  "task.")
            # The read head's settings as built, once, here, so the saved config (and a resume's check against it)
            # names the policy built.
            self.cfg = cfg = with_built_read_head(cfg, probe, self.steps)
            self.eval_envs = (min(cfg.eval_episodes, 256) if cfg.eval_every and cfg.eval_episodes
                              and self.world.is_main else 0)
            estimate = estimate_training_memory(lambda: build_policy(cfg, probe, self.steps),
                                                probe.single_observation_space, self.steps, cfg.num_envs,
                                                self.eval_envs, cfg.eval_episodes)
        finally:
            probe.close()  # an async plug-in's probe worker ends here, on a refusal too
        check_fits(estimate, self.device, ConfigError)
        self.env = make_vec_env(cfg, cfg.train_split, cfg.num_envs, self.device)

    def init_model(self) -> None:
        """Policy (from ``cfg.seed`` on every rank), Adam, the algorithm (its loss compiled with ``compile_update``:
        compiled at the first update), this rank's action generator and the NaN guard."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.cfg.seed)
            self.policy = build_policy(self.cfg, self.env, self.steps).to(self.device)
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=self.cfg.learning_rate)
        self.algorithm = self.make_algorithm(self.cfg)
        self.compiled = compile_loss(self.algorithm) if self.cfg.compile_update else None
        self.generator = torch.Generator(device=self.device).manual_seed(self.seed)
        self.guard = NonFiniteGuard(self.policy, eager=self.eager_guard, skip=self.cfg.skip_nonfinite_updates,
                                    steps_per_update=self.steps * self.per_update, kept=self._kept,
                                    device=self.device)

    def _kept(self) -> str:
        if self.saved_update is None:
            return "no checkpoint had been written yet"
        return f"the last good checkpoint {self.ckpt_path} (update {self.saved_update}) is intact"

    def restore(self) -> None:
        """Parameters, optimizer, counters and RNG state from the checkpoint (when resuming)."""
        if self.resume:
            ckpt = load_checkpoint(self.ckpt_path, map_location=self.device)
            _check_resumable(ckpt["config"], self.cfg, self.ckpt_path)
            check_same_dataset(read_dataset(ckpt, self.ckpt_path), self.env, run=f"the run in {self.run_dir}",
                               fix="Resume it on the data it started with (the machine or files it trained on), "
                                   "or start a new run directory on this data.")
            if self.world.is_main:
                check_config_unedited(self.run_dir, ckpt["config"], self.cfg.to_dict())
            load_state(self.policy, ckpt["policy"], self.ckpt_path, "policy")
            load_state(self.optimizer, ckpt["optimizer"], self.ckpt_path, "optimizer")
            update, env_steps = read_counters(ckpt, self.ckpt_path)
            with malformed_state(self.ckpt_path):
                # Rank r's action generator: its own state, gathered into the checkpoint by rank 0. A run
                # resumed on more ranks than it was saved from derives the new ranks' generators from
                # (seed, rank, update): deterministic, though not the stream an unbroken run would draw.
                by_rank = ckpt["rng"].get("actions_by_rank") or [ckpt["rng"]["actions"]]
                if self.world.rank < len(by_rank):
                    self.generator.set_state(by_rank[self.world.rank].cpu())  # generator states live on the host
                else:
                    self.generator.manual_seed(_task_seed(self.seed, update))
                self.update, self.env_steps = update, env_steps
                self.guard.skipped = int(ckpt.get("faults", {}).get("skipped_updates", 0))
            self.saved_update = self.update
        self.world.broadcast_module(self.policy)
        self.first_update = self.update

    def init_logging(self) -> None:
        """config.json and the writers ``log_to`` names on rank 0 (the only rank that writes to run_dir), and the
        held-out env.

        purge_step: TensorBoard hides every event from an earlier attempt at a step >= purge_step. A
        resumed run keeps what was logged up to its checkpoint (steps <= env_steps) and drops what a
        killed process logged after it; a fresh run drops anything left by an attempt that never
        checkpointed. ``progress.csv`` and ``progress.jsonl`` drop those rows likewise.
        """
        cfg = self.cfg
        self.writer = NullWriter()  # TensorBoard's figures, images, text and hparams (rank 0 below)
        writers: list[MetricWriter] = []  # every row of scalars
        if self.world.is_main:
            write_atomic(self.run_dir / CONFIG_NAME, json.dumps(cfg.to_dict(), indent=2).encode(), what="config")
            # The log files first: one that cannot be resumed (ConfigError) then leaves no event writer open.
            writers += file_writers(cfg.log_to, self.run_dir, self.env_steps if self.resume else None)
            if "tensorboard" in cfg.log_to:
                after_existing_event_files(self.run_dir)
                self.writer = EventWriter(self.run_dir, purge_step=self.env_steps + 1 if self.resume else 0)
                writers.append(TensorBoardScalars(self.writer))
                if not self.resume:
                    self.writer.add_text("config", "```\n" + json.dumps(cfg.to_dict(), indent=2) + "\n```\n", 0)
        self.metrics = MetricLogger(writers, self.world, self.device, self.env_steps)
        if self.eval_envs:
            self.heldout_env = make_vec_env(cfg, cfg.heldout_split, self.eval_envs, self.device)
        # A bar where someone watches (a terminal); otherwise (--no-progress, a log file) one line per log.
        self.show_bar = self.progress and self.world.is_main and sys.stderr.isatty()
        self.console = self.world.is_main and not self.show_bar
        self.bar = tqdm(total=cfg.total_env_steps, initial=self.env_steps, unit="step", unit_scale=True,
                        disable=not self.show_bar, mininterval=2.0)

    # --- per-update phases ----------------------------------------------------------------
    def collect_new_training_data(self) -> Rollout:
        """A rollout of B new tasks (reset from this rank's seed and the update index)."""
        return self.collector(self.env, self.policy, self.steps, self.generator,
                              reset_seed=_task_seed(self.seed, self.update), embed_with_grad=True,
                              graphed=self.cfg.cuda_graphs)

    def train_step(self, ro: Rollout) -> None:
        """The algorithm's steps on the rollout (:func:`optimize`), each through the NaN guard, and the tallies."""
        optimize(self.policy, self.optimizer, self.algorithm, ro, self.cfg, world=self.world, admit=self.admit,
                 compiled=self.compiled)
        self.metrics.record_accuracy(ro.correct(), ro.instance)
        self.update += 1
        self.env_steps += self.steps * self.per_update
        self.bar.update(self.steps * self.per_update)
        self.last_rollout = ro

    def admit(self, stats: dict[str, torch.Tensor]) -> bool:
        """The NaN guard's verdict on one step's figures (agreed over all ranks: a non-finite loss on any rank
        poisons the averaged gradient); an admitted step's figures are recorded."""
        flags = self.world.all_min(self.guard.flags(stats))
        if not self.guard.admit(stats, flags, self.update + 1):
            return False
        self.metrics.record_mean(stats)
        return True

    def log(self) -> None:
        """Means since the last log to TensorBoard (and the progress bar)."""
        self.guard.check_deferred()
        extra = {"faults/skipped_updates": float(self.guard.skipped)} if self.cfg.skip_nonfinite_updates else None
        means = self.metrics.dump(self.env_steps, extra)
        self.logged_means, self.logged_at = means, self.env_steps
        shown = {"return": means.get("charts/return")}
        if "charts/accuracy" in means:  # accuracy only where the task has labels to be right about
            shown["accuracy"] = means["charts/accuracy"]
        if self.show_bar:
            self.bar.total = self.stopping.budget(self.bar.n, self.cfg.total_env_steps,
                                                  means.get("charts/steps_per_second", 0.0))
            self.bar.set_postfix({k[:3]: f"{v:.2f}" for k, v in shown.items() if v is not None})
        elif self.console:
            print(self.console_line(means, shown), file=sys.stderr, flush=True)

    def console_line(self, means: dict[str, float], shown: dict[str, float | None]) -> str:
        """One compact progress line for headless runs and log files (CleanRL / SB3 console style)."""
        minutes = self.stopping.minutes()
        per_second = means.get("charts/steps_per_second", 0.0)
        budget = self.stopping.budget(self.env_steps, self.cfg.total_env_steps, per_second)
        speed = si_count(per_second)
        parts = [f"update {self.update}", f"steps {si_count(self.env_steps)}/{si_count(budget)}", f"{speed} steps/s",
                 clock_text(minutes)]
        parts += [f"{name} {value:.3f}" for name, value in shown.items() if value is not None]
        if "eval/accuracy_instance_2" in self.final:
            parts.append(f"eval 2nd {self.final['eval/accuracy_instance_2']:.3f}")
        elif "eval/return" in self.final:
            parts.append(f"eval return {self.final['eval/return']:.2f}")
        return "meta-rl | " + " | ".join(parts)

    def evaluate_val(self, log: bool = True, final: bool = False) -> bool:
        """The held-out evaluation; False if a signal or the time limit stopped it (nothing is then logged).

        The ``final`` one, after training, may run past the time limit by :meth:`StopPolicy.final_allowance`.
        """
        assert self.heldout_env is not None
        stop = self.stopping.interrupts_final_evaluation if final else self.stopping.interrupts_evaluation
        try:
            res = evaluate_task(self.heldout_env, self.policy, self.cfg.eval_episodes, seed=HELDOUT_SEED,
                                steps=self.steps, should_stop=stop)
        except EvaluationStopped as exc:
            allowance = f" and the final evaluation's {self.stopping.final_allowance():.0f} s" if final else ""
            why = ("a signal" if self.stopping.request.signum is not None
                   else f"the time limit (max_minutes = {self.cfg.max_minutes}{allowance})")
            print(f"meta-rl: held-out evaluation at env step {self.env_steps} stopped by {why} after "
                  f"{exc.batches_done} of {exc.batches} batches; not logged (run meta-rl eval {self.run_dir} for it).",
                  file=sys.stderr)
            return False
        self.final = res.scalars()  # accuracy by instance, or return per trial and by episode
        if log:
            self.metrics.write(self.final, self.env_steps)
            if isinstance(res, EvalResult):
                curves: dict[str, tuple[list[float], list[float]]] = {"held-out": (res.accuracy_by_instance, res.ci95)}
                if res.request_rate_by_instance is not None and res.request_ci95 is not None:
                    curves["label requests"] = (res.request_rate_by_instance, res.request_ci95)
                n_way = getattr(self.heldout_env, "n_way", None)
                santoro = n_way == 5 and getattr(self.heldout_env, "feedback", None) == "label"  # Table 1's task
                figure = accuracy_figure(curves, n_way=n_way, references=REFERENCE_ROWS if santoro else None)
                self.writer.add_figure("eval/accuracy_by_instance", figure, self.env_steps)
            if self.last_rollout is not None:
                _log_strip(self.writer, self.last_rollout, self.env_steps)
        self.evaluated_at = self.env_steps
        self.notify("on_eval")
        return True

    def save_checkpoint(self, path: Path | None = None) -> None:
        """Check, gather and write the run's state (rank 0 writes; every rank calls it at the same updates).

        The checks and gathers are collective or agree by construction (identical parameters,
        all-reduced finite flags).

        Args:
            path: instead, a copy there (``best.pt``) with the latest held-out figures, written by rank 0 alone from
                its own state (no collective: callbacks run on rank 0); the run's checkpoint is untouched.
        """
        copy = path is not None
        self.guard.check_parameters(self.update)
        if not copy:
            self.world.average_float_buffers(self.policy)  # BatchNorm statistics, the only per-rank state in the policy
        rng_by_rank = [self.generator.get_state()] if copy else self.world.gather(self.generator.get_state())
        digests = self.world.gather(param_digest(self.policy)) if self.world.enabled and not copy else []
        if self.world.is_main:
            if len(set(digests)) > 1:
                print(f"meta-rl: warning: parameters differ between ranks at update {self.update}: {digests}",
                      file=sys.stderr)
            payload: dict[str, Any] = {
                "config": self.cfg.to_dict(),
                "policy": self.policy.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "counters": {"update": self.update, "env_steps": self.env_steps},
                "rng": {"actions": self.generator.get_state()},
            }
            spaces = {"observation": space_to_dict(self.env.single_observation_space),
                      "action": space_to_dict(self.env.single_action_space), "steps": self.steps}
            if spaces["observation"] is not None and spaces["action"] is not None:
                payload["spaces"] = spaces  # meta_rl.load rebuilds the policy from these, without an env
            dataset = dataset_record(self.env)
            if dataset is not None:  # the data it trained on: evaluation and --resume refuse other content
                payload["dataset"] = dataset
            if self.cfg.skip_nonfinite_updates:
                payload["faults"] = {"skipped_updates": self.guard.skipped}
            if self.world.enabled and not copy:
                payload["rng"]["actions_by_rank"] = rng_by_rank
                payload["distributed"] = {"world_size": self.world.size, "param_digests": digests}
            if copy:
                payload["evaluation"] = dict(self.final)
            save_checkpoint(path or self.ckpt_path, payload)
        if not copy:
            self.saved_update = self.update

    def notify(self, hook: str) -> None:
        """Call ``hook`` of every callback (:func:`~meta_rl.callbacks.run_hook`); one that returns False asks the run
        to end normally (:meth:`StopPolicy.ask`), except once the step budget is spent and during the final evaluation
        and checkpoint."""
        if not self.callbacks:
            return
        stopper = run_hook(self.callbacks, hook, self.view)
        if stopper is not None and not self.finishing and self.env_steps < self.cfg.total_env_steps:
            self.stopping.ask(repr(stopper))  # (a budget spent has nothing left to stop)

    def interrupted(self, signum: int) -> TrainingInterrupted:
        return TrainingInterrupted(signum, self.run_dir, self.update, self.env_steps)

    def finish(self) -> None:
        """After the last update: the final evaluation, hyper-parameters, the last checkpoint.

        The final evaluation runs even where the time limit stopped training (or cut an evaluation short),
        within :meth:`StopPolicy.final_allowance` more. The last update's checkpoint is written after it, so
        a kill during that evaluation resumes before it and logs it once. A resumed run with nothing left
        to do evaluates without logging again.
        """
        trained = self.update > self.first_update
        self.finishing = True
        if self.heldout_env is not None and self.evaluated_at != self.env_steps:
            self.evaluate_val(log=trained, final=True)
        if trained and self.world.is_main:
            hparams = {k: (v if isinstance(v, (int, float, str, bool)) else json.dumps(v))
                       for k, v in self.cfg.to_dict().items()}
            # The metrics name curves already logged (eval/..., or charts/return without a held-out evaluation): the
            # HParams tab reads their values from there, with no copy of them under another tag.
            metrics = dict(self.final) or {"charts/return": self.metrics.last_return}
            self.writer.add_hparams_linked(hparams, metrics, self.env_steps)
        self.writer.flush()
        if self.saved_update != self.update:  # (a callback's stop at a checkpoint: that one is this update's)
            self.save_checkpoint()
            self.notify("on_checkpoint")
        if self.stopping.request.signum is not None:  # during the final evaluation: the run is complete and saved
            raise self.interrupted(self.stopping.request.signum)

    def close(self, failing: bool, terminate: bool = False) -> None:
        """Close the bar, the training and held-out envs (an async plug-in's worker processes end with the run, not
        whenever the garbage collector gets to them) and the writer.

        Args:
            failing: an error is in flight and says what went wrong: each env and the writer are closed on their
                own, their errors suppressed.
            terminate: a call of the envs timed out: their async workers are terminated (one may be stuck in it).
        """
        self.bar.close()
        for env in (self.env, self.heldout_env):
            if env is not None:
                with contextlib.suppress(Exception) if failing else contextlib.nullcontext():
                    _close_env(env, terminate)
        if failing:
            with contextlib.suppress(OSError):
                self.writer.close()
        else:
            self.writer.close()

    # --- the loop -------------------------------------------------------------------------
    def loop(self) -> None:
        """Updates until the budget, the time limit, a signal or a callback: collect, train, log, evaluate,
        checkpoint (with the callbacks' hooks between)."""
        cfg = self.cfg
        while self.env_steps < cfg.total_env_steps and self.stopping.before_update():
            ro = self.collect_or_keep_the_last_update()
            self.notify("on_rollout_end")
            self.phase("updating the policy")
            self.train_step(ro)
            if self.update % cfg.log_every == 0 or self.log_cadence.due():
                self.log()
            self.notify("on_update")
            self.stopping.agree(self.device)
            if self.stopping.signum is not None:
                break  # the safe point: this update is complete; checkpoint below, skip the evaluation
            # One process leaves after a cut-short evaluation (checkpoint below); several ranks go
            # on to the collective checkpoint and leave together after the next agree().
            if self.stopping.ends_training():
                break  # out of time or a callback's stop: the final evaluation follows (out of time: its allowance)
            self.phase("evaluating on held-out tasks")
            if (self.heldout_env is not None
                    and (self.update % cfg.eval_every == 0 or self.eval_cadence.due())
                    and not self.evaluate_val() and not self.world.enabled):
                break
            last = self.env_steps >= cfg.total_env_steps or self.stopping.asked  # its checkpoint is finish()'s
            if self.update % cfg.checkpoint_every == 0 and not last:
                self.phase("writing a checkpoint")
                self.save_checkpoint()
                self.notify("on_checkpoint")

    def phase(self, doing: str) -> None:
        """What the run does now, for the notice of a first SIGINT/SIGTERM."""
        self.stopping.request.phase = doing

    def watch_env_calls(self) -> StepWatchdog:
        """The watchdog over the training and held-out envs' ``step`` and ``reset`` (:class:`StepWatchdog`)."""
        cfg = self.cfg
        deadline = self.stopping.started + 60 * cfg.max_minutes if cfg.max_minutes else None
        watchdog = StepWatchdog(cfg.step_timeout, deadline, cfg.max_minutes)
        watchdog.watch(self.env, f"{cfg.env_id!r}")
        if self.heldout_env is not None:
            watchdog.watch(self.heldout_env, f"the held-out {cfg.env_id!r}")
        self.stopping.request.watchdog = watchdog
        return watchdog

    def collect_or_keep_the_last_update(self) -> Rollout:
        """A new rollout; where a second signal or the step watchdog stops it, a checkpoint of the last whole
        update first (one process): nothing has changed since but the action generator, which is put back, so
        the run resumes exactly where an unbroken one would be."""
        self.phase("collecting a rollout")
        actions_rng = self.generator.get_state()
        try:
            return self.collect_new_training_data()
        except (EnvStepTimeout, StopNow) as exc:
            kept = self._kept()
            if not self.world.enabled:
                self.generator.set_state(actions_rng)
                if self.saved_update != self.update:
                    self.save_checkpoint()
                kept = f"the run's last whole update {self.update} is saved in {self.ckpt_path}"
            resume = f"resume with meta-rl train --resume {self.run_dir}"
            if isinstance(exc, StopNow):
                raise StopNow(exc.signum, exc.doing, f"{kept}; {resume}") from None
            raise EnvStepTimeout(f"{exc}; {kept}. Fix or speed up the env (or raise step_timeout), then "
                                 f"{resume}.") from None

    def learn(self) -> dict[str, Any]:
        """Set up, then collect → train → log → evaluate → checkpoint until done, out of time or stopped."""
        cfg = self.cfg
        self.init_envs()
        try:
            self.init_model()
            self.restore()
            self.init_logging()
        except BaseException:
            self.close(failing=True)  # the envs, and the event writer where init_logging got that far
            raise
        self.policy.train()
        try:
            self.stopping.start()  # max_minutes counts from here, after the set-up
            self.notify("on_training_start")
            self.log_cadence, self.eval_cadence = (self.stopping.cadence(LOG_POINTS),
                                                   self.stopping.cadence(EVAL_POINTS))
            self.metrics.start_clock()
            with self.watch_env_calls():
                self.loop()
                self.bar.close()
                if self.stopping.signum is not None:
                    self.save_checkpoint()
                    raise self.interrupted(self.stopping.signum)
                self.phase("the final evaluation and checkpoint")
                self.finish()
                self.notify("on_training_end")
        except EnvStepTimeout:
            self.close(failing=True, terminate=True)
            raise
        except StopNow as exc:
            self.close(failing=True)
            if exc.kept:
                raise
            raise StopNow(exc.signum, exc.doing, f"{self._kept()}; resume with meta-rl train --resume "
                                                 f"{self.run_dir}") from None
        except BaseException:
            self.close(failing=True)
            raise
        self.close(failing=False)
        result: dict[str, Any] = {"updates": self.update, "env_steps": self.env_steps,
                                  "minutes": self.stopping.minutes()}
        if cfg.skip_nonfinite_updates:
            result["skipped_updates"] = self.guard.skipped
        if self.stopping.asked:
            result["stopped_by"] = self.stopping.asked_by or "a callback on rank 0"
        return {**result, **self.final}


def _close_env(env: VectorEnv, terminate: bool) -> None:
    """``env.close()``; with ``terminate``, ``close(terminate=True)`` where the env takes it (async workers are
    terminated, gymnasium's warning that a step is pending silenced: that is the point)."""
    if not terminate:
        env.close()
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            env.close(terminate=True)
        except TypeError:  # an env whose close takes no options: nothing to terminate
            env.close()


def _log_strip(writer: Any, ro: Rollout, env_steps: int) -> None:
    """Log the first task of a rollout as a strip of its images with the true and chosen labels."""
    if ro.main is None or ro.main.ndim != 5 or not bool((ro.labels[:, 0] >= 0).all()):
        return
    writer.add_image("images/episode_strip", episode_strip(ro.main[:, 0], ro.labels[:, 0], ro.actions[:, 0]), env_steps)



if __name__ == "__main__":  # pragma: no cover - the entry point moved: say where instead of doing nothing
    raise SystemExit("meta_rl.train is no longer a command: use python -m meta_rl train ARGS (torchrun: -m meta_rl).")
