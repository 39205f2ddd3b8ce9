"""``python -m meta_rl.envs.task_baselines``: every classic baseline on every bandit, tabular-MDP and CartPole setting.

The baselines live beside their envs, which import them for ``reference_returns``:
:mod:`~meta_rl.envs.bandit_baselines`, :mod:`~meta_rl.envs.mdp_baselines` and
:mod:`~meta_rl.envs.cartpole_baselines`, with what they share (rounds, seeding, ``mean_ci``) in
:mod:`~meta_rl.envs.baseline_harness`. This command module imports the envs and plays them all;
nothing in the package imports it. ``--tasks`` picks settings by their labels (whole words:
``'n=10 k=5'`` is not ``n=10 k=50``); each baseline's time goes to stderr as it finishes.

Every baseline takes a constructed vector env, a seed and a number of trials; it plays
``ceil(trials / B)`` rounds of one trial per env, round i after ``env.reset(seed=seed + i)`` (as
:func:`meta_rl.evaluation.evaluate_task` seeds its batches), and returns the total reward of
every trial, float64 (trials,) on the CPU. The envs draw the same random numbers per step
whatever the actions, so one seed gives every baseline the same sequence of tasks, and
``reset(seed=...)`` with the split gives the same tasks a meta-learner is evaluated on. The
baselines' own randomness comes from a separate generator seeded from the same seed. Everything
runs as tensors over the B tasks (a Python loop over time steps only); none of them reads the
hidden task except the oracles (``bandit_oracle``, ``mdp_value_iteration``, ``cartpole_oracle``).

Bandits (:class:`~meta_rl.envs.bandits.BernoulliBanditVectorEnv`, Duan et al. 2016, Table 1):
``bandit_random``, ``bandit_greedy``, ``bandit_epsilon_greedy``, ``bandit_thompson``,
``bandit_ucb1``, ``bandit_gittins`` and ``bandit_oracle``.

Tabular MDPs (:class:`~meta_rl.envs.tabular_mdp.TabularMDPVectorEnv`, Table 2):
``mdp_random``, ``mdp_value_iteration`` (the known-MDP upper bound) and ``mdp_psrl``.

CartPole (:class:`~meta_rl.envs.cartpole.CartPoleTaskVectorEnv`): ``cartpole_random`` and
``cartpole_oracle`` (LQR on the known physics, ``cartpole_lqr_gain``). Their trials end at
different times, so they return (trials, episodes_per_trial) returns per inner episode of each
env's first trial. On ``meta_rl/CartPole-v0`` (2 inner episodes of at most 100 steps, 2,000
test-split trials, seed 0) random pushes last 26.4 +- 0.6 and 26.6 +- 0.7 steps per inner
episode and the oracle 100.0 and 100.0 (every episode).

The command prints the mean and a 95% interval (``mean_ci``) of every baseline's returns; with
its defaults (2,000 test-split trials, seed 0) it gave, against Duan et al.'s Table 1 (random /
Gittins / Thompson / UCB1 / greedy):

* k=5, n=10: 5.0 / 6.7 / 5.8 / 5.7 / 6.7 (paper 5.0 / 6.6 / 5.7 / 6.7 / 6.6);
* k=5, n=100: 49.8 / 78.8 / 75.3 / 65.9 / 75.9 (paper 49.9 / 78.3 / 74.7 / 78.0 / 74.8);
* k=50, n=500: 250.4 / 463.7 / 426.0 / 313.3 / 409.5 (paper 249.6 / 463.7 / 427.2 / 457.6 / 402.8).

The textbook UCB1 (``c=2``) explores more than the paper's tuned one (see ``bandit_ucb1``).
"""

from __future__ import annotations

import argparse
import functools
import re
import sys
import time
from collections.abc import Callable
from typing import Any

from meta_rl.envs.bandit_baselines import BANDIT_BASELINES
from meta_rl.envs.bandits import BernoulliBanditVectorEnv
from meta_rl.envs.baseline_harness import mean_ci
from meta_rl.envs.cartpole import CartPoleTaskVectorEnv
from meta_rl.envs.cartpole_baselines import CONTROL_BASELINES
from meta_rl.envs.mdp_baselines import MDP_BASELINES
from meta_rl.envs.tabular_mdp import TabularMDPVectorEnv

__all__ = ["main", "rows"]

Row = tuple[str, str, Callable[[argparse.Namespace], Any], dict[str, Any]]  # label, group, env factory, baselines


def rows() -> list[Row]:
    """Every setting the command plays, in order: (label, ``--only`` group, env factory, baselines by name)."""
    out: list[Row] = []
    for pulls in (10, 100, 500):
        for arms in (5, 10, 50):
            out.append((f"bandit n={pulls} k={arms}", "bandits", functools.partial(
                _bandit, arms=arms, pulls=pulls), BANDIT_BASELINES))
    for episodes in (10, 25, 50):
        out.append((f"tabular MDP n={episodes}", "mdps", functools.partial(_mdp, episodes=episodes), MDP_BASELINES))
    out.append(("cartpole", "control", _cartpole, CONTROL_BASELINES))
    return out


def _bandit(args: argparse.Namespace, arms: int, pulls: int) -> Any:
    return BernoulliBanditVectorEnv(args.num_envs, arms=arms, pulls=pulls, split=args.split)


def _mdp(args: argparse.Namespace, episodes: int) -> Any:
    return TabularMDPVectorEnv(args.num_envs, episodes_per_trial=episodes, split=args.split)


def _cartpole(args: argparse.Namespace) -> Any:
    return CartPoleTaskVectorEnv(args.num_envs, episodes_per_trial=2, max_episode_steps=100, split=args.split)


def _cell(returns: Any) -> str:
    """``mean +- half-width`` of a (trials,) return, or one per inner episode of a (trials, E) one."""
    if returns.ndim == 1:
        s = mean_ci(returns)
        return f"{s.mean:.1f} +- {s.high - s.mean:.1f}"
    cells = [mean_ci(returns[:, k]) for k in range(returns.shape[1])]
    return " ".join(f"ep{k + 1} {s.mean:.1f} +- {s.high - s.mean:.1f}" for k, s in enumerate(cells))


def main(argv: list[str] | None = None) -> None:
    """Print every baseline on every registered bandit, MDP and CartPole setting (``python -m
    meta_rl.envs.task_baselines``); progress (each baseline's time, and the time so far) goes to stderr."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--trials", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split", default="test")
    parser.add_argument("--num-envs", type=int, default=1000)
    parser.add_argument("--only", choices=["bandits", "mdps", "control"], default=None)
    parser.add_argument("--tasks", nargs="+", metavar="TEXT",
                        help="only the settings whose label contains one of these, e.g. 'n=10 k=5' 'MDP n=10'")
    args = parser.parse_args(argv)
    chosen = [r for r in rows() if args.only in (None, r[1]) and (not args.tasks or any(
        re.search(rf"(?:^|\s){re.escape(t)}(?:$|\s)", r[0]) for t in args.tasks))]  # whole words: k=5 is not k=50
    if not chosen:
        parser.error(f"no setting matches --only {args.only} --tasks {args.tasks}; the labels are: "
                     + ", ".join(r[0] for r in rows()))
    started = time.monotonic()
    for i, (label, _, make_env, baselines) in enumerate(chosen, start=1):
        env = make_env(args)
        cells = []
        for name, baseline in baselines.items():
            t0 = time.monotonic()
            cells.append(f"{name} {_cell(baseline(env, args.seed, args.trials))}")
            print(f"[{i}/{len(chosen)}] {label}: {name} took {time.monotonic() - t0:.1f} s "
                  f"({time.monotonic() - started:.0f} s so far)", file=sys.stderr, flush=True)
        print(f"{label}: " + ", ".join(cells), flush=True)


if __name__ == "__main__":
    main()
