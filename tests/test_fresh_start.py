"""The first run on a fresh machine: an empty glyph cache is built inside ``meta-rl train`` and the run finishes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest


def _cli() -> list[str]:
    exe = shutil.which("meta-rl")
    return [exe] if exe else [sys.executable, "-m", "meta_rl.cli"]


def test_first_train_on_an_empty_cache_finishes_with_a_checkpoint(tmp_path: Path) -> None:
    env = {**os.environ, "META_RL_CACHE": str(tmp_path / "cache")}
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [*_cli(), "train", "--run-dir", str(run_dir), "--no-progress", "num_envs=4", "total_env_steps=2000",
         "--max-minutes", "0.5"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (run_dir / "checkpoint.pt").is_file()
    assert list((tmp_path / "cache").glob("glyphs-*.pt")), "the glyph cache was not written"


def run_under_stop_handler(tmp_path: Path, imports: str, body: str, hang: str) -> None:
    """Run ``body`` 20 times in a fresh interpreter inside the trainer's stop handler; it must end cleanly.

    Args:
        tmp_path: Where to write the script.
        imports: The import lines ``body`` needs.
        body: Statements (one level, no indentation) that may call ``double(x)``, a picklable ``2 * x``.
        hang: The failure's message if the script hangs.
    """
    script = tmp_path / "script.py"
    script.write_text("\n".join([
        imports,
        "from meta_rl.lifecycle import StopRequest, stop_on_signals",
        "",
        "def double(x):",
        "    return 2 * x",
        "",
        "stop = StopRequest()",
        "with stop_on_signals(stop):",
        "    for _ in range(20):",
        textwrap.indent(textwrap.dedent(body).strip(), " " * 8),
        "assert stop.signum is None, stop.signum",
        'print("ok")',
        "",
    ]))
    try:
        proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail(hang)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-2000:]


def test_data_build_pool_ends_under_a_stop_handler(tmp_path: Path) -> None:
    """Forked build workers must not keep the trainer's SIGTERM handler, or ``Pool.terminate`` hangs."""
    run_under_stop_handler(
        tmp_path, "from meta_rl.data.glyphs import _map",
        'assert _map(double, list(range(200)), 8, False, "x") == [2 * x for x in range(200)]',
        hang="the data build's process pool hung under the trainer's signal handlers",
    )


def test_plain_pool_forked_inside_the_trainer_ends(tmp_path: Path) -> None:
    """Any fork while the trainer's stop handler is installed (not only meta-rl's pools) gets the previous handlers."""
    run_under_stop_handler(
        tmp_path, "import multiprocessing as mp",
        """
        with mp.get_context("fork").Pool(8) as pool:
            assert list(pool.imap(double, range(200))) == [2 * x for x in range(200)]
        """,
        hang="a process pool forked under the trainer's signal handlers hung",
    )
