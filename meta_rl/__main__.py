"""``python -m meta_rl ARGS`` is ``meta-rl ARGS``; the entry point for torchrun.

    torchrun --standalone --nproc-per-node K -m meta_rl train ARGS
"""

from __future__ import annotations

import sys

from meta_rl.cli import main

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
