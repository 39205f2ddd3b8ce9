"""One-folder-per-class image trees (``root/<class>/<image>``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from meta_rl.data.dataset import ImageDataset
from meta_rl.data.formats.common import DatasetError, StrPath, require_exists, to_dataset
from meta_rl.data.formats.images import (
    IMAGE_EXTENSIONS,
    check_pixels,
    image_files,
    list_folder,
    open_image,
    pil_to_array,
    resize,
    unreadable_folder,
    visible,
)

__all__ = ["load_image_folder"]

_SINGLE_CHANNEL_MODES = frozenset({"1", "L", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
_MAX_IMAGE_PIXELS = 1 << 26  # 8192 x 8192, for image folders


def _size_hw(image_size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    """``image_size`` as ``(height, width)``, or None to keep the images' own size."""
    if image_size is None:
        return None
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(size) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size):
        raise ValueError(f"image_size must be a positive int or (height, width), got {image_size!r}.")
    return (int(size[0]), int(size[1]))


def _class_dirs(root: Path) -> list[Path]:
    """The visible sub-folders of ``root``, sorted by name; an unreadable ``root`` is a DatasetError."""
    entries = list_folder(root, "dataset folder")
    try:
        return sorted((p for p in entries if visible(p.name) and p.is_dir()), key=lambda p: p.name)
    except OSError as exc:  # listed (r) but not searchable (x): stat fails with EACCES
        raise unreadable_folder(root, "dataset folder", exc) from exc


def load_image_folder(
    root: StrPath,
    *,
    image_size: int | tuple[int, int] | None = None,
    grayscale: bool | None = None,
) -> ImageDataset:
    """Load a one-folder-per-class image tree (``root/<class>/<image>``).

    Classes are the sub-folders of ``root`` sorted by name; their image files
    (png/jpg/jpeg/bmp/gif/webp) are read in name order. Other files and hidden entries are
    skipped.

    Args:
        root: the folder holding one sub-folder per class.
        image_size: output size, an int for squares or ``(height, width)``; ``None`` keeps the
            images' own size, which must then be the same for all.
        grayscale: ``True`` for 1 channel, ``False`` for RGB, ``None`` for 1 channel exactly
            when every image has a grey mode (1, L, LA, I, I;16, F).

    Returns:
        Images uint8 (N, C, H, W), one group per class.

    Raises:
        DatasetError: if ``root`` is missing, unreadable or has no class folders, a class folder
            is unreadable or has no images, an image does not decode, or sizes differ while
            ``image_size`` is None.
    """
    root = Path(root)
    expected = "one sub-folder per class with image files inside"
    require_exists(root, expected)
    if not root.is_dir():
        raise DatasetError(f"{root} is a file; pass a folder holding {expected}.")
    size_hw = _size_hw(image_size)
    class_dirs = _class_dirs(root)
    if not class_dirs:
        raise DatasetError(f"{root} holds no class folders; expected {expected}.")
    files: list[tuple[int, Path]] = []
    for label, class_dir in enumerate(class_dirs):
        found = image_files(class_dir, "class folder")
        if not found:
            raise DatasetError(
                f"class folder {class_dir} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))}); "
                "add images or remove the folder."
            )
        files.extend((label, f) for f in found)

    sizes, modes = [], []
    for _, f in files:  # headers only: cheap
        with open_image(f) as img:
            check_pixels(img, f, _MAX_IMAGE_PIXELS, "8192x8192")
            sizes.append(img.size)
            modes.append(img.mode)
    if size_hw is None:
        first_file, (w0, h0) = files[0][1], sizes[0]
        for (_, f), (w, h) in zip(files, sizes, strict=True):
            if (w, h) != (w0, h0):
                raise DatasetError(
                    f"images differ in size: {first_file} is {w0}x{h0} but {f} is {w}x{h} (width x "
                    f"height); pass image_size= (an int or (height, width), e.g. image_size={h0}) to "
                    "resize them all."
                )
        size_hw = (h0, w0)
    gray = all(m in _SINGLE_CHANNEL_MODES or m == "LA" for m in modes) if grayscale is None else grayscale

    images = np.empty((len(files), 1 if gray else 3, *size_hw), dtype=np.uint8)
    for i, (_, f) in enumerate(files):
        with open_image(f) as img:
            arr = pil_to_array(img, gray)
        arr = resize(arr, size_hw)
        images[i] = arr[None] if gray else arr.transpose(2, 0, 1)
    labels = np.array([label for label, _ in files], dtype=np.int64)
    class_names = [d.name for d in class_dirs]
    return to_dataset(images, labels, class_names, class_names, root.name or "image_folder")
