"""A plug-in task the suite never trained on: find a hidden goal on a 5x5 grid, then go straight back to it.

Each task hides the goal on a cell other than the centre, where every episode starts. Reaching the
goal pays 1 and ends the episode (so episodes end early, at the agent's doing); a trial is three
episodes of at most 20 steps with the same goal. An agent that remembers where it found the goal
earns close to 1 in episodes 2 and 3. It is trained with the default config, the same for
every task, unless overrides say otherwise:

    python experiments/plug_in_goal_grid.py --steps 3000000 --run-dir /tmp/grid            # the defaults
    python experiments/plug_in_goal_grid.py --steps 3000000 --run-dir /tmp/grid0 gamma=0   # a myopic learner
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import plug_in_runs

from meta_rl.envs.gym_tasks import register_gym_task

SIZE = 5
CENTRE = SIZE // 2
MOVES = np.array([[0, 1], [0, -1], [1, 0], [-1, 0]])


class GoalGrid(gym.Env):
    """A 5x5 grid; observation: the agent's (row, column) / 4; actions: right, left, down, up; reward 1 at the goal."""

    observation_space = gym.spaces.Box(0.0, 1.0, (2,), np.float32)
    action_space = gym.spaces.Discrete(4)

    def __init__(self) -> None:
        self.goal = np.array([SIZE - 1, SIZE - 1])
        self.pos = np.array([CENTRE, CENTRE])

    def _obs(self) -> np.ndarray:
        return (self.pos / (SIZE - 1)).astype(np.float32)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.pos = np.array([CENTRE, CENTRE])
        return self._obs(), {}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        self.pos = np.clip(self.pos + MOVES[int(action)], 0, SIZE - 1)
        at_goal = bool((self.pos == self.goal).all())
        return self._obs(), float(at_goal), at_goal, False, {}


def make_grid() -> gym.Env:
    return GoalGrid()


def sample_goal(env: gym.Env, rng: np.random.Generator) -> None:
    """A new task: the goal on any cell but the centre."""
    cell = int(rng.integers(0, SIZE * SIZE - 1))
    cell += cell >= CENTRE * SIZE + CENTRE  # skip the centre
    env.unwrapped.goal = np.array(divmod(cell, SIZE))  # type: ignore[attr-defined]


register_gym_task("mine/GoalGrid-v0", make_grid, sample_goal, episodes_per_trial=3, max_episode_steps=20)


def main() -> None:
    plug_in_runs.main(__doc__.split("\n")[0], "mine/GoalGrid-v0", "plug_in_goal_grid", budget="steps",
                      default=3_000_000)


if __name__ == "__main__":
    main()
