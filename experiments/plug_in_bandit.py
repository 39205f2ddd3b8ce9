"""A Bernoulli bandit written as an ordinary ``gymnasium.Env``, plugged in as the README shows, trained as is.

``meta-rl eval RUN --env-module plug_in_bandit`` prints its two baselines beside the agent, on the same tasks:
``random`` (a uniformly random arm every pull) and ``oracle`` (always the best arm, read from the task).

Each task draws the 5 arms' pay probabilities uniformly from [0, 1]; a trial is 100 pulls. The env
declares nothing but its spaces, and the trial structure comes from ``register_gym_task``, so the
learner meets the suite's ``meta_rl/Bandit-k5-n100-v0`` the way a user's own task would reach it
(issue 32: 60.6 per trial here against 77.5 registered, when the learner read what envs declare).
Random play earns 50 per trial; on the suite's test tasks of the same distribution greedy play earns
76.0, Thompson sampling 75.3 and the Gittins index 78.6 (BENCHMARKS.md).

    python experiments/plug_in_bandit.py --minutes 10 --run-dir /tmp/bandit           # the defaults
    python experiments/plug_in_bandit.py --minutes 10 --run-dir /tmp/bandit0 gamma=0  # a myopic learner
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import plug_in_runs

from meta_rl.envs.gym_tasks import register_gym_task

ARMS, PULLS = 5, 100


class BernoulliBandit(gym.Env):
    """``ARMS`` arms, arm j paying 1 with probability ``p[j]``; the observation is a constant."""

    observation_space = gym.spaces.Box(0.0, 1.0, (1,), np.float32)
    action_space = gym.spaces.Discrete(ARMS)

    def __init__(self) -> None:
        self.p = np.full(ARMS, 0.5)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        return np.zeros(1, np.float32), {}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        paid = float(self.np_random.random() < self.p[int(action)])
        return np.zeros(1, np.float32), paid, False, False, {}


def make_bandit() -> gym.Env:
    return BernoulliBandit()


def sample_arms(env: gym.Env, rng: np.random.Generator) -> None:
    """A new task: every arm's pay probability uniform in [0, 1]."""
    env.unwrapped.p = rng.random(ARMS)  # type: ignore[attr-defined]


def random_arm(env: gym.Env, observation: np.ndarray, rng: np.random.Generator) -> int:
    """The random baseline: any arm, uniformly, every pull."""
    return int(rng.integers(ARMS))


def best_arm(env: gym.Env, observation: np.ndarray, rng: np.random.Generator) -> int:
    """The oracle: the arm with the highest pay probability of this task (which no learner is told)."""
    return int(np.argmax(env.unwrapped.p))  # type: ignore[attr-defined]


register_gym_task("mine/Bandit-v0", make_bandit, sample_arms, episodes_per_trial=1, max_episode_steps=PULLS,
                  baselines={"random": random_arm, "oracle": best_arm})


def main() -> None:
    plug_in_runs.main(__doc__.split("\n")[0], "mine/Bandit-v0", "plug_in_bandit", budget="minutes", default=10.0)


if __name__ == "__main__":
    main()
