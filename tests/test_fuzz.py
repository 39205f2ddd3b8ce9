"""Fuzzing bad input: every case works as documented or raises ValueError/TypeError (DatasetError,
ConfigError) with a message that names the culprit, never another exception type."""

from __future__ import annotations

import gzip
import math
import pickle
import struct
import types
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image

from meta_rl.config import ConfigError, TrainConfig
from meta_rl.data import ImageDataset, register_dataset
from meta_rl.data.formats import DatasetError, load_cifar, load_idx, load_image_folder, load_mini_imagenet
from meta_rl.envs import FewShotEnv, FewShotVectorEnv
from meta_rl.train import make_vec_env

FUZZ = settings(max_examples=100, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
B, N_WAY = 4, 3


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def raises_clearly(call: Callable[[], Any], *types: type[BaseException]) -> BaseException | None:
    """Run ``call``; None if it works, else the exception, which must be one of ``types`` with a message."""
    try:
        call()
    except types as exc:
        assert str(exc).strip(), f"{type(exc).__name__} without a message"
        return exc
    return None


# --------------------------------------------------------------------------------------------
# The env API
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vec(synthetic: ImageDataset) -> FewShotVectorEnv:
    return FewShotVectorEnv(num_envs=B, dataset=synthetic, n_way=N_WAY, instances_per_class=3)


TORCH_DTYPES = [torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.uint16,
                torch.uint32, torch.uint64, torch.float16, torch.bfloat16, torch.float32, torch.float64,
                torch.complex64, torch.float8_e4m3fn, torch.float8_e5m2]
NUMPY_DTYPES = ["i1", "u1", "i2", "u2", "i4", "u4", "i8", "u8", ">i4", ">i8", "<u2", "f2", "f4", ">f8", "?", "c8", "O"]
SHAPES = [(B,), (), (B - 1,), (B + 1,), (B, 1), (1, B), (0,), (2, 2)]


def _torch_actions(draw: st.DrawFn) -> Any:
    dtype = draw(st.sampled_from(TORCH_DTYPES))
    shape = draw(st.sampled_from(SHAPES))
    device = draw(st.sampled_from(["cpu", "cpu", "meta"]))
    values = draw(st.lists(st.integers(-3, N_WAY + 2), min_size=math.prod(shape), max_size=math.prod(shape)))
    base = torch.tensor(values, dtype=torch.int64).reshape(shape)
    if dtype.is_floating_point or dtype.is_complex:
        base = base.to(torch.float32) + draw(st.sampled_from([0.0, 0.5]))
    elif dtype == torch.bool or not dtype.is_signed:
        base = base.abs()
    return base.to(dtype).to(device)


def _numpy_actions(draw: st.DrawFn) -> Any:
    dtype = np.dtype(draw(st.sampled_from(NUMPY_DTYPES)))
    shape = draw(st.sampled_from(SHAPES))
    values = draw(st.lists(st.integers(0, N_WAY + 2), min_size=math.prod(shape), max_size=math.prod(shape)))
    return np.array(values, dtype=np.int64).reshape(shape).astype(dtype)


@st.composite
def actions(draw: st.DrawFn) -> Any:
    kind = draw(st.sampled_from(["torch", "torch", "numpy", "numpy", "other"]))
    if kind == "torch":
        return _torch_actions(draw)
    if kind == "numpy":
        return _numpy_actions(draw)
    return draw(st.one_of(st.none(), st.integers(), st.floats(), st.text(max_size=3),
                          st.lists(st.integers(0, N_WAY - 1), min_size=B, max_size=B)))


def valid_action(a: Any) -> bool:
    """Documented: an integer tensor (or numpy integer array) of shape (B,) on the env's device, in range."""
    if isinstance(a, np.ndarray):
        if a.dtype.kind not in "iu":
            return False
        a = torch.as_tensor(a.astype(a.dtype.newbyteorder("=")))
    if not isinstance(a, torch.Tensor) or a.dtype.is_floating_point or a.dtype.is_complex or a.dtype == torch.bool:
        return False
    if a.shape != (B,) or a.device.type != "cpu":
        return False
    a = a.long()
    return bool(((a >= 0) & (a < N_WAY)).all())


@FUZZ
@given(a=actions())
def test_fuzz_vector_env_actions(vec: FewShotVectorEnv, a: Any) -> None:
    vec.reset(seed=0)
    true = vec._episode.labels[:, vec.step_in_episode].clone()
    err = raises_clearly(lambda: vec.step(a), ValueError, TypeError)
    if valid_action(a):
        assert err is None, err
    else:
        assert err is not None, f"accepted invalid actions {a!r}"
        return
    vec.reset(seed=0)
    obs, reward, terminated, truncated, _ = vec.step(a)
    expected = (torch.as_tensor(np.asarray(a).astype(np.int64)) if isinstance(a, np.ndarray) else a.long()) == true
    assert reward.dtype == torch.float32 and torch.equal(reward, expected.float())
    assert obs["image"].shape == (B, 1, 28, 28) and not terminated.any() and not truncated.any()


SEEDS = st.one_of(
    st.none(), st.integers(), st.integers(min_value=2**62, max_value=2**70), st.floats(allow_nan=True),
    st.text(max_size=4), st.booleans(), st.lists(st.integers(-5, 2**65), max_size=3),
    st.integers(0, 2**63 - 1).map(np.int64), st.just([True]),
)
OPTIONS = st.one_of(
    st.none(), st.just({}), st.dictionaries(st.one_of(st.text(max_size=4), st.integers()), st.integers(), max_size=3),
    st.lists(st.integers(), max_size=2), st.integers(), st.text(max_size=3),
)


def valid_seed(seed: Any) -> bool:
    if isinstance(seed, list):
        if not seed or not all(isinstance(s, int) for s in seed):
            return False
        seed = seed[0]
    return seed is None or (isinstance(seed, (int, np.integer)) and not isinstance(seed, bool) and 0 <= seed < 2**64)


@FUZZ
@given(seed=SEEDS, options=OPTIONS)
def test_fuzz_reset_seed_and_options(vec: FewShotVectorEnv, seed: Any, options: Any) -> None:
    err = raises_clearly(lambda: vec.reset(seed=seed, options=options), ValueError, TypeError)
    ok = valid_seed(seed) and (options is None or options == {})
    assert (err is None) == ok, (seed, options, err)
    if ok and seed is not None:  # a seed means the same tasks every time
        first = vec._episode.image_index.clone()
        vec.reset(seed=seed, options=options)
        assert torch.equal(first, vec._episode.image_index)


@FUZZ
@given(seed=SEEDS.filter(lambda s: not isinstance(s, list)), options=OPTIONS, steps=st.integers(0, 12),
       action=st.one_of(st.integers(-2, N_WAY + 1), st.integers(2**63, 2**70), st.floats(), st.none(),
                        st.integers(0, N_WAY - 1).map(np.int64), st.just(np.array(1)), st.just(np.array([1]))))
def test_fuzz_single_env(synthetic: ImageDataset, seed: Any, options: Any, steps: int, action: Any) -> None:
    env = FewShotEnv(dataset=synthetic, n_way=N_WAY, instances_per_class=3)
    assert raises_clearly(lambda: env.step(0), ValueError) is not None  # before any reset
    err = raises_clearly(lambda: env.reset(seed=seed, options=options), ValueError, TypeError)
    assert (err is None) == (valid_seed(seed) and (options is None or options == {})), (seed, options, err)
    if err is not None:
        return
    for t in range(steps):
        if t >= env.episode_length:  # stepping after termination raises until reset()
            assert raises_clearly(lambda: env.step(0), ValueError) is not None
            break
        *_, terminated, _, _ = env.step(0)
        assert terminated == (t + 1 == env.episode_length)
    else:
        a = action.item() if isinstance(action, np.ndarray) and action.shape == () else action
        good = isinstance(a, (int, np.integer)) and not isinstance(a, bool) and 0 <= a < N_WAY
        err = raises_clearly(lambda: env.step(action), ValueError, TypeError)
        assert (err is None) == (good and steps < env.episode_length), (action, steps, err)


# --------------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------------

FIELDS = {f: getattr(TrainConfig(), f) for f in TrainConfig.__dataclass_fields__}
# The types a field with a union hint takes.
UNION_TYPES = {f: typing.get_args(h) for f, h in typing.get_type_hints(TrainConfig).items()
               if isinstance(h, types.UnionType)}
VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 5), st.integers(2**63, 2**64), st.floats(allow_nan=True),
    st.text(max_size=5), st.lists(st.integers(-2, 64), max_size=3), st.dictionaries(st.text(max_size=3), st.integers()),
    st.sampled_from(["cnn", "memory", "gru", "batch", "cpu", "cuda:0", "auto", "tpu"]),
)


@FUZZ
@given(key=st.one_of(st.sampled_from(sorted(FIELDS)), st.text(min_size=1, max_size=8)), value=VALUES)
def test_fuzz_config_values(key: str, value: Any) -> None:
    err = raises_clearly(lambda: TrainConfig.from_dict({key: value}, source="fuzz"), ConfigError)
    if key not in FIELDS:
        assert err is not None and repr(key) in str(err)
        assert "valid keys are" in str(err) or "did you mean" in str(err)
    elif err is not None:
        assert key in str(err), err
        if key in ("encoder", "core") and isinstance(value, str):
            assert "is not a registered" in str(err) and "registered: " in str(err)  # the allowed values
        if key in ("critic", "algo", "encoder_precision") and isinstance(value, str):
            assert "is not one of" in str(err)
    else:  # accepted: it is a legal value of the right type
        types_ok = (type(FIELDS[key]), *UNION_TYPES.get(key, ()))
        assert type(value) in types_ok or (float in types_ok and type(value) is int)
        if isinstance(value, float):
            assert math.isfinite(value)


@pytest.fixture(scope="module")
def fuzz_dataset(make_dataset: Callable[..., ImageDataset]) -> str:
    """6 classes per split, 4 images per class."""
    splits = {s: make_dataset(num_classes=6, images_per_class=4, seed=i, name=s)
              for i, s in enumerate(("train", "val", "test"))}
    register_dataset("fuzz-small", splits)
    return "fuzz-small"


@FUZZ
@given(n_way=st.integers(-1, 9), instances=st.integers(-1, 6), extra=st.sampled_from(
    [{}, {"feedback": "label"}, {"feedback": "labels"}, {"n_wya": 3}, {"num_envs": 2}, {"shots": 0},
     {"split": "nope"}, {"shots": 2, "queries_per_class": 3}]))
def test_fuzz_env_settings_at_env_creation(fuzz_dataset: str, n_way: int, instances: int,
                                           extra: dict[str, Any]) -> None:
    kwargs = {"dataset": fuzz_dataset, "n_way": n_way, "instances_per_class": instances, **extra}
    cfg = TrainConfig(env_id="meta_rl/FewShot-v0", env_kwargs=kwargs, num_envs=2, device="cpu").validate()
    err = raises_clearly(lambda: make_vec_env(cfg, "train", 2, torch.device("cpu")), ConfigError)
    per_class = 2 + 3 if extra.get("shots") else instances
    ok = 1 <= n_way <= 6 and 1 <= per_class <= 4 and set(extra) <= {"feedback", "shots", "queries_per_class"} \
        and extra.get("feedback", "label") == "label" and extra.get("shots", 1) != 0
    assert (err is None) == ok, (kwargs, err)
    if err is None:
        return
    unknown = set(extra) - {"feedback", "shots", "queries_per_class", "split"}
    if unknown:  # refused before the env is built: the key and the allowed ones
        assert repr(next(iter(unknown))) in str(err) and "allowed keys are" in str(err)
        return
    assert err.__cause__ is not None and str(err.__cause__) in str(err)
    inner = str(err.__cause__)  # the env's own message (the wrapper also quotes env_kwargs)
    if "split" in extra:
        assert "unknown split 'nope'" in inner
    elif extra.get("feedback") == "labels":
        assert "'labels'" in inner and "'reward'" in inner
    elif n_way < 1 or instances < 1:  # checked in this order, then n_way against the split
        assert ("n_way" if n_way < 1 else "instances_per_class") in inner, inner
    elif extra.get("shots") == 0:
        assert "shots must be a positive int" in inner, inner
    elif n_way > 6:
        assert f"n_way={n_way} is larger than the 6 classes" in inner, inner
    else:  # each class has 4 images
        assert f"has 4 images but an episode needs {per_class} per class" in inner, inner


def test_n_way_larger_than_a_split_names_n_way(fuzz_dataset: str) -> None:
    cfg = TrainConfig(env_id="meta_rl/FewShot-v0", env_kwargs={"dataset": fuzz_dataset, "n_way": 7},
                      num_envs=2, device="cpu").validate()
    with pytest.raises(ConfigError, match=r"split 'train'.*n_way=7 is larger than the 6 classes.*n_way <= 6"):
        make_vec_env(cfg, "train", 2, torch.device("cpu"))


# --------------------------------------------------------------------------------------------
# Loaders: malformed files raise DatasetError naming the file
# --------------------------------------------------------------------------------------------


def mini_imagenet_bytes() -> bytes:
    rng = np.random.default_rng(0)
    cache = {"image_data": rng.integers(0, 256, (6, 4, 4, 3), dtype=np.uint8),
             "class_dict": {"n01": [0, 1, 2], "n02": [3, 4, 5]}}
    return pickle.dumps(cache, protocol=4)


def cifar_batch_bytes() -> bytes:
    rng = np.random.default_rng(1)
    return pickle.dumps({b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), b"labels": [0, 1, 0, 1]},
                        protocol=2)


@FUZZ
@given(cut=st.floats(0.0, 0.999), which=st.sampled_from(["mini", "cifar"]))
def test_fuzz_truncated_pickles_name_the_file(tmp_path_factory: pytest.TempPathFactory, cut: float,
                                              which: str) -> None:
    folder = tmp_path_factory.mktemp("pickles")
    if which == "mini":
        raw = mini_imagenet_bytes()
        path = folder / "mini-imagenet-cache-train.pkl"
        path.write_bytes(raw[: int(len(raw) * cut)])
        with pytest.raises(DatasetError) as info:
            load_mini_imagenet(path)
    else:
        raw = cifar_batch_bytes()
        path = folder / "data_batch_1"
        path.write_bytes(raw[: int(len(raw) * cut)])
        for i in range(2, 6):  # the other batches are fine
            (folder / f"data_batch_{i}").write_bytes(raw)
        (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"a", b"b"]}, protocol=2))
        with pytest.raises(DatasetError) as info:
            load_cifar(folder)
    assert str(path) in str(info.value)


@FUZZ
@given(magic=st.sampled_from([0x803, 0x801, 0x802, 0x0, 0xFFFFFFFF, 0x1F8B0803]),
       dims=st.lists(st.integers(0, 2**32 - 1), min_size=0, max_size=4),
       payload=st.binary(max_size=64), gz=st.booleans())
def test_fuzz_idx_headers_name_the_file(tmp_path_factory: pytest.TempPathFactory, magic: int, dims: list[int],
                                        payload: bytes, gz: bool) -> None:
    folder = tmp_path_factory.mktemp("idx")
    raw = struct.pack(f">I{len(dims)}I", magic, *dims) + payload
    images = folder / "images.gz" if gz else folder / "images"
    images.write_bytes(gzip.compress(raw) if gz else raw)
    labels = folder / "labels"
    labels.write_bytes(struct.pack(">II", 0x801, 2) + bytes([0, 1]))
    well_formed = magic == 0x803 and len(dims) == 3 and len(payload) == math.prod(dims) and dims[0] == 2
    assume(not well_formed)
    with pytest.raises(DatasetError) as info:
        load_idx(images, labels)
    assert str(images) in str(info.value)


FILE_KINDS = ["png", "png_other_size", "garbage_png", "empty_png", "text_png", "truncated_png", "txt", "jpg_header"]


def fuzz_file_path(folder: Path, i: int, kind: str) -> Path:
    """The ``i``-th file's path in ``folder``: ``{i}_{kind}.png``, but .txt for ``txt``, .jpg for ``jpg_header``."""
    suffix = "jpg" if kind == "jpg_header" else "txt" if kind == "txt" else "png"
    return folder / f"{i}_{kind}.{suffix}"


def write_fuzz_file(path: Path, kind: str, i: int, good_png: bytes) -> None:
    """Write a file of ``kind`` (one of :data:`FILE_KINDS`; ``i`` varies its content) at ``path``.

    Args:
        path: Where to write it.
        kind: ``png`` a good 6x5 image, ``png_other_size`` a 7x5 one, ``garbage_png`` random bytes,
            ``empty_png`` nothing, ``text_png`` text, ``truncated_png`` half of ``good_png``, ``txt`` a
            text file, ``jpg_header`` a JPEG header and no image.
        i: The file's number: its grey level or random seed.
        good_png: A good PNG's bytes, for the truncated one.
    """
    if kind == "png":
        Image.new("L", (6, 5), i).save(path)
    elif kind == "png_other_size":
        Image.new("L", (7, 5), i).save(path)
    elif kind == "garbage_png":
        path.write_bytes(np.random.default_rng(i).integers(0, 256, 64, dtype=np.uint8).tobytes())
    elif kind == "empty_png":
        path.write_bytes(b"")
    elif kind == "text_png":
        path.write_text("not an image")
    elif kind == "truncated_png":
        path.write_bytes(good_png[: len(good_png) // 2])
    elif kind == "txt":
        path.write_text("notes")
    else:
        path.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")


def paths_an_error_may_name(root: Path, written: list[tuple[str, Path]], empty_class: bool) -> list[str]:
    """The paths of an image folder at least one of which its error must name: each bad or odd-sized file,
    class ``b`` if it holds no image, and the empty class ``c``."""
    bad = [str(p) for k, p in written if k not in ("png", "txt")]  # unreadable, or a size unlike the others
    if all(k == "txt" for k, _ in written):
        bad.append(str(root / "b"))
    if empty_class:
        bad.append(str(root / "c"))
    return bad


@FUZZ
@given(files=st.lists(st.sampled_from(FILE_KINDS), min_size=1, max_size=4), empty_class=st.booleans())
def test_fuzz_image_folders_name_the_file(tmp_path_factory: pytest.TempPathFactory, files: list[str],
                                          empty_class: bool) -> None:
    root = tmp_path_factory.mktemp("folder")
    (root / "a").mkdir()
    Image.new("L", (6, 5), 128).save(root / "a" / "0.png")  # one good image: the reference size
    (root / "b").mkdir()
    good_png = (root / "a" / "0.png").read_bytes()
    written = [(kind, fuzz_file_path(root / "b", i, kind)) for i, kind in enumerate(files)]
    for i, (kind, path) in enumerate(written):
        write_fuzz_file(path, kind, i, good_png)
    if empty_class:
        (root / "c").mkdir()
    named = paths_an_error_may_name(root, written, empty_class)
    err = raises_clearly(lambda: load_image_folder(root), DatasetError)
    if not named:  # nothing wrong to name: the folder loads
        assert err is None
        return
    assert err is not None
    assert any(n in str(err) for n in named), (files, str(err))
