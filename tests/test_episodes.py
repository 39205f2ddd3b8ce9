"""Tests of the batched episode sampler and its without-replacement sampling."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from meta_rl.data import EpisodeSampler, ImageDataset, sample_without_replacement


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _check_rows_and_no_repeats(sampler: EpisodeSampler, batch: torch.Tensor, classes: torch.Tensor,
                               labels: torch.Tensor) -> None:
    """Every image row belongs to classes[b, label] and no row repeats within an episode."""
    ds = sampler.dataset
    shown_class = ds.labels[batch]  # (B, T)
    assert torch.equal(shown_class, torch.gather(classes, 1, labels))
    for row in batch:
        assert row.unique().numel() == row.numel()


def test_stream_episode_layout(synthetic: ImageDataset) -> None:
    n, k, b = 5, 10, 64
    sampler = EpisodeSampler(synthetic, n_way=n, instances_per_class=k)
    ep = sampler.sample(b, _gen())
    t = n * k
    assert sampler.episode_length == t
    for x in (ep.image_index, ep.labels, ep.instance, ep.is_query):
        assert x.shape == (b, t)
    assert ep.classes.shape == (b, n)
    assert ep.labels.dtype == ep.image_index.dtype == ep.instance.dtype == torch.int64
    assert not ep.is_query.any()
    # Distinct classes per episode, all valid.
    for row in ep.classes:
        assert row.unique().numel() == n
    assert int(ep.classes.min()) >= 0 and int(ep.classes.max()) < synthetic.num_classes
    # Every label appears exactly k times.
    counts = torch.nn.functional.one_hot(ep.labels, n).sum(1)  # (B, N)
    assert torch.all(counts == k)
    # `instance` counts 1..k per label in order of appearance.
    for bi in range(b):
        for label in range(n):
            assert ep.instance[bi, ep.labels[bi] == label].tolist() == list(range(1, k + 1))
    _check_rows_and_no_repeats(sampler, ep.image_index, ep.classes, ep.labels)


def test_stream_order_is_interleaved(synthetic: ImageDataset) -> None:
    """The stream is not grouped by class: labels change between consecutive steps."""
    ep = EpisodeSampler(synthetic, n_way=5, instances_per_class=10).sample(200, _gen(1))
    changes = (ep.labels[:, 1:] != ep.labels[:, :-1]).float().mean()
    # Random order of 5 x 10: P(change) = 1 - 9/49 ~ 0.82; grouped order would give ~0.08.
    assert 0.7 < float(changes) < 0.95


def test_label_permutation_is_random(synthetic: ImageDataset) -> None:
    n, episodes = 5, 2000
    ep = EpisodeSampler(synthetic, n_way=n, instances_per_class=2).sample(episodes, _gen(2))
    # Each label maps to many different classes over many episodes.
    for label in range(n):
        assert ep.classes[:, label].unique().numel() >= synthetic.num_classes - 2
    # Label 0 is the lowest class id only about 1/n of the time, not always.
    lowest_first = (ep.classes[:, 0] == ep.classes.min(1).values).float().mean()
    assert 0.1 < float(lowest_first) < 0.3
    # Every position of the label permutation is used by every label about equally.
    first_label = ep.labels[:, 0]
    freq = torch.bincount(first_label, minlength=n).float() / episodes
    assert torch.all((freq - 1 / n).abs() < 0.05)


def _chi_square(counts: torch.Tensor) -> float:
    expected = counts.sum() / counts.numel()
    return float(((counts.float() - expected) ** 2 / expected).sum())


def test_sample_without_replacement_distinct_in_range_uniform() -> None:
    draws, n, k = 30000, 10, 3
    out = sample_without_replacement(torch.full((draws,), n), k, _gen(3))
    assert out.shape == (draws, k) and out.dtype == torch.int64
    assert int(out.min()) >= 0 and int(out.max()) < n
    assert torch.all(out.sort(-1).values.diff(dim=-1) > 0)  # distinct within each draw
    # Marginal: each value appears in k/n of the draws. Chi-square with 9 dof has mean 9;
    # 60 is far beyond its 1e-8 quantile, and a biased sampler (e.g. never 0) blows past it.
    marginal = torch.bincount(out.flatten(), minlength=n)
    assert _chi_square(marginal) < 60
    # The set drawn is uniform over all C(n, k) = 120 subsets (chi-square 119 dof, mean 119).
    subsets = {s: i for i, s in enumerate(itertools.combinations(range(n), k))}
    ids = torch.tensor([subsets[tuple(row)] for row in out.sort(-1).values.tolist()])
    assert _chi_square(torch.bincount(ids, minlength=len(subsets))) < 250


def test_sample_without_replacement_per_entry_ranges() -> None:
    n = torch.tensor([[3, 7], [12, 3]])
    out = sample_without_replacement(n, 3, _gen(4))
    assert out.shape == (2, 2, 3)
    assert torch.all(out < n.unsqueeze(-1)) and torch.all(out >= 0)
    # k == n: a permutation of everything.
    assert out[0, 0].sort().values.tolist() == [0, 1, 2]
    assert out[1, 1].sort().values.tolist() == [0, 1, 2]


@settings(max_examples=40, deadline=None)
@given(
    n=st.lists(st.integers(1, 30), min_size=1, max_size=8),
    k=st.integers(1, 30),
    seed=st.integers(0, 2**31 - 1),
)
def test_sample_without_replacement_property(n: list[int], k: int, seed: int) -> None:
    k = min(k, *n)
    nt = torch.tensor(n)
    out = sample_without_replacement(nt, k, _gen(seed))
    assert out.shape == (len(n), k)
    assert torch.all(out >= 0) and torch.all(out < nt.unsqueeze(-1))
    for row in out:
        assert row.unique().numel() == k


def test_shots_episode_layout(synthetic: ImageDataset) -> None:
    n, shots, queries, b = 5, 2, 3, 32
    sampler = EpisodeSampler(synthetic, n_way=n, shots=shots, queries_per_class=queries)
    ep = sampler.sample(b, _gen(5))
    support = n * shots
    assert sampler.episode_length == n * (shots + queries) == ep.labels.shape[1]
    assert not ep.is_query[:, :support].any()
    assert ep.is_query[:, support:].all()
    onehot = torch.nn.functional.one_hot(ep.labels, n)
    assert torch.all(onehot[:, :support].sum(1) == shots)
    assert torch.all(onehot[:, support:].sum(1) == queries)
    # Support instances count 1..shots; queries continue shots+1..shots+queries.
    assert int(ep.instance[:, :support].max()) == shots
    assert int(ep.instance[:, support:].min()) == shots + 1
    for bi in range(b):
        for label in range(n):
            assert ep.instance[bi, ep.labels[bi] == label].tolist() == list(range(1, shots + queries + 1))
    _check_rows_and_no_repeats(sampler, ep.image_index, ep.classes, ep.labels)


@pytest.mark.parametrize("shots", [None, 3])
def test_same_seed_same_batch(synthetic: ImageDataset, shots: int | None) -> None:
    sampler = EpisodeSampler(synthetic, n_way=5, instances_per_class=4, shots=shots)
    a, b, c = (sampler.sample(16, _gen(s)) for s in (7, 7, 8))
    for field in ("image_index", "labels", "instance", "is_query", "classes"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field
    assert not torch.equal(a.image_index, c.image_index)
    # Consecutive draws from one generator differ.
    g = _gen(7)
    assert not torch.equal(sampler.sample(16, g).image_index, sampler.sample(16, g).image_index)


def test_unsorted_dataset_is_sorted(synthetic: ImageDataset) -> None:
    perm = torch.randperm(len(synthetic), generator=_gen(9))
    shuffled = ImageDataset(synthetic.images[perm], synthetic.labels[perm], synthetic.class_names,
                            synthetic.groups, "shuffled")
    sampler = EpisodeSampler(shuffled, n_way=5, instances_per_class=12)
    ep = sampler.sample(8, _gen(10))
    _check_rows_and_no_repeats(sampler, ep.image_index, ep.classes, ep.labels)


def test_n_way_larger_than_classes(synthetic: ImageDataset) -> None:
    with pytest.raises(ValueError, match=r"n_way=41 .*40 classes.*n_way <= 40"):
        EpisodeSampler(synthetic, n_way=41)


def test_too_few_instances_names_class_and_fix(make_dataset: Callable[..., ImageDataset]) -> None:
    full = make_dataset(num_classes=10, images_per_class=12)
    drop = (full.labels == 6).nonzero().flatten()[:9]  # class006 keeps 3 images
    keep = torch.ones(len(full), dtype=torch.bool)
    keep[drop] = False
    short = ImageDataset(full.images[keep], full.labels[keep], full.class_names, full.groups, "short")
    EpisodeSampler(short, n_way=5, instances_per_class=3)  # enough
    with pytest.raises(ValueError, match=r"'class006'.* 3 images.*needs 4.*lower instances_per_class"):
        EpisodeSampler(short, n_way=5, instances_per_class=4)
    with pytest.raises(ValueError, match=r"'class006'.*needs 5 per class"):
        EpisodeSampler(short, n_way=5, shots=1, queries_per_class=4)
    with pytest.raises(ValueError, match=r"'class000'.*needs 13"):
        EpisodeSampler(full, n_way=5, instances_per_class=13)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"n_way": 0}, "n_way must be a positive int, got 0"),
        ({"n_way": 5, "instances_per_class": 0}, "instances_per_class must be a positive int"),
        ({"n_way": 5, "shots": 0}, "shots must be a positive int or None"),
        ({"n_way": 5, "shots": 1, "queries_per_class": 0}, "queries_per_class must be a positive int"),
    ],
)
def test_bad_arguments(synthetic: ImageDataset, kwargs: dict[str, int], pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        EpisodeSampler(synthetic, **kwargs)  # type: ignore[arg-type]
