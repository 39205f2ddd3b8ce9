"""Keep glibc's allocator from mapping and unmapping the training loop's large tensors every step.

A rollout and an update allocate and free the same large buffers (observations, activations,
gradients) again and again. By default glibc serves any block above its mmap threshold (128 KiB,
raised adaptively up to 32 MiB) with a fresh ``mmap`` and returns it with ``munmap`` when freed,
and trims the heap top whenever 128 KiB are free. Each of those is a system call and, on first
touch, one page fault per 4 KiB page: measured here, half of a default training run's CPU time
was kernel time (BENCHMARKS.md, "Allocator: kernel time in the default run").

:func:`tune_malloc` sets, through ``mallopt``:

* ``M_MMAP_THRESHOLD`` = 32 MiB (glibc's maximum on 64-bit): blocks up to that size come from the
  heap, which keeps its pages;
* ``M_TRIM_THRESHOLD`` = 2 GiB: freed memory stays in the process for the next step;
* ``M_TOP_PAD`` = 1 GiB: the heap grows in steps of 1 GiB of address space (pages become resident only
  when touched), so the loop's buffers fit without growing and shrinking it every step.

The process then keeps the memory of its largest step (what it needs anyway) instead of
returning it to the kernel between steps. ``meta-rl`` calls it at start-up (set
``META_RL_MALLOC=0`` to leave the allocator alone); library users may call it themselves. It is
a no-op away from glibc (macOS, musl, Windows). The same effect from the shell:
``MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=2147483647 MALLOC_TOP_PAD_=1073741824``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

__all__ = ["MALLOC_SETTINGS", "tune_malloc"]

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3  # glibc's malloc.h
#: What :func:`tune_malloc` sets: (mallopt parameter, value, name).
MALLOC_SETTINGS = (
    (_M_MMAP_THRESHOLD, 32 << 20, "M_MMAP_THRESHOLD"),
    (_M_TRIM_THRESHOLD, 2**31 - 1, "M_TRIM_THRESHOLD"),
    (_M_TOP_PAD, 1 << 30, "M_TOP_PAD"),
)


def tune_malloc() -> bool:
    """Set glibc's mmap and trim thresholds for a training process (see the module docstring).

    Returns:
        True where glibc took every setting; False where there is no glibc, ``META_RL_MALLOC=0`` is set,
        or ``mallopt`` refused one.
    """
    if os.environ.get("META_RL_MALLOC", "1") == "0" or platform.system() != "Linux":
        return False
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return all(mallopt(param, value) == 1 for param, value, _ in MALLOC_SETTINGS)  # 1: accepted
