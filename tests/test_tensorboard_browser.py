"""TensorBoard in a real browser: a short run's Scalars and Images tabs, shot in headless Chromium.

Skips where Chromium is not installed (Debian: ``apt-get install chromium``; ``.ci/run`` installs it).
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest
from experiment_scripts import import_script
from PIL import Image

screenshots = import_script("tensorboard_screenshots")

CHROMIUM = screenshots.find_chromium()
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)")


@pytest.fixture(scope="module")
def short_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("tb") / "run"
    screenshots.train_short_run(run_dir, ["num_envs=16", "total_env_steps=12000", "log_every=1", "eval_every=4",
                                          "eval_episodes=32"])
    return run_dir


def test_blank_check_tells_a_flat_page_from_a_chart(tmp_path: Path) -> None:
    flat = tmp_path / "flat.png"
    Image.new("RGB", screenshots.WINDOW, (255, 255, 255)).save(flat)
    assert screenshots.shot_is_blank(flat)
    noisy = tmp_path / "noisy.png"
    Image.effect_noise(screenshots.WINDOW, 64).convert("RGB").save(noisy)
    assert not screenshots.shot_is_blank(noisy)


def test_tensorboard_serves_the_documented_tags(short_run: Path) -> None:
    with screenshots.serve_tensorboard(short_run) as url:
        with urllib.request.urlopen(url + "data/plugin/scalars/tags", timeout=10) as r:
            scalars = {tag for run in json.loads(r.read()).values() for tag in run}
        with urllib.request.urlopen(url + "data/plugin/images/tags", timeout=10) as r:
            images = {tag for run in json.loads(r.read()).values() for tag in run}
    assert {"charts/accuracy", "charts/return", "losses/policy", "losses/value", "eval/accuracy"} <= scalars
    assert {"images/episode_strip", "eval/accuracy_by_instance"} <= images


@needs_chromium
def test_screenshots_of_scalars_and_images(short_run: Path, tmp_path: Path) -> None:
    assert CHROMIUM is not None
    taken = screenshots.take_shots(short_run, tmp_path, CHROMIUM)  # raises if a shot is missing, mis-sized or blank
    assert set(taken) == set(screenshots.TABS)
    for path in taken.values():
        with Image.open(path) as im:
            assert im.size == screenshots.WINDOW
        assert not screenshots.shot_is_blank(path)
