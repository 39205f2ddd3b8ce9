"""Image helpers shared by the loaders: finding image files, opening, size limits, PIL conversion."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from meta_rl.data.formats.common import DatasetError, short

__all__ = [
    "IMAGE_EXTENSIONS",
    "check_pixels",
    "image_files",
    "list_folder",
    "open_image",
    "pil_to_array",
    "resize",
    "unreadable_folder",
    "visible",
]

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"})
_MAX_16_BIT = 65535


def _resample() -> Any:
    """The filter every resize uses (LANCZOS)."""
    return Image.Resampling.LANCZOS


def _from_16_bit(img: Image.Image) -> np.ndarray:
    """uint8 (H, W) of a 16-bit grey image: ``round(v * 255 / 65535)``, the same mapping for every image.

    Values are scaled by the mode's range, not by the image's own maximum, so that a pixel of
    200/65535 loads as 1/255 in every file (not as 200/255 in a dark file and 1/255 in a bright
    one). Mode ``I`` (32-bit) is read as 16-bit too: among the supported formats, only 16-bit
    PNGs open in it (with older Pillow); values outside [0, 65535] are clipped.
    """
    arr = np.clip(np.asarray(img, dtype=np.int64), 0, _MAX_16_BIT)
    return ((arr * 255 + _MAX_16_BIT // 2) // _MAX_16_BIT).astype(np.uint8)


def pil_to_array(img: Image.Image, grayscale: bool) -> np.ndarray:
    """uint8 array (H, W) for grey or (H, W, 3) for colour; 16-bit grey is scaled by 255/65535."""
    if grayscale:
        if img.mode.startswith("I;16") or img.mode == "I":
            return _from_16_bit(img)
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


def list_folder(folder: Path, what: str = "folder") -> list[Path]:
    """The entries of ``folder``, sorted; an unreadable folder is a DatasetError naming it and the fix."""
    try:
        return sorted(folder.iterdir())
    except OSError as exc:
        raise unreadable_folder(folder, what, exc) from exc


def unreadable_folder(folder: Path, what: str, exc: OSError) -> DatasetError:
    """The DatasetError for a ``what`` (e.g. ``"class folder"``) that cannot be listed or searched."""
    return DatasetError(
        f"cannot read {what} {folder} ({short(exc)}); make it readable and searchable by this user "
        f"(e.g. chmod u+rx {folder}) or move it out of the dataset."
    )


def image_files(folder: Path, what: str = "folder") -> list[Path]:
    """The visible image files (by extension) directly in ``folder``, sorted.

    Raises:
        DatasetError: if ``folder`` (a ``what``, e.g. ``"class folder"``) cannot be listed or searched.
    """
    entries = list_folder(folder, what)
    try:
        return [
            p for p in entries if visible(p.name) and p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
        ]
    except OSError as exc:  # listed (r) but not searchable (x): stat fails with EACCES
        raise unreadable_folder(folder, what, exc) from exc


@contextmanager
def open_image(path: Path) -> Iterator[Image.Image]:
    """Open ``path`` with PIL, turning any failure into a DatasetError naming the file."""
    try:
        with Image.open(path) as img:
            yield img
    except DatasetError:
        raise
    except PermissionError as exc:
        raise DatasetError(
            f"cannot read image {path} ({short(exc)}); make it readable by this user (e.g. chmod u+r {path}) "
            "or delete it."
        ) from exc
    except Exception as exc:  # PIL raises many types for corrupt files
        raise DatasetError(
            f"cannot decode image {path} ({short(exc)}); the file is corrupt or not an image: fix or "
            "delete it."
        ) from exc
