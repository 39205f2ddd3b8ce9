"""Gymnasium spaces as plain data, so a checkpoint can rebuild its policy without building an env.

A checkpoint is read with ``torch.load(weights_only=True)``, which takes dicts, lists, strings and
numbers but no pickled objects: :func:`space_to_dict` writes a space in those terms and
:func:`space_from_dict` reads it back to an equal space. ``Box``, ``Discrete``, ``MultiDiscrete``,
``MultiBinary`` and ``Dict`` (of those) are covered; :func:`space_to_dict` returns None for others.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from gymnasium import spaces

__all__ = ["space_from_dict", "space_to_dict"]


def _bound(x: np.ndarray) -> Any:
    """One number where every element is the same (image bounds), else the nested list."""
    flat = x.reshape(-1)
    if flat.size and bool((flat == flat[0]).all()):
        return flat[0].item()
    return x.tolist()


def space_to_dict(space: spaces.Space[Any]) -> dict[str, Any] | None:
    """``space`` as nested dicts of plain values, or None where the kind of space is not covered."""
    if isinstance(space, spaces.Box):
        return {"type": "Box", "low": _bound(space.low), "high": _bound(space.high), "shape": list(space.shape),
                "dtype": str(space.dtype)}
    if isinstance(space, spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n), "start": int(space.start)}
    if isinstance(space, spaces.MultiDiscrete):
        return {"type": "MultiDiscrete", "nvec": space.nvec.tolist(), "dtype": str(space.dtype)}
    if isinstance(space, spaces.MultiBinary):
        return {"type": "MultiBinary", "n": [int(n) for n in np.atleast_1d(space.n)]}
    if isinstance(space, spaces.Dict):
        parts = {key: space_to_dict(sub) for key, sub in space.spaces.items()}
        if any(part is None for part in parts.values()):
            return None
        return {"type": "Dict", "spaces": parts}
    return None


#: The most elements a recorded ``Box`` may have (16.7M: a 3x2048x2048 image is 12.6M). gymnasium's ``Box``
#: materialises its bounds, so a damaged or edited record must be refused before the space is built.
MAX_BOX_ELEMENTS = 2**24


def _checked_shape(shape: Any) -> tuple[int, ...]:
    """A recorded ``Box`` shape: a list of whole numbers >= 1 of at most :data:`MAX_BOX_ELEMENTS` elements in all.

    Raises:
        ValueError: anything else, naming the shape.
    """
    dims = tuple(shape) if isinstance(shape, (list, tuple)) else None
    if dims is None or not all(type(d) is int and d >= 1 for d in dims) or math.prod(dims) > MAX_BOX_ELEMENTS:
        raise ValueError(f"Box shape {shape!r} is not a list of whole numbers >= 1 with at most "
                         f"{MAX_BOX_ELEMENTS:,} elements in all; the record is damaged or was edited.")
    return dims


def space_from_dict(data: dict[str, Any]) -> spaces.Space[Any]:
    """The space :func:`space_to_dict` wrote.

    Raises:
        ValueError: ``data`` is not such a record.
    """
    kind = data.get("type") if isinstance(data, dict) else None
    if kind == "Box":
        shape = _checked_shape(data["shape"])
        dtype = np.dtype(data["dtype"])
        low = np.broadcast_to(np.asarray(data["low"], dtype=dtype), shape)
        high = np.broadcast_to(np.asarray(data["high"], dtype=dtype), shape)
        return spaces.Box(low=low, high=high, shape=shape, dtype=dtype)
    if kind == "Discrete":
        return spaces.Discrete(int(data["n"]), start=int(data["start"]))
    if kind == "MultiDiscrete":
        return spaces.MultiDiscrete(np.asarray(data["nvec"]), dtype=np.dtype(data["dtype"]))
    if kind == "MultiBinary":
        n = data["n"]
        return spaces.MultiBinary(n[0] if len(n) == 1 else n)
    if kind == "Dict":
        return spaces.Dict({key: space_from_dict(sub) for key, sub in data["spaces"].items()})
    raise ValueError(f"not a space record: {data!r}; expected what meta_rl.spaces.space_to_dict writes.")
