"""TensorBoard figures: the accuracy-by-instance curve and a strip of an episode's images."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure

__all__ = ["accuracy_figure", "episode_strip"]


def accuracy_figure(curves: Mapping[str, tuple[Sequence[float], Sequence[float]]]) -> Figure:
    """Accuracy against instance index, one line with a 95% band per entry of ``curves``."""
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
    for name, (acc, ci) in curves.items():
        k = np.arange(1, len(acc) + 1)
        a, c = np.asarray(acc), np.asarray(ci)
        ax.plot(k, a, marker="o", label=name)
        ax.fill_between(k, a - c, a + c, alpha=0.2)
    ax.set_xlabel("instance of the class in the episode")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.set_xticks(range(1, 11))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def episode_strip(images: torch.Tensor, true: torch.Tensor, chosen: torch.Tensor, max_steps: int = 20) -> torch.Tensor:
    """A (3, H', W') uint8 strip of the first steps of one episode.

    Each tile shows the image; the bar under it is green when the chosen label was right and
    red when wrong, with the true label as the number of light ticks on its left and the
    chosen one on its right, readable without fonts.

    Args:
        images: (T, C, H, W) uint8.
        true, chosen: (T,) int labels.
    """
    n = min(max_steps, images.shape[0])
    imgs = images[:n].detach().cpu()
    if imgs.shape[1] == 1:
        imgs = imgs.expand(-1, 3, -1, -1)  # (n, 3, H, W)
    _, _, h, w = imgs.shape
    bar = max(4, h // 4)
    tiles = torch.zeros(n, 3, h + bar, w + 2, dtype=torch.uint8)  # (n, 3, H + bar, W + 2)
    tiles[:, :, :h, 1 : w + 1] = imgs[:, :3]
    for i in range(n):
        ok = int(true[i]) == int(chosen[i])
        color = torch.tensor([40, 170, 60] if ok else [200, 40, 40], dtype=torch.uint8).view(3, 1, 1)
        tiles[i, :, h:, :] = color
        for j in range(min(int(true[i]) + 1, w // 4)):  # ticks: true label + 1 on the left
            tiles[i, :, h + 1 : h + bar - 1, 1 + 2 * j] = 255
        for j in range(min(int(chosen[i]) + 1, w // 4)):  # chosen label + 1 from the right
            tiles[i, :, h + 1 : h + bar - 1, w - 2 * j] = 230
    return torch.cat(list(tiles), dim=2)  # (3, H + bar, n * (W + 2))
