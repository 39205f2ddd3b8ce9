"""Tests of the reward-only elimination oracle against hand-computed and brute-force expectations."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import pytest
import torch

from meta_rl.data import ImageDataset
from meta_rl.envs import FewShotVectorEnv
from meta_rl.envs.classification_baselines import EXACT_MAX_WAY, class_ids, elimination_oracle, main

B = 500


def _env(dataset: ImageDataset, n_way: int, instances: int, num_envs: int = B, **kwargs: Any) -> FewShotVectorEnv:
    kwargs.setdefault("feedback", "reward")
    return FewShotVectorEnv(num_envs=num_envs, dataset=dataset, n_way=n_way, instances_per_class=instances, **kwargs)


def _streams(n_way: int, instances: int) -> list[tuple[int, ...]]:
    """Every distinct order of ``instances`` appearances of each of ``n_way`` classes (all equally likely)."""
    return sorted(set(itertools.permutations([c for c in range(n_way) for _ in range(instances)])))


def _play(stream: tuple[int, ...], truth: tuple[int, ...], n_way: int, instances: int) -> list[tuple[Fraction, ...]]:
    """All outcomes of the Bayes-mode rule on one stream and true assignment, tie-breaks enumerated.

    Returns (probability, hits at instance 1, ..., hits at instance ``instances``) per branch.
    """
    out: list[tuple[Fraction, ...]] = []

    def go(t: int, consistent: list[tuple[int, ...]], prob: Fraction, hits: tuple[int, ...]) -> None:
        if t == len(stream):
            out.append((prob, *(Fraction(h) for h in hits)))
            return
        c = stream[t]
        k = stream[: t + 1].count(c) - 1  # 0-based instance
        votes = [sum(p[c] == label for p in consistent) for label in range(n_way)]
        best = [label for label in range(n_way) if votes[label] == max(votes)]
        for label in best:
            right = truth[c] == label
            keep = [p for p in consistent if (p[c] == label) == right]
            new_hits = tuple(h + (right and i == k) for i, h in enumerate(hits))
            go(t + 1, keep, prob / len(best), new_hits)

    go(0, list(itertools.permutations(range(n_way))), Fraction(1), (0,) * instances)
    return out


def _brute_force(n_way: int, instances: int) -> tuple[list[float], list[float]]:
    """Exact mean and standard deviation over tasks of the per-task accuracy at each instance."""
    streams, truths = _streams(n_way, instances), list(itertools.permutations(range(n_way)))
    weight = Fraction(1, len(streams) * len(truths))
    mean = [Fraction(0)] * instances
    square = [Fraction(0)] * instances
    for stream in streams:
        for truth in truths:
            for prob, *hits in _play(stream, truth, n_way, instances):
                for k, h in enumerate(hits):
                    acc = h / n_way
                    mean[k] += weight * prob * acc
                    square[k] += weight * prob * acc * acc
    return [float(m) for m in mean], [math.sqrt(float(s - m * m)) for m, s in zip(mean, square)]


def _check_close(got: list[float], mean: list[float], sd: list[float], episodes: int) -> None:
    for k, (g, m, s) in enumerate(zip(got, mean, sd)):
        tol = 4.5 * s / math.sqrt(episodes) + 1e-12
        assert abs(g - m) <= tol, f"instance {k + 1}: oracle {g:.4f}, expected {m:.4f} +- {tol:.4f}"


# -- the env's labels -----------------------------------------------------------------------


def test_episode_labels_are_the_labels_the_steps_report(synthetic: ImageDataset) -> None:
    env = _env(synthetic, 3, 4, num_envs=6)
    env.reset(seed=3)
    labels = env.episode_labels()
    assert labels.dtype == torch.int64 and labels.shape == (6, env.episode_length)
    for t in range(env.episode_length):
        _, _, _, _, info = env.step(torch.zeros(6, dtype=torch.int64))
        assert torch.equal(info["label"], labels[:, t])


def test_class_ids_use_equality_only() -> None:
    labels = torch.tensor([[4, 1, 4, 0, 1, 0], [2, 2, 0, 1, 0, 1]])
    expected = torch.tensor([[0, 1, 0, 2, 1, 2], [0, 0, 1, 2, 1, 2]])
    assert torch.equal(class_ids(labels), expected)
    assert torch.equal(class_ids(labels * 7 + 100), expected)


# -- hand-computed and brute-force expectations ---------------------------------------------


def test_two_way_by_hand(synthetic: ImageDataset) -> None:
    # The first image (class A) is a coin flip; right or wrong, its reward tells both labels in
    # 2-way, so the first image of B and everything after are right: 1st instance (1/2 + 1) / 2.
    episodes = 4000
    result = elimination_oracle(_env(synthetic, 2, 4), episodes, seed=0)
    assert result.episodes == episodes
    expected, sd = [0.75, 1.0, 1.0, 1.0], [0.25, 0.0, 0.0, 0.0]
    assert _brute_force(2, 4) == (expected, sd)  # the enumeration agrees with the hand count
    _check_close(result.accuracy_by_instance, expected, sd, episodes)
    assert result.accuracy_by_instance[1:] == [1.0, 1.0, 1.0]
    assert result.accuracy == pytest.approx((8 - 0.5) / 8, abs=4.5 * 0.5 / 8 / math.sqrt(episodes))


@pytest.mark.parametrize(("n_way", "instances"), [(3, 2), (3, 3), (4, 1)])
def test_matches_brute_force_enumeration(synthetic: ImageDataset, n_way: int, instances: int) -> None:
    mean, sd = _brute_force(n_way, instances)
    episodes = 4000
    result = elimination_oracle(_env(synthetic, n_way, instances), episodes, seed=1)
    _check_close(result.accuracy_by_instance, mean, sd, episodes)


def test_three_way_one_instance_by_hand(synthetic: ImageDataset) -> None:
    # Classes A, B, C shown once each, in that order of appearance; labels x, y, z.
    # A: right 1/3 (x of three). If A was right, B is a coin flip among two and then C is known.
    # If A was wrong (2/3, said x), 4 assignments remain and 2 give B the label x: B says x and is
    # right 1/2; then C is a coin flip if B was right (A, C share the other two) and known if not.
    # Hits: A 1/3, B 1/3 * 1/2 + 2/3 * 1/2 = 1/2, C 1/3 + 2/3 * (1/2 * 1/2 + 1/2) = 5/6: 5/9 per image.
    mean, sd = _brute_force(3, 1)
    assert mean[0] == pytest.approx(5 / 9, abs=1e-12)
    episodes = 4000
    result = elimination_oracle(_env(synthetic, 3, 1), episodes, seed=4)
    _check_close(result.accuracy_by_instance, mean, sd, episodes)


# -- no label is tried twice ----------------------------------------------------------------


@pytest.mark.parametrize(("n_way", "instances"), [(3, 4), (4, 6), (5, 7)])
def test_label_known_by_instance_n_way(synthetic: ImageDataset, n_way: int, instances: int) -> None:
    result = elimination_oracle(_env(synthetic, n_way, instances, num_envs=200), 400, seed=2)
    assert all(a == 1.0 for a in result.accuracy_by_instance[n_way - 1:])
    assert all(a < 1.0 for a in result.accuracy_by_instance[: n_way - 1])


def test_fallback_beyond_exact_limit(synthetic: ImageDataset) -> None:
    n_way = EXACT_MAX_WAY + 1
    result = elimination_oracle(_env(synthetic, n_way, n_way + 1, num_envs=100), 200, seed=0)
    acc = result.accuracy_by_instance
    assert len(acc) == n_way + 1
    assert acc[n_way - 1] == 1.0 and acc[n_way] == 1.0
    assert acc[0] < acc[1] < acc[2] < 1.0
    # Among n_way labels, the first image of the first class is right 1 time in n_way; later
    # first images gain from confirmed labels, so the 1st-instance mean lies above 1 / n_way.
    assert 1 / n_way - 0.05 < acc[0] < 0.5


# -- seeding, the label values, the modes ---------------------------------------------------


def test_same_seed_same_result(synthetic: ImageDataset) -> None:
    env = _env(synthetic, 4, 5, num_envs=64)
    a = elimination_oracle(env, 150, seed=7)
    b = elimination_oracle(env, 150, seed=7)
    c = elimination_oracle(env, 150, seed=8)
    assert a == b
    assert a.episodes == 150 and a != c


def test_answers_do_not_depend_on_label_values(synthetic: ImageDataset, monkeypatch: pytest.MonkeyPatch) -> None:
    env = _env(synthetic, 4, 5, num_envs=64)
    before = elimination_oracle(env, 128, seed=3)
    real: Callable[[], torch.Tensor] = env.episode_labels
    monkeypatch.setattr(env, "episode_labels", lambda: real() * 13 + 5)  # the same classes, other values
    assert elimination_oracle(env, 128, seed=3) == before


@pytest.mark.parametrize("feedback", ["label", "active"])
def test_other_feedback_modes_are_refused(synthetic: ImageDataset, feedback: str) -> None:
    env = _env(synthetic, 3, 4, num_envs=4, feedback=feedback)
    with pytest.raises(ValueError, match=rf"feedback='{feedback}'.*feedback='reward'"):
        elimination_oracle(env, 4)


def test_bad_arguments(synthetic: ImageDataset) -> None:
    env = _env(synthetic, 3, 4, num_envs=4)
    with pytest.raises(ValueError, match="episodes"):
        elimination_oracle(env, 0)
    with pytest.raises(ValueError, match="seed"):
        elimination_oracle(env, 4, seed=-1)
    with pytest.raises(TypeError, match="FewShotVectorEnv"):
        not_an_env: Any = object()
        elimination_oracle(not_an_env, 4)
    same = _env(synthetic, 3, 4, num_envs=4, reward_correct=0.0, reward_incorrect=0.0)
    with pytest.raises(ValueError, match="reward says nothing"):
        elimination_oracle(same, 4)


def test_main_prints_the_table(glyph_splits: dict[str, ImageDataset], capsys: pytest.CaptureFixture[str]) -> None:
    main(["--episodes", "20", "--num-envs", "10", "--split", "test", "--n-way", "3"])
    out = capsys.readouterr().out
    assert "elimination oracle" in out and "n_way=3" in out
