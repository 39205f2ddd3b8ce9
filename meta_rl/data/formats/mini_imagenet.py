"""miniImageNet from the ``mini-imagenet-cache-{train,val,test}.pkl`` pickles (restricted unpickler)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from meta_rl.data.dataset import ImageDataset
from meta_rl.data.formats.common import DatasetError, StrPath, require_exists, to_dataset
from meta_rl.data.formats.unpickler import as_int_array, as_text, get_key, load_pickle

__all__ = ["load_mini_imagenet"]


_MINI_SPLITS = ("train", "val", "test")
_MINI_EXPECTED = (
    "mini-imagenet-cache-train.pkl, mini-imagenet-cache-val.pkl and/or mini-imagenet-cache-test.pkl "
    "(or pass one such file)"
)


def _read_mini_imagenet(path: Path, name: str) -> ImageDataset:
    """One miniImageNet cache pickle as an ImageDataset, classes sorted by wnid."""
    what = "miniImageNet cache"
    cache = load_pickle(path, encoding="latin1", what=what)
    data = get_key(cache, "image_data", path, what)
    class_dict = get_key(cache, "class_dict", path, what)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 4 or data.shape[3] != 3:
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DatasetError(
            f"{path}: 'image_data' must be a uint8 array (N, H, W, 3), got {got}; the file is corrupt "
            "or not a miniImageNet cache: download it again."
        )
    if 0 in data.shape[1:3]:
        raise DatasetError(
            f"{path}: 'image_data' has shape {data.shape}, images of {data.shape[1]}x{data.shape[2]} pixels; "
            "expected (N, H, W, 3) with H and W at least 1 (miniImageNet's are 84x84). The file is corrupt: "
            "download it again."
        )
    if not isinstance(class_dict, Mapping) or not class_dict:
        raise DatasetError(
            f"{path}: 'class_dict' must be a non-empty dict {{wnid: [image indices]}}, got "
            f"{type(class_dict).__name__}; the file is corrupt: download it again."
        )
    n = len(data)
    items = sorted(((as_text(k), v) for k, v in class_dict.items()), key=lambda kv: kv[0])
    index_arrays = []
    for wnid, indices in items:
        arr = as_int_array(indices, path, f"class_dict[{wnid!r}]")
        if arr.size == 0:
            raise DatasetError(
                f"{path}: class {wnid!r} lists no images; the file is corrupt: download it again."
            )
        if arr.min() < 0 or arr.max() >= n:
            raise DatasetError(
                f"{path}: class {wnid!r} lists image indices outside [0, {n}) ('image_data' holds {n} "
                "images); the file is truncated or corrupt: download it again."
            )
        index_arrays.append(arr)
    order = np.concatenate(index_arrays)
    counts = np.bincount(order, minlength=n)
    if counts.max() > 1:
        raise DatasetError(
            f"{path}: image {int(counts.argmax())} is listed under more than one class; the file is "
            "corrupt: download it again."
        )
    labels = np.repeat(np.arange(len(items), dtype=np.int64), [len(a) for a in index_arrays])
    images = np.empty((len(order), 3, data.shape[1], data.shape[2]), dtype=np.uint8)
    chunk = 1024  # gather + transpose in chunks to keep peak memory near one copy of the data
    for start in range(0, len(order), chunk):
        images[start : start + chunk] = data[order[start : start + chunk]].transpose(0, 3, 1, 2)
    class_names = [wnid for wnid, _ in items]
    return to_dataset(images, labels, class_names, class_names, name)


def load_mini_imagenet(path: StrPath) -> dict[str, ImageDataset]:
    """Load miniImageNet from the common ``mini-imagenet-cache-{train,val,test}.pkl`` pickles.

    Each pickle is a dict ``{"image_data": uint8 (N, 84, 84, 3), "class_dict": {wnid: [indices]}}``.

    Args:
        path: a folder holding any of the three pickles, or one pickle (its split is read from
            its name: ``train``, ``val`` or ``test``; else the file's stem is the key).

    Returns:
        ``{"train": ..., "val": ..., "test": ...}`` for the pickles present, images uint8
        (N, 3, 84, 84), classes sorted by wnid, one group per class.

    Raises:
        DatasetError: if no pickle is found or one is corrupt, malformed or unsafe.
    """
    path = Path(path)
    require_exists(path, _MINI_EXPECTED)
    if path.is_file():
        found = re.findall(r"train|val|test", path.name)
        files = {found[-1] if found else path.stem: path}
    else:
        files = {
            s: path / f"mini-imagenet-cache-{s}.pkl"
            for s in _MINI_SPLITS
            if (path / f"mini-imagenet-cache-{s}.pkl").is_file()
        }
        if not files:
            raise DatasetError(f"{path} holds no miniImageNet pickles: expected {_MINI_EXPECTED} there.")
    return {key: _read_mini_imagenet(f, f"mini_imagenet/{key}") for key, f in files.items()}
