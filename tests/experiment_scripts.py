"""The scripts in ``experiments/`` imported as modules, for the tests that drive them.

``experiments/`` is a folder of scripts, not a package, and is not on ``sys.path``: a test imports
one with :func:`import_script` instead of putting the whole folder on the path.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

__all__ = ["EXPERIMENTS", "import_script"]

#: The folder of experiment scripts.
EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def import_script(name: str) -> ModuleType:
    """Import ``experiments/<name>.py`` as the module ``name`` (once; later calls return the same module).

    Args:
        name: The script's file name without ``.py``, e.g. ``"suite"``.

    Returns:
        The imported module, also registered in ``sys.modules`` under ``name``.

    Raises:
        FileNotFoundError: No such script in ``experiments/``.
    """
    if name in sys.modules:
        return sys.modules[name]
    path = EXPERIMENTS / f"{name}.py"
    if not path.is_file():
        scripts = sorted(p.stem for p in EXPERIMENTS.glob("*.py"))
        raise FileNotFoundError(f"{path} does not exist; the scripts in {EXPERIMENTS} are {scripts}.")
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module
