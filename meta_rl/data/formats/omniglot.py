"""Omniglot from its original ``images_background``/``images_evaluation`` folders or zips.

Zip members and image files are size-, ratio- and pixel-capped before they are decoded.
"""

from __future__ import annotations

import io
import os
import zipfile
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from meta_rl.data.dataset import ImageDataset
from meta_rl.data.formats.common import DatasetError, StrPath, require_exists, short, to_dataset
from meta_rl.data.formats.images import IMAGE_EXTENSIONS, check_pixels, image_files, pil_to_array, resize, visible

__all__ = ["load_omniglot"]


_OMNIGLOT_SPLITS = {"background": "images_background", "evaluation": "images_evaluation"}
_OMNIGLOT_EXPECTED = (
    "images_background/ or images_background.zip (and/or images_evaluation/ or images_evaluation.zip)"
)
# (alphabet, character, where the file is, a function returning its bytes)
_OmniglotEntry = tuple[str, str, str, Callable[[], bytes]]

# Limits on image files: genuine Omniglot PNGs are ~1 KB and 105x105 pixels.
_MAX_IMAGE_FILE_BYTES = 64 << 20
_MAX_ZIP_RATIO = 100  # above 1 MiB, a zip member may expand at most 100x (PNGs barely compress)
_ZIP_RATIO_FREE_BYTES = 1 << 20
_MAX_OMNIGLOT_PIXELS = 2048 * 2048


def _read_image_file(path: Path) -> bytes:
    """The bytes of an image file of at most ``_MAX_IMAGE_FILE_BYTES``."""
    with open(path, "rb") as file:
        size = os.fstat(file.fileno()).st_size
        if size > _MAX_IMAGE_FILE_BYTES:
            raise DatasetError(
                f"{path} is {size:,} bytes, more than the {_MAX_IMAGE_FILE_BYTES >> 20} MiB an image file may "
                "be (Omniglot images are about 1 KB); it is not an Omniglot image: delete it or extract "
                "the dataset again."
            )
        return file.read(_MAX_IMAGE_FILE_BYTES)


def _check_zip_member(info: zipfile.ZipInfo, where: str) -> None:
    """Refuse a zip member whose header declares an oversized or over-compressed image."""
    if info.file_size > _MAX_IMAGE_FILE_BYTES:
        raise DatasetError(
            f"{where} is {info.file_size:,} bytes uncompressed, more than the {_MAX_IMAGE_FILE_BYTES >> 20} "
            "MiB an image file may be (Omniglot images are about 1 KB); the archive is corrupt or a zip "
            "bomb: download it again."
        )
    if info.file_size > _ZIP_RATIO_FREE_BYTES and info.file_size > _MAX_ZIP_RATIO * info.compress_size:
        raise DatasetError(
            f"{where} expands from {info.compress_size:,} to {info.file_size:,} bytes, more than the "
            f"{_MAX_ZIP_RATIO}x an image file compresses; the archive is corrupt or a zip bomb: download "
            "it again."
        )


def _read_zip_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, where: str) -> bytes:
    """The bytes of a checked zip member, never decompressing past its declared size."""
    with archive.open(info) as member:
        data = member.read(info.file_size)
    if len(data) != info.file_size:
        raise DatasetError(
            f"{where} holds {len(data):,} bytes but its zip header says {info.file_size:,}; the archive is "
            "truncated or corrupt: download it again."
        )
    return data


def _omniglot_dir_entries(folder: Path) -> list[_OmniglotEntry]:
    """The images of an extracted split folder (``Alphabet/character/*.png``), sorted."""
    entries: list[_OmniglotEntry] = []
    for alphabet in sorted(p for p in folder.iterdir() if p.is_dir() and visible(p.name)):
        for character in sorted(p for p in alphabet.iterdir() if p.is_dir() and visible(p.name)):
            files = image_files(character)
            if not files:
                raise DatasetError(
                    f"Omniglot character folder {character} holds no .png images; delete the folder "
                    f"or extract {folder.name} again."
                )
            entries.extend((alphabet.name, character.name, str(f), partial(_read_image_file, f)) for f in files)
    return entries


def _omniglot_zip_entries(archive: zipfile.ZipFile, zip_path: Path) -> list[_OmniglotEntry]:
    """The images of a split zip, every member checked before any is decoded, sorted."""
    entries: list[_OmniglotEntry] = []
    for info in archive.infolist():
        parts = [part for part in info.filename.split("/") if part]
        if info.is_dir() or len(parts) < 3 or not all(visible(part) for part in parts):
            continue
        if Path(parts[-1]).suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        where = f"{zip_path}:{info.filename}"
        _check_zip_member(info, where)  # all members, before decoding any
        entries.append((parts[-3], parts[-2], where, partial(_read_zip_member, archive, info, where)))
    entries.sort(key=lambda entry: (entry[0], entry[1], entry[2]))
    return entries


def _decode_omniglot(entries: list[_OmniglotEntry], source: Path, image_size: int, name: str) -> ImageDataset:
    """Decode and resize ``entries`` into one dataset, one class per (alphabet, character)."""
    if not entries:
        raise DatasetError(
            f"{source} holds no Omniglot images (expected Alphabet/character/*.png inside); "
            "extract or download it again."
        )
    keys = sorted({(alphabet, character) for alphabet, character, _, _ in entries})
    index = {key: i for i, key in enumerate(keys)}
    images = np.empty((len(entries), 1, image_size, image_size), dtype=np.uint8)
    labels = np.empty(len(entries), dtype=np.int64)
    for i, (alphabet, character, where, read) in enumerate(entries):
        try:
            with Image.open(io.BytesIO(read())) as img:
                check_pixels(img, where, _MAX_OMNIGLOT_PIXELS, "Omniglot images are 105x105")
                strokes_bright = 255 - pil_to_array(img, grayscale=True)  # black-on-white -> bright strokes
        except DatasetError:
            raise
        except Exception as exc:  # PIL and zipfile raise many types for corrupt data
            raise DatasetError(
                f"cannot decode Omniglot image {where} ({short(exc)}); the file is corrupt: extract or "
                "download the dataset again."
            ) from exc
        images[i, 0] = resize(strokes_bright, (image_size, image_size))
        labels[i] = index[(alphabet, character)]
    class_names = [f"{alphabet}/{character}" for alphabet, character in keys]
    groups = [alphabet for alphabet, _ in keys]
    return to_dataset(images, labels, class_names, groups, name)


def _load_omniglot_split(source: Path, image_size: int, name: str) -> ImageDataset:
    """One split from its folder or zip."""
    if source.is_dir():
        return _decode_omniglot(_omniglot_dir_entries(source), source, image_size, name)
    try:
        archive = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DatasetError(
            f"{source} is not a readable zip archive ({short(exc)}); it is truncated or corrupt: "
            "download it again."
        ) from exc
    with archive:
        return _decode_omniglot(_omniglot_zip_entries(archive, source), source, image_size, name)


def load_omniglot(root: StrPath, *, image_size: int = 28) -> dict[str, ImageDataset]:
    """Load Omniglot from its original folders or zips.

    Args:
        root: folder holding ``images_background/`` and/or ``images_evaluation/`` (each
            ``Alphabet/character/*.png``, 105x105 black strokes on white) or the matching
            ``.zip`` files; ``root/omniglot-py`` and ``root/python`` are searched too, and
            ``root`` may also be one of those folders or zips itself.
        image_size: side of the square output images (resized with PIL's LANCZOS filter).

    Returns:
        ``{"background": ..., "evaluation": ...}`` for the splits present: 1-channel uint8
        images with bright (255) strokes on a dark (0) background, one class per character
        named ``"Alphabet/character01"``, grouped by alphabet.

    Raises:
        DatasetError: if no split is found, or a folder, zip or image is empty or corrupt.
    """
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}.")
    root = Path(root)
    require_exists(root, _OMNIGLOT_EXPECTED)
    sources: dict[str, Path] = {}
    for key, folder in _OMNIGLOT_SPLITS.items():
        if root.name in (folder, f"{folder}.zip"):
            sources[key] = root
            continue
        for base in (root, root / "omniglot-py", root / "python"):
            if (base / folder).is_dir():
                sources[key] = base / folder
                break
            if (base / f"{folder}.zip").is_file():
                sources[key] = base / f"{folder}.zip"
                break
    if not sources:
        raise DatasetError(
            f"found no Omniglot data in {root}: expected {_OMNIGLOT_EXPECTED} there. Get them from "
            "github.com/brendenlake/omniglot (python/ folder) and pass the folder that holds them."
        )
    return {key: _load_omniglot_split(src, image_size, f"omniglot/{key}") for key, src in sources.items()}
