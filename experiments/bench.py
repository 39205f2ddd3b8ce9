"""Benchmarks for meta_rl.

Subcommands:

* ``env``: env steps per second of the torch-native :class:`FewShotVectorEnv` against
  gymnasium's ``SyncVectorEnv`` of single :class:`FewShotEnv` s, on the same task.

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
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from meta_rl.data import ImageDataset, load_splits
from meta_rl.envs import FewShotEnv, FewShotVectorEnv

DEFAULT_ENV_ID = "meta_rl/Glyphs-5way-v0"
ACTION_POOL = 512  # pre-generated action batches, cycled through


def synthetic_dataset(num_classes: int = 200, images_per_class: int = 20, seed: int = 0) -> ImageDataset:
    """A random 1x28x28 dataset, so the bench runs without building the glyphs."""
    g = torch.Generator().manual_seed(seed)
    n = num_classes * images_per_class
    images = torch.randint(0, 256, (n, 1, 28, 28), generator=g, dtype=torch.uint8)
    labels = torch.arange(num_classes).repeat_interleave(images_per_class)
    names = tuple(f"class{c}" for c in range(num_classes))
    groups = tuple(f"group{c % 10}" for c in range(num_classes))
    return ImageDataset(images, labels, names, groups, "synthetic")


def resolve_dataset(name: str) -> str | ImageDataset:
    """``"synthetic"`` gives an in-process random dataset; any other source is loaded (and cached) now."""
    if name == "synthetic":
        return synthetic_dataset()
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
        "torch_steps_per_s": round(torch_sps, 1),
        "sync_steps_per_s": round(sync_sps, 1),
        "ratio": round(torch_sps / sync_sps, 2),
        "env_id": args.env_id,
        "dataset": args.dataset,
        "batch": batch,
        "device": str(device),
        "n_way": int(kwargs.get("n_way", 5)),
        "feedback": kwargs.get("feedback", "label"),
        "episode_length": episode_length,
        "seconds_each": args.seconds,
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
    return parser


COMMANDS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {"env": bench_env}


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    result = COMMANDS[args.command](args)
    if getattr(args, "json", False):
        print(json.dumps(result), flush=True)
    else:
        print(format_table(result), flush=True)


if __name__ == "__main__":
    main()
