"""Image helpers shared by the loaders: finding image files, opening, size limits, PIL conversion."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from meta_rl.data.formats.common import DatasetError, short

__all__ = ["IMAGE_EXTENSIONS", "check_pixels", "image_files", "open_image", "pil_to_array", "resize", "visible"]

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"})


def _resample() -> Any:
    """The filter every resize uses (LANCZOS)."""
    return Image.Resampling.LANCZOS


def pil_to_array(img: Image.Image, grayscale: bool) -> np.ndarray:
    """uint8 array (H, W) for grey or (H, W, 3) for colour."""
    if grayscale:
        if img.mode.startswith("I;16") or img.mode == "I":
            arr = np.asarray(img, dtype=np.int64)
            if arr.size and arr.max() > 255:
                arr = arr >> 8
            return np.clip(arr, 0, 255).astype(np.uint8)
        if img.mode == "F":
            return np.clip(np.asarray(img), 0, 255).astype(np.uint8)
        return np.asarray(img.convert("L"), dtype=np.uint8)
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        grey = Image.fromarray(pil_to_array(img, grayscale=True))
        return np.asarray(grey.convert("RGB"), dtype=np.uint8)
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def resize(arr: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """``arr`` resized to ``size_hw`` (height, width), or ``arr`` itself if it already has that size."""
    if arr.shape[:2] == size_hw:
        return arr
    resized = Image.fromarray(arr).resize((size_hw[1], size_hw[0]), _resample())
    return np.asarray(resized, dtype=np.uint8)


def check_pixels(img: Image.Image, where: object, limit: int, expected: str) -> None:
    """Refuse an image whose header declares more than ``limit`` pixels, before decoding it."""
    width, height = img.size
    if width * height > limit:
        raise DatasetError(
            f"{where} declares {width}x{height} pixels, more than the {limit:,} allowed ({expected}); "
            "it is corrupt or a decompression bomb: replace or delete it."
        )


def visible(name: str) -> bool:
    """Whether a file or folder name is neither hidden nor macOS metadata."""
    return not name.startswith(".") and name != "__MACOSX"


def image_files(folder: Path) -> list[Path]:
    """The visible image files (by extension) directly in ``folder``, sorted."""
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and visible(p.name) and p.suffix.lower() in IMAGE_EXTENSIONS
    )


@contextmanager
def open_image(path: Path) -> Iterator[Image.Image]:
    """Open ``path`` with PIL, turning any failure into a DatasetError naming the file."""
    try:
        with Image.open(path) as img:
            yield img
    except DatasetError:
        raise
    except Exception as exc:  # PIL raises many types for corrupt files
        raise DatasetError(
            f"cannot decode image {path} ({short(exc)}); the file is corrupt or not an image: fix or "
            "delete it."
        ) from exc
