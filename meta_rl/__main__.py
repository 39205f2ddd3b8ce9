"""``python -m meta_rl ARGS`` and the ``meta-rl`` command; the entry point for torchrun.

    torchrun --standalone --nproc-per-node K -m meta_rl train ARGS

:func:`main` answers ``--version`` without importing torch (a second, not three); everything else is
:func:`meta_rl.cli.main`.
"""

from __future__ import annotations

import sys

from meta_rl import __version__


def main(argv: list[str] | None = None) -> int:
    """``meta-rl ARGS``: ``--version`` at once, else the command line of :mod:`meta_rl.cli`."""
    args = sys.argv[1:] if argv is None else argv
    if args == ["--version"]:
        print(f"meta-rl {__version__}")
        return 0
    from meta_rl.cli import main as cli_main  # torch and the trainer: only for a real command

    return cli_main(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
