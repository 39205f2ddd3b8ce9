"""What the plug-in examples share: train a registered plug-in with the defaults, then score it on held-out tasks.

``plug_in_bandit.py`` and ``plug_in_goal_grid.py`` register their ``gymnasium.Env`` with
``register_gym_task`` and call :func:`main` with their id, their module and how their budget is given.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import meta_rl
from meta_rl.config import TrainConfig
from meta_rl.evaluation import trial_returns
from meta_rl.train import train

__all__ = ["main"]


def main(description: str, env_id: str, module: str, *, budget: str, default: float) -> dict[str, Any]:
    """Parse ``--run-dir``, ``--trials``, the budget flag and ``key=value`` overrides; train, score, print JSON.

    Args:
        description: the script's one-line description (``--help``).
        env_id, module: the plug-in's registered id and the module that registers it.
        budget: ``"steps"`` (``--steps``, env steps) or ``"minutes"`` (``--minutes``, wall-clock).
        default: the budget when the flag is not given.

    Returns:
        What was printed: env steps, minutes, return per trial and by inner episode with 95% half-widths.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(f"--{budget}", type=float, default=default, help=f"training budget (default {default:g})")
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--trials", type=int, default=1000, help="held-out tasks scored")
    parser.add_argument("overrides", nargs="*", help="key=value config changes, e.g. gamma=0")
    args = parser.parse_args()
    limit = (f"total_env_steps={int(args.steps)}" if budget == "steps"
             else f"max_minutes={args.minutes}")
    cfg = TrainConfig.load(None, [f"env_id={env_id}", f"env_module={module}", limit, "eval_every=0",
                                  *args.overrides])
    result = train(cfg, args.run_dir, progress=False)
    agent = meta_rl.load(args.run_dir, env_module=module)  # you trust your own module
    res = trial_returns(agent.make_env("test", min(250, args.trials)), agent.policy, trials=args.trials)
    out = {"overrides": args.overrides, "env_steps": result["env_steps"], "minutes": round(result["minutes"], 2),
           "return_by_episode": [round(m, 3) for m in res.mean], "ci95": [round(c, 3) for c in res.ci95],
           "improvement": round(res.improvement, 3), "improvement_ci95": round(res.improvement_ci95, 3),
           "return_per_trial": round(res.total, 3), "return_per_trial_ci95": round(res.total_ci95, 3)}
    print(json.dumps(out))
    return out
