"""TensorBoard tried in a real browser: train a short run, serve it, screenshot it in headless Chromium.

TensorBoard is started on a free port of 127.0.0.1 over the run's directory; once its data
endpoints list the run's tags, Debian's ``chromium --headless`` saves the Scalars and Images
tabs as PNGs. Each shot is checked: the right size and not blank (a page that failed to load
renders as one flat colour). The README shows the two shots in ``docs/`` (``--out docs`` refreshes them).

    python experiments/tensorboard_screenshots.py                      # train 300k steps, write runs/screenshots/*.png
    python experiments/tensorboard_screenshots.py --out docs           # the same, replacing the README's shots
    python experiments/tensorboard_screenshots.py --logdir runs/x      # screenshot an existing run
    python experiments/tensorboard_screenshots.py --out /tmp/shots total_env_steps=20000 eval_every=2
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from PIL import Image

__all__ = ["TABS", "find_chromium", "main", "screenshot", "serve_tensorboard", "shot_is_blank", "train_short_run"]

#: The tabs shot, as ``name: URL fragment``; each becomes ``tensorboard_<name>.png``.
TABS = {"scalars": "scalars", "images": "images"}
#: The short run's settings: long enough for curves, an eval figure and an episode strip.
SHORT_RUN = ["total_env_steps=300000", "log_every=5", "eval_every=20"]
WINDOW = (1400, 1000)


def find_chromium() -> str | None:
    """The path of a Chromium (or Chrome) executable, or None where there is none."""
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if path := shutil.which(name):
            return path
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def train_short_run(run_dir: Path, overrides: list[str]) -> None:
    """``meta-rl train`` on the embedded default with ``overrides`` (after :data:`SHORT_RUN`)."""
    cmd = [sys.executable, "-m", "meta_rl", "train", "--run-dir", str(run_dir), "--no-progress",
           *SHORT_RUN, *overrides]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def _get_json(url: str) -> object:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


@contextlib.contextmanager
def serve_tensorboard(logdir: Path, timeout_s: float = 120.0) -> Iterator[str]:
    """TensorBoard on a free port of 127.0.0.1 over ``logdir``; yields its URL once it serves scalar tags.

    Raises:
        RuntimeError: TensorBoard exited, or listed no scalar tags within ``timeout_s``.
    """
    port = free_port()
    cmd = [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host", "127.0.0.1",
           "--port", str(port), "--reload_interval", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"TensorBoard exited with code {proc.returncode}: {proc.communicate()[1][-500:]}")
            with contextlib.suppress(urllib.error.URLError, OSError, ValueError):
                tags = _get_json(url + "data/plugin/scalars/tags")
                if isinstance(tags, dict) and any(tags.values()):
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"TensorBoard at {url} listed no scalar tags of {logdir} within {timeout_s:.0f} s; "
                                   "is it a run directory with event files?")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def screenshot(chromium: str, url: str, out: Path, budget_ms: int = 15000) -> None:
    """Render ``url`` in headless Chromium and save a ``WINDOW``-sized PNG at ``out``.

    ``--virtual-time-budget`` lets the page's scripts and data requests finish before the shot.
    """
    with tempfile.TemporaryDirectory() as profile:  # a throw-away profile: no state from earlier runs
        cmd = [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               f"--user-data-dir={profile}", f"--window-size={WINDOW[0]},{WINDOW[1]}",
               f"--virtual-time-budget={budget_ms}", f"--screenshot={out}", url]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)
    if not out.is_file():
        raise RuntimeError(f"Chromium wrote no screenshot to {out} (command: {' '.join(cmd)})")


def shot_is_blank(path: Path, min_colours: int = 64) -> bool:
    """Whether a screenshot is (nearly) one flat colour: fewer than ``min_colours`` distinct colours."""
    with Image.open(path) as im:
        colours = im.convert("RGB").getcolors(maxcolors=1 << 20)
    return colours is not None and len(colours) < min_colours


def take_shots(logdir: Path, out_dir: Path, chromium: str) -> dict[str, Path]:
    """Serve ``logdir`` and save one checked PNG per tab of :data:`TABS` under ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    shots: dict[str, Path] = {}
    with serve_tensorboard(logdir) as url:
        for name, fragment in TABS.items():
            path = out_dir / f"tensorboard_{name}.png"
            screenshot(chromium, f"{url}#{fragment}", path)
            with Image.open(path) as im:
                if im.size != WINDOW:
                    raise RuntimeError(f"{path} is {im.size[0]}x{im.size[1]}, not {WINDOW[0]}x{WINDOW[1]}")
            if shot_is_blank(path):
                raise RuntimeError(f"{path} is blank: TensorBoard's {name} tab did not render")
            shots[name] = path
    return shots


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="key=value settings of the short run (after "
                        + " ".join(SHORT_RUN) + ")")
    parser.add_argument("--logdir", type=Path, help="screenshot this run directory instead of training one")
    parser.add_argument("--out", type=Path, default=Path("runs/screenshots"),
                        help="folder for tensorboard_<tab>.png (default: runs/screenshots; --out docs replaces the "
                             "README's shots)")
    parser.add_argument("--chromium", help="Chromium executable (default: chromium on PATH)")
    args = parser.parse_args(argv)
    chromium = args.chromium or find_chromium()
    if chromium is None:
        parser.error("no Chromium found on PATH; install it (Debian: apt-get install chromium) or pass --chromium PATH")
    with tempfile.TemporaryDirectory() as tmp:
        logdir = args.logdir
        if logdir is None:
            logdir = Path(tmp) / "run"
            train_short_run(logdir, args.overrides)
        elif args.overrides:
            parser.error("key=value settings apply to the short run only; drop them with --logdir")
        for name, path in take_shots(logdir, args.out, chromium).items():
            print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
