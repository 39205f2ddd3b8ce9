"""Query accuracy of a trained RL agent on N-way K-shot tasks (labelled shots, then queries).

The agent of a ``meta-rl train`` run (trained on the stream protocol) sees the shots with their
labels revealed one step later, then the queries, which reveal nothing; its answers on the
queries are scored. The tasks come from the same sampler, split and seed as the supervised
baselines' K-shot evaluation, so the figures sit side by side in BENCHMARKS.md.

    python experiments/kshot_eval.py RUN_DIR --shots 1 --queries 15 --episodes 1000 --json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math

import torch

from meta_rl.checkpoint import load_checkpoint
from meta_rl.contract import task_length
from meta_rl.evaluation import held_out_rollouts
from meta_rl.train import CHECKPOINT_NAME, build_policy, load_run_config, make_vec_env


def kshot_accuracy(run_dir: str, shots: int, queries: int, episodes: int, seed: int, split: str) -> dict[str, object]:
    """Mean query accuracy over ``episodes`` tasks and its 95% half-width (tasks as units)."""
    cfg = load_run_config(run_dir)
    kwargs = {**cfg.env_kwargs, "shots": shots, "queries_per_class": queries}
    cfg = dataclasses.replace(cfg, env_id="meta_rl/FewShot-v0", env_kwargs=kwargs)
    env = make_vec_env(cfg, split, min(250, episodes), torch.device("cpu"))
    steps = task_length(env)
    # The memory's capacity only sizes its state, so a longer task just gets more slots.
    policy = build_policy(dataclasses.replace(cfg, memory_capacity=steps), env, steps)
    policy.load_state_dict(load_checkpoint(f"{run_dir}/{CHECKPOINT_NAME}")["policy"])
    per_task = []
    for ro in held_out_rollouts(env, policy, episodes, steps, seed=seed):
        query = ro.instance > shots  # (T, B): the query steps
        per_task.append((ro.correct() & query).sum(0).double() / query.sum(0).double())  # (B,)
    acc = torch.cat(per_task)[:episodes]
    half = 1.96 * float(acc.std(unbiased=True)) / math.sqrt(acc.numel())
    return {
        "accuracy": float(acc.mean()), "ci95": half, "episodes": int(acc.numel()),
        "n_way": int(getattr(env, "n_way", 0)), "shots": shots, "queries_per_class": queries, "split": split,
        "core": cfg.core,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--shots", type=int, default=1)
    parser.add_argument("--queries", type=int, default=15)
    parser.add_argument("--episodes", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=12345)
    parser.add_argument("--split", default="test")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    res = kshot_accuracy(args.run_dir, args.shots, args.queries, args.episodes, args.seed, args.split)
    if args.json:
        print(json.dumps(res))
    else:
        acc, half = float(res["accuracy"]), float(res["ci95"])  # type: ignore[arg-type]
        print(f"{res['n_way']}-way {args.shots}-shot query accuracy ({res['core']} core, {args.split}): "
              f"{100 * acc:.1f} ± {100 * half:.1f} over {res['episodes']} tasks")


if __name__ == "__main__":
    main()
