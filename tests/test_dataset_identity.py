"""A dataset name means the same images on every machine (issue 34): ``glyphs`` is built from matplotlib's
fonts only, ``glyphs-system`` adds the installed ones, every dataset has a content hash, a checkpoint records
it, and a run evaluated or resumed on other content under the same name is refused."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import matplotlib
import pytest
import torch
from conftest import make_prototype_splits

import meta_rl
from meta_rl.checkpoint import load_checkpoint
from meta_rl.cli import main
from meta_rl.data import ImageDataset, content_hash, glyphs, load_splits, register_dataset, sources
from meta_rl.env_contract import DatasetChangedError, dataset_record
from meta_rl.envs import FewShotVectorEnv

MPL_FONTS = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
SMALL: dict[str, Any] = {"max_classes": 42, "instances_per_class": 2, "progress": False, "num_workers": 1}
TINY = ["num_envs=4", "total_env_steps=600", "eval_every=0", "log_every=1", "encoder=mlp", "encoder_hidden=[32]",
        "hidden=32", "core_kwargs.key_dim=16", "torch_threads=1", "env_id=meta_rl/FewShot-v0"]
NAME, OTHER = "identity-data", "identity-other"
EVAL = ["--episodes", "8", "--batch", "8", "--device", "cpu"]


def _machine(monkeypatch: pytest.MonkeyPatch, fonts: Path, cache: Path, system: bool) -> tuple[str, str]:
    """(content hash, cache file name) of a small glyph build on a "machine" whose Debian fonts are ``fonts``."""
    monkeypatch.setattr(glyphs, "DEBIAN_FONT_DIRS", (str(fonts),))
    data = glyphs.load_glyphs(cache_dir=cache, system_fonts=system, **SMALL)
    (path,) = cache.glob("glyphs-*.pt")
    return content_hash(data), path.name


def test_glyphs_ignores_the_system_fonts_and_glyphs_system_does_not(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    bare, extra = tmp_path / "bare-fonts", tmp_path / "extra-fonts"
    bare.mkdir()
    extra.mkdir()
    shutil.copy(MPL_FONTS / "DejaVuSans.ttf", extra / "ExtraSans.ttf")  # one more font installed on machine B
    a = _machine(monkeypatch, bare, tmp_path / "a", system=False)
    b = _machine(monkeypatch, extra, tmp_path / "b", system=False)
    assert a == b  # the same hash and cache key: the system's fonts play no part
    assert all(p.parent == MPL_FONTS for p in glyphs.glyph_fonts())
    a_sys = _machine(monkeypatch, bare, tmp_path / "a-sys", system=True)
    b_sys = _machine(monkeypatch, extra, tmp_path / "b-sys", system=True)
    assert a_sys == a  # no Debian fonts installed: glyphs-system is glyphs
    assert b_sys[0] != a_sys[0] and b_sys[1] != a_sys[1]
    assert any(p.name == "ExtraSans.ttf" for p in glyphs.glyph_fonts(system_fonts=True))


def test_glyph_font_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match=r"system_fonts=True .* font_dirs"):
        glyphs.glyph_fonts([MPL_FONTS], system_fonts=True)
    with pytest.raises(ValueError, match="'glyphs-system' takes no path"):
        load_splits("glyphs-system:/usr/share/fonts")
    with pytest.raises(ValueError, match="glyphs-system"):
        register_dataset("glyphs-system", make_prototype_splits())


def test_the_source_names_choose_the_font_sets(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[bool] = []
    data = make_prototype_splits(num_classes=36)

    def fake_load_glyphs(**kwargs: Any) -> dict[str, ImageDataset]:
        calls.append(kwargs["system_fonts"])
        return data

    monkeypatch.setattr(glyphs, "load_glyphs", fake_load_glyphs)
    sources._load_cached.cache_clear()
    sources._hash_cached.cache_clear()
    try:
        env = FewShotVectorEnv(num_envs=2, dataset="glyphs-system", image_size=29)
        assert (env.dataset_name, env.dataset_hash) == ("glyphs-system", content_hash(data))
        FewShotVectorEnv(num_envs=2, dataset="glyphs", image_size=29)
        load_splits("glyphs-system:", image_size=29)  # the name, whatever follows a colon
    finally:
        sources._load_cached.cache_clear()
        sources._hash_cached.cache_clear()
    assert calls == [True, False, True]


def _changed(splits: dict[str, ImageDataset], split: str = "test") -> dict[str, ImageDataset]:
    """``splits`` with one pixel of one image of ``split`` changed."""
    ds = splits[split]
    images = ds.images.clone()
    images[3, 0, 5, 7] ^= 1
    return {**splits, split: ImageDataset(images, ds.labels, ds.class_names, ds.groups, ds.name)}


def test_content_hash_is_stable_and_changes_with_any_image_label_or_split() -> None:
    splits = make_prototype_splits(num_classes=36)
    digest = content_hash(splits)
    assert len(digest) == 16 and int(digest, 16) >= 0
    assert content_hash(make_prototype_splits(num_classes=36)) == digest  # rebuilt: the same
    assert content_hash({k: ImageDataset(v.images, v.labels, v.class_names, v.groups, "renamed")
                         for k, v in splits.items()}) == digest  # the name is not content
    assert content_hash(_changed(splits)) != digest
    assert content_hash(_changed(splits, "train")) != digest
    swapped = {"train": splits["val"], "val": splits["train"], "test": splits["test"]}
    assert content_hash(swapped) != digest  # the same images, other split membership
    register_dataset("identity-hash", splits)
    assert content_hash("identity-hash") == digest
    register_dataset("identity-hash", _changed(splits))  # registering again forgets the old hash
    assert content_hash("identity-hash") != digest


@pytest.fixture
def run(tmp_path: Path) -> Iterator[Path]:
    """A tiny run trained on the registered dataset ``NAME``; ``NAME`` and ``OTHER`` are restored afterwards."""
    splits = make_prototype_splits(num_classes=36)
    register_dataset(NAME, splits)
    register_dataset(OTHER, make_prototype_splits(num_classes=36, seed=1))
    out = tmp_path / "run"
    assert main(["train", "--run-dir", str(out), "--no-progress", *TINY, f"env_kwargs.dataset={NAME}"]) == 0
    yield out
    register_dataset(NAME, splits)


def test_the_checkpoint_records_the_dataset_and_its_hash(run: Path) -> None:
    recorded = load_checkpoint(run / "checkpoint.pt")["dataset"]
    assert recorded == {"name": NAME, "hash": content_hash(NAME)}
    assert meta_rl.load(run, device="cpu").checkpoint["dataset"] == recorded


def test_eval_prints_the_hash(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", str(run), *EVAL]) == 0
    assert f"dataset {NAME} (content {content_hash(NAME)})" in capsys.readouterr().out
    assert main(["eval", str(run), *EVAL, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["dataset"] == {"name": NAME, "hash": content_hash(NAME)}
    assert main(["eval", str(run), *EVAL, "--shots", "1", "--queries", "2"]) == 0
    assert f"dataset {NAME} (content {content_hash(NAME)})" in capsys.readouterr().out


def test_other_content_under_the_same_name_is_refused_unless_allowed(run: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    trained = content_hash(NAME)
    register_dataset(NAME, _changed(make_prototype_splits(num_classes=36)))  # one pixel differs on "this machine"
    now = content_hash(NAME)
    assert main(["eval", str(run), *EVAL]) == 2
    err = capsys.readouterr().err
    for part in (NAME, trained, now, "other fonts", "changed files", "--allow-dataset-change"):
        assert part in err, part
    assert main(["eval", str(run), *EVAL, "--allow-dataset-change", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["dataset"] == {"name": NAME, "hash": now, "trained_name": NAME, "trained_hash": trained}

    agent = meta_rl.load(run, device="cpu")
    with pytest.raises(DatasetChangedError, match=f"{trained}.*allow_dataset_change=True"):
        agent.evaluate(episodes=8)
    with pytest.raises(DatasetChangedError, match=now):
        agent.make_env("test", 2)
    assert agent.evaluate(episodes=8, allow_dataset_change=True).episodes == 8
    assert dataset_record(agent.make_env("test", 2, allow_dataset_change=True)) == {"name": NAME, "hash": now}


def test_another_dataset_name_is_allowed_and_reported(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", str(run), *EVAL, f"env_kwargs.dataset={OTHER}"]) == 0
    header = capsys.readouterr().out.splitlines()[0]
    assert f"dataset {OTHER} (content {content_hash(OTHER)})" in header
    assert f"trained on {NAME} (content {content_hash(NAME)})" in header
    result = meta_rl.load(run, device="cpu").evaluate(episodes=8, dataset=OTHER)
    assert result.episodes == 8


def test_resume_on_other_content_is_refused(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trained = content_hash(NAME)
    register_dataset(NAME, _changed(make_prototype_splits(num_classes=36), "train"))
    assert main(["train", "--resume", str(run), "--no-progress", "total_env_steps=1200"]) == 2
    err = capsys.readouterr().err
    for part in (NAME, trained, content_hash(NAME), "start a new run directory"):
        assert part in err, part
    assert load_checkpoint(run / "checkpoint.pt")["counters"]["env_steps"] < 1200  # nothing trained


def test_a_malformed_dataset_record_is_refused(run: Path) -> None:
    from meta_rl.checkpoint import CheckpointError, read_dataset

    with pytest.raises(CheckpointError, match="records its dataset"):
        read_dataset({"dataset": {"name": NAME, "hash": "not hex"}}, run / "checkpoint.pt")
    assert read_dataset({}, run / "checkpoint.pt") is None


def test_an_env_without_a_dataset_declares_none() -> None:
    import gymnasium as gym

    env = gym.make_vec("meta_rl/Bandit-k5-n10-v0", num_envs=2, vectorization_mode="vector_entry_point")
    assert dataset_record(env) is None
    vec = FewShotVectorEnv(num_envs=2, dataset=make_prototype_splits(num_classes=36))
    assert vec.dataset_name == "(in-memory splits)" and len(vec.dataset_hash) == 16
    assert torch.equal(vec.sampler.dataset.images, make_prototype_splits(num_classes=36)["train"].images)


def test_the_env_hashes_the_data_it_was_built_with() -> None:
    """A name registered again later names other data; the env's hash stays that of its own tasks' data."""
    first = make_prototype_splits(num_classes=36)
    register_dataset("identity-again", first)
    env = FewShotVectorEnv(num_envs=2, dataset="identity-again")
    register_dataset("identity-again", _changed(first))
    assert env.dataset_hash == content_hash(first) != content_hash("identity-again")


def test_a_hash_a_checkpoint_could_not_hold_is_refused_when_recorded() -> None:
    class OwnHash:
        dataset_name, dataset_hash = "mine", "ab" * 32  # a whole SHA-256, not the 16 digits a checkpoint holds

    with pytest.raises(ValueError, match=r"OwnHash.dataset_hash = 'abab.*16 lowercase hex digits.*content_hash"):
        dataset_record(OwnHash())
