"""The meta-RL task suite: train every task with one default configuration and print the paper tables.

``python experiments/suite.py`` trains each task of :data:`TASKS` with ``TrainConfig``'s defaults
(only ``env_id`` changes, no per-task flags) for the same budget, evaluates it on held-out
(test-split) tasks, and prints one row per task beside the classic baselines played on the same
tasks and seeds and the published RL² figure (Duan et al. 2016, Tables 1 and 2: :data:`_RL2_BANDIT`).

* Bandits, MDPs and control report the return per trial (and by inner episode where a trial has
  several); the baselines come from the env (:func:`meta_rl.env_contract.reference_returns`).
* Classification reports accuracy (%) at the 1st / 2nd / 3rd / 5th / 10th instance; reward-only
  glyphs add the elimination oracle on the same streams and the agent's share of it; active
  glyphs add the label-request rate.

Usage::

    python experiments/suite.py                      # the core tasks, 10 minutes each
    python experiments/suite.py --all                # also the n = 500 bandits and the longer MDP trials
    python experiments/suite.py --tasks bandit-k5-n100,mdp-n10 --minutes 3
    python experiments/suite.py --minutes 2 gamma=0.9 # a lever: every task with the same override
    python experiments/suite.py --undeclared --steps N # trained as plug-ins: told nothing about the task
    python experiments/suite.py --compare --steps N    # both ways at the same env steps, side by side

Every figure goes to ``--out`` (default ``runs/suite``) as ``suite.json`` and ``suite.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from meta_rl.allocator import tune_malloc
from meta_rl.checkpoint import load_checkpoint
from meta_rl.config import TrainConfig, parse_overrides
from meta_rl.env_contract import reference_returns, task_length
from meta_rl.env_factory import make_vec_env
from meta_rl.envs.undeclared import register_undeclared
from meta_rl.evaluation import TABLE_INSTANCES, EvalResult, TrialReturns, evaluate_task, half_width95
from meta_rl.train import CHECKPOINT_NAME, build_policy, train

__all__ = ["TASKS", "SuiteTask", "main", "run_task"]

EVAL_SEED = 7_000_000  # held-out tasks of the suite (never the training or the trainer's held-out seeds)


@dataclass(frozen=True)
class SuiteTask:
    """One row of the suite.

    Attributes:
        env_id: the registered id (``meta_rl.envs``).
        reference: the published figure(s) to compare with.
        target: what the row must reach, in words.
        extended: run only with ``--all`` (the settings that need more than the default budget).
    """

    env_id: str
    reference: str
    target: str
    extended: bool = False


#: Published RL² rows from Duan et al. 2016, Tables 1 and 2 (return per trial).
_RL2_BANDIT = {(5, 10): 6.7, (10, 10): 6.7, (50, 10): 6.8, (5, 100): 78.7, (10, 100): 83.5, (50, 100): 84.9,
               (5, 500): 401.6, (10, 500): 432.5, (50, 500): 438.9}
_BANDIT_TARGET = {(5, 100): "≥ 77.0", (10, 100): "≥ 81.0", (5, 10): "≥ 6.5", (10, 10): "≥ 6.5", (50, 10): "≥ 6.5"}

TASKS: dict[str, SuiteTask] = {
    **{
        f"bandit-k{k}-n{n}": SuiteTask(f"meta_rl/Bandit-k{k}-n{n}-v0", f"RL² {_RL2_BANDIT[(k, n)]}",
                                       _BANDIT_TARGET.get((k, n), "report"), extended=n == 500)
        for n in (10, 100, 500)
        for k in (5, 10, 50)
    },
    "dependent-bandit": SuiteTask("meta_rl/DependentBandit-v0", "Wang et al. 2016 (no table)", "near the oracle"),
    "mdp-n10": SuiteTask("meta_rl/TabularMDP-n10-v0", "RL² 156.2", "≥ 150"),
    "mdp-n25": SuiteTask("meta_rl/TabularMDP-n25-v0", "Duan et al. Table 2", "report", extended=True),
    "mdp-n50": SuiteTask("meta_rl/TabularMDP-n50-v0", "Duan et al. Table 2", "report", extended=True),
    "point-nav": SuiteTask("meta_rl/PointNav-v0", "2nd - 1st episode +2.78 ± 0.25 (before)",
                           "2nd episode > 1st, 95% interval above 0"),
    "cartpole": SuiteTask("meta_rl/CartPole-v0", "oracle (LQR on the true physics)",
                          "2nd episode > 1st, 95% interval above 0"),
    "glyphs-label": SuiteTask("meta_rl/Glyphs-5way-v0", "MANN 36.4 / 82.8 / 91.0 / 92.6 / 94.9 / 98.1 (Omniglot)",
                              "2nd ≥ 90%, 1st ≥ 35%"),
    "glyphs-reward": SuiteTask("meta_rl/Glyphs-5way-Reward-v0", "elimination oracle (same streams)",
                               "≥ 85% of the oracle at every instance ≥ 2"),
    "glyphs-active": SuiteTask("meta_rl/Glyphs-5way-Active-v0", "Woodward & Finn 2017 (no table)",
                               "report accuracy and request rate"),
}


def _ci(x: torch.Tensor) -> tuple[float, float]:
    x = x.double()
    return float(x.mean()), float(half_width95(x))


def _oracle(env: Any, trials: int) -> EvalResult | None:
    """The elimination oracle on reward-only classification streams, where the env is one."""
    if getattr(env, "feedback", None) != "reward":
        return None
    from meta_rl.envs.classification_baselines import elimination_oracle

    return elimination_oracle(env, trials, seed=EVAL_SEED)


def score_run(cfg: TrainConfig, run_dir: Path, trials: int) -> dict[str, Any]:
    """The checkpoint in ``run_dir`` scored on ``trials`` test tasks (seed ``EVAL_SEED``) of ``cfg.env_id``, beside
    the task's baselines (return tasks) or the elimination oracle (reward-only classification). The policy is
    the one the run built (its saved config), whatever the env it is scored on declares."""
    env = make_vec_env(cfg, "test", min(trials, 500), torch.device("cpu"))
    length = cfg.rollout_steps or task_length(env)
    ckpt = load_checkpoint(run_dir / CHECKPOINT_NAME)
    built = TrainConfig.from_dict({**ckpt["config"], "env_id": cfg.env_id}, source=str(run_dir))
    policy = build_policy(built, env, length)
    policy.load_state_dict(ckpt["policy"])
    res = evaluate_task(env, policy, trials, seed=EVAL_SEED, steps=length)
    scored: dict[str, Any] = res.to_json()
    if isinstance(res, TrialReturns):
        scored["baselines"] = {k: _ci(v) for k, v in reference_returns(env, trials, EVAL_SEED).items()}
    elif isinstance(res, EvalResult):
        oracle = _oracle(env, trials)
        if oracle is not None:
            scored["oracle_by_instance"] = oracle.accuracy_by_instance
            scored["share_of_oracle"] = [a / o if o > 0 else float("nan")
                                         for a, o in zip(res.accuracy_by_instance, oracle.accuracy_by_instance)]
    env.close()
    return scored


def run_task(name: str, task: SuiteTask, out: Path, *, minutes: float, steps: int, trials: int, seed: int,
             overrides: dict[str, Any], undeclared: bool = False) -> dict[str, Any]:
    """Train ``task`` with the default config (plus ``overrides``), evaluate it on test tasks; one JSON row.

    With ``undeclared`` the training env is the task as a plug-in sees it (:func:`register_undeclared`); the
    scoring env is the task itself (the same test tasks, and its baselines)."""
    data = {**overrides, "env_id": task.env_id, "max_minutes": minutes, "total_env_steps": steps, "seed": seed,
            "eval_every": 0}
    cfg = TrainConfig.from_dict(data, source="the suite")
    trained = dataclasses.replace(cfg, env_id=register_undeclared(task.env_id)) if undeclared else cfg
    run_dir = out / name
    start = time.monotonic()
    result = train(trained, run_dir, progress=False)
    seconds = time.monotonic() - start
    return {"task": name, "env_id": task.env_id, "minutes": round(seconds / 60, 2), "env_steps": result["env_steps"],
            "updates": result["updates"], **score_run(cfg, run_dir, trials), "reference": task.reference,
            "target": task.target}


def _cell(row: dict[str, Any]) -> str:
    """The row's result in words for the markdown table."""
    if "return_per_trial" in row:
        text = f"{row['return_per_trial']:.2f} ± {row['return_per_trial_ci95']:.2f}"
        by_ep = list(row["return_by_episode"].values())
        if len(by_ep) > 1:
            # The interval is the paired one (task by task) of last - 1st, which for two episodes is 2nd - 1st;
            # episode k's own interval ("ci95") would overstate it, the two episodes of a task being correlated.
            change = f"{row['improvement']:+.2f} ± {row['improvement_ci95']:.2f}"
            text += f"; by episode {' / '.join(f'{m:.1f}' for m in by_ep)} "
            text += (f"(ep 2 - ep 1 {change})" if len(by_ep) == 2
                     else f"(ep 2 - ep 1 {by_ep[1] - by_ep[0]:+.2f}; last - 1st {change})")
        return text
    acc = list(row["accuracy_by_instance"].values())
    text = " / ".join(f"{100 * acc[k - 1]:.1f}" if k <= len(acc) else "-" for k in TABLE_INSTANCES)
    if "request_rate_by_instance" in row:
        req = list(row["request_rate_by_instance"].values())
        text += "; requests " + " / ".join(f"{100 * req[k - 1]:.0f}" for k in TABLE_INSTANCES if k <= len(req))
    if "share_of_oracle" in row:
        text += "; share of oracle " + " / ".join(
            f"{100 * row['share_of_oracle'][k - 1]:.0f}%" for k in TABLE_INSTANCES if k <= len(acc))
    return text


def _baselines_cell(row: dict[str, Any]) -> str:
    if "baselines" in row:
        return ", ".join(f"{k} {m:.1f}" for k, (m, _) in row["baselines"].items())
    if "oracle_by_instance" in row:
        o = row["oracle_by_instance"]
        return "oracle " + " / ".join(f"{100 * o[k - 1]:.1f}" for k in TABLE_INSTANCES if k <= len(o))
    return "-"


def markdown(rows: list[dict[str, Any]]) -> str:
    """The suite's table (BENCHMARKS.md's layout)."""
    lines = ["| task | minutes | env steps | this agent (test tasks) | baselines (same tasks) | published | target |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['task']} | {r['minutes']:.1f} | {r['env_steps']:,} | {_cell(r)} | {_baselines_cell(r)} "
                     f"| {r['reference']} | {r['target']} |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", help=f"comma-separated names (default: the core ones): {', '.join(TASKS)}")
    parser.add_argument("--all", action="store_true", help="also the extended tasks (n = 500 bandits, longer MDPs)")
    parser.add_argument("--minutes", type=float, default=10.0, help="training budget per task (default 10)")
    parser.add_argument("--steps", type=int, default=10**12, help="env-step budget per task (default: no limit)")
    parser.add_argument("--trials", type=int, default=1000, help="held-out tasks per evaluation (default 1000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/suite"), help="where runs and tables go")
    parser.add_argument("--undeclared", action="store_true",
                        help="train every task as a plug-in sees it: its spaces and trial structure, nothing it "
                             "declares (label requests, known images, baselines); scored on the task itself")
    parser.add_argument("--compare", action="store_true",
                        help="train every task both ways, as registered and undeclared, at the same --steps, and "
                             "print the two side by side (they must agree: the learner reads no declaration)")
    parser.add_argument("overrides", nargs="*", help="key=value for every task (to test a lever; none by default)")
    return parser


def compare_markdown(pairs: list[tuple[dict[str, Any], dict[str, Any]]]) -> str:
    """The ``--compare`` table: each task trained as registered and told nothing, at the same env steps."""
    lines = ["| task | env steps | declared (as registered) | undeclared (told nothing) | baselines (same tasks) "
             "| target |", "|---|---|---|---|---|---|"]
    for declared, undeclared in pairs:
        lines.append(f"| {declared['task']} | {declared['env_steps']:,} | {_cell(declared)} | {_cell(undeclared)} "
                     f"| {_baselines_cell(declared)} | {declared['target']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    tune_malloc()  # as meta-rl train does (meta_rl.allocator)
    args = build_parser().parse_args(argv)
    names = args.tasks.split(",") if args.tasks else [n for n, t in TASKS.items() if args.all or not t.extended]
    unknown = [n for n in names if n not in TASKS]
    if unknown:
        raise SystemExit(f"suite: unknown task(s) {unknown}; choose from {', '.join(TASKS)}.")
    if args.minutes <= 0 and args.steps >= 10**12:
        raise SystemExit("suite: give a budget: --minutes > 0 or --steps N.")
    if args.compare and (args.undeclared or args.steps >= 10**12):
        raise SystemExit("suite: --compare trains each task both ways at the same env steps: give --steps N "
                         "(and no --undeclared).")
    overrides = parse_overrides(args.overrides)
    modes = [("declared", False), ("undeclared", True)] if args.compare else [("", args.undeclared)]
    rows: dict[str, list[dict[str, Any]]] = {mode: [] for mode, _ in modes}
    for name in names:
        for mode, undeclared in modes:
            out = args.out / mode
            if (out / name).exists():
                raise SystemExit(f"suite: {out / name} exists; pass a new --out directory.")
            out.mkdir(parents=True, exist_ok=True)
            row = run_task(name, TASKS[name], out, minutes=args.minutes, steps=args.steps, trials=args.trials,
                           seed=args.seed, overrides=overrides, undeclared=undeclared)
            rows[mode].append(row)
            print(f"{name}{f' ({mode})' if mode else ''}: {_cell(row)}  [{_baselines_cell(row)}]", flush=True)
            saved = {"rows": rows[""]} if "" in rows else {"pairs": list(zip(rows["declared"], rows["undeclared"]))}
            (args.out / "suite.json").write_text(json.dumps({"overrides": overrides, "undeclared": args.undeclared,
                                                             "compare": args.compare, **saved}, indent=1))
    table = markdown(rows[""]) if "" in rows else compare_markdown(list(zip(rows["declared"], rows["undeclared"])))
    (args.out / "suite.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
