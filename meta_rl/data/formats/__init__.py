"""Loaders for the standard on-disk formats of few-shot image datasets.

Every loader returns :class:`~meta_rl.data.dataset.ImageDataset` objects sorted by class:
Omniglot (``images_background``/``images_evaluation`` folders or zips), CIFAR-10/100 (python
pickles), miniImageNet (``mini-imagenet-cache-*.pkl``), MNIST-style IDX files and
one-folder-per-class image trees, one module per format.

Pickles are read with a restricted unpickler (:mod:`~meta_rl.data.formats.unpickler`) that only
builds numpy arrays, dtypes, scalars and plain containers, so a malicious file raises
:class:`DatasetError` instead of running code.

Hostile files cannot exhaust memory either: every loader's peak memory is a small multiple of
what it returns or of the file's size. Pickled arrays are sized before allocation against the
file's size and shared references are refused; gzip streams are decompressed no further than
the IDX header declares; zip members and image files are size-, ratio- and pixel-capped.
"""

from __future__ import annotations

from meta_rl.data.formats.cifar import load_cifar
from meta_rl.data.formats.common import DatasetError
from meta_rl.data.formats.idx import load_idx
from meta_rl.data.formats.image_folder import load_image_folder
from meta_rl.data.formats.images import IMAGE_EXTENSIONS
from meta_rl.data.formats.mini_imagenet import load_mini_imagenet
from meta_rl.data.formats.omniglot import load_omniglot

__all__ = [
    "IMAGE_EXTENSIONS",
    "DatasetError",
    "load_cifar",
    "load_idx",
    "load_image_folder",
    "load_mini_imagenet",
    "load_omniglot",
]
