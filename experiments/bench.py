"""Benchmarks for meta_rl.

Subcommands:

* ``env``: env steps per second of the torch-native :class:`FewShotVectorEnv` against
  gymnasium's ``SyncVectorEnv`` of single :class:`FewShotEnv` s, on the same task.
* ``train``: end-to-end training env steps per second (acting + learning) of
  :func:`meta_rl.train.train` against sb3-contrib's RecurrentPPO, same task, same MLP encoder
  and LSTM width, 16 parallel tasks each; medians of 5 alternating rounds with min and max, user
  and system CPU time and page faults of each side, and the efficiency of our update against the
  machine's measured dense FLOP/s.
* ``time-to-accuracy``: training seconds each of the two needs to reach 90% at the 2nd
  instance on held-out (val) tasks, capped at 10 minutes.
* ``gpu``: env alone and end-to-end training steps per second on CUDA where present, else CPU.
* ``switches``: end-to-end training steps per second with each speed switch off and on (``--switch KEY=OFF:ON``,
  any config key, repeatable), off and on alternated in one process for ``--repeats`` rounds; medians with min and
  max of each side and of the paired on/off ratios.
* ``plugin``: steps per second of a Python plug-in (:class:`NoisyImages`, a 30-step image task written
  as a plain ``gymnasium.Env``) in ``GymTaskVectorEnv``, sync against async with 1, 2 and all cores'
  worker processes, stepped raw with random actions and in the trainer's collect loop.
* ``predict``: SB3's route, ``evaluate_policy(policy, RL2ObservationWrapper(env))``, on a 30-step image
  plug-in (steps per second, env included, and ``MetaPolicy.predict`` alone), beside the trainer's batched
  rollout (:func:`meta_rl.rollout.collect`) on the same task and policy; medians of ``--repeats`` rounds.

Run ``python experiments/bench.py env --json`` for one JSON line, or without ``--json`` for a
table. New subcommands register a parser in :func:`build_parser` and a ``bench_*`` function in
:data:`COMMANDS`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from meta_rl.algorithms import make_algorithm
from meta_rl.allocator import tune_malloc
from meta_rl.config import (
    ModelConfig,
    TrainConfig,
    check_cuda_graphs,
    load_config,
    parse_overrides,
    resolve_device,
)
from meta_rl.data import ImageDataset, load_splits
from meta_rl.data.synthetic import random_dataset
from meta_rl.distributed import World
from meta_rl.encoders import PRECISIONS, native_bfloat16
from meta_rl.envs import FewShotEnv, FewShotVectorEnv
from meta_rl.envs.gym_tasks import GymTaskVectorEnv, register_gym_task
from meta_rl.evaluation import evaluate
from meta_rl.policy import MetaPolicy, RL2ObservationWrapper
from meta_rl.rollout import collect
from meta_rl.train import build_policy, gradients, make_vec_env, optimize, train

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sb3_baseline

DEFAULT_ENV_ID = "meta_rl/Glyphs-5way-v0"
ACTION_POOL = 512  # pre-generated action batches, cycled through


def resolve_dataset(name: str) -> str | ImageDataset:
    """``"synthetic"`` gives an in-process random dataset; any other source is loaded (and cached) now."""
    if name == "synthetic":
        return random_dataset(200, 20, seed=0, groups=10, class_name="class{}")
    load_splits(name)  # build or read the cache once, outside any timing
    return name


def _time_steps(step: Callable[[int], Any], batch: int, seconds: float, warmup: float,
                sync: Callable[[], None]) -> float:
    """Steps per second of ``step(i)`` (each call is ``batch`` env steps) after a warm-up."""
    end = time.perf_counter() + warmup
    i = 0
    while time.perf_counter() < end:
        step(i)
        i += 1
    sync()
    calls = 0
    start = time.perf_counter()
    end = start + seconds
    while True:
        step(i + calls)
        calls += 1
        if calls % 8 == 0 and time.perf_counter() >= end:
            break
    sync()
    return calls * batch / (time.perf_counter() - start)


def bench_env(args: argparse.Namespace) -> dict[str, Any]:
    """Time FewShotVectorEnv against SyncVectorEnv[FewShotEnv] on one task.

    Args:
        args: ``env_id``, ``dataset``, ``batch``, ``seconds``, ``warmup``, ``device``, ``threads``,
            ``seed``.

    Returns:
        ``torch_steps_per_s``, ``sync_steps_per_s``, ``ratio`` and context (sizes, versions).
    """
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    spec = gym.spec(args.env_id)
    kwargs: dict[str, Any] = dict(spec.kwargs)
    batch, device = int(args.batch), torch.device(args.device)
    t0 = time.perf_counter()
    # Keep stdout for the result: dataset builders may print progress.
    with contextlib.redirect_stdout(sys.stderr):
        kwargs["dataset"] = resolve_dataset(args.dataset)
    dataset_s = time.perf_counter() - t0

    # Torch-native vector env: actions pre-generated on its device.
    t0 = time.perf_counter()
    vec = FewShotVectorEnv(num_envs=batch, device=device, **kwargs)
    vec.reset(seed=args.seed)
    n_actions = int(vec.single_action_space.n)
    g = torch.Generator(device=device).manual_seed(args.seed)
    torch_actions = torch.randint(0, n_actions, (ACTION_POOL, batch), generator=g, device=device)
    build_torch_s = time.perf_counter() - t0

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    torch_sps = _time_steps(lambda i: vec.step(torch_actions[i % ACTION_POOL]), batch, args.seconds,
                            args.warmup, sync)
    episode_length = vec.episode_length
    vec.close()

    # gymnasium's SyncVectorEnv of single envs (no wrappers: the baseline's best case).
    t0 = time.perf_counter()
    sync_env = gym.vector.SyncVectorEnv([lambda: FewShotEnv(**kwargs) for _ in range(batch)])
    sync_env.reset(seed=args.seed)
    np_actions = np.random.default_rng(args.seed).integers(0, n_actions, (ACTION_POOL, batch), dtype=np.int64)
    build_sync_s = time.perf_counter() - t0
    sync_sps = _time_steps(lambda i: sync_env.step(np_actions[i % ACTION_POOL]), batch, args.seconds,
                           args.warmup, lambda: None)
    sync_env.close()

    return {
        **_side_by_side("torch", torch_sps, "sync", sync_sps, args),
        "dataset": args.dataset,
        "batch": batch,
        "device": str(device),
        "n_way": int(kwargs.get("n_way", 5)),
        "feedback": kwargs.get("feedback", "label"),
        "episode_length": episode_length,
        "dataset_s": round(dataset_s, 2),
        "build_torch_s": round(build_torch_s, 2),
        "build_sync_s": round(build_sync_s, 2),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "gymnasium": gym.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def _side_by_side(name: str, rate: float, peer: str, peer_rate: float, args: argparse.Namespace) -> dict[str, Any]:
    """The two rates measured in one run, their ratio, and what was timed."""
    return {f"{name}_steps_per_s": round(rate, 1), f"{peer}_steps_per_s": round(peer_rate, 1),
            "ratio": round(rate / peer_rate, 2), "env_id": args.env_id, "seconds_each": args.seconds}


def _versions() -> dict[str, Any]:
    import sb3_contrib
    import stable_baselines3

    return {"torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
            "stable_baselines3": stable_baselines3.__version__, "sb3_contrib": sb3_contrib.__version__,
            "python": platform.python_version()}


def _mlp_config(args: argparse.Namespace, num_envs: int, device: str = "cpu") -> TrainConfig:
    """Our trainer in the setting shared with the SB3 baseline (the MLP encoder unless ``--encoder``)."""
    return TrainConfig(
        env_id=args.env_id, num_envs=num_envs, encoder=args.encoder, encoder_hidden=list(args.encoder_hidden),
        core=args.core, hidden=args.hidden, device=device, seed=args.seed, eval_every=0, eval_episodes=0,
        log_every=20, checkpoint_every=10**9, torch_threads=args.threads,
        encoder_precision=args.encoder_precision,
    ).validate()


def _time_ours(cfg: TrainConfig, seconds: float) -> tuple[float, int]:
    """Env steps per second of :func:`meta_rl.train.train` for ``seconds`` (its clock starts after setup)."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg.max_minutes = seconds / 60.0
        result = train(cfg, Path(tmp) / "run", progress=False)
    return result["env_steps"] / (result["minutes"] * 60.0), int(result["env_steps"])


def _usage() -> tuple[float, float, int]:
    """(user seconds, system seconds, minor page faults) of this process so far."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime, r.ru_stime, r.ru_minflt


def _measured(run: Callable[[], float]) -> dict[str, float]:
    """``run()``'s rate with the user and system CPU seconds and the minor page faults it cost."""
    before, t0 = _usage(), time.perf_counter()
    rate = run()
    after, wall = _usage(), time.perf_counter() - t0
    user, system, faults = (a - b for a, b in zip(after, before))
    return {"rate": rate, "wall_s": wall, "user_s": user, "sys_s": system, "minor_faults": faults}


def spread(values: list[float]) -> dict[str, float]:
    """Median, min and max of repeated measurements."""
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3),
            "max": round(max(values), 3), "n": len(values)}


def _best_seconds(fn: Callable[[], Any], repeats: int = 7) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _flops(fn: Callable[[], Any]) -> int:
    """The FLOPs torch counts for ``fn()`` (matmuls, convolutions and their gradients)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return int(counter.get_total_flops())


def peak_flops() -> dict[str, float]:
    """The machine's achievable dense float32 FLOP/s on the current threads: a large matmul and a conv."""
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    x, w = torch.randn(64, 64, 28, 28), torch.randn(64, 64, 3, 3)  # NCHW, as the conv encoders run
    matmul = _flops(lambda: a @ b) / _best_seconds(lambda: a @ b)
    conv = _flops(lambda: torch.nn.functional.conv2d(x, w, padding=1)) / _best_seconds(
        lambda: torch.nn.functional.conv2d(x, w, padding=1))
    return {"matmul_flops_per_s": matmul, "conv_flops_per_s": conv, "peak_flops_per_s": max(matmul, conv)}


def update_profile(cfg: TrainConfig) -> dict[str, float]:
    """FLOPs and seconds of one rollout (acting) and one update of ``cfg``'s trainer, measured apart."""
    from meta_rl.rollout import collect

    env = make_vec_env(cfg, cfg.train_split, cfg.num_envs, torch.device("cpu"))
    steps = cfg.rollout_steps or int(env.episode_length)  # type: ignore[attr-defined]
    torch.manual_seed(cfg.seed)
    policy = build_policy(cfg, env, steps)
    optimizer = torch.optim.Adam(policy.parameters(), lr=cfg.learning_rate)
    generator = torch.Generator().manual_seed(cfg.seed)

    algorithm = make_algorithm(cfg)

    def act() -> Any:
        return collect(env, policy, steps, generator, reset_seed=0, embed_with_grad=True)

    def iteration() -> None:  # as in training: the rollout's encoder graph feeds the update's backward pass
        gradients(policy, optimizer, algorithm, act(), cfg, World())
        optimizer.step()

    acting_flops, iteration_flops = _flops(act), _flops(iteration)
    acting_s, iteration_s = _best_seconds(act, 5), _best_seconds(iteration, 5)
    # The update alone is the iteration less its rollout (FLOPs and seconds alike).
    profile = {"acting_flops": float(acting_flops), "update_flops": float(iteration_flops - acting_flops),
               "acting_s": acting_s, "update_s": max(iteration_s - acting_s, 1e-9),
               "steps_per_update": float(steps * cfg.num_envs)}
    env.close()
    return profile


def efficiency(profile: dict[str, float], peak: float, steps_per_s: float) -> dict[str, float]:
    """The fraction of the peak achieved in the update alone and end to end, and where an update's time goes."""
    update_rate = profile["update_flops"] / profile["update_s"]
    updates_per_s = steps_per_s / profile["steps_per_update"]
    per_update = 1.0 / updates_per_s  # wall seconds of one whole iteration in the training run
    iteration_s = profile["acting_s"] + profile["update_s"]
    flops = profile["update_flops"] + profile["acting_flops"]
    return {
        "update_flops": profile["update_flops"], "acting_flops": profile["acting_flops"],
        "update_flops_per_s": round(update_rate), "update_efficiency": round(update_rate / peak, 4),
        "end_to_end_flops_per_s": round(flops * updates_per_s),
        "end_to_end_efficiency": round(flops * updates_per_s / peak, 4),
        # Of one bare iteration (rollout, then update, measured apart from the trainer): acting (env steps
        # and the policy at batch B) and the update (losses, backward, Adam).
        "time_share_acting": round(profile["acting_s"] / iteration_s, 3),
        "time_share_update": round(profile["update_s"] / iteration_s, 3),
        # The trainer's own time beyond the bare iteration (logging, the guard, bookkeeping), as a fraction
        # of it; the two are timed apart, so on a noisy machine it can read negative (−27% was seen here).
        "trainer_overhead": round(per_update / iteration_s - 1, 3),
    }


class _RolloutClock(sb3_baseline.BaseCallback):
    """Times whole RecurrentPPO iterations (rollout + update): marks each rollout start after
    ``warmup`` seconds and stops once ``warmup + seconds`` have passed."""

    def __init__(self, warmup: float, seconds: float) -> None:
        super().__init__()
        self.warmup, self.seconds = warmup, seconds
        self.marks: list[tuple[float, int]] = []
        self.t0 = 0.0
        self.stop = False

    def _on_training_start(self) -> None:
        self.t0 = time.perf_counter()

    def _on_rollout_start(self) -> None:
        now = time.perf_counter()
        if now - self.t0 >= self.warmup:
            self.marks.append((now, self.num_timesteps))
        self.stop = now - self.t0 >= self.warmup + self.seconds and len(self.marks) >= 2

    def _on_step(self) -> bool:
        return not self.stop

    def steps_per_s(self) -> float:
        (t_a, n_a), (t_b, n_b) = self.marks[0], self.marks[-1]
        return (n_b - n_a) / (t_b - t_a)


def bench_train(args: argparse.Namespace) -> dict[str, Any]:
    """End-to-end training throughput of our trainer against sb3-contrib's RecurrentPPO, repeated.

    Ours: :func:`meta_rl.train.train` (acting, REINFORCE/TD(λ) update, accuracy bookkeeping and
    TensorBoard logging; no held-out evaluation) on ``--ours-envs`` tasks. SB3: RecurrentPPO
    (MultiInputLstmPolicy with the same MLP encoder and LSTM width, n_steps * n_envs = 2048,
    n_epochs = 4) on ``--sb3-envs`` single envs in a DummyVecEnv, timed over whole iterations
    after a warm-up. The two alternate for ``--repeats`` rounds in this one process; each figure is
    the median with min and max, and the ratio is that of the medians. Each side's user and system
    CPU seconds and minor page faults come from ``getrusage``. The efficiency fields compare the
    FLOPs of our update (``torch.utils.flop_counter``) with the machine's measured dense peak.
    """
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    malloc_tuned = tune_malloc() if args.malloc == "tuned" else False
    with contextlib.redirect_stdout(sys.stderr):
        load_splits("glyphs")
    _time_ours(_mlp_config(args, args.ours_envs), args.warmup)  # warm-up run (allocator, kernels)

    def sb3_rate() -> float:
        env = sb3_baseline.make_env(args.env_id, args.sb3_envs, "train", args.seed)
        model = sb3_baseline.build_model(
            env, encoder_hidden=args.encoder_hidden, lstm_hidden=args.hidden, n_steps=2048 // args.sb3_envs,
            n_epochs=4, batch_size=args.sb3_batch_size, seed=args.seed,
        )
        clock = _RolloutClock(args.warmup, args.seconds)
        model.learn(total_timesteps=10**12, callback=clock)
        env.close()
        return clock.steps_per_s()

    ours_runs, sb3_runs = [], []
    for _ in range(args.repeats):
        ours_runs.append(_measured(lambda: _time_ours(_mlp_config(args, args.ours_envs), args.seconds)[0]))
        if args.repeats_sb3:
            sb3_runs.append(_measured(sb3_rate))
    ours = spread([r["rate"] for r in ours_runs])
    out: dict[str, Any] = {"ours_steps_per_s": ours, "env_id": args.env_id, "seconds_each": args.seconds,
                           "repeats": args.repeats, "malloc_tuned": malloc_tuned}
    for name, runs in (("ours", ours_runs), ("sb3", sb3_runs)):
        if runs:
            out[f"{name}_sys_over_user"] = spread([r["sys_s"] / max(r["user_s"], 1e-9) for r in runs])
            out[f"{name}_user_s"] = spread([r["user_s"] for r in runs])
            out[f"{name}_sys_s"] = spread([r["sys_s"] for r in runs])
            out[f"{name}_minor_faults_per_s"] = spread([r["minor_faults"] / r["wall_s"] for r in runs])
    if sb3_runs:
        sb3 = spread([r["rate"] for r in sb3_runs])
        out.update({"sb3_steps_per_s": sb3, "ratio": round(ours["median"] / sb3["median"], 2)})
    peak = peak_flops()
    out.update({k: round(v) for k, v in peak.items()})
    out.update(efficiency(update_profile(_mlp_config(args, args.ours_envs)), peak["peak_flops_per_s"],
                          ours["median"]))
    out.update({"ours_envs": args.ours_envs, "sb3_envs": args.sb3_envs, "sb3_n_steps": 2048 // args.sb3_envs,
                "sb3_n_epochs": 4, "sb3_batch_size": args.sb3_batch_size, "encoder": args.encoder,
                "encoder_hidden": list(args.encoder_hidden),
                "core": args.core, "hidden": args.hidden, "encoder_precision": args.encoder_precision,
                "amx": native_bfloat16(torch.device("cpu")), **_versions()})
    return out


def _ours_time_to_accuracy(args: argparse.Namespace) -> dict[str, Any]:
    """Train the default config, evaluating on ``--eval-episodes`` val tasks every ``--eval-seconds``
    of training; the clock counts training only."""
    from meta_rl.rollout import collect

    overrides = [f"seed={args.seed}", f"device={args.device}", f"torch_threads={args.threads}"]
    if args.num_envs:
        overrides.append(f"num_envs={args.num_envs}")
    cfg = load_config(args.config, overrides + list(args.overrides))
    device = torch.device(args.device)
    check_cuda_graphs(cfg.cuda_graphs, device, args.device)
    env = make_vec_env(cfg, cfg.train_split, cfg.num_envs, device)
    heldout = make_vec_env(cfg, cfg.heldout_split, min(args.eval_episodes, 256), device)
    steps = cfg.rollout_steps or int(env.episode_length)  # type: ignore[attr-defined]
    torch.manual_seed(cfg.seed)
    policy = build_policy(cfg, env, steps).to(device)
    optimizer = torch.optim.Adam(policy.parameters(), lr=cfg.learning_rate)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    algorithm = make_algorithm(cfg)
    trained_s, env_steps, update, curve = 0.0, 0, 0, []
    cap = args.cap_minutes * 60
    reached = False
    while trained_s < cap:
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < args.eval_seconds and trained_s + time.perf_counter() - t0 < cap:
            ro = collect(env, policy, steps, generator, reset_seed=update, embed_with_grad=True,
                         graphed=cfg.cuda_graphs)
            optimize(policy, optimizer, algorithm, ro, cfg)  # the trainer's step, PopArt statistics included
            update += 1
            env_steps += steps * cfg.num_envs
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # count the queued GPU work in the training time
        trained_s += time.perf_counter() - t0
        acc2 = evaluate(heldout, policy, args.eval_episodes, seed=10_000, steps=steps).accuracy_by_instance[1]
        curve.append([round(trained_s, 1), env_steps, round(acc2, 3)])
        if acc2 >= args.target:
            reached = True
            break
    return {"seconds": round(trained_s, 1) if reached else None, "reached": reached, "env_steps": env_steps,
            "device": str(device), "num_envs": cfg.num_envs, "overrides": list(args.overrides), "curve": curve}


def _sb3_time_to_accuracy(args: argparse.Namespace) -> dict[str, Any]:
    env = sb3_baseline.make_env(args.env_id, args.sb3_envs, "train", args.seed)
    model = sb3_baseline.build_model(env, n_steps=2048 // args.sb3_envs, n_epochs=4, seed=args.seed)
    state: dict[str, Any] = {"trained_s": 0.0, "since": 0.0, "curve": [], "reached": False}

    class EvalClock(sb3_baseline.BaseCallback):
        def _on_training_start(self) -> None:
            self.t0 = time.perf_counter()

        def _on_rollout_start(self) -> None:
            now = time.perf_counter()
            state["trained_s"] += now - self.t0
            state["since"] += now - self.t0
            if state["since"] >= args.eval_seconds or state["trained_s"] >= args.cap_minutes * 60:
                state["since"] = 0.0
                res = sb3_baseline.evaluate_sb3(model, args.env_id, args.eval_episodes, split="val")
                acc2 = res.accuracy_by_instance[1]
                state["curve"].append([round(state["trained_s"], 1), int(model.num_timesteps), round(acc2, 3)])
                state["reached"] = acc2 >= args.target
            self.t0 = time.perf_counter()  # evaluation time is not counted

        def _on_step(self) -> bool:
            return not (state["reached"] or state["trained_s"] >= args.cap_minutes * 60)

    model.learn(total_timesteps=10**12, callback=EvalClock())
    env.close()
    reached = bool(state["reached"])
    return {"seconds": round(state["trained_s"], 1) if reached else None, "reached": reached,
            "env_steps": int(model.num_timesteps), "curve": state["curve"]}


def bench_time_to_accuracy(args: argparse.Namespace) -> dict[str, Any]:
    """Training seconds to reach ``--target`` accuracy at the 2nd instance on val tasks.

    Ours trains ``--config`` (default: the default run); SB3 trains RecurrentPPO as in
    ``train``. Both evaluate on ``--eval-episodes`` val tasks every ``--eval-seconds`` of
    training, and evaluation time is not counted. ``seconds`` is null and ``reached`` false
    where the cap came first; ``curve`` lists [training seconds, env steps, accuracy at the 2nd instance].
    ``key=value`` arguments change our config as ``meta-rl train`` does.
    """
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    with contextlib.redirect_stdout(sys.stderr):
        load_splits("glyphs")
    ours = _ours_time_to_accuracy(args)
    sb3 = _sb3_time_to_accuracy(args) if args.with_sb3 else {"seconds": None, "reached": None}
    return {
        "ours_seconds": ours["seconds"], "ours_reached": ours["reached"],
        "sb3_seconds": sb3["seconds"], "sb3_reached": sb3["reached"],
        "target": args.target, "instance": 2, "cap_minutes": args.cap_minutes,
        "eval_seconds": args.eval_seconds, "eval_episodes": args.eval_episodes,
        "ours": ours, "sb3": sb3, **_versions(),
    }


def bench_gpu(args: argparse.Namespace) -> dict[str, Any]:
    """The env alone and end-to-end training (:func:`meta_rl.train.train`) on ``--device`` (auto: CUDA where
    present)."""
    device = resolve_device(args.device)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    with contextlib.redirect_stdout(sys.stderr):
        load_splits("glyphs")
    kwargs: dict[str, Any] = dict(gym.spec(args.env_id).kwargs)
    vec = FewShotVectorEnv(num_envs=args.batch, device=device, **kwargs)
    vec.reset(seed=args.seed)
    g = torch.Generator(device=device).manual_seed(args.seed)
    acts = torch.randint(0, int(vec.single_action_space.n), (ACTION_POOL, args.batch), generator=g, device=device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    env_sps = _time_steps(lambda i: vec.step(acts[i % ACTION_POOL]), args.batch, args.seconds, args.warmup, sync)
    vec.close()
    cfg = TrainConfig(env_id=args.env_id, num_envs=args.batch, encoder=args.encoder, device=str(device),
                      seed=args.seed, eval_every=0, eval_episodes=0, checkpoint_every=10**9,
                      torch_threads=args.threads, encoder_precision=args.encoder_precision,
                      cuda_graphs=args.cuda_graphs).validate()
    _time_ours(TrainConfig(**{**cfg.to_dict(), "max_minutes": 0.0}), args.warmup)  # warm-up
    train_sps, train_steps = _time_ours(cfg, args.seconds)
    return {
        "env_steps_per_s": round(env_sps, 1),
        "train_steps_per_s": round(train_sps, 1),
        "encoder": args.encoder,
        "batch": args.batch,
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "core": cfg.core,
        "encoder_precision": args.encoder_precision,
        "cuda_graphs": args.cuda_graphs,
        "env_id": args.env_id,
        "seconds_each": args.seconds,
        "train_env_steps": train_steps,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def parse_switch(text: str) -> tuple[str, str, str]:
    """``KEY=OFF:ON`` as (key, off value, on value).

    Raises:
        ValueError: ``text`` is not of that form (one ``=``, then exactly one ``:``), or the two values are the same.
    """
    key, eq, values = text.partition("=")
    off, colon, on = values.partition(":")
    if not (eq and colon and key and off and on) or ":" in on:
        raise ValueError(f"--switch {text!r} must look like KEY=OFF:ON, a config key then its two values split by "
                         "one ':', e.g. encoder_precision=float32:bfloat16 or cuda_graphs=false:true.")
    if off == on:
        raise ValueError(f"--switch {text!r} gives {key} the same value {off!r} off and on: it would time one config "
                         "twice; give two different values.")
    return key, off, on


def switch_configs(args: argparse.Namespace) -> list[tuple[tuple[str, str, str], TrainConfig, TrainConfig]]:
    """Each ``--switch`` as ((key, off, on), the config with it off, the config with it on), all validated first.

    Both configs are ``--config`` (default: the default run) at ``--batch`` tasks on ``--device``, with the
    ``key=value`` overrides, no held-out evaluation and no checkpoints, and the switch's value last.

    Raises:
        ValueError: no ``--switch``, a malformed one, a key given twice, or a switch key also among the overrides.
        ConfigError: a value the config refuses (an unknown key, a value out of range or of the wrong type).
    """
    if not args.switch:
        raise ValueError("bench.py switches needs at least one --switch KEY=OFF:ON, e.g. "
                         "--switch encoder_precision=float32:bfloat16.")
    switches = [parse_switch(text) for text in args.switch]
    keys = [key for key, _, _ in switches]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:
        raise ValueError(f"--switch names {twice} more than once; give each key one --switch KEY=OFF:ON.")
    fixed = sorted(set(keys) & set(parse_overrides(list(args.overrides))))
    if fixed:
        raise ValueError(f"{fixed} is both a --switch and a key=value override; drop the override (the switch sets "
                         "it both ways).")
    base = [f"num_envs={args.batch}", f"device={args.device}", f"seed={args.seed}", f"torch_threads={args.threads}",
            "eval_every=0", "eval_episodes=0", f"checkpoint_every={10**9}", *args.overrides]
    return [((key, off, on), load_config(args.config, [*base, f"{key}={off}"]),
             load_config(args.config, [*base, f"{key}={on}"])) for key, off, on in switches]


def bench_switches(args: argparse.Namespace) -> dict[str, Any]:
    """End-to-end training steps per second (:func:`meta_rl.train.train`) with each ``--switch`` off and on.

    Per switch, after one untimed warm-up run of each side (allocator, kernels, compile caches), the two sides
    alternate in this process, off then on, for ``--repeats`` rounds of ``--seconds`` each: ``rounds`` lists the
    (off, on) pairs, ``*_steps_per_s`` the median, min and max of each side and ``on_over_off`` those of the paired
    ratios (each round's on over the same round's off, robust to drift on a shared machine).
    """
    configs = switch_configs(args)  # every config checked before anything is timed
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    with contextlib.redirect_stdout(sys.stderr):
        load_splits("glyphs")
    rows = []
    for (key, off, on), cfg_off, cfg_on in configs:
        for cfg in (cfg_off, cfg_on):
            _time_ours(cfg, args.warmup)
        rounds = [(_time_ours(cfg_off, args.seconds)[0], _time_ours(cfg_on, args.seconds)[0])
                  for _ in range(args.repeats)]
        rows.append({"switch": key, "off": off, "on": on,
                     "off_steps_per_s": spread([a for a, _ in rounds]),
                     "on_steps_per_s": spread([b for _, b in rounds]),
                     "on_over_off": spread([b / a for a, b in rounds]),
                     "rounds": [[round(a, 1), round(b, 1)] for a, b in rounds]})
    cfg = configs[0][1]
    device = resolve_device(cfg.device)
    return {"rows": rows, "batch": args.batch, "device": str(device),
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "env_id": cfg.env_id, "encoder": cfg.encoder, "core": cfg.core, "overrides": list(args.overrides),
            "seconds_each": args.seconds, "warmup": args.warmup, "repeats": args.repeats,
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version()}


def format_switches_table(result: Mapping[str, Any]) -> str:
    """The ``switches`` result as a table: one row per switch, off and on side by side (median [min, max] steps/s)
    and the paired on/off ratio."""
    def cell(value: str, rate: Mapping[str, float]) -> str:
        return f"{value}: {rate['median']:,.0f} [{rate['min']:,.0f}, {rate['max']:,.0f}]"

    lines = [f"{'switch':<24}{'off steps/s':>40}{'on steps/s':>40}{'on / off':>24}"]
    for row in result["rows"]:
        r = row["on_over_off"]
        ratio = f"x{r['median']:.2f} [{r['min']:.2f}, {r['max']:.2f}]"
        lines.append(f"{row['switch']:<24}{cell(row['off'], row['off_steps_per_s']):>40}"
                     f"{cell(row['on'], row['on_steps_per_s']):>40}{ratio:>24}")
    lines.append(f"B = {result['batch']} on {result['device']}, {result['repeats']} rounds of off then on, "
                 f"{result['seconds_each']} s each, median [min, max]; on / off: the paired ratios' median [min, max]")
    return "\n".join(lines)


class NoisyImages(gym.Env):
    """The ``plugin`` bench's task, a plain ``gymnasium.Env`` as a user would write one: each task draws
    ``IMAGE_CLASSES`` random 28x28 prototype images; each of a trial's 30 steps shows one of them, shifted by up
    to 2 pixels and noised, and pays 1 for naming its class."""

    observation_space = gym.spaces.Box(0, 255, (1, 28, 28), np.uint8)
    action_space = gym.spaces.Discrete(5)

    def __init__(self) -> None:
        self.prototypes = np.zeros((IMAGE_CLASSES, 28, 28), np.float32)
        self.label = 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        return self._show(), {}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        reward = float(int(action) == self.label)
        return self._show(), reward, False, False, {}

    def _show(self) -> np.ndarray:
        self.label = int(self.np_random.integers(IMAGE_CLASSES))
        shift = tuple(int(k) for k in self.np_random.integers(-2, 3, 2))
        image = np.roll(self.prototypes[self.label], shift, (0, 1)) + self.np_random.normal(0.0, 20.0, (28, 28))
        return np.clip(image, 0, 255).astype(np.uint8)[None]


IMAGE_CLASSES = 5


def make_noisy_images() -> gym.Env:
    return NoisyImages()


def sample_prototypes(env: gym.Env, rng: np.random.Generator) -> None:
    """A new task: new prototype images."""
    env.unwrapped.prototypes = rng.uniform(0, 255, (IMAGE_CLASSES, 28, 28)).astype(np.float32)  # type: ignore[attr-defined]


def plugin_modes(num_envs: int, workers: list[int]) -> list[tuple[str, int]]:
    """(vectorization, worker count) to time: sync, then async with each distinct count (at most ``num_envs``)."""
    counts = sorted({min(w if w > 0 else (os.cpu_count() or 1), num_envs) for w in workers})
    return [("sync", 0)] + [("async", w) for w in counts]


def _plugin_env(mode: tuple[str, int], num_envs: int) -> GymTaskVectorEnv:
    vectorization, workers = mode
    return GymTaskVectorEnv(make_noisy_images, sample_prototypes, num_envs, episodes_per_trial=1, max_episode_steps=30,
                            vectorization=vectorization, num_workers=workers or None)


def _time_plugin(mode: tuple[str, int], args: argparse.Namespace) -> dict[str, float]:
    """One round of ``mode``: raw steps/s with random actions, then (unless ``--no-collect``) the collect loop's."""
    env = _plugin_env(mode, args.num_envs)
    try:
        env.reset(seed=args.seed)
        actions = torch.as_tensor(np.random.default_rng(args.seed).integers(0, IMAGE_CLASSES,
                                                                            (ACTION_POOL, args.num_envs)))
        out = {"env": _time_steps(lambda i: env.step(actions[i % ACTION_POOL]), args.num_envs, args.seconds,
                                  args.warmup, lambda: None)}
        if args.collect:
            cfg = TrainConfig(env_id="bench/NoisyImages", num_envs=args.num_envs, hidden=args.hidden, seed=args.seed,
                              torch_threads=args.threads).validate()
            torch.manual_seed(args.seed)
            policy = build_policy(cfg, env, env.episode_length)
            generator = torch.Generator().manual_seed(args.seed)
            out["collect"] = _time_steps(lambda i: collect(env, policy, env.episode_length, generator, reset_seed=i),
                                         args.num_envs * env.episode_length, args.seconds, args.warmup, lambda: None)
    finally:
        env.close()
    return out


def bench_plugin(args: argparse.Namespace) -> dict[str, Any]:
    """Steps per second of a Python plug-in (:class:`NoisyImages`) in ``GymTaskVectorEnv``: sync against async
    with each worker count of ``--workers``, B = ``--num-envs`` each, raw stepping (random actions) and the
    trainer's collect loop (the default policy acting: encoder, core, heads; no update). The modes alternate for
    ``--repeats`` rounds; each figure is the median with min and max over the rounds."""
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    modes = plugin_modes(args.num_envs, args.workers)
    runs: dict[tuple[str, int], list[dict[str, float]]] = {m: [] for m in modes}
    for _ in range(args.repeats):
        for mode in modes:
            runs[mode].append(_time_plugin(mode, args))
    rows = []
    for (vectorization, workers), rounds in runs.items():
        row: dict[str, Any] = {"vectorization": vectorization, "workers": workers}
        for key in rounds[0]:
            row[f"{key}_steps_per_s"] = spread([r[key] for r in rounds])
        rows.append(row)
    return {"rows": rows, "num_envs": args.num_envs, "episode_length": 30, "seconds_each": args.seconds,
            "repeats": args.repeats, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "hidden": args.hidden, "torch": torch.__version__, "gymnasium": gym.__version__,
            "python": platform.python_version()}


def format_plugin_table(result: Mapping[str, Any]) -> str:
    """The ``plugin`` result as a table: one row per mode, median [min, max] steps/s and the ratio to sync."""
    keys = [k for k in ("env_steps_per_s", "collect_steps_per_s") if k in result["rows"][0]]
    base = {k: result["rows"][0][k]["median"] for k in keys}
    cores = result["cpu_count"]
    lines = [f"{'mode':<30}" + "".join(f"{k.removesuffix('_per_s').replace('_', ' ') + '/s':>36}" for k in keys)]
    for row in result["rows"]:
        workers = row["workers"]
        name = "sync" if not workers else f"async, {workers} worker{'s' if workers > 1 else ''}" + (
            " (all cores)" if workers == cores else "")
        cells = [f"{r['median']:,.0f} [{r['min']:,.0f}, {r['max']:,.0f}] x{r['median'] / base[k]:.2f}"
                 for k, r in ((k, row[k]) for k in keys)]
        lines.append(f"{name:<30}" + "".join(f"{c:>36}" for c in cells))
    lines.append(f"B = {result['num_envs']}, {result['repeats']} rounds of {result['seconds_each']} s, median [min, "
                 f"max]; x: the median over sync's; {cores} CPUs, torch threads {result['torch_threads']}")
    return "\n".join(lines)


PREDICT_ENV_ID, PREDICT_STEPS = "bench/Images-v0", 30


class ImageTask(gym.Env):
    """A 30-step image plug-in for ``bench.py predict``: a random uint8 image (1 x 28 x 28) each step, in a Dict (the
    only observation the old SB3 wrapper took, so the same task times both); 5 actions, the task's ``target`` pays."""

    observation_space = gym.spaces.Dict({"image": gym.spaces.Box(0, 255, (1, 28, 28), np.uint8)})
    action_space = gym.spaces.Discrete(5)

    def __init__(self) -> None:
        self.target = 0

    def _obs(self) -> dict[str, np.ndarray]:
        return {"image": self.np_random.integers(0, 256, (1, 28, 28), dtype=np.uint8)}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict]:
        super().reset(seed=seed)
        return self._obs(), {}

    def step(self, action: int) -> tuple[Any, float, bool, bool, dict]:
        return self._obs(), float(int(action) == self.target), False, False, {}


def _pick_target(env: gym.Env, rng: np.random.Generator) -> None:
    env.unwrapped.target = int(rng.integers(5))  # type: ignore[attr-defined]


register_gym_task(PREDICT_ENV_ID, ImageTask, _pick_target, episodes_per_trial=1, max_episode_steps=PREDICT_STEPS)


def _clocks() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _rates(steps: int, since: tuple[float, float]) -> tuple[float, float]:
    """Steps per wall-clock second and per CPU second of this process since ``since`` (from :func:`_clocks`): the
    CPU figure is the one that holds on a machine shared with other work."""
    wall, cpu = _clocks()
    return steps / (wall - since[0]), steps / max(cpu - since[1], 1e-9)


def _predict_rates(policy: MetaPolicy, episodes: int, seed: int) -> dict[str, tuple[float, float]]:
    """(wall, CPU) steps/s of SB3's evaluate_policy on one wrapped env, and of predict alone replayed on the
    observations that run met."""
    from stable_baselines3.common.evaluation import evaluate_policy

    env = RL2ObservationWrapper(gym.make(PREDICT_ENV_ID))
    env.reset(seed=seed)
    seen: list[tuple[Any, Any]] = []
    predict = policy.predict

    def record(observation: Any, state: Any = None, episode_start: Any = None, deterministic: bool = False) -> Any:
        seen.append((observation, episode_start))
        return predict(observation, state, episode_start, deterministic)

    policy.predict = record  # type: ignore[method-assign]
    try:
        since = _clocks()
        evaluate_policy(policy, env, n_eval_episodes=episodes, warn=False)  # type: ignore[arg-type]
        sb3 = _rates(episodes * PREDICT_STEPS, since)
    finally:
        del policy.predict
    state, since = None, _clocks()
    for observation, start in seen:
        _, state = policy.predict(observation, state, start)
    return {"sb3": sb3, "predict": _rates(len(seen), since)}


def bench_predict(args: argparse.Namespace) -> dict[str, Any]:
    """SB3's predict route against the trainer's batched rollout on one 30-step image plug-in task, repeated.

    One policy (``--core``, the default CNN encoder, untrained: speed does not depend on the weights), in
    training mode as a user holds it after building or training. Per round: SB3's ``evaluate_policy`` over
    ``--episodes`` episodes of ``RL2ObservationWrapper(gym.make(...))`` (env and SB3 loop included), ``predict``
    alone replayed on the observations that run met, and :func:`meta_rl.rollout.collect` on ``--batch`` envs of the
    same task (sync ``GymTaskVectorEnv``) for ``--rollouts`` rollouts. Medians, min and max of ``--repeats``
    rounds, per wall-clock second and per CPU second of the process (``*_cpu``: robust to a shared machine).
    """
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    probe = ImageTask()
    policy = MetaPolicy(probe.observation_space, probe.action_space, ModelConfig(core=args.core),
                        task_length=PREDICT_STEPS)
    vec = GymTaskVectorEnv(ImageTask, _pick_target, args.batch, 1, PREDICT_STEPS)
    generator = torch.Generator().manual_seed(args.seed)

    def rollout_rates() -> tuple[float, float]:
        since = _clocks()
        for i in range(args.rollouts):
            collect(vec, policy, PREDICT_STEPS, generator, reset_seed=args.seed + i)
        return _rates(args.rollouts * args.batch * PREDICT_STEPS, since)

    _predict_rates(policy, 1, args.seed)  # warm-up
    rollout_rates()
    rounds: dict[str, list[tuple[float, float]]] = {"sb3": [], "predict": [], "rollout": []}
    for r in range(args.repeats):
        for name, rates in _predict_rates(policy, args.episodes, args.seed + r).items():
            rounds[name].append(rates)
        rounds["rollout"].append(rollout_rates())
    vec.close()
    out: dict[str, Any] = {}
    for name, label in (("sb3", "sb3_evaluate_policy"), ("predict", "predict"), ("rollout", "rollout")):
        out[f"{label}_steps_per_s"] = spread([wall for wall, _ in rounds[name]])
        out[f"{label}_steps_per_cpu_s"] = spread([cpu for _, cpu in rounds[name]])
    out.update({
        "rollout_over_sb3": round(out["rollout_steps_per_s"]["median"]
                                  / out["sb3_evaluate_policy_steps_per_s"]["median"], 1),
        "predict_cpu_ms": round(1e3 / out["predict_steps_per_cpu_s"]["median"], 3), "env_id": PREDICT_ENV_ID,
        "task_steps": PREDICT_STEPS, "episodes": args.episodes, "batch": args.batch, "core": args.core,
        "encoder": policy.encoder_name, "repeats": args.repeats,
        "meta_rl": str(Path(sys.modules["meta_rl"].__file__ or "").parent),
        "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version(),
    })
    return out


def format_table(result: Mapping[str, Any]) -> str:
    """A readable two-column table of a result."""
    width = max(len(k) for k in result)
    lines = []
    for key, value in result.items():
        text = f"{value:,.1f}" if isinstance(value, float) and key.endswith("_per_s") else str(value)
        lines.append(f"{key:<{width}}  {text}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", required=True)

    env = sub.add_parser("env", help="FewShotVectorEnv vs SyncVectorEnv[FewShotEnv] steps per second")
    env.add_argument("--env-id", default=DEFAULT_ENV_ID, help="registered id whose task settings are used")
    env.add_argument("--dataset", default="glyphs",
                     help="'synthetic' (random, in-process) or a source such as 'glyphs' or 'cifar:/data'")
    env.add_argument("--batch", type=int, default=256, help="number of envs B")
    env.add_argument("--seconds", type=float, default=5.0, help="timed seconds per env")
    env.add_argument("--warmup", type=float, default=1.0, help="untimed warm-up seconds per env")
    env.add_argument("--device", default="cpu", help="device of the torch-native env")
    env.add_argument("--threads", type=int, default=1,
                     help="torch intra-op threads (0: torch's default); more threads only add "
                     "synchronisation at B=256 and stall badly when cores are shared")
    env.add_argument("--seed", type=int, default=0)
    env.add_argument("--json", action="store_true", help="print one JSON line instead of a table")

    tr = sub.add_parser("train", help="end-to-end training steps per second: ours vs sb3-contrib RecurrentPPO")
    tr.add_argument("--env-id", default=DEFAULT_ENV_ID)
    tr.add_argument("--seconds", type=float, default=15.0, help="timed seconds per trainer and round")
    tr.add_argument("--warmup", type=float, default=3.0, help="untimed warm-up seconds per trainer")
    tr.add_argument("--ours-envs", type=int, default=16, help="our parallel tasks B")
    tr.add_argument("--sb3-envs", type=int, default=16, help="RecurrentPPO's n_envs (n_steps = 2048 / n_envs)")
    tr.add_argument("--sb3-batch-size", type=int, default=128, help="RecurrentPPO minibatch size")
    tr.add_argument("--encoder", default="mlp", choices=["mlp", "cnn", "conv4"],
                    help="our encoder (mlp matches RecurrentPPO's; cnn is the default run's, for --no-sb3 profiles)")
    tr.add_argument("--encoder-hidden", type=int, nargs="+", default=[256, 256, 64])
    tr.add_argument("--core", default="lstm", help="our core (lstm matches RecurrentPPO)")
    tr.add_argument("--hidden", type=int, default=256, help="LSTM width of both")
    tr.add_argument("--threads", type=int, default=1)
    tr.add_argument("--encoder-precision", default="auto", choices=list(PRECISIONS),
                    help="our image encoder's arithmetic (auto: bfloat16 on CPUs with AMX)")
    tr.add_argument("--repeats", type=int, default=5, help="rounds of ours then RecurrentPPO (medians of these)")
    tr.add_argument("--no-sb3", dest="repeats_sb3", action="store_false", help="time ours only")
    tr.add_argument("--malloc", choices=["tuned", "default"], default="tuned",
                    help="glibc allocator: meta-rl's start-up settings (meta_rl.allocator) or glibc's defaults")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--json", action="store_true", help="print one JSON line instead of a table")

    tta = sub.add_parser("time-to-accuracy", help="training seconds to reach 90%% at the 2nd instance")
    tta.add_argument("--env-id", default=DEFAULT_ENV_ID, help="the SB3 baseline's task (ours: --config's)")
    tta.add_argument("--config", default=None, help="our TOML config (default: the default run)")
    tta.add_argument("--target", type=float, default=0.9, help="accuracy at the 2nd instance to reach")
    tta.add_argument("--cap-minutes", type=float, default=10.0, help="training-time cap per trainer")
    tta.add_argument("--eval-seconds", type=float, default=20.0, help="training seconds between evaluations")
    tta.add_argument("--eval-episodes", type=int, default=200, help="val tasks per evaluation")
    tta.add_argument("--sb3-envs", type=int, default=16)
    tta.add_argument("--threads", type=int, default=1)
    tta.add_argument("--device", default="cpu", help="device of our trainer and env (cuda on a GPU; SB3 stays on CPU)")
    tta.add_argument("--num-envs", type=int, default=0, help="our parallel tasks B (0: the config's)")
    tta.add_argument("--seed", type=int, default=0)
    tta.add_argument("--no-sb3", dest="with_sb3", action="store_false", help="time ours only")
    tta.add_argument("--json", action="store_true", help="print one JSON line instead of a table")
    tta.add_argument("overrides", nargs="*", metavar="key=value", help="changes to our config, as for meta-rl train")

    gpu = sub.add_parser("gpu", help="env and end-to-end training steps per second on CUDA (else CPU)")
    gpu.add_argument("--env-id", default=DEFAULT_ENV_ID)
    gpu.add_argument("--encoder", default="cnn", choices=["mlp", "conv4", "cnn"])
    gpu.add_argument("--batch", type=int, default=1024, help="parallel tasks B")
    gpu.add_argument("--device", default="auto", help="device of the env and trainer (auto: CUDA where present)")
    gpu.add_argument("--encoder-precision", default="auto", choices=list(PRECISIONS),
                     help="the encoder's arithmetic (bfloat16 on CUDA is a switch still to be measured)")
    gpu.add_argument("--cuda-graphs", action="store_true",
                     help="collect with the acting step replayed as a CUDA graph (cuda_graphs; CUDA only)")
    gpu.add_argument("--seconds", type=float, default=20.0, help="timed seconds for the env and for training")
    gpu.add_argument("--warmup", type=float, default=3.0)
    gpu.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    gpu.add_argument("--seed", type=int, default=0)
    gpu.add_argument("--json", action="store_true", help="print one JSON line instead of a table")

    sw = sub.add_parser("switches", help="end-to-end training steps per second with each speed switch off and on")
    sw.add_argument("--switch", action="append", default=[], metavar="KEY=OFF:ON",
                    help="a config key and its two values, e.g. encoder_precision=float32:bfloat16 (repeatable)")
    sw.add_argument("--config", default=None, help="TOML config (default: the default run)")
    sw.add_argument("--batch", type=int, default=1024, help="parallel tasks B")
    sw.add_argument("--device", default="auto", help="device of the env and trainer (auto: CUDA where present)")
    sw.add_argument("--seconds", type=float, default=10.0, help="timed training seconds per side and round")
    sw.add_argument("--warmup", type=float, default=3.0, help="untimed training seconds per side before the rounds")
    sw.add_argument("--repeats", type=int, default=3, help="rounds of off then on (medians of these)")
    sw.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    sw.add_argument("--seed", type=int, default=0)
    sw.add_argument("--json", action="store_true", help="print one JSON line instead of a table")
    sw.add_argument("overrides", nargs="*", metavar="key=value", help="changes to the config, on both sides")

    plug = sub.add_parser("plugin", help="a Python plug-in's steps per second: sync vs async worker processes")
    plug.add_argument("--num-envs", type=int, default=64, help="parallel tasks B")
    plug.add_argument("--workers", type=int, nargs="+", default=[1, 2, 0],
                      help="async worker counts to time (0: os.cpu_count()); sync is always timed")
    plug.add_argument("--seconds", type=float, default=5.0, help="timed seconds per mode, measure and round")
    plug.add_argument("--warmup", type=float, default=1.0, help="untimed warm-up seconds before each")
    plug.add_argument("--repeats", type=int, default=3, help="rounds over all modes (medians of these)")
    plug.add_argument("--no-collect", dest="collect", action="store_false",
                      help="time raw env stepping only, not the trainer's collect loop")
    plug.add_argument("--hidden", type=int, default=128, help="the acting policy's core size (the default config's)")
    plug.add_argument("--threads", type=int, default=1, help="torch threads of this process (0: torch's default)")
    plug.add_argument("--seed", type=int, default=0)
    plug.add_argument("--json", action="store_true", help="print one JSON line instead of a table")

    pr = sub.add_parser("predict", help="SB3 evaluate_policy / MetaPolicy.predict vs the trainer's batched rollout")
    pr.add_argument("--episodes", type=int, default=20, help="SB3 episodes (30 steps each) per round")
    pr.add_argument("--batch", type=int, default=16, help="envs B of the trainer's rollout")
    pr.add_argument("--rollouts", type=int, default=10, help="rollouts of B tasks per round")
    pr.add_argument("--core", default="memory", help="the policy's core (memory is the default)")
    pr.add_argument("--repeats", type=int, default=3, help="rounds (medians of these)")
    pr.add_argument("--threads", type=int, default=1)
    pr.add_argument("--seed", type=int, default=0)
    pr.add_argument("--json", action="store_true", help="print one JSON line instead of a table")
    return parser


COMMANDS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "env": bench_env, "train": bench_train, "time-to-accuracy": bench_time_to_accuracy, "gpu": bench_gpu,
    "switches": bench_switches, "plugin": bench_plugin, "predict": bench_predict,
}
#: Tables for results that are not one value per key (default: :func:`format_table`).
FORMATTERS: dict[str, Callable[[Mapping[str, Any]], str]] = {"plugin": format_plugin_table,
                                                             "switches": format_switches_table}


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    result = COMMANDS[args.command](args)
    if getattr(args, "json", False):
        print(json.dumps(result), flush=True)
    else:
        print(FORMATTERS.get(args.command, format_table)(result), flush=True)


if __name__ == "__main__":
    main()
