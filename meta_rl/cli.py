"""The ``meta-rl`` command: ``train`` and ``eval``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from meta_rl.atomic import WriteError
from meta_rl.baselines.cli import add_baseline_parser, evaluate_baseline_run, is_baseline_run
from meta_rl.checkpoint import CheckpointError, load_checkpoint, load_state
from meta_rl.config import ConfigError, TrainConfig, load_config, parse_overrides
from meta_rl.contract import reference_returns, task_length
from meta_rl.env_factory import make_vec_env
from meta_rl.evaluation import TrialReturns, evaluate_task, returns_table, santoro_table
from meta_rl.lifecycle import add_run_arguments
from meta_rl.train import (
    CHECKPOINT_NAME,
    NonFiniteError,
    TrainingInterrupted,
    build_policy,
    load_run_config,
    resolve_device,
    train,
)

__all__ = ["main"]


def _train(args: argparse.Namespace) -> int:
    if args.resume:
        if args.config:
            raise ConfigError("--resume continues a run with its saved config; do not also pass CONFIG.")
        run_dir = Path(args.resume)
        over = parse_overrides(args.overrides)
        named = over.get("env_module", args.env_module)
        saved = load_run_config(run_dir, env_module=named, flag="--env-module").to_dict()
        if "env_kwargs" in over:
            over["env_kwargs"] = {**saved["env_kwargs"], **over["env_kwargs"]}
        saved.update(over)
    else:
        if not args.run_dir:
            raise ConfigError("meta-rl train needs --run-dir DIR (or --resume DIR).")
        run_dir = Path(args.run_dir)
        saved = load_config(args.config, args.overrides).to_dict()
    if args.seed is not None:
        saved["seed"] = args.seed
    if args.max_minutes is not None:
        saved["max_minutes"] = args.max_minutes
    cfg = TrainConfig.from_dict(saved, source="the command line")
    result = train(cfg, run_dir, resume=bool(args.resume), progress=not args.no_progress)
    if os.environ.get("RANK", "0") == "0":  # under torchrun only rank 0 reports
        print(json.dumps(result))
    return 0


def _eval(args: argparse.Namespace) -> int:
    run_dir = Path(args.run_dir)
    if is_baseline_run(run_dir):  # a ProtoNet/MAML run from `meta-rl baseline`
        return evaluate_baseline_run(run_dir, args.episodes, args.split, args.seed, args.json)
    cfg = load_run_config(run_dir, env_module=args.env_module)
    ckpt = load_checkpoint(run_dir / CHECKPOINT_NAME)
    device = resolve_device(args.device or cfg.device)
    env = make_vec_env(cfg, args.split, min(args.batch, args.episodes), device)
    steps = cfg.rollout_steps or task_length(env)
    policy = build_policy(cfg, env, steps).to(device)
    load_state(policy, ckpt["policy"], run_dir / CHECKPOINT_NAME, "policy")
    result = evaluate_task(env, policy, args.episodes, seed=args.seed, steps=steps)
    baselines = reference_returns(env, args.episodes, args.seed) if isinstance(result, TrialReturns) else {}
    if args.json:
        out = result.to_json()
        if baselines:
            out["baselines"] = {name: float(r.double().mean()) for name, r in baselines.items()}
        print(json.dumps(out))
        return 0
    print(f"{cfg.env_id} ({args.split} split), {cfg.core} core, {cfg.encoder} encoder, "
          f"{int(ckpt['counters']['env_steps']):,} training steps")
    label = f"meta-rl {cfg.core} ({args.split})"
    if isinstance(result, TrialReturns):
        print(returns_table(result, baselines, label=label))
    else:
        print(santoro_table(result, label=label))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meta-rl", description="Meta-reinforcement learning on vision tasks.")
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train an agent (default: 5-way glyphs, episodic-memory core)")
    add_run_arguments(t, what="run", config="experiments/default.toml (default: the defaults)",
                      overrides="num_envs=32 env_kwargs.n_way=20")
    t.add_argument("--env-module", metavar="NAME",
                   help="with --resume: the plug-in module that registers the run's env (never imported from a "
                        "checkpoint unless named here)")
    t.set_defaults(func=_train)

    e = sub.add_parser("eval", help="evaluate a trained run on held-out tasks (accuracy or return)")
    e.add_argument("run_dir", help="a run directory written by meta-rl train")
    e.add_argument("--episodes", type=int, default=1000, help="held-out tasks (default 1000)")
    e.add_argument("--split", default="test", help="split to evaluate on (default test)")
    e.add_argument("--seed", type=int, default=12345, help="seed of the evaluation tasks")
    e.add_argument("--batch", type=int, default=250, help="tasks run in parallel")
    e.add_argument("--device", help="device (default: the run's)")
    e.add_argument("--json", action="store_true", help="print one JSON line")
    e.add_argument("--env-module", metavar="NAME",
                   help="the plug-in module that registers the run's env (never imported from a checkpoint unless "
                        "named here)")
    e.set_defaults(func=_eval)

    add_baseline_parser(sub)  # meta-rl baseline protonet|maml [CONFIG] --run-dir DIR [key=value ...]
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # Overrides may follow options ("train CONFIG --run-dir D k=v"), which argparse cannot take as
    # positionals after an option: collect them from the leftovers.
    args, extra = parser.parse_known_args(argv)
    if extra:
        if args.command not in ("train", "baseline") or any("=" not in x or x.startswith("-") for x in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    # "train CONFIG k=v": argparse cannot tell a config path from an override; a token with "=" is an override.
    if args.command == "train" and args.config and "=" in args.config:
        args.overrides = [args.config, *args.overrides]
        args.config = None
    try:
        return int(args.func(args))
    except (ConfigError, CheckpointError, WriteError) as exc:
        print(f"meta-rl: error: {exc}", file=sys.stderr)
        return 2
    except TrainingInterrupted as exc:  # SIGINT -> 130, SIGTERM -> 143, after a checkpoint
        print(f"meta-rl: {exc}", file=sys.stderr)
        return exc.exit_code
    except NonFiniteError as exc:
        print(f"meta-rl: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # outside the training loop, or a second Ctrl-C: stop at once
        resume = "meta-rl baseline --resume DIR" if args.command == "baseline" else "meta-rl train --resume DIR"
        print(f"meta-rl: interrupted; checkpoints already written are intact (resume with {resume}).",
              file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
