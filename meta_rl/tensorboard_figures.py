"""TensorBoard figures: the accuracy-by-instance curve and a picture of an episode's images and labels."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image, ImageDraw, ImageFont

from meta_rl.evaluation import TABLE_INSTANCES, first_instance_limit

__all__ = ["accuracy_figure", "episode_strip"]


def accuracy_figure(
    curves: Mapping[str, tuple[Sequence[float], Sequence[float]]], n_way: int | None = None,
    references: Mapping[str, Sequence[float]] | None = None,
) -> Figure:
    """Accuracy against instance index: one line with a 95% band per entry of ``curves``, and the marks
    that say what a number means.

    Args:
        curves: name -> (value at instance 1..K, 95% half-width).
        n_way: classes per task; draws chance (1 / n_way) and the 1st-instance limit
            (:func:`~meta_rl.evaluation.first_instance_limit`).
        references: published rows drawn dashed at :data:`~meta_rl.evaluation.TABLE_INSTANCES` (% values),
            e.g. Santoro et al.'s (:data:`~meta_rl.evaluation.REFERENCE_ROWS`, 5-way Omniglot).
    """
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    width = max([len(acc) for acc, _ in curves.values()] + [10])
    for name, (acc, ci) in curves.items():
        k = np.arange(1, len(acc) + 1)
        a, c = np.asarray(acc), np.asarray(ci)
        ax.plot(k, a, marker="o", lw=2, label=name)
        ax.fill_between(k, a - c, a + c, alpha=0.2)
    for (name, values), style in zip((references or {}).items(), (":", "--", "-.")):
        ks = [k for k in TABLE_INSTANCES if k <= width][: len(values)]
        ax.plot(ks, np.asarray(values[: len(ks)]) / 100, ls=style, color="0.45", lw=1, marker=".", label=name)
    if n_way:
        ax.axhline(1 / n_way, color="tab:red", ls="--", lw=1, label=f"chance (1/{n_way})")
        limit = first_instance_limit(n_way)
        ax.plot([1], [limit], marker="*", ms=12, color="tab:purple", ls="none",
                label=f"1st-instance limit ({100 * limit:.1f}%)")
    ax.set_xlabel("instance of the class in the episode")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.02)
    ax.set_xticks(range(1, width + 1))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    return fig


_RIGHT, _WRONG = (40, 160, 60), (210, 40, 40)


def episode_strip(images: torch.Tensor, true: torch.Tensor, chosen: torch.Tensor, max_steps: int = 20,
                  scale: int = 3, per_row: int = 10) -> torch.Tensor:
    """A (3, H', W') uint8 picture of the first steps of one episode, readable at native size.

    Each step is a tile: the image upscaled ``scale`` times (nearest neighbour), framed green when the
    chosen label was right and red when wrong, with the step, the true label and the chosen one drawn
    as digits under it (``3: 2>2 ok``, ``4: 1>3 x``). Tiles run left to right, ``per_row`` to a row,
    under a one-line key.

    Args:
        images: (T, C, H, W) uint8.
        true, chosen: (T,) int labels.
    """
    n = min(max_steps, images.shape[0])
    imgs = images[:n].detach().cpu()
    if imgs.shape[1] == 1:
        imgs = imgs.expand(-1, 3, -1, -1)  # (n, 3, H, W)
    imgs = imgs[:, :3].repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)  # (n, 3, sH, sW)
    _, _, h, w = imgs.shape
    font = ImageFont.load_default(size=max(11, w // 6))
    frame, caption, gap = 3, max(16, w // 4), 4
    tile_w, tile_h = w + 2 * frame + gap, h + 2 * frame + caption + gap
    rows = -(-n // per_row)
    canvas = Image.new("RGB", (max(min(n, per_row) * tile_w + gap, 420), caption + rows * tile_h + gap),
                       (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    draw.text((gap, 1), "step: true label > chosen label (green: right, red: wrong)", fill=(0, 0, 0), font=font)
    for i in range(n):
        x, y = gap + (i % per_row) * tile_w, caption + gap + (i // per_row) * tile_h
        t, c = int(true[i]), int(chosen[i])
        color = _RIGHT if t == c else _WRONG
        draw.rectangle((x, y, x + w + 2 * frame - 1, y + h + 2 * frame - 1), fill=color)
        canvas.paste(Image.fromarray(imgs[i].permute(1, 2, 0).contiguous().numpy()), (x + frame, y + frame))
        mark = "ok" if t == c else "x"
        draw.text((x + 1, y + h + 2 * frame + 1), f"{i + 1}: {t}>{c} {mark}", fill=color, font=font)
    return torch.from_numpy(np.asarray(canvas).copy()).permute(2, 0, 1)  # (3, H', W')
