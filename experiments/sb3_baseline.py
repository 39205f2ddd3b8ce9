"""A stable-baselines3 baseline: sb3-contrib's RecurrentPPO on the same few-shot task.

Trains ``RecurrentPPO("MultiInputLstmPolicy")`` on ``--env-id`` (default
``meta_rl/Glyphs-5way-v0``) with ``--n-envs`` single :class:`FewShotEnv` s in a ``DummyVecEnv``
for ``--steps`` env steps (give it the step budget of a meta-rl run), then reports Santoro's
accuracy by instance on held-out tasks (``--split test``) with 95% intervals, like
``meta-rl eval``::

    python experiments/sb3_baseline.py --steps 200000 [--json]

The policy mirrors the meta-rl MLP setting: the image goes through an MLP of
``--encoder-hidden`` sizes (default 256, 256, 64), the one-hot revealed label joins it, and an
LSTM of ``--lstm-hidden`` units (default 256) feeds linear heads. Unlike the meta-rl policy it
gets no previous action or reward (SB3's recurrent policies have no such inputs); with label
feedback the revealed label carries what the agent needs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from sb3_contrib import RecurrentPPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv
from torch import nn

import meta_rl.envs  # noqa: F401  (registers the ids)
from meta_rl.evaluation import MAX_INSTANCE, EvalResult, accuracy_by_instance, santoro_table, summarize

__all__ = ["MlpDictExtractor", "build_model", "evaluate_sb3", "main", "make_env"]

DEFAULT_ENV_ID = "meta_rl/Glyphs-5way-v0"
HELDOUT_SEED = 10_000


class MlpDictExtractor(BaseFeaturesExtractor):
    """Features of a ``Dict`` observation: an MLP on the flattened ``"image"``, concatenated with
    every other entry flattened (SB3 has already one-hot encoded ``Discrete`` entries and scaled
    images to [0, 1]). SB3's default ``CombinedExtractor`` uses NatureCNN, which does not fit
    28x28 images."""

    def __init__(self, observation_space: spaces.Dict, hidden: Sequence[int] = (256, 256, 64)) -> None:
        image = observation_space["image"]
        extras = {k: s for k, s in observation_space.spaces.items() if k != "image"}
        extra_dim = 0
        for s in extras.values():
            extra_dim += int(s.n) if isinstance(s, spaces.Discrete) else int(np.prod(s.shape or ()))
        super().__init__(observation_space, features_dim=int(hidden[-1]) + extra_dim)
        layers: list[nn.Module] = [nn.Flatten()]
        width = int(np.prod(image.shape or ()))
        for h in hidden:
            layers += [nn.Linear(width, int(h)), nn.ReLU()]
            width = int(h)
        self.mlp = nn.Sequential(*layers)
        self.extra_keys = sorted(extras)

    def forward(self, observations: dict[str, torch.Tensor]) -> torch.Tensor:
        parts = [self.mlp(observations["image"])]
        parts += [observations[k].flatten(1) for k in self.extra_keys]
        return torch.cat(parts, dim=1)


def make_env(env_id: str, n_envs: int, split: str, seed: int, **kwargs: Any) -> VecEnv:
    """``n_envs`` single envs of ``env_id`` on ``split`` in SB3's ``DummyVecEnv``, seeded with ``seed``."""
    fns: list[Callable[[], gym.Env[Any, Any]]] = [
        lambda: gym.make(env_id, split=split, **kwargs) for _ in range(n_envs)
    ]
    vec = DummyVecEnv(fns)
    vec.seed(seed)
    return vec


def build_model(
    env: VecEnv, *, encoder_hidden: Sequence[int] = (256, 256, 64), lstm_hidden: int = 256, n_steps: int = 128,
    n_epochs: int = 4, batch_size: int = 128, learning_rate: float = 3e-4, gamma: float = 0.0,
    ent_coef: float = 0.01, seed: int = 0, device: str = "cpu",
) -> RecurrentPPO:
    """RecurrentPPO with the meta-rl MLP setting (see the module docstring)."""
    policy_kwargs = {
        "features_extractor_class": MlpDictExtractor,
        "features_extractor_kwargs": {"hidden": tuple(encoder_hidden)},
        "lstm_hidden_size": int(lstm_hidden),
        "net_arch": [],
    }
    return RecurrentPPO(
        "MultiInputLstmPolicy", env, n_steps=n_steps, n_epochs=n_epochs, batch_size=batch_size,
        learning_rate=learning_rate, gamma=gamma, ent_coef=ent_coef, policy_kwargs=policy_kwargs,
        seed=seed, device=device, verbose=0,
    )


def evaluate_sb3(
    model: RecurrentPPO, env_id: str = DEFAULT_ENV_ID, episodes: int = 1000, *, split: str = "test",
    seed: int = HELDOUT_SEED, n_envs: int = 50, deterministic: bool = True, **kwargs: Any,
) -> EvalResult:
    """Accuracy by instance of ``model`` on ``episodes`` tasks of ``split``.

    Batches of ``n_envs`` tasks run for one task length (every task has the same length), with
    the model's LSTM states and ``episode_starts``; a step is correct where the action equals
    ``info["label"]``, and ``info["instance"]`` gives its instance index.
    """
    n_envs = min(n_envs, episodes)
    env = make_env(env_id, n_envs, split, seed, **kwargs)
    horizon = int(env.get_attr("episode_length")[0])
    hits, counts = [], []
    try:
        for _ in range(math.ceil(episodes / n_envs)):
            obs = env.reset()
            lstm_states = None
            starts = np.ones(n_envs, dtype=bool)
            correct = torch.zeros(horizon, n_envs, dtype=torch.bool)
            instance = torch.zeros(horizon, n_envs, dtype=torch.int64)
            for t in range(horizon):
                actions, lstm_states = model.predict(obs, state=lstm_states, episode_start=starts,  # type: ignore[arg-type]
                                                     deterministic=deterministic)
                obs, _, dones, infos = env.step(actions)
                for i, info in enumerate(infos):
                    correct[t, i] = int(actions[i]) == int(info["label"])
                    instance[t, i] = int(info["instance"])
                starts = dones
            h, c = accuracy_by_instance(correct, instance, MAX_INSTANCE)
            hits.append(h)
            counts.append(c)
    finally:
        env.close()
    return summarize(torch.cat(hits)[:episodes], torch.cat(counts)[:episodes])


class TimeLimit(BaseCallback):
    """Stops ``learn`` at the first step after ``seconds`` of training."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds
        self.start = 0.0

    def _on_training_start(self) -> None:
        self.start = time.perf_counter()

    def _on_step(self) -> bool:
        return time.perf_counter() - self.start < self.seconds


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--env-id", default=DEFAULT_ENV_ID)
    p.add_argument("--steps", type=int, required=True, help="training env steps (the meta-rl run's budget)")
    p.add_argument("--max-minutes", type=float, default=0.0, help="also stop after this many minutes (0: no limit)")
    p.add_argument("--n-envs", type=int, default=16)
    p.add_argument("--n-steps", type=int, default=128, help="rollout length per env (n_steps * n_envs = 2048)")
    p.add_argument("--n-epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--learning-rate", type=float, default=3e-4)
    p.add_argument("--gamma", type=float, default=0.0, help="0 is exact for label feedback (as for meta-rl)")
    p.add_argument("--encoder-hidden", type=int, nargs="+", default=[256, 256, 64])
    p.add_argument("--lstm-hidden", type=int, default=256)
    p.add_argument("--episodes", type=int, default=1000, help="held-out tasks to evaluate")
    p.add_argument("--split", default="test")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true", help="print one JSON line instead of a table")
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    with contextlib.redirect_stdout(sys.stderr):  # dataset builders may print progress
        env = make_env(args.env_id, args.n_envs, "train", args.seed)
    model = build_model(
        env, encoder_hidden=args.encoder_hidden, lstm_hidden=args.lstm_hidden, n_steps=args.n_steps,
        n_epochs=args.n_epochs, batch_size=args.batch_size, learning_rate=args.learning_rate, gamma=args.gamma,
        seed=args.seed, device=args.device,
    )
    start = time.perf_counter()
    model.learn(total_timesteps=args.steps, callback=TimeLimit(args.max_minutes * 60) if args.max_minutes else None)
    train_s = time.perf_counter() - start
    env.close()
    result = evaluate_sb3(model, args.env_id, args.episodes, split=args.split)
    if args.json:
        print(json.dumps({"learner": "sb3-contrib RecurrentPPO", "env_id": args.env_id,
                          "env_steps": int(model.num_timesteps), "train_s": round(train_s, 1),
                          "steps_per_s": round(model.num_timesteps / train_s, 1), **result.to_json()}), flush=True)
    else:
        print(santoro_table(result, "RecurrentPPO (sb3-contrib)"))
        print(f"trained {model.num_timesteps} env steps in {train_s:.0f} s ({model.num_timesteps / train_s:.0f}/s)")


if __name__ == "__main__":
    main()
