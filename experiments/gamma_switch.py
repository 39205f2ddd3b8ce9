"""A γ switch: train with the defaults (γ = 0), then go on from that checkpoint with a longer γ.

This tests one lever of issue 12: let the myopic learner find the greedy policy first, then
credit exploration across the trial. ``meta-rl train --resume`` refuses a changed γ on purpose
(a resumed run must be the run it was); this experiment lifts that guard for phase 2 only, in a
copy of the phase-1 run directory, and scores both checkpoints on the same held-out tasks.

    python experiments/gamma_switch.py --env-id meta_rl/Bandit-k5-n100-v0 --switch-steps 7000000 \
        --total-steps 12000000 --out /tmp/gswitch gamma=0.99 gae_lambda=0.3
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from unittest import mock

from suite import score_run  # beside this file (python experiments/gamma_switch.py)

from meta_rl.config import TrainConfig, parse_overrides
from meta_rl.train import train


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env-id", required=True)
    parser.add_argument("--switch-steps", type=int, required=True, help="env steps of phase 1 (the defaults)")
    parser.add_argument("--total-steps", type=int, required=True, help="env steps at the end of phase 2")
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/gamma_switch")
    parser.add_argument("phase2", nargs="*", help="key=value changes for phase 2, e.g. gamma=0.99")
    args = parser.parse_args(argv)
    if args.total_steps <= args.switch_steps:
        parser.error(f"--total-steps ({args.total_steps}) must exceed --switch-steps ({args.switch_steps}).")
    out = Path(args.out)
    first, second = out / "phase1", out / "phase2"
    cfg = TrainConfig(env_id=args.env_id, total_env_steps=args.switch_steps, eval_every=0, seed=args.seed)
    train(cfg, first, progress=False)
    shutil.copytree(first, second, dirs_exist_ok=True)
    cfg2 = TrainConfig.from_dict({**cfg.to_dict(), **parse_overrides(args.phase2), "total_env_steps": args.total_steps},
                                 source="the command line")
    with mock.patch("meta_rl.train._check_resumable"):  # the one guard this experiment lifts
        train(cfg2, second, resume=True, progress=False)
    print(json.dumps({"switch_steps": args.switch_steps, "total_steps": args.total_steps, "phase2": args.phase2,
                      "at_switch": score_run(cfg, first, args.trials), "after": score_run(cfg2, second, args.trials)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
