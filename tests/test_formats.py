"""Tests for the on-disk dataset loaders, on small files written in each exact format."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from meta_rl.data import DatasetError, load_cifar, load_idx, load_image_folder, load_mini_imagenet, load_omniglot
from meta_rl.data.dataset import ImageDataset

FUZZ = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


# --------------------------------------------------------------------------------------------
# Writers for each format
# --------------------------------------------------------------------------------------------


class _Py2Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Writes str and bytes as Python 2 ``str`` (BINSTRING), like the original CIFAR pickles."""

    dispatch = pickle._Pickler.dispatch.copy()  # type: ignore[attr-defined]

    def _save_py2_str(self, obj: str | bytes) -> None:
        data = obj.encode("latin-1") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)

    dispatch[bytes] = _save_py2_str
    dispatch[str] = _save_py2_str


def write_pickle(path: Path, obj: Any, style: str = "protocol2") -> None:
    """``protocol2``: pickle.dump(protocol=2) from Python 3; ``py2``: Python 2 byte layout."""
    if style == "py2":
        buf = io.BytesIO()
        _Py2Pickler(buf, protocol=2).dump(obj)
        raw = buf.getvalue().replace(b"numpy._core.", b"numpy.core.")  # numpy 1.x module path
        path.write_bytes(raw)
    else:
        with open(path, "wb") as f:
            pickle.dump(obj, f, protocol=2 if style == "protocol2" else int(style))


def omniglot_image(alphabet: int, character: int, drawer: int) -> Image.Image:
    """105x105 black strokes on white; a 10x10 black square at a spot unique to each image."""
    arr = np.full((105, 105), 255, dtype=np.uint8)
    r, c = 5 + 20 * character, 5 + 20 * drawer + 5 * alphabet
    arr[r : r + 10, c : c + 10] = 0
    return Image.fromarray(arr).convert("1")


ALPHABETS = ("Greek", "Latin")


def write_omniglot_tree(base: Path, split: str = "images_background") -> None:
    for a, alphabet in enumerate(ALPHABETS):
        for ch in range(3):
            folder = base / split / alphabet / f"character{ch + 1:02d}"
            folder.mkdir(parents=True)
            for d in range(4):
                omniglot_image(a, ch, d).save(folder / f"{a}{ch}_{d + 1:02d}.png")


def write_omniglot_zip(path: Path, split: str = "images_background") -> None:
    with zipfile.ZipFile(path, "w") as zf:
        for a, alphabet in enumerate(ALPHABETS):
            zf.writestr(f"{split}/{alphabet}/", b"")
            for ch in range(3):
                for d in range(4):
                    buf = io.BytesIO()
                    omniglot_image(a, ch, d).save(buf, format="PNG")
                    zf.writestr(
                        f"{split}/{alphabet}/character{ch + 1:02d}/{a}{ch}_{d + 1:02d}.png", buf.getvalue()
                    )


def write_cifar10(
    folder: Path, rng: np.random.Generator, style: str
) -> dict[str, tuple[np.ndarray, list[int]]]:
    folder.mkdir(parents=True)
    names = [b"airplane", b"automobile", b"bird"]
    write_pickle(
        folder / "batches.meta", {b"label_names": names, b"num_cases_per_batch": 4, b"num_vis": 3072}, style
    )
    written: dict[str, tuple[np.ndarray, list[int]]] = {}
    for fname, n in [*[(f"data_batch_{i}", 4) for i in range(1, 6)], ("test_batch", 3)]:
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = [int(x) for x in rng.integers(0, 3, size=n)]
        batch = {
            b"batch_label": fname.encode(),
            b"labels": labels,
            b"data": data,
            b"filenames": [b"x.png"] * n,
        }
        write_pickle(folder / fname, batch, style)
        written[fname] = (data, labels)
    return written


def write_cifar100(
    folder: Path, rng: np.random.Generator, style: str
) -> dict[str, tuple[np.ndarray, list[int]]]:
    folder.mkdir(parents=True)
    fine = [b"apple", b"bee", b"cat", b"pear"]
    coarse_of = [0, 1, 1, 0]
    write_pickle(
        folder / "meta", {b"fine_label_names": fine, b"coarse_label_names": [b"fruit", b"animal"]}, style
    )
    written = {}
    for split, n in (("train", 12), ("test", 6)):
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = [int(x) for x in rng.permutation(np.arange(n) % 4)]
        batch = {
            b"filenames": [b"x.png"] * n,
            b"batch_label": split.encode(),
            b"fine_labels": labels,
            b"coarse_labels": [coarse_of[x] for x in labels],
            b"data": data,
        }
        write_pickle(folder / split, batch, style)
        written[split] = (data, labels)
    return written


def write_mini(
    path: Path, rng: np.random.Generator, protocol: int = 4
) -> tuple[np.ndarray, dict[str, list[int]]]:
    data = rng.integers(0, 256, size=(6, 84, 84, 3), dtype=np.uint8)
    class_dict = {"n02": [1, 3, 5], "n01": [0, 2, 4]}  # interleaved, unsorted wnids
    with open(path, "wb") as f:
        pickle.dump({"image_data": data, "class_dict": class_dict}, f, protocol=protocol)
    return data, class_dict


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    return struct.pack(f">I{array.ndim}I", magic, *array.shape) + array.astype(np.uint8).tobytes()


def write_idx(folder: Path, images: np.ndarray, labels: np.ndarray, gz: bool) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    pairs = [("images-idx3-ubyte", idx_bytes(images, 2051)), ("labels-idx1-ubyte", idx_bytes(labels, 2049))]
    paths = []
    for fname, raw in pairs:
        path = folder / (fname + suffix)
        path.write_bytes(gzip.compress(raw) if gz else raw)
        paths.append(path)
    return paths[0], paths[1]


def check_dataset(ds: ImageDataset, shape: tuple[int, int, int]) -> None:
    assert ds.images.dtype == torch.uint8 and ds.labels.dtype == torch.int64
    assert ds.image_shape == shape
    assert torch.equal(ds.labels, torch.sort(ds.labels, stable=True).values), "not sorted by class"
    assert len(ds.class_names) == len(ds.groups)


# --------------------------------------------------------------------------------------------
# Omniglot
# --------------------------------------------------------------------------------------------


def test_omniglot_folders_inverted_and_grouped(tmp_path: Path) -> None:
    write_omniglot_tree(tmp_path)
    out = load_omniglot(tmp_path, image_size=105)
    assert set(out) == {"background"}
    ds = out["background"]
    check_dataset(ds, (1, 105, 105))
    assert len(ds) == 24 and ds.num_classes == 6
    assert ds.class_names[:4] == (
        "Greek/character01",
        "Greek/character02",
        "Greek/character03",
        "Latin/character01",
    )
    assert ds.groups == ("Greek",) * 3 + ("Latin",) * 3
    assert ds.class_counts().tolist() == [4] * 6
    # Image 4*4+2: Latin (a=1), character02 (ch=1), drawer 3 (d=2): bright square on dark ground.
    img = ds.images[4 * 4 + 2, 0]
    r, c = 5 + 20 * 1, 5 + 20 * 2 + 5 * 1
    assert (img[r : r + 10, c : c + 10] == 255).all()
    assert int(img.sum()) == 255 * 100
    assert set(torch.unique(ds.images).tolist()) == {0, 255}


def test_omniglot_resize_and_zip_equals_folder(tmp_path: Path) -> None:
    write_omniglot_tree(tmp_path / "a")
    (tmp_path / "b").mkdir()
    write_omniglot_zip(tmp_path / "b" / "images_background.zip")
    from_dir = load_omniglot(tmp_path / "a")["background"]
    from_zip = load_omniglot(tmp_path / "b")["background"]
    check_dataset(from_dir, (1, 28, 28))
    assert from_dir.class_names == from_zip.class_names and from_dir.groups == from_zip.groups
    assert torch.equal(from_dir.images, from_zip.images) and torch.equal(from_dir.labels, from_zip.labels)
    assert from_dir.images[:, :, 0, 0].max() == 0  # background stays dark after resizing
    assert from_dir.images.amax(dim=(1, 2, 3)).min() > 200  # every image has bright strokes


def test_omniglot_both_splits_mixed_sources(tmp_path: Path) -> None:
    write_omniglot_tree(tmp_path)
    write_omniglot_zip(tmp_path / "images_evaluation.zip", split="images_evaluation")
    out = load_omniglot(tmp_path, image_size=14)
    assert set(out) == {"background", "evaluation"}
    assert out["evaluation"].image_shape == (1, 14, 14) and len(out["evaluation"]) == 24


def test_omniglot_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"images_background/ or images_background\.zip"):
        load_omniglot(tmp_path / "nope")
    with pytest.raises(DatasetError, match=r"images_background/ or images_background\.zip"):
        load_omniglot(tmp_path)  # exists but empty
    write_omniglot_zip(tmp_path / "images_background.zip")
    raw = (tmp_path / "images_background.zip").read_bytes()
    (tmp_path / "images_background.zip").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DatasetError, match=r"images_background\.zip"):
        load_omniglot(tmp_path)
    (tmp_path / "images_background.zip").unlink()
    write_omniglot_tree(tmp_path)
    bad = tmp_path / "images_background" / "Greek" / "character01" / "00_01.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(DatasetError, match=r"00_01\.png"):
        load_omniglot(tmp_path)
    (tmp_path / "images_background" / "Latin" / "character09").mkdir()
    with pytest.raises(DatasetError, match="character09"):
        load_omniglot(tmp_path)


# --------------------------------------------------------------------------------------------
# CIFAR
# --------------------------------------------------------------------------------------------


def expected_sorted(data: np.ndarray, labels: list[int]) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(np.asarray(labels), kind="stable")
    return data[order].reshape(-1, 3, 32, 32), np.asarray(labels)[order]


@pytest.mark.parametrize("style", ["protocol2", "py2"])
def test_cifar10(tmp_path: Path, style: str) -> None:
    written = write_cifar10(tmp_path / "cifar-10-batches-py", np.random.default_rng(0), style)
    for root in (tmp_path / "cifar-10-batches-py", tmp_path):  # the folder or its parent
        out = load_cifar(root)
        assert set(out) == {"train", "test"}
        train, test = out["train"], out["test"]
        check_dataset(train, (3, 32, 32))
        assert train.class_names == ("airplane", "automobile", "bird") == train.groups
        data = np.concatenate([written[f"data_batch_{i}"][0] for i in range(1, 6)])
        labels = [x for i in range(1, 6) for x in written[f"data_batch_{i}"][1]]
        images, sorted_labels = expected_sorted(data, labels)
        assert torch.equal(train.images, torch.from_numpy(images))
        assert train.labels.tolist() == sorted_labels.tolist()
        assert len(test) == 3 and test.name == "cifar10/test"
    # Row-major RGB planes: byte 1024 + 5*32 + 7 is green at row 5, column 7.
    data, labels = written["test_batch"]
    first = int(np.argsort(labels, kind="stable")[0])
    assert int(test.images[0, 1, 5, 7]) == int(data[first, 1024 + 5 * 32 + 7])


@pytest.mark.parametrize("style", ["protocol2", "py2"])
def test_cifar100_fine_classes_coarse_groups(tmp_path: Path, style: str) -> None:
    written = write_cifar100(tmp_path / "cifar-100-python", np.random.default_rng(1), style)
    out = load_cifar(tmp_path)
    train = out["train"]
    check_dataset(train, (3, 32, 32))
    assert train.class_names == ("apple", "bee", "cat", "pear")
    assert train.groups == ("fruit", "animal", "animal", "fruit")
    images, labels = expected_sorted(*written["train"])
    assert torch.equal(train.images, torch.from_numpy(images))
    assert train.labels.tolist() == labels.tolist()
    assert out["test"].class_counts().tolist() == [2, 2, 1, 1]


def test_cifar_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="cifar-10-batches-py"):
        load_cifar(tmp_path / "missing")
    with pytest.raises(DatasetError, match="cifar-10-batches-py"):
        load_cifar(tmp_path)  # no CIFAR files there
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10(folder, np.random.default_rng(2), "protocol2")
    raw = (folder / "data_batch_3").read_bytes()
    (folder / "data_batch_3").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DatasetError, match="data_batch_3"):
        load_cifar(folder)
    (folder / "data_batch_3").unlink()
    with pytest.raises(DatasetError, match="data_batch_3 is missing"):
        load_cifar(folder)
    write_pickle(folder / "data_batch_3", {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1, 2]})
    with pytest.raises(DatasetError, match="2 images but 3"):
        load_cifar(folder)
    write_pickle(folder / "data_batch_3", {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 7]})
    with pytest.raises(DatasetError, match="data_batch_3"):
        load_cifar(folder)  # label 7 but only 3 class names
    write_pickle(folder / "data_batch_3", {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]})
    with pytest.raises(DatasetError, match=r"\(N, 3072\)"):
        load_cifar(folder)


# --------------------------------------------------------------------------------------------
# miniImageNet
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_mini_imagenet(tmp_path: Path, protocol: int) -> None:
    rng = np.random.default_rng(3)
    data, class_dict = write_mini(tmp_path / "mini-imagenet-cache-train.pkl", rng, protocol)
    write_mini(tmp_path / "mini-imagenet-cache-test.pkl", rng, protocol)
    out = load_mini_imagenet(tmp_path)
    assert set(out) == {"train", "test"}
    ds = out["train"]
    check_dataset(ds, (3, 84, 84))
    assert ds.class_names == ("n01", "n02") == ds.groups
    assert ds.labels.tolist() == [0, 0, 0, 1, 1, 1]
    order = class_dict["n01"] + class_dict["n02"]
    assert torch.equal(ds.images, torch.from_numpy(data[order].transpose(0, 3, 1, 2).copy()))
    assert int(ds.images[3, 2, 10, 20]) == int(data[1, 10, 20, 2])  # n02's first image, blue channel
    single = load_mini_imagenet(tmp_path / "mini-imagenet-cache-train.pkl")
    assert set(single) == {"train"} and torch.equal(single["train"].images, ds.images)


def test_mini_imagenet_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"mini-imagenet-cache-train\.pkl"):
        load_mini_imagenet(tmp_path / "missing")
    with pytest.raises(DatasetError, match=r"mini-imagenet-cache-train\.pkl"):
        load_mini_imagenet(tmp_path)
    path = tmp_path / "mini-imagenet-cache-val.pkl"
    write_mini(path, np.random.default_rng(4))
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) - 1000])
    with pytest.raises(DatasetError, match=r"mini-imagenet-cache-val\.pkl"):
        load_mini_imagenet(tmp_path)
    data = np.zeros((2, 84, 84, 3), np.uint8)
    with open(path, "wb") as f:
        pickle.dump({"image_data": data, "class_dict": {"n01": [0, 5]}}, f)
    with pytest.raises(DatasetError, match=r"outside \[0, 2\)"):
        load_mini_imagenet(path)
    with open(path, "wb") as f:
        pickle.dump({"image_data": data.astype(np.float32), "class_dict": {"n01": [0]}}, f)
    with pytest.raises(DatasetError, match="uint8"):
        load_mini_imagenet(path)
    with open(path, "wb") as f:
        pickle.dump({"images": data}, f)
    with pytest.raises(DatasetError, match="image_data"):
        load_mini_imagenet(path)


# --------------------------------------------------------------------------------------------
# Pickle safety
# --------------------------------------------------------------------------------------------


class _Evil:
    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, (f"echo pwned > {self.target}",))


class _EvalEvil(_Evil):
    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (eval, (f"open({str(self.target)!r}, 'w').write('pwned')",))


@pytest.mark.parametrize("evil", [_Evil, _EvalEvil])
@pytest.mark.parametrize("protocol", [2, 4])
def test_malicious_pickles_are_refused(tmp_path: Path, evil: type[_Evil], protocol: int) -> None:
    target = tmp_path / "pwned.txt"
    payload = {"image_data": evil(target), "class_dict": {}}
    with open(tmp_path / "mini-imagenet-cache-train.pkl", "wb") as f:
        pickle.dump(payload, f, protocol=protocol)
    with pytest.raises(DatasetError, match=r"mini-imagenet-cache-train\.pkl.*(system|eval)"):
        load_mini_imagenet(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    write_pickle(folder / "batches.meta", {b"label_names": [b"a"]})
    write_pickle(folder / "test_batch", {b"data": evil(target), b"labels": [0]}, str(protocol))
    with pytest.raises(DatasetError, match="test_batch"):
        load_cifar(folder)
    assert not target.exists()


@FUZZ
@given(raw=st.binary(max_size=300), prefix=st.sampled_from([b"", b"\x80\x02", b"\x80\x04", b"\x80\x05"]))
def test_fuzz_random_pickle_bytes_raise_dataset_error(tmp_path: Path, raw: bytes, prefix: bytes) -> None:
    path = tmp_path / "mini-imagenet-cache-test.pkl"
    path.write_bytes(prefix + raw)
    with pytest.raises(DatasetError):
        load_mini_imagenet(path)


_VALID_MINI = io.BytesIO()
pickle.dump(
    {
        "image_data": np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3),
        "class_dict": {"n1": [0, 1]},
    },
    _VALID_MINI,
    protocol=2,
)


@FUZZ
@given(data=st.data())
def test_fuzz_corrupted_pickle_loads_or_raises_dataset_error(tmp_path: Path, data: st.DataObject) -> None:
    raw = bytearray(_VALID_MINI.getvalue())
    cut = data.draw(st.integers(0, len(raw)))
    for _ in range(data.draw(st.integers(0, 3))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    path = tmp_path / "mini-imagenet-cache-train.pkl"
    path.write_bytes(bytes(raw[:cut]) if data.draw(st.booleans()) else bytes(raw))
    try:
        out = load_mini_imagenet(path)
    except DatasetError:
        return
    assert out["train"].images.dtype == torch.uint8


# --------------------------------------------------------------------------------------------
# IDX
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
def test_idx_round_trip(tmp_path: Path, gz: bool) -> None:
    rng = np.random.default_rng(5)
    images = rng.integers(0, 256, size=(30, 5, 7), dtype=np.uint8)
    labels = np.concatenate([np.arange(10), rng.integers(0, 10, size=20)]).astype(np.uint8)
    images_path, labels_path = write_idx(tmp_path, images, labels, gz)
    ds = load_idx(images_path, labels_path, name="mnist")
    check_dataset(ds, (1, 5, 7))
    assert ds.name == "mnist" and ds.class_names == tuple(str(i) for i in range(10)) == ds.groups
    order = np.argsort(labels, kind="stable")
    assert torch.equal(ds.images[:, 0], torch.from_numpy(images[order]))
    assert ds.labels.tolist() == labels[order].tolist()
    assert int(ds.images[0, 0, 4, 6]) == int(images[order[0], 4, 6])


def test_idx_labels_not_starting_at_zero(tmp_path: Path) -> None:
    images = np.zeros((4, 2, 2), np.uint8)
    images_path, labels_path = write_idx(tmp_path, images, np.array([3, 7, 3, 7], np.uint8), gz=False)
    ds = load_idx(images_path, labels_path)
    assert ds.class_names == ("3", "7") and ds.labels.tolist() == [0, 0, 1, 1]


def test_idx_errors(tmp_path: Path) -> None:
    images = np.zeros((4, 3, 3), np.uint8)
    images_path, labels_path = write_idx(tmp_path, images, np.arange(4, dtype=np.uint8), gz=False)
    with pytest.raises(DatasetError, match="missing-images"):
        load_idx(tmp_path / "missing-images", labels_path)
    with pytest.raises(DatasetError, match="pass it as labels_path"):
        load_idx(labels_path, images_path)  # swapped: wrong magic numbers
    bad_magic = tmp_path / "bad-magic"
    bad_magic.write_bytes(struct.pack(">IIII", 2052, 4, 3, 3) + bytes(36))
    with pytest.raises(DatasetError, match="0x00000804"):
        load_idx(bad_magic, labels_path)
    truncated = tmp_path / "truncated"
    truncated.write_bytes(images_path.read_bytes()[:-1])
    with pytest.raises(DatasetError, match="truncated"):
        load_idx(truncated, labels_path)
    bad_gz = tmp_path / "truncated.gz"
    bad_gz.write_bytes(gzip.compress(images_path.read_bytes())[:-8])
    with pytest.raises(DatasetError, match=r"truncated\.gz"):
        load_idx(bad_gz, labels_path)
    short_labels = tmp_path / "short-labels"
    short_labels.write_bytes(idx_bytes(np.arange(3, dtype=np.uint8), 2049))
    with pytest.raises(DatasetError, match=r"4 images but .* 3 labels"):
        load_idx(images_path, short_labels)


@FUZZ
@given(raw=st.binary(max_size=200), header=st.sampled_from([b"", b"\x00\x00\x08\x03", b"\x1f\x8b"]))
def test_fuzz_random_idx_bytes_raise_dataset_error(tmp_path: Path, raw: bytes, header: bytes) -> None:
    path = tmp_path / "images"
    path.write_bytes(header + raw)
    labels = tmp_path / "labels"
    labels.write_bytes(idx_bytes(np.arange(2, dtype=np.uint8), 2049))
    try:
        ds = load_idx(path, labels)
    except DatasetError:
        return
    assert len(ds) == 2  # only a well-formed 2-image file may load


# --------------------------------------------------------------------------------------------
# Image folders
# --------------------------------------------------------------------------------------------


def write_folder(root: Path, mode: str = "RGB", size: tuple[int, int] = (8, 6)) -> None:
    """Classes cat (2 images) and dog (3), plus junk files to skip. size is (width, height)."""
    for cls, n in (("dog", 3), ("cat", 2)):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            color = (10 * i + (100 if cls == "dog" else 0), 50, 200)
            img = Image.new("RGB", size, color)
            img.putpixel((1, 2), (255, 0, 7))
            (img if mode == "RGB" else img.convert(mode)).save(root / cls / f"img{i}.png")
        (root / cls / "notes.txt").write_text("not an image")
        (root / cls / ".DS_Store").write_bytes(b"\x00junk")
    (root / "README.txt").write_text("top-level junk")


def test_image_folder_rgb(tmp_path: Path) -> None:
    write_folder(tmp_path / "pets")
    ds = load_image_folder(tmp_path / "pets")
    check_dataset(ds, (3, 6, 8))
    assert ds.class_names == ("cat", "dog") == ds.groups and ds.name == "pets"
    assert ds.labels.tolist() == [0, 0, 1, 1, 1]
    assert ds.images[3, :, 0, 0].tolist() == [110, 50, 200]  # dog/img1.png
    assert ds.images[3, :, 2, 1].tolist() == [255, 0, 7]  # the known pixel at x=1, y=2


def test_image_folder_gray_auto_and_resize(tmp_path: Path) -> None:
    write_folder(tmp_path, mode="L")
    ds = load_image_folder(tmp_path)
    check_dataset(ds, (1, 6, 8))
    expected = Image.new("RGB", (1, 1), (0, 50, 200)).convert("L").getpixel((0, 0))
    assert int(ds.images[0, 0, 0, 0]) == expected
    assert load_image_folder(tmp_path, image_size=4).image_shape == (1, 4, 4)
    assert load_image_folder(tmp_path, image_size=(3, 5), grayscale=False).image_shape == (3, 3, 5)
    assert load_image_folder(tmp_path, grayscale=True).image_shape == (1, 6, 8)


def test_image_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="one sub-folder per class"):
        load_image_folder(tmp_path / "missing")
    with pytest.raises(DatasetError, match="no class folders"):
        load_image_folder(tmp_path)
    write_folder(tmp_path)
    Image.new("RGB", (9, 9)).save(tmp_path / "cat" / "big.png")
    with pytest.raises(DatasetError, match=r"big\.png.*image_size="):
        load_image_folder(tmp_path)
    assert load_image_folder(tmp_path, image_size=(6, 8)).image_shape == (3, 6, 8)
    (tmp_path / "cat" / "broken.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    with pytest.raises(DatasetError, match=r"broken\.jpg"):
        load_image_folder(tmp_path, image_size=8)
    (tmp_path / "cat" / "broken.jpg").unlink()
    raw = (tmp_path / "dog" / "img0.png").read_bytes()
    (tmp_path / "dog" / "img0.png").write_bytes(raw[: len(raw) // 2])  # header fine, data truncated
    with pytest.raises(DatasetError, match=r"img0\.png"):
        load_image_folder(tmp_path, image_size=8)
    (tmp_path / "dog" / "img0.png").unlink()
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(DatasetError, match="empty_class"):
        load_image_folder(tmp_path, image_size=8)


def test_dataset_error_is_value_error() -> None:
    assert issubclass(DatasetError, ValueError)
