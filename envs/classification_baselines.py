"""The reward-only limit of few-shot classification: an oracle that knows which images share a class.

With ``feedback="reward"`` (``meta_rl/Glyphs-5way-Reward-v0``) an agent is told only whether
its answer was right, so even a perfect recogniser has to find each class's label by trial
and error. :func:`elimination_oracle` plays that recogniser: it is told which images belong to
the same class (it never looks at what the label is) and picks each answer from the rewards
so far. Its accuracy by instance is the ceiling a trained agent on the same env can approach;
it is measured exactly as :func:`meta_rl.evaluation.evaluate` measures an agent (batch i after
``env.reset(seed=seed + i)``, :func:`~meta_rl.evaluation.accuracy_by_instance` and
:func:`~meta_rl.evaluation.summarize`), so the two tables compare task for task.

``python -m meta_rl.envs.classification_baselines --episodes 2000 --split test --n-way 5``
prints its table on the glyph test split.
"""

from __future__ import annotations

import argparse
import itertools
import math
from typing import Any

import torch

from meta_rl.envs.classification import FewShotVectorEnv
from meta_rl.envs.task_vector_env import check_seed
from meta_rl.evaluation import MAX_INSTANCE, EvalResult, accuracy_by_instance, santoro_table, summarize

__all__ = ["EXACT_MAX_WAY", "class_ids", "elimination_oracle", "main"]

#: Up to this many classes the oracle tracks all n_way! label assignments (7! = 5040 per task).
EXACT_MAX_WAY = 7
_ORACLE_STREAM = 0xE11A  # keeps the oracle's tie-breaking apart from the env's generator for the same seed


def class_ids(labels: torch.Tensor) -> torch.Tensor:
    """Class identities of a stream, numbered by first appearance, computed through equality only.

    Args:
        labels: int64 (B, T), any values that are equal exactly where two steps show the same class.

    Returns:
        int64 (B, T): 0 for the class of step 0, 1 for the next new class, and so on. The values
        of ``labels`` never enter: the same stream with its labels renamed gives the same ids.
    """
    t = labels.shape[1]
    same = labels.unsqueeze(2) == labels.unsqueeze(1)  # (B, T, T): steps t and s show the same class
    first = same.to(torch.uint8).argmax(2)  # (B, T): the first step showing the class of step t
    steps = torch.arange(t, device=labels.device)
    rank = (first == steps).long().cumsum(1) - 1  # (B, T): new classes seen up to t, minus one
    return torch.gather(rank, 1, first)


def _random_argmax(score: torch.Tensor, allowed: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """(B,) a uniformly random index among the allowed maxima of each row of ``score`` (B, N)."""
    best = torch.where(allowed, score, torch.full_like(score, -1)).amax(1, keepdim=True)  # (B, 1)
    ties = allowed & (score == best)  # (B, N)
    noise = torch.rand(score.shape, generator=generator, device=score.device)  # (B, N)
    return torch.where(ties, noise, torch.full_like(noise, -1.0)).argmax(1)


class _ExactPosterior:
    """Every label assignment consistent with the rewards so far, as a (B, P) mask over the P = n! permutations."""

    def __init__(self, batch: int, n_way: int, device: torch.device) -> None:
        perms = torch.tensor(list(itertools.permutations(range(n_way))), dtype=torch.int64, device=device)  # (P, N)
        self.by_class = perms.T.contiguous()  # (N, P): the label permutation p gives class c
        self.mask = torch.ones(batch, perms.shape[0], dtype=torch.bool, device=device)  # (B, P)
        self.n_way = n_way

    def guess(self, cls: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """(B,) the most probable label of class ``cls`` (B,), ties broken uniformly at random."""
        given = self.by_class[cls]  # (B, P)
        votes = torch.zeros(cls.shape[0], self.n_way, dtype=torch.int64, device=cls.device)
        votes.scatter_add_(1, given, self.mask.long())  # (B, N): consistent permutations per label
        return _random_argmax(votes, votes > 0, generator)

    def update(self, cls: torch.Tensor, guess: torch.Tensor, right: torch.Tensor) -> None:
        """Keep the permutations that agree with the reward for ``guess`` on class ``cls``."""
        said_yes = self.by_class[cls] == guess.unsqueeze(1)  # (B, P)
        self.mask &= said_yes == right.unsqueeze(1)


class _Elimination:
    """Per class, the labels ruled out by wrong answers and the label confirmed by a right one."""

    def __init__(self, batch: int, n_way: int, device: torch.device) -> None:
        self.ruled_out = torch.zeros(batch, n_way, n_way, dtype=torch.bool, device=device)  # (B, class, label)
        self.known = torch.full((batch, n_way), -1, dtype=torch.int64, device=device)  # (B, class), -1: unknown
        self.rows = torch.arange(batch, device=device)
        self.n_way = n_way

    def guess(self, cls: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """(B,) the confirmed label of ``cls`` if any, else a uniform pick among its remaining labels."""
        known = self.known[self.rows, cls]  # (B,)
        confirmed = torch.nn.functional.one_hot(self.known.clamp_min(0), self.n_way).bool()  # (B, class, label)
        taken = (confirmed & (self.known >= 0).unsqueeze(-1)).any(1)  # (B, label): confirmed for some class
        allowed = ~self.ruled_out[self.rows, cls] & ~taken  # (B, label)
        pick = _random_argmax(torch.zeros(allowed.shape, device=cls.device), allowed, generator)
        return torch.where(known >= 0, known, pick)

    def update(self, cls: torch.Tensor, guess: torch.Tensor, right: torch.Tensor) -> None:
        """Confirm ``guess`` for ``cls`` where it was right, rule it out where it was wrong."""
        self.known[self.rows, cls] = torch.where(right, guess, self.known[self.rows, cls])
        self.ruled_out[self.rows, cls, guess] |= ~right


def _few_shot_env(env: Any) -> FewShotVectorEnv:
    base = getattr(env, "unwrapped", env)
    if not isinstance(base, FewShotVectorEnv):
        raise TypeError(f"elimination_oracle needs a FewShotVectorEnv, got {type(base).__name__}.")
    if base.feedback != "reward":
        raise ValueError(
            f"elimination_oracle is the limit of feedback='reward', but this env has feedback={base.feedback!r}, "
            "where labels are revealed; build it with feedback='reward' (e.g. meta_rl/Glyphs-5way-Reward-v0)."
        )
    if base.reward_correct == base.reward_incorrect:
        raise ValueError(
            f"reward_correct and reward_incorrect are both {base.reward_correct}, so the reward says nothing; "
            "give them different values."
        )
    return base


def elimination_oracle(
    env: FewShotVectorEnv, episodes: int, seed: int = 0, max_instance: int = MAX_INSTANCE
) -> EvalResult:
    """Accuracy by instance of a perfect recogniser that learns each label from rewards alone.

    The oracle knows which images share a class: it turns the env's true labels
    (:meth:`~meta_rl.envs.classification.FewShotVectorEnv.episode_labels`) into class identities
    through equality only (:func:`class_ids`), so it never uses what a label is. Its answers
    come from the rewards it has seen.

    For ``n_way <= 7`` (:data:`EXACT_MAX_WAY`) the answer is exact Bayes: per task it keeps the
    label assignments (permutations of classes to labels, n_way! of them) consistent with every
    reward so far, answers the shown class with the label most of them give it (the posterior
    mode under a uniform prior; ties broken uniformly at random), and then drops the
    assignments the reward contradicts. That maximises the chance of being right at every step;
    it is the greedy rule, not a plan that trades a likely answer for information. For larger
    ``n_way`` it falls back to plain elimination: the confirmed label of a class once it has
    been answered right, else a uniform pick among the labels not yet ruled out for the class
    and not confirmed for another one. Either way no label is tried twice on a class, so every
    class is answered right from its ``n_way``-th instance on.

    Batch i of B tasks is played after ``env.reset(seed=seed + i)``, as
    :func:`meta_rl.evaluation.evaluate` seeds its batches, so on the same env and seed the oracle
    meets the same tasks as an evaluated agent and the figures compare directly. The
    tie-breaking draws from its own torch.Generator seeded from ``seed``.

    Args:
        env: a ``FewShotVectorEnv`` with ``feedback="reward"`` (or a wrapper of one).
        episodes: tasks to play (at least; the first ``episodes`` count).
        seed: seed of the first batch and of the tie-breaking.
        max_instance: the largest instance index counted.

    Returns:
        The :class:`~meta_rl.evaluation.EvalResult` over the first ``episodes`` tasks.

    Raises:
        ValueError: the env's feedback is not ``"reward"``, its two rewards are equal, or
            ``episodes``/``seed`` is not a positive/non-negative int.
        TypeError: ``env`` is not a ``FewShotVectorEnv``.
    """
    base = _few_shot_env(env)
    if not isinstance(episodes, int) or isinstance(episodes, bool) or episodes < 1:
        raise ValueError(f"episodes must be a positive int, got {episodes!r}.")
    check_seed(seed)
    device = base.device
    generator = torch.Generator(device=device).manual_seed((int(seed) + _ORACLE_STREAM) % 2**64)
    n, b, steps = base.n_way, base.num_envs, base.episode_length
    hits, counts = [], []
    for i in range(math.ceil(episodes / b)):
        env.reset(seed=seed + i)
        cls = class_ids(base.episode_labels())  # (B, T)
        belief = _ExactPosterior(b, n, device) if n <= EXACT_MAX_WAY else _Elimination(b, n, device)
        correct = torch.zeros(steps, b, dtype=torch.bool, device=device)
        instance = torch.zeros(steps, b, dtype=torch.int64, device=device)
        for t in range(steps):
            guess = belief.guess(cls[:, t], generator)
            _, reward, _, _, info = env.step(guess)
            belief.update(cls[:, t], guess, reward == base.reward_correct)
            correct[t] = guess == info["label"]  # the measure, as Rollout.correct() takes it
            instance[t] = info["instance"]
        h, c = accuracy_by_instance(correct, instance, max_instance)
        hits.append(h)
        counts.append(c)
    return summarize(torch.cat(hits)[:episodes].cpu(), torch.cat(counts)[:episodes].cpu())


def main(argv: list[str] | None = None) -> None:
    """Print the elimination oracle's accuracy by instance on the glyph reward-feedback task."""
    import gymnasium as gym

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--episodes", type=int, default=2000)
    parser.add_argument("--split", default="test")
    parser.add_argument("--n-way", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-envs", type=int, default=500)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--env-id", default="meta_rl/Glyphs-5way-Reward-v0")
    args = parser.parse_args(argv)
    env: Any = gym.make_vec(args.env_id, num_envs=args.num_envs, vectorization_mode="vector_entry_point",
                            split=args.split, n_way=args.n_way, device=args.device)
    try:
        result = elimination_oracle(env, args.episodes, seed=args.seed)
    finally:
        env.close()
    print(f"{args.env_id}, n_way={args.n_way}, split {args.split}, seed {args.seed}")
    print(santoro_table(result, "elimination oracle"))
    print("every instance (%): " + ", ".join(
        f"{k + 1}: {100 * a:.1f}" for k, a in enumerate(result.accuracy_by_instance)))


if __name__ == "__main__":
    main()
