#!/usr/bin/env bash
# The one command a session passes to the device tool for issue 35's GPU check: it makes the repository runnable on
# the bare GPU machine (Python 3.12 at /opt/torch/.venv with torch, no network), then runs experiments/gpu_check.py,
# which writes $OUT/gpu_check.json; the whole output is also in $OUT/gpu_check.log. Extra arguments go to
# gpu_check.py (e.g. --steps setup,throughput).
#
# Prepare the carry once, in the root of the checkout the device tool sends (the session's own), with network:
#
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
#       gymnasium==1.4.0 farama-notifications==0.0.6 stable-baselines3==2.9.2 sb3-contrib==2.9.2 \
#       filelock==4.3.2 setuptools==84.2.1
#
#   Six pure-Python wheels, 1.9 MB in all. The GPU machine lacks the first four; its filelock may predate 4.3
#   (meta_rl.runlock needs on_acquired); setuptools >= 77 builds the editable install of this pyproject (only that
#   build sees it). .gitignore keeps /.whl/ and /.meta_rl_cache/ out of git; in a checkout whose .gitignore lacks
#   them: printf '/.whl/\n/.meta_rl_cache/\n' >> .git/info/exclude
#
#   Optional, to load the glyphs there instead of building them (about 17 s; the setup step then reports a load):
#   META_RL_CACHE=.meta_rl_cache python3 -c "from meta_rl.data import load_splits; load_splits('glyphs')"  (20 MB)
#
# The device-tool call (the working tree, about 2 MB, and the carry stay far under the 64 MiB limit):
#
#   run(command="bash experiments/gpu_check.sh", carry=[".whl"], timeout_s=540)
#
#   (carry=[".whl", ".meta_rl_cache"] with the cache). It must fit 8 minutes of device time: the installs take about
#   10 s and gpu_check.py's budget is GPU_CHECK_MINUTES (default 7.5); gpu_check.py skips a step that no longer fits
#   and rewrites the JSON after every step, so even a run stopped at timeout_s brings back what it measured.
#   Here, for a try on the CPU: PYTHON=.venv/bin/python OUT=/tmp/out bash experiments/gpu_check.sh --device cpu --tiny
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-runs/gpu_check}"
PY="${PYTHON:-python3}"
SITE="${GPU_CHECK_SITE:-/tmp/site}"  # the carried wheels (PYTHONPATH)
BUILD_TOOLS="${SITE}-build"           # setuptools, for the editable install only
MINUTES="${GPU_CHECK_MINUTES:-7.5}"
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"

missing_requirements() {  # prints what this Python lacks of what the repository's code and tests import
    "$PY" - <<'EOF'
import re
from importlib import metadata

def release(version):  # "4.3.2" -> (4, 3, 2): enough to compare with the floors below
    return tuple(int(m.group()) if (m := re.match(r"\d+", part)) else 0 for part in version.split(".")[:3])

need = {"gymnasium": "1.0", "stable_baselines3": "2.3", "sb3_contrib": "2.3", "filelock": "4.3", "hypothesis": "6"}
for name, least in need.items():
    try:
        have = metadata.version(name)
    except metadata.PackageNotFoundError:
        have = None
    if have is None or release(have) < release(least):
        print(f"{name}>={least} (have {have})")
EOF
}

prepare() {
    local missing
    missing="$(missing_requirements)"
    if [ -n "$missing" ]; then
        echo "gpu_check.sh: missing: $(echo $missing); installing the carried wheels into $SITE"
        if ! ls .whl/*.whl >/dev/null 2>&1; then
            echo "gpu_check.sh: no .whl/ here: prepare the carry (top of this file) and name .whl in carry." >&2
            return 1
        fi
        local wheels=(); for w in .whl/*.whl; do case "$(basename "$w")" in setuptools-*) ;; *) wheels+=("$w");; esac; done
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --disable-pip-version-check \
            --upgrade --target "$SITE" "${wheels[@]}"
        export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
        missing="$(missing_requirements)"
        if [ -n "$missing" ]; then echo "gpu_check.sh: still missing after the install: $missing" >&2; return 1; fi
    fi
    # meta_rl.envs lives in envs/ (pyproject's package-dir): only an install maps it, even with the root on sys.path.
    if ! "$PY" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('meta_rl.envs') is None)"; then
        echo "gpu_check.sh: installing this checkout (editable, no dependencies, no network)"
        local tools="${PYTHONPATH:-}"
        if ls .whl/setuptools-*.whl >/dev/null 2>&1; then
            "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --disable-pip-version-check \
                --upgrade --target "$BUILD_TOOLS" .whl/setuptools-*.whl
            tools="$BUILD_TOOLS${tools:+:$tools}"
        fi
        PYTHONPATH="$tools" "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir \
            --disable-pip-version-check -e .
    fi
    # The glyph cache: the carried one if present, else a fresh folder (the setup step builds it and says how long).
    if [ -d .meta_rl_cache ]; then export META_RL_CACHE="$PWD/.meta_rl_cache"; else export META_RL_CACHE=/tmp/meta_rl_cache; fi
    echo "gpu_check.sh: $("$PY" --version) at $(command -v "$PY"), META_RL_CACHE=$META_RL_CACHE, budget $MINUTES min"
}

{
    start=$(date +%s)
    prepare
    echo "gpu_check.sh: prepared in $(( $(date +%s) - start )) s"
    "$PY" experiments/gpu_check.py --budget-minutes "$MINUTES" --out "$OUT/gpu_check.json" "$@"
} 2>&1 | tee "$OUT/gpu_check.log"
