"""The ``meta-rl`` command: ``train`` and ``eval``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any

from meta_rl import __version__
from meta_rl.allocator import tune_malloc
from meta_rl.atomic import WriteError
from meta_rl.baselines.cli import add_baseline_parser, evaluate_baseline_run, is_baseline_run
from meta_rl.checkpoint import CheckpointError
from meta_rl.config import (
    ConfigError,
    TrainConfig,
    config_help,
    did_you_mean,
    load_config,
    named_configs,
    parse_overrides,
)
from meta_rl.env_contract import EnvCheckError, dataset_record, reference_returns
from meta_rl.evaluation import TrialReturns, evaluate_task, query_accuracy
from meta_rl.lifecycle import EnvStepTimeout, StopNow, add_run_arguments
from meta_rl.train import (
    NonFiniteError,
    TrainingInterrupted,
    load_run_config,
    train,
)
from meta_rl.trained_agent import load

__all__ = ["main"]


def _train(args: argparse.Namespace) -> int:
    if args.resume:
        if args.config:
            raise ConfigError("--resume continues a run with its saved config; do not also pass CONFIG.")
        run_dir = Path(args.resume)
        over = parse_overrides(args.overrides)
        named = over.get("env_module", args.env_module)
        saved = load_run_config(run_dir, env_module=named, model_module=over.get("model_module", args.model_module),
                                flag="--env-module").to_dict()
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
        print(json.dumps({k: round(v, 6) if isinstance(v, float) else v for k, v in result.items()}))
    return 0


def _eval(args: argparse.Namespace) -> int:
    run_dir = Path(args.run_dir)
    if is_baseline_run(run_dir):  # a ProtoNet/MAML run from `meta-rl baseline`
        if args.checkpoint != "last":
            raise ConfigError(f"{run_dir} is a baseline run, which keeps one checkpoint; --checkpoint "
                              f"{args.checkpoint} is for agent runs trained with SaveBestCheckpoint. Drop it.")
        if args.allow_dataset_change:
            raise ConfigError(f"{run_dir} is a baseline run, whose checkpoint records no dataset hash, so there is "
                              "no change to allow; drop --allow-dataset-change.")
        return evaluate_baseline_run(run_dir, args.episodes, args.split, args.seed, args.json)
    overrides = list(args.overrides)
    if args.shots is not None:  # N-way K-shot: the run's classes and setting, as shots then queries
        overrides += ["env_id=meta_rl/FewShot-v0", f"env_kwargs.shots={args.shots}",
                      f"env_kwargs.queries_per_class={args.queries}"]
    agent = load(run_dir, device=args.device, env_module=args.env_module, model_module=args.model_module,
                 overrides=overrides, checkpoint=args.checkpoint)
    cfg, ckpt = agent.config, agent.checkpoint
    env = agent.make_env(args.split, min(args.batch, args.episodes), allow_dataset_change=args.allow_dataset_change)
    dataset = _dataset_report(ckpt["dataset"], dataset_record(env))
    if args.shots is not None:
        return _print_query_accuracy(args, agent, env, dataset)
    result = evaluate_task(env, agent.policy, args.episodes, seed=args.seed, steps=agent.steps)
    baselines = reference_returns(env, args.episodes, args.seed) if isinstance(result, TrialReturns) else {}
    if args.json:
        out = result.to_json()
        if baselines:
            out["baselines"] = {name: float(r.double().mean()) for name, r in baselines.items()}
        if dataset:
            out["dataset"] = dataset
        print(json.dumps(out))
        return 0
    changed = f", evaluated with {' '.join(args.overrides)}" if args.overrides else ""
    print(f"{cfg.env_id} ({args.split} split), {cfg.core} core, {agent.policy.encoder_name} encoder, "
          f"{int(ckpt['counters']['env_steps']):,} training steps{changed}{_dataset_text(dataset)}")
    label = f"meta-rl {cfg.core} ({args.split})"
    print(result.table(label, baselines))
    return 0


def _dataset_report(trained: dict[str, str] | None, evaluated: dict[str, str] | None) -> dict[str, str]:
    """What ``meta-rl eval`` reports of the data: the evaluated dataset's name and content hash, and the trained
    one's where it differs (another dataset, or the same name with ``--allow-dataset-change``); {} for no dataset."""
    if evaluated is None:
        return {}
    out = dict(evaluated)
    if trained is not None and trained != evaluated:
        out.update(trained_name=trained["name"], trained_hash=trained["hash"])
    return out


def _dataset_text(dataset: dict[str, str]) -> str:
    """The header's dataset part: ``, dataset glyphs (content c5aaae80e851c439)`` and what the run trained on."""
    if not dataset:
        return ""
    text = f", dataset {dataset['name']} (content {dataset['hash']})"
    if "trained_hash" in dataset:
        text += f"; trained on {dataset['trained_name']} (content {dataset['trained_hash']})"
    return text


def _print_query_accuracy(args: argparse.Namespace, agent: Any, env: Any, dataset: dict[str, str]) -> int:
    """``meta-rl eval --shots K``: accuracy on the queries, beside the supervised baselines' K-shot figures."""
    acc, half, tasks = query_accuracy(env, agent.policy, args.episodes, agent.steps, seed=args.seed, shots=args.shots)
    n_way = int(getattr(env, "n_way", 0))
    if args.json:
        out: dict[str, Any] = {"accuracy": acc, "ci95": half, "episodes": tasks, "n_way": n_way, "shots": args.shots,
                               "queries_per_class": args.queries, "split": args.split, "core": agent.config.core}
        if dataset:
            out["dataset"] = dataset
        print(json.dumps(out))
    else:
        print(f"{n_way}-way {args.shots}-shot query accuracy ({agent.config.core} core, {args.split}): "
              f"{100 * acc:.1f} ± {100 * half:.1f} over {tasks} tasks{_dataset_text(dataset)}")
    return 0


def _add_module_flags(parser: argparse.ArgumentParser, when: str) -> None:
    """``--env-module`` and ``--model-module``: the user's modules a saved run needs, which meta-rl never imports
    because a checkpoint names them."""
    parser.add_argument("--env-module", metavar="NAME",
                        help=f"{when}the plug-in module that registers the run's env (never imported from a "
                             "checkpoint unless named here)")
    parser.add_argument("--model-module", metavar="NAME",
                        help=f"{when}the module that registers the run's own core or encoder (likewise)")


def _shown(text: str) -> str:
    return repr(text if len(text) <= 24 else f"{text[:20]}... ({len(text)} characters)")


def _whole_number(low: int, high: int | None, noun: str, hint: str) -> Any:
    """An argparse ``type``: a whole number from ``low`` to ``high`` (None: no upper bound), else an error
    saying the input is not a ``noun`` and what to use (``hint``)."""

    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            n = low - 1
        if n < low or (high is not None and n > high):
            raise argparse.ArgumentTypeError(f"{_shown(text)} is not a {noun}: {hint}")
        return n

    return parse


#: ``--seed`` of ``meta-rl eval``: a seed the task generators take, 0 <= seed < 2**64.
_eval_seed = _whole_number(0, 2**64 - 1, "seed", "use a whole number from 0 to 2**64 - 1, e.g. 12345")
#: A count of ``meta-rl eval`` (``--episodes``, ``--batch``, ``--shots``, ``--queries``).
_count = _whole_number(1, None, "count", "use a whole number >= 1")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meta-rl", description="Meta-reinforcement learning on vision tasks.")
    parser.add_argument("--version", action="version", version=f"meta-rl {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    names = ", ".join(named_configs())
    t = sub.add_parser("train", help="train an agent (default: 5-way glyphs, episodic-memory core)",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog=f"named configs: {names}\n\n{config_help(TrainConfig)}")
    add_run_arguments(t, what="run", config=f"a shipped name ({names}) or a .toml file (default: the defaults)",
                      overrides="num_envs=32 env_kwargs.n_way=20")
    _add_module_flags(t, "with --resume: ")
    t.set_defaults(func=_train)

    e = sub.add_parser("eval", help="evaluate a trained run on held-out tasks (accuracy or return)")
    e.add_argument("run_dir", help="a run directory written by meta-rl train")
    e.add_argument("overrides", nargs="*",
                   help="key=value changes to the task it is scored on, e.g. env_kwargs.dataset=fashion_mnist "
                        "env_kwargs.n_way=5 (the policy's architecture stays the run's)")
    e.add_argument("--episodes", type=_count, default=1000, help="held-out tasks (default 1000)")
    e.add_argument("--split", default="test", help="split to evaluate on (default test)")
    e.add_argument("--seed", type=_eval_seed, default=12345, help="seed of the evaluation tasks (0 to 2**64 - 1)")
    e.add_argument("--batch", type=_count, default=250, help="tasks run in parallel")
    e.add_argument("--device", help="device (default: the run's)")
    e.add_argument("--checkpoint", choices=("last", "best"), default="last",
                   help="last: checkpoint.pt (default); best: best.pt, the best held-out evaluation's (written by "
                        "the SaveBestCheckpoint callback)")
    e.add_argument("--json", action="store_true", help="print one JSON line")
    e.add_argument("--shots", type=_count, metavar="K",
                   help="score N-way K-shot tasks instead: K labelled shots per class, then queries that reveal "
                        "nothing (the supervised baselines' protocol); prints the query accuracy")
    e.add_argument("--queries", type=_count, default=15, help="with --shots: queries per class (default 15)")
    e.add_argument("--allow-dataset-change", action="store_true",
                   help="score the run on a dataset of the name it trained on whose content hash differs (another "
                        "machine's fonts, changed files); refused by default, as the results would not be comparable")
    _add_module_flags(e, "")
    e.set_defaults(func=_eval)

    add_baseline_parser(sub)  # meta-rl baseline protonet|maml [CONFIG] --run-dir DIR [key=value ...]
    return parser


def _unrecognized(extra: list[str], argv: list[str]) -> str:
    """The argparse error for leftover arguments, with a ``key=value`` hint for each ``--flag`` that is a key."""
    keys = [f.name for f in dataclasses.fields(TrainConfig)]
    hints = []
    for token in extra:
        if token.startswith("--"):
            name, _, value = token[2:].partition("=")
            key = did_you_mean(name, keys)
            if key is not None:
                i = argv.index(token)
                value = value or (argv[i + 1] if i + 1 < len(argv) and not argv[i + 1].startswith("-") else "...")
                hints.append(f"{key}={value}")
    message = f"unrecognized arguments: {' '.join(extra)}"
    if not hints:
        return message
    return f"{message}; did you mean {' '.join(hints)}? Config keys are set as key=value, without dashes."


def _run(args: argparse.Namespace) -> int:
    """Run the sub-command; each kind of failure ends in one line on stderr and its exit code."""
    try:
        return int(args.func(args))
    except (ConfigError, CheckpointError, WriteError) as exc:
        print(f"meta-rl: error: {exc}", file=sys.stderr)
        return 2
    except TrainingInterrupted as exc:  # SIGINT -> 130, SIGTERM -> 143, after a checkpoint
        print(f"meta-rl: {exc}", file=sys.stderr)
        return exc.exit_code
    except (NonFiniteError, EnvCheckError, EnvStepTimeout) as exc:  # a bad value or an env call that never returned
        print(f"meta-rl: error: {exc}", file=sys.stderr)
        return 1
    except StopNow as exc:  # a second SIGINT/SIGTERM during training
        print(f"meta-rl: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:  # outside the training loop: stop at once
        resume = "meta-rl baseline --resume DIR" if args.command == "baseline" else "meta-rl train --resume DIR"
        print(f"meta-rl: interrupted; checkpoints already written are intact (resume with {resume}).",
              file=sys.stderr)
        return 130


def main(argv: list[str] | None = None) -> int:
    tune_malloc()  # no mmap/munmap of the loop's large tensors every step (meta_rl.allocator; META_RL_MALLOC=0: off)
    parser = build_parser()
    # Overrides may follow options ("train CONFIG --run-dir D k=v"), which argparse cannot take as
    # positionals after an option: collect them from the leftovers.
    argv = sys.argv[1:] if argv is None else argv
    args, extra = parser.parse_known_args(argv)
    if extra:
        if any("=" not in x or x.startswith("-") for x in extra):
            parser.error(_unrecognized(extra, argv))
        args.overrides = [*args.overrides, *extra]
    if getattr(args, "no_progress", False):  # also the glyph build's bars, wherever the dataset is built
        os.environ["META_RL_PROGRESS"] = "0"
    # "train CONFIG k=v": argparse cannot tell a config path from an override; a token with "=" is an override.
    if args.command == "train" and args.config and "=" in args.config:
        args.overrides = [args.config, *args.overrides]
        args.config = None
    return _run(args)

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
