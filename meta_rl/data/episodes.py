"""N-way few-shot episodes drawn in batches with tensor operations only."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from meta_rl.data.dataset import ImageDataset

__all__ = ["EpisodeBatch", "EpisodeSampler", "sample_without_replacement"]


def sample_without_replacement(n: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """Draw ``k`` distinct integers from ``range(n)`` for every entry of ``n``.

    Batched Floyd sampling: k vectorised rounds, each uniform, no Python loop over the batch.
    The returned set is uniform; its order is not, so shuffle it where order matters.

    Args:
        n: int64 tensor of any shape (...), every entry >= k.
        k: how many to draw.
        generator: the torch.Generator to draw from (on n's device).

    Returns:
        int64 tensor (..., k).
    """
    out = torch.empty((*n.shape, k), dtype=torch.int64, device=n.device)
    for i in range(k):
        j = n - k + i  # (...,)
        u = torch.rand(n.shape, generator=generator, device=n.device)
        t = torch.minimum((u * (j + 1)).long(), j)  # uniform in [0, j]
        taken = (out[..., :i] == t.unsqueeze(-1)).any(-1)  # (...,)
        out[..., i] = torch.where(taken, j, t)
    return out


def _shuffle(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Shuffle the last axis of ``x`` independently for every leading index."""
    perm = torch.rand(x.shape, generator=generator, device=x.device).argsort(dim=-1)
    return torch.gather(x, -1, perm)


@dataclass(frozen=True)
class EpisodeBatch:
    """A batch of B episodes of T steps.

    Attributes:
        image_index: int64 (B, T), row of ``dataset.images`` shown at each step.
        labels: int64 (B, T), the episode label of that image, in ``[0, n_way)``.
        instance: int64 (B, T), 1-based count of how often its class has been shown so far
            in the episode, this step included (1 = first instance).
        is_query: bool (B, T), True for query steps (shots mode), all False in stream mode.
        classes: int64 (B, n_way), the dataset class behind each episode label.
    """

    image_index: torch.Tensor
    labels: torch.Tensor
    instance: torch.Tensor
    is_query: torch.Tensor
    classes: torch.Tensor


class EpisodeSampler:
    """Samples N-way episodes from one split, with a fresh label permutation each time.

    Two layouts:

    * **stream** (``shots=None``): each of the N classes appears ``instances_per_class``
      times in a random order (Santoro et al. 2016), T = N * instances_per_class.
    * **shots**: N * ``shots`` support steps in random order, then N * ``queries_per_class``
      query steps in random order, T = N * (shots + queries_per_class).

    Args:
        dataset: the split to draw from (moved to ``device``).
        n_way: classes per episode.
        instances_per_class: appearances of each class in stream mode.
        shots: labelled support instances per class; None for stream mode.
        queries_per_class: query instances per class in shots mode.
        device: where the episode tensors live.

    Raises:
        ValueError: if n_way exceeds the classes in the split, or some class has fewer
            images than one episode needs.
    """

    def __init__(
        self,
        dataset: ImageDataset,
        n_way: int,
        instances_per_class: int = 10,
        shots: int | None = None,
        queries_per_class: int = 1,
        device: torch.device | str = "cpu",
    ) -> None:
        for label, value in (("n_way", n_way), ("instances_per_class", instances_per_class)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{label} must be a positive int, got {value!r}.")
        if shots is not None and (not isinstance(shots, int) or shots < 1):
            raise ValueError(f"shots must be a positive int or None (stream mode), got {shots!r}.")
        if shots is not None and (not isinstance(queries_per_class, int) or queries_per_class < 1):
            raise ValueError(f"queries_per_class must be a positive int, got {queries_per_class!r}.")
        if n_way > dataset.num_classes:
            raise ValueError(
                f"n_way={n_way} is larger than the {dataset.num_classes} classes in split "
                f"{dataset.name!r}; choose n_way <= {dataset.num_classes} or a split with more classes."
            )
        self.device = torch.device(device)
        self.dataset = dataset.sorted_by_class().to(self.device)
        self.n_way = n_way
        self.shots = shots
        self.queries_per_class = queries_per_class
        self.instances_per_class = instances_per_class if shots is None else shots + queries_per_class
        counts = self.dataset.class_counts()
        too_few = torch.nonzero(counts < self.instances_per_class).flatten().tolist()
        if too_few:
            c = too_few[0]
            raise ValueError(
                f"class {self.dataset.class_names[c]!r} of split {self.dataset.name!r} has "
                f"{int(counts[c])} images but an episode needs {self.instances_per_class} per class "
                f"({len(too_few)} classes are short); lower instances_per_class/shots/queries_per_class "
                "or drop small classes with ImageDataset.subset()."
            )
        self._counts = counts
        self._offsets = torch.cumsum(counts, 0) - counts  # first row of each class

    @property
    def episode_length(self) -> int:
        return self.n_way * self.instances_per_class

    def sample(self, batch: int, generator: torch.Generator) -> EpisodeBatch:
        """Draw ``batch`` episodes with ``generator`` (which must live on the sampler's device)."""
        n, k = self.n_way, self.instances_per_class
        num_classes = torch.full((batch,), self.dataset.num_classes, dtype=torch.int64, device=self.device)
        # Distinct classes per episode, shuffled so episode label j is a random class.
        classes = _shuffle(sample_without_replacement(num_classes, n, generator), generator)  # (B, N)
        # Distinct images per (episode, class): rows offset + [0, count).
        picks = sample_without_replacement(self._counts[classes], k, generator)  # (B, N, K)
        rows = self._offsets[classes].unsqueeze(-1) + picks  # (B, N, K)
        labels = torch.arange(n, device=self.device).view(1, n, 1).expand(batch, n, k)  # (B, N, K)
        if self.shots is None:
            rows, labels = self._interleave(rows, labels, generator, 0, k)
            is_query = torch.zeros(batch, n * k, dtype=torch.bool, device=self.device)
        else:
            s = self.shots
            sup_rows, sup_labels = self._interleave(rows, labels, generator, 0, s)
            qry_rows, qry_labels = self._interleave(rows, labels, generator, s, k)
            rows = torch.cat([sup_rows, qry_rows], dim=1)  # (B, T)
            labels = torch.cat([sup_labels, qry_labels], dim=1)  # (B, T)
            is_query = torch.zeros(batch, n * k, dtype=torch.bool, device=self.device)
            is_query[:, n * s :] = True
        # instance[b, t] = number of times labels[b, t] occurred in labels[b, :t+1].
        onehot = torch.nn.functional.one_hot(labels, n)  # (B, T, N)
        instance = torch.gather(onehot.cumsum(1), 2, labels.unsqueeze(-1)).squeeze(-1)  # (B, T)
        return EpisodeBatch(rows, labels, instance, is_query, classes)

    def _interleave(
        self, rows: torch.Tensor, labels: torch.Tensor, generator: torch.Generator, start: int, stop: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Flatten instances start..stop of every class into one randomly ordered stream."""
        b = rows.shape[0]
        r = rows[:, :, start:stop].reshape(b, -1)  # (B, N * (stop - start))
        lab = labels[:, :, start:stop].reshape(b, -1)  # (B, N * (stop - start))
        perm = torch.rand(r.shape, generator=generator, device=self.device).argsort(dim=-1)
        return torch.gather(r, 1, perm), torch.gather(lab, 1, perm)
