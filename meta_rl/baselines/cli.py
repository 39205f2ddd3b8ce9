"""The ``baseline`` subcommand and the evaluation of a baseline run, for ``meta-rl``.

``meta-rl baseline protonet|maml [CONFIG] --run-dir DIR [--seed S] [--max-minutes M] [key=value ...]``
trains a baseline and ``meta-rl baseline --resume DIR [max_updates=N]`` continues one; ``meta-rl
eval DIR`` on its run directory calls :func:`evaluate_baseline_run` (:func:`is_baseline_run`
tells such a directory apart). ``python -m meta_rl baseline ...`` runs it without ``meta-rl``.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import torch

from meta_rl.baselines.config import BaselineConfig, load_baseline_config
from meta_rl.baselines.episodes import load_split
from meta_rl.baselines.eval_protocols import calibrate_stream_threshold, evaluate_kshot, evaluate_stream
from meta_rl.baselines.learner import Baseline
from meta_rl.baselines.maml import MAML, MAMLConfig
from meta_rl.baselines.protonet import ProtoNet, ProtoNetConfig, pixel_nn_accuracy
from meta_rl.baselines.training import RESUMABLE_KEYS, train_baseline
from meta_rl.checkpoint import CheckpointError, load_checkpoint
from meta_rl.config import ConfigError, config_help, named_configs, parse_overrides, resolve_device
from meta_rl.data import EpisodeSampler
from meta_rl.evaluation import HELDOUT_SEED, santoro_table
from meta_rl.lifecycle import CHECKPOINT_NAME, add_run_arguments

__all__ = [
    "BASELINES",
    "add_baseline_parser",
    "build_baseline",
    "evaluate_baseline_run",
    "is_baseline_run",
    "load_baseline_run",
    "run_baseline_command",
]

BASELINES: dict[str, tuple[type[BaselineConfig], type[Baseline]]] = {
    "protonet": (ProtoNetConfig, ProtoNet),
    "maml": (MAMLConfig, MAML),
}


def build_baseline(cfg: BaselineConfig, input_shape: tuple[int, int, int], device: torch.device) -> Baseline:
    """The learner for ``cfg`` (its class follows ``cfg.kind``)."""
    _, cls = BASELINES[cfg.kind]
    return cls(cfg, input_shape, device)  # type: ignore[call-arg]


def add_baseline_parser(subparsers: Any) -> None:
    """Add ``baseline protonet|maml [CONFIG] --run-dir DIR [key=value ...]`` to ``subparsers``.

    Overrides that follow an option reach argparse as leftovers of ``parse_known_args``; append them
    to ``args.overrides`` before calling ``args.func(args)`` (as :func:`main` does).
    """
    names = ", ".join(named_configs("baselines"))
    keys = "\n\n".join(f"{kind} ({cls.__name__}):\n{config_help(cls)}"
                        for kind, (cls, _) in sorted(BASELINES.items()))
    b = subparsers.add_parser(
        "baseline", help="train a supervised few-shot baseline (Prototypical Networks or MAML) on the same tasks",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=f"named configs: {names}\n\n{keys}",
    )
    b.add_argument("kind", nargs="?", help=f"which baseline: {' or '.join(sorted(BASELINES))} (not with --resume)")
    add_run_arguments(b, what="baseline run", config=f"a shipped name ({names}) or a .toml file",
                      overrides="n_way=20 shots=1 max_minutes=3")
    b.set_defaults(func=run_baseline_command)


def run_baseline_command(args: argparse.Namespace) -> int:
    """Train (or, with ``--resume``, continue) the baseline that ``args`` describes; print one JSON line."""
    kind, config, overrides = _split_positionals(args)
    if args.resume:
        if kind or args.run_dir:
            raise ConfigError("--resume DIR continues a baseline run with its saved kind and config; pass only "
                              "key=value overrides of its run length (max_updates, max_minutes) besides it.")
        if args.seed is not None:
            raise ConfigError("--seed cannot change when a run is resumed; start a new run with --run-dir NEW_DIR.")
        cfg = _saved_config(Path(args.resume), overrides)
        run_dir = args.resume
    else:
        if not kind or not args.run_dir:
            raise ConfigError("meta-rl baseline needs a kind (protonet or maml) and --run-dir DIR, or --resume DIR.")
        if kind not in BASELINES:
            raise ConfigError(f"baseline kind {kind!r} is not one of {sorted(BASELINES)}; e.g. meta-rl baseline "
                              "protonet --run-dir DIR.")
        cfg_cls, _ = BASELINES[kind]
        cfg = load_baseline_config(cfg_cls, config, overrides)
        run_dir = args.run_dir
    if args.seed is not None:
        cfg.seed = args.seed
    if args.max_minutes is not None:
        cfg.max_minutes = args.max_minutes
    cfg.validate()
    result = train_baseline(cfg, build_baseline, run_dir, resume=bool(args.resume), progress=not args.no_progress)
    print(json.dumps(result))
    return 0


def _split_positionals(args: argparse.Namespace) -> tuple[str | None, str | None, list[str]]:
    """(kind, config, overrides) from the positionals: argparse cannot tell a kind or a config path from an
    override, so a token with "=" is an override."""
    tokens = [t for t in (args.kind, args.config) if t]
    named = [t for t in tokens if "=" not in t]
    overrides = [t for t in tokens if "=" in t] + list(args.overrides or [])
    return (named[0] if named else None), (named[1] if len(named) > 1 else None), overrides


def _saved_config(run_dir: Path, overrides: list[str]) -> BaselineConfig:
    """The config of the baseline run in ``run_dir``, with ``key=value`` ``overrides`` applied."""
    path = run_dir / CHECKPOINT_NAME
    ckpt = load_checkpoint(path)
    kind = ckpt.get("kind")
    if kind not in BASELINES:
        raise CheckpointError(f"checkpoint {path} is not a baseline's (kind {kind!r}); resume it with meta-rl train "
                              f"--resume {run_dir}.")
    cfg_cls, _ = BASELINES[kind]
    over = parse_overrides(overrides)
    fixed = sorted(set(over) - set(RESUMABLE_KEYS))
    if fixed:
        raise ConfigError(
            f"{', '.join(fixed)} cannot change when a run is resumed (only {', '.join(RESUMABLE_KEYS)} can); start a "
            f"new run with meta-rl baseline {kind} --run-dir NEW_DIR instead."
        )
    return cfg_cls.from_dict({**ckpt["config"], **over}, source=f"{path} + overrides")


def is_baseline_run(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` holds a checkpoint written by a baseline (one with a ``kind`` marker)."""
    path = Path(run_dir) / CHECKPOINT_NAME
    if not path.is_file():
        return False
    return load_checkpoint(path).get("kind") in BASELINES


def load_baseline_run(run_dir: str | Path) -> Baseline:
    """Rebuild the trained learner of a baseline run directory.

    Raises:
        CheckpointError: there is no checkpoint, or it is not a baseline's.
    """
    path = Path(run_dir) / CHECKPOINT_NAME
    ckpt = load_checkpoint(path)
    kind = ckpt.get("kind")
    if kind not in BASELINES:
        raise CheckpointError(
            f"checkpoint {path} has kind {kind!r}, not one of {sorted(BASELINES)}; evaluate RL runs with meta-rl eval."
        )
    cfg_cls, _ = BASELINES[kind]
    cfg = cfg_cls.from_dict(ckpt["config"], source=str(path))
    try:
        device = resolve_device(cfg.device)
    except ConfigError:
        device = torch.device("cpu")  # trained on a GPU, evaluated without one
    data = load_split(cfg, cfg.train_split)
    baseline = build_baseline(cfg, data.image_shape, device)
    baseline.model.load_state_dict(ckpt["policy"])
    baseline.model.eval()
    return baseline


def evaluate_baseline_run(run_dir: str | Path, episodes: int, split: str, seed: int, as_json: bool) -> int:
    """Print a baseline run's N-way K-shot accuracy and its streaming accuracy by instance on ``split``.

    K-shot: query accuracy with a 95% interval over ``episodes`` tasks, beside the raw-pixel
    nearest-neighbour floor on the same tasks. Streaming: Santoro's protocol on ``episodes``
    streams of N classes x ``stream_instances`` images, with the novelty threshold calibrated on
    the training split. With ``as_json`` one JSON line: ``accuracy_by_instance``, ``ci95``,
    ``episodes``, ``accuracy`` (streaming) plus ``kshot_accuracy``, ``kshot_ci95`` and more.

    Returns:
        0 (errors raise :class:`CheckpointError` or :class:`ConfigError`).
    """
    if episodes < 1:
        raise ConfigError(f"--episodes must be >= 1, got {episodes}.")
    baseline = load_baseline_run(run_dir)
    cfg = baseline.cfg
    device = next(iter(baseline.model.parameters()), torch.empty(0)).device
    data = load_split(cfg, split)
    train_data = load_split(cfg, cfg.train_split)
    try:
        kshot_sampler = EpisodeSampler(data, cfg.n_way, shots=cfg.shots, queries_per_class=cfg.queries_per_class,
                                       device=device)
        stream_sampler = EpisodeSampler(data, cfg.n_way, cfg.stream_instances, device=device)
        calib_sampler = EpisodeSampler(train_data, cfg.n_way, cfg.stream_instances, device=device)
    except ValueError as exc:
        raise ConfigError(f"cannot evaluate on split {split!r}: {exc}") from exc
    kshot = evaluate_kshot(baseline.logits, kshot_sampler, episodes, seed=seed, batch=cfg.eval_batch)
    floor = pixel_nn_accuracy(kshot_sampler, episodes, seed=seed, batch=cfg.eval_batch)
    streams = min(episodes, cfg.stream_eval_episodes) if cfg.stream_eval_episodes else episodes
    calibration = min(cfg.calibration_episodes, streams)  # streams are costly for MAML: no more than evaluated
    threshold = calibrate_stream_threshold(baseline, calib_sampler, calibration, batch=cfg.eval_batch)
    stream = evaluate_stream(baseline, stream_sampler, streams, seed=seed + HELDOUT_SEED, threshold=threshold,
                             batch=cfg.eval_batch)
    if as_json:
        print(json.dumps({
            **stream.to_json(),
            "kshot_accuracy": kshot.accuracy,
            "kshot_ci95": kshot.ci95,
            "kshot_episodes": kshot.episodes,
            "pixel_nn_accuracy": floor.accuracy,
            "pixel_nn_ci95": floor.ci95,
            "kind": cfg.kind,
            "n_way": cfg.n_way,
            "shots": cfg.shots,
            "split": split,
            "novelty_threshold": threshold if math.isfinite(threshold) else None,
        }))
        return 0
    order = "second" if isinstance(cfg, MAMLConfig) and not cfg.first_order else "first"
    name = cfg.kind if cfg.kind != "maml" else f"maml ({order}-order)"
    print(f"{name} on {cfg.dataset} ({split} split), {cfg.encoder} encoder")
    print(f"{cfg.n_way}-way {cfg.shots}-shot query accuracy over {kshot.episodes} tasks "
          f"({cfg.queries_per_class} queries per class):")
    print(f"  {name:<30} {100 * kshot.accuracy:5.1f} ± {100 * kshot.ci95:.1f}%")
    nn_name = "raw-pixel 1-NN" if cfg.shots == 1 else "raw-pixel nearest class mean"
    print(f"  {nn_name:<30} {100 * floor.accuracy:5.1f} ± {100 * floor.ci95:.1f}%")
    print(f"Streaming ({cfg.n_way}-way, {cfg.stream_instances} instances per class; a new class is guessed among "
          f"unrevealed labels when novelty > {threshold:.4g}, calibrated on {cfg.train_split} streams):")
    print(santoro_table(stream, label=f"{name} ({split})"))
    return 0



if __name__ == "__main__":  # pragma: no cover - the entry point moved: say where instead of doing nothing
    raise SystemExit("meta_rl.baselines.cli is no longer a command: use python -m meta_rl baseline|eval ARGS.")
