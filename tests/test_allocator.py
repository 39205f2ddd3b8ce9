"""The allocator settings meta-rl applies at start-up: large tensors freed and allocated again reuse
the heap's pages instead of a fresh mmap (and a page fault per 4 KiB) each time."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

from meta_rl.allocator import tune_malloc

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

PROBE = """
import json, resource, sys
import torch
from meta_rl.allocator import tune_malloc
tuned = tune_malloc() if sys.argv[1] == "tuned" else False
def step():  # what a training loop does: buffers of several sizes (1 to 48 MiB), allocated and freed every step
    xs = [torch.empty(n) for n in (300_000, 3_000_000, 12_000_000, 600_000)]
    for x in xs:
        x.fill_(1.0)
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(50):
    step()
print(json.dumps({"tuned": tuned, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def probe(mode: str) -> dict[str, int]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "META_RL_MALLOC"}
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not GLIBC, reason="the settings are glibc's")
def test_tuned_allocator_reuses_pages() -> None:
    default, tuned = probe("default"), probe("tuned")
    assert tuned["tuned"] == 1
    # 50 steps touching 64 MiB: with glibc's defaults the large buffers are mapped and unmapped each
    # step and faulted in again (about 50 x 12,000 faults); tuned, the heap keeps its pages.
    assert default["faults"] > 50 * 4096, default
    assert tuned["faults"] < default["faults"] / 10, (tuned, default)


def test_switched_off_by_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("META_RL_MALLOC", "0")
    assert tune_malloc() is False
