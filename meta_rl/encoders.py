"""Observation encoders: the Omniglot 4-block conv net, the seed CNN for 32x32x3, and an MLP; and their arithmetic.

Each maps a float batch (N, *input_shape) to features (N, out_dim).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from meta_rl.errors import ConfigError
from meta_rl.registry import Registry

__all__ = [
    "ENCODERS", "PRECISIONS", "Conv4Encoder", "MLPEncoder", "SeedCNNEncoder", "StridedCNNEncoder", "build_encoder",
    "make_encoder", "native_bfloat16", "register_encoder",
]


class Conv4Encoder(nn.Module):
    """The standard few-shot conv net: 4 x [conv 3x3 (filters), batch norm, ReLU, max-pool 2].

    Vinyals et al. 2016 / Snell et al. 2017 use 64 filters; on 28x28 inputs the output is
    filters x 1 x 1. ``norm="group"`` uses GroupNorm, whose output does not depend on the batch.
    """

    def __init__(self, input_shape: Sequence[int], filters: int = 64, blocks: int = 4, norm: str = "batch") -> None:
        super().__init__()
        if norm not in ("batch", "group", "none"):
            raise ValueError(f"norm must be 'batch', 'group' or 'none', got {norm!r}.")
        c, h, w = input_shape
        layers: list[nn.Module] = []
        for i in range(blocks):
            layers.append(nn.Conv2d(c if i == 0 else filters, filters, 3, padding=1))
            if norm == "batch":
                layers.append(nn.BatchNorm2d(filters))
            elif norm == "group":
                layers.append(nn.GroupNorm(min(8, filters), filters))
            layers += [nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            h, w = h // 2, w // 2
        if h < 1 or w < 1:
            raise ValueError(f"input {tuple(input_shape)} is too small for {blocks} pooling blocks; use fewer blocks.")
        self.net = nn.Sequential(*layers, nn.Flatten())
        self.out_dim = filters * h * w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (N, filters * h * w)


class SeedCNNEncoder(nn.Module):
    """The seed design for 32x32x3 images.

    conv 32 filters 5x5 stride 2, ReLU, max-pool 2; conv 64 filters 5x5 stride 2, ReLU,
    max-pool 2; dense 1024, ReLU.
    """

    def __init__(self, input_shape: Sequence[int], hidden: int = 1024) -> None:
        super().__init__()
        c = input_shape[0]
        convs = nn.Sequential(
            nn.Conv2d(c, 32, 5, stride=2, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5, stride=2, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Flatten(),
        )
        try:
            with torch.no_grad():
                flat = convs(torch.zeros(1, *input_shape)).shape[1]
        except RuntimeError:
            flat = 0
        if flat < 1:
            raise ValueError(f"input {tuple(input_shape)} is too small for the seed CNN (needs about 16x16).")
        self.net = nn.Sequential(convs, nn.Linear(flat, hidden), nn.ReLU(inplace=True))
        self.out_dim = hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (N, hidden)


class StridedCNNEncoder(nn.Module):
    """A light conv net for CPUs: [conv 3x3 stride 2, ReLU] per entry of ``channels``, then a linear layer.

    With (32, 64, 64) channels on 28x28 inputs it costs about 1.6M multiply-adds per image, a sixth
    of conv4, and keeps the translation tolerance an MLP lacks.
    """

    def __init__(self, input_shape: Sequence[int], channels: Sequence[int] = (32, 64, 64), out_dim: int = 64) -> None:
        super().__init__()
        if not channels:
            raise ValueError("channels must name at least one conv layer, e.g. (32, 64, 64).")
        layers: list[nn.Module] = []
        c = input_shape[0]
        for width in channels:
            layers += [nn.Conv2d(c, width, 3, stride=2, padding=1), nn.ReLU(inplace=True)]
            c = width
        convs = nn.Sequential(*layers, nn.Flatten())
        with torch.no_grad():
            flat = convs(torch.zeros(1, *input_shape)).shape[1]
        self.net = nn.Sequential(convs, nn.Linear(flat, out_dim))
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (N, out_dim)


class MLPEncoder(nn.Module):
    """Flatten, then Linear + ReLU layers (the last layer is linear when ``linear_out``)."""

    def __init__(
        self, input_shape: Sequence[int], hidden: Sequence[int] = (256, 256, 64), linear_out: bool = True
    ) -> None:
        super().__init__()
        if not hidden:
            raise ValueError("hidden must name at least one layer size, e.g. (256, 64).")
        size = 1
        for s in input_shape:
            size *= int(s)
        layers: list[nn.Module] = [nn.Flatten()]
        for i, width in enumerate(hidden):
            layers.append(nn.Linear(size, width))
            if i < len(hidden) - 1 or not linear_out:
                layers.append(nn.ReLU(inplace=True))
            size = width
        self.net = nn.Sequential(*layers)
        self.out_dim = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (N, hidden[-1])


PRECISIONS = ("auto", "float32", "bfloat16")
"""The encoder's arithmetic (``encoder_precision``); :meth:`meta_rl.policy.MetaPolicy.encode` applies it."""


@functools.cache
def _cpu_has_amx() -> bool:
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return probe is not None and bool(probe())


def native_bfloat16(device: torch.device) -> bool:
    """Whether ``device`` runs bfloat16 convolutions and matmuls in hardware where meta-rl measured them to pay:
    CPUs with AMX tiles (Intel Sapphire Rapids and later). CUDA is not included until it is measured."""
    return device.type == "cpu" and _cpu_has_amx()


EncoderFactory = Callable[..., nn.Module]
#: The registered encoders, by name; a user's feature extractor registers itself here (:func:`register_encoder`)
#: and is named with ``encoder=NAME model_module=your.module``, as SB3's ``features_extractor_class``.
ENCODERS: Registry[EncoderFactory] = Registry("encoder", "encoder", "encoder_kwargs", supplied=("hidden",))


def register_encoder(name: str) -> Callable[[EncoderFactory], EncoderFactory]:
    """Decorator: make an encoder factory available as ``encoder=name``.

    The factory is called as ``factory(input_shape, *, hidden, **options)``: ``input_shape`` the (C, H, W) or
    vector shape of one observation, ``hidden`` the config's ``encoder_hidden``, ``options`` the config's
    ``encoder_kwargs`` (keyword-only arguments with defaults). It returns a module mapping a float batch
    (N, *input_shape) to (N, out_dim) with an ``out_dim`` attribute.
    """
    return ENCODERS.register(name)


def _image_shape(name: str, input_shape: Sequence[int]) -> Sequence[int]:
    if len(input_shape) != 3:
        raise ConfigError(f"encoder = {name!r} needs (C, H, W) inputs, got shape {tuple(input_shape)}; "
                          "use encoder=mlp.")
    return input_shape


@register_encoder("cnn")
def _cnn(input_shape: Sequence[int], *, hidden: Sequence[int], channels: Sequence[int] = (32, 64, 64)) -> nn.Module:
    """:class:`StridedCNNEncoder`; its output size is ``encoder_hidden``'s last entry."""
    return StridedCNNEncoder(_image_shape("cnn", input_shape), channels=tuple(channels), out_dim=int(hidden[-1]))


@register_encoder("conv4")
def _conv4(input_shape: Sequence[int], *, hidden: Sequence[int], filters: int = 64, norm: str = "batch") -> nn.Module:
    """:class:`Conv4Encoder` (``norm``: ``batch``, ``group`` or ``none``)."""
    return Conv4Encoder(_image_shape("conv4", input_shape), filters=filters, norm=norm)


@register_encoder("seed_cnn")
def _seed_cnn(input_shape: Sequence[int], *, hidden: Sequence[int], dense: int = 1024) -> nn.Module:
    """:class:`SeedCNNEncoder` for 32x32x3 images."""
    return SeedCNNEncoder(_image_shape("seed_cnn", input_shape), hidden=dense)


@register_encoder("mlp")
def _mlp(input_shape: Sequence[int], *, hidden: Sequence[int]) -> nn.Module:
    """:class:`MLPEncoder` with ``encoder_hidden``'s layer sizes."""
    return MLPEncoder(input_shape, hidden=hidden)


def build_encoder(
    name: str, input_shape: Sequence[int], *, hidden: Sequence[int], options: dict[str, Any] | None = None
) -> nn.Module:
    """The encoder registered as ``name`` (``auto``: ``cnn`` for (C, H, W) images, ``mlp`` for anything else).

    Raises:
        ConfigError: an unknown name or option, or an image encoder for a non-image input.
    """
    return ENCODERS.build(resolved_encoder(name, input_shape), input_shape, hidden=tuple(hidden), options=options)


def resolved_encoder(name: str, input_shape: Sequence[int]) -> str:
    """The encoder ``name`` builds for ``input_shape``: ``auto`` is ``cnn`` for (C, H, W) images, else ``mlp``."""
    if name == "auto":
        return "cnn" if len(input_shape) == 3 else "mlp"
    return name


def make_encoder(
    name: str, input_shape: Sequence[int], *, filters: int = 64, hidden: Sequence[int] = (256, 256, 64),
    norm: str = "batch",
) -> nn.Module:
    """A shipped encoder from the supervised baselines' flat settings (``filters`` and ``norm`` for ``conv4``)."""
    options = {"filters": filters, "norm": norm} if name == "conv4" else {}
    return build_encoder(name, input_shape, hidden=hidden, options=options)
