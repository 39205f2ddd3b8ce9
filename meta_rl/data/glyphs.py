"""An Omniglot-style dataset rendered offline from fonts.

A class is a letter of some script and a script is an alphabet (the split unit). An instance is
the letter drawn by one of the fonts that cover it, randomly distorted like a hand drawing: an
affine warp (rotation, shear, scale, translation), a smooth elastic deformation and a random stroke
weight, rendered large and reduced to ``image_size``. Strokes are bright (255) on black (0).

Fonts: the default set (``dataset="glyphs"``) is matplotlib's bundled DejaVu and STIX fonts only,
which ship inside a Python dependency, so the dataset is the same on every machine with the same
matplotlib, whatever fonts the system has installed. ``system_fonts=True`` (``dataset="glyphs-system"``)
adds Debian's ``fonts-noto-core``, ``fonts-freefont-ttf`` and ``fonts-ancient-scripts`` where they
are installed (:data:`DEBIAN_FONT_DIRS`): more scripts, but its content depends on the machine (its
content hash tells builds apart). Letters that look alike in different scripts (Latin O, Cyrillic О,
Greek Ο, Armenian Օ) are kept only once.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import math
import multiprocessing as mp
import os
import re
import shutil
import signal
import sys
import time
import unicodedata
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter, ImageFont
from tqdm.auto import tqdm

from meta_rl.atomic import WriteError, write_atomic
from meta_rl.checkpoint import CHECKSUM_KEY, checksum
from meta_rl.data.dataset import ImageDataset, split_by_group
from meta_rl.memory_estimate import available_memory

__all__ = [
    "DEBIAN_FONT_DIRS",
    "DEFAULT_MAX_CLASSES",
    "MAX_IMAGE_SIZE",
    "MIN_LETTERS_PER_SCRIPT",
    "canonical_glyph",
    "dedup_near_duplicates",
    "glyph_fonts",
    "letter_script",
    "load_glyphs",
    "render_glyph_instances",
]

#: Debian font packages that ``system_fonts=True`` adds where installed (fonts-noto-core, fonts-freefont-ttf,
#: fonts-ancient-scripts).
DEBIAN_FONT_DIRS: tuple[str, ...] = (
    "/usr/share/fonts/truetype/noto",
    "/usr/share/fonts/truetype/freefont",
    "/usr/share/fonts/truetype/ancient-scripts",
)
#: Class cap of the default build, which keeps it under a minute on two cores.
DEFAULT_MAX_CLASSES = 1800
#: Largest ``image_size``: the default build then holds 1800 x 20 images of 128 x 128 (590 MB);
#: at 256 px it would hold 2.4 GB and need about 7 GB of memory to build.
MAX_IMAGE_SIZE = 128
#: Scripts with fewer letters than this are left out (Omniglot's smallest alphabet has 14).
MIN_LETTERS_PER_SCRIPT = 14
#: Letters per script the class cap aims for before it drops the least-covered scripts.
_TARGET_LETTERS_PER_SCRIPT = 20
#: Fractions of classes in the train / val / test splits (test: held-out evaluation scripts).
SPLIT_FRACTIONS = (0.6, 0.15, 0.25)
#: Two canonical renderings are the same character when their correlation exceeds this...
DEDUP_MIN_CORRELATION = 0.9
#: ...and no pixel differs by more than this (so O and Θ, which differ in one bar, stay apart).
DEDUP_MAX_PIXEL_DIFF = 0.3

_CACHE_FORMAT = "glyphs-v2"
# The build holds the rendered images, their concatenation and the splits at once: 3 copies.
_BUILD_PEAK_COPIES = 3
# A cache temp file left alone this long belongs to a writer that was killed (see _remove_stale_temp_files).
_STALE_TEMP_SECONDS = 600
_HASH_CHUNK = 1 << 20  # font files are hashed 1 MiB at a time
_SPLIT_SEED = 0
_CANONICAL_SIZE = 24
_CANONICAL_BLUR = 1.5
_CANONICAL_RENDER_PX = 48
_CANONICAL_MAX_FONTS = 4
_FONT_SUFFIXES = (".ttf", ".otf")
# matplotlib also ships TeX fonts with non-Unicode cmaps, size variants and a last-resort font
# that draws every code point as a box: none of those draw real letters.
_EXCLUDED_FONT = re.compile(r"^(lastresort|cm[a-z]{1,4}\d+$|stixsiz|stixnonuni)")
_MATPLOTLIB_FONT = re.compile(r"^(dejavu|stixgeneral)")
_LETTER_CATEGORIES = frozenset({"Lu", "Ll", "Lt", "Lo"})
_SCRIPT_STOP_WORDS = frozenset(
    {
        "LETTER", "CAPITAL", "SMALL", "SYLLABLE", "SYLLABICS", "IDEOGRAPH", "IDEOGRAM", "HIEROGLYPH",
        "CHARACTER", "LIGATURE", "SIGN", "VOWEL", "CONSONANT", "INDEPENDENT", "FINAL", "LOGOGRAM",
        "SYMBOL", "DIGRAPH", "MTAVRULI",
    }
)  # fmt: skip
_SECONDARY_WORDS = frozenset({"SIGN", "MARK", "TONE", "AFFIX", "SYMBOL", "MONOGRAM"})
_HEX_SUFFIX = re.compile(r"-[0-9A-F]{3,}$")

# Distortion of one instance, in units of the square canvas it is drawn on.
_FILL = 0.72  # larger side of the glyph / canvas side, before random scaling
_SCALE_JITTER = 0.12  # log-uniform scale in [-0.12, 0.12]
_ASPECT_JITTER = 0.06
_ROTATION_DEG = 15.0
_SHEAR = 0.25
_TRANSLATION = 0.05
_ELASTIC_GRID = 4
_ELASTIC_SIGMA = 0.03
_WEIGHT_RANGE = (-0.5, 1.3)  # 3x3 dilation steps on a 56 px canvas (negative erodes)
_MIN_CANVAS = 56


# --------------------------------------------------------------------------------------------
# Fonts and letters
# --------------------------------------------------------------------------------------------


def _matplotlib_font_dir() -> Path:
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


def _font_files(directory: Path, keep: Callable[[str], bool] = lambda stem: True) -> list[Path]:
    out = []
    for path in directory.rglob("*"):
        stem = path.stem.lower()
        suffix_ok = path.suffix.lower() in _FONT_SUFFIXES
        if suffix_ok and keep(stem) and not _EXCLUDED_FONT.match(stem) and path.is_file():
            out.append(path)
    return out


def glyph_fonts(font_dirs: Sequence[str | Path] | None = None, *, system_fonts: bool = False) -> list[Path]:
    """List the font files the glyph dataset draws with, sorted.

    Args:
        font_dirs: folders searched recursively for ``.ttf``/``.otf`` files. ``None`` means
            matplotlib's bundled DejaVu and STIX fonts (and, with ``system_fonts``, more).
        system_fonts: with ``font_dirs=None``, also the fonts of :data:`DEBIAN_FONT_DIRS` that are
            installed (``dataset="glyphs-system"``); the list then depends on the machine.

    Raises:
        ValueError: if a folder in ``font_dirs`` does not exist, or ``system_fonts`` is set with
            ``font_dirs`` (which it would not change).
    """
    found: list[Path] = []
    if font_dirs is None:
        found += _font_files(_matplotlib_font_dir(), lambda stem: bool(_MATPLOTLIB_FONT.match(stem)))
        for debian_dir in DEBIAN_FONT_DIRS if system_fonts else ():
            if Path(debian_dir).is_dir():
                found += _font_files(Path(debian_dir))
    elif system_fonts:
        raise ValueError(
            "system_fonts=True adds the installed system fonts to the default fonts, but font_dirs names the "
            "fonts itself; pass font_dirs or system_fonts=True, not both."
        )
    else:
        dirs = [font_dirs] if isinstance(font_dirs, (str, Path)) else list(font_dirs)
        for d in dirs:
            path = Path(d).expanduser()
            if not path.is_dir():
                raise ValueError(
                    f"font_dirs entry {str(d)!r} is not an existing folder; pass folders that hold "
                    ".ttf/.otf files, or font_dirs=None for the default fonts."
                )
            found += _font_files(path)
    return sorted({p.resolve() for p in found}, key=str)


@functools.cache
def letter_script(codepoint: int) -> str | None:
    """The raw script name of a base letter, e.g. ``"LATIN"`` for U+0041, or ``None``.

    Only letters (Unicode categories Lu, Ll, Lt, Lo) without a decomposition count, so accented
    letters, presentation forms and mathematical alphanumerics are left out. The script is the
    part of the character's name before a word such as LETTER, CAPITAL or SYLLABLE.
    """
    ch = chr(codepoint)
    if unicodedata.category(ch) not in _LETTER_CATEGORIES or unicodedata.decomposition(ch):
        return None
    name = unicodedata.name(ch, "")
    if not name or name.startswith("MODIFIER "):
        return None
    words: list[str] = []
    for token in name.split():
        token = _HEX_SUFFIX.sub("", token)
        if token in _SCRIPT_STOP_WORDS:
            break
        words.append(token)
    return " ".join(words) if words else name.split()[0]


def _font_letters(path: Path) -> list[int]:
    """Letter code points the font's cmap maps to a real glyph (not .notdef)."""
    from fontTools.ttLib import TTFont

    try:
        with TTFont(str(path), lazy=True, fontNumber=0) as font:
            cmap = font.getBestCmap() or {}
    except Exception as exc:  # a broken or unsupported font file is skipped, not fatal
        warnings.warn(f"skipping font {path}: fontTools cannot read it ({exc}).", stacklevel=3)
        return []
    return [cp for cp, glyph in cmap.items() if glyph != ".notdef" and letter_script(cp) is not None]


def _font_rank(path: str) -> tuple[int, str]:
    """Sort key preferring plain, upright, regular-weight sans fonts (for canonical renderings).

    Comparing two scripts' letters in one common font (Noto Sans, DejaVu Sans) makes true
    look-alikes render identically, so they are caught as near-duplicates.
    """
    name = Path(path).stem.lower()
    if name.startswith("notosans"):
        penalty = 0
    elif name.startswith(("dejavusans", "freesans")):
        penalty = 1
    elif name.startswith(("noto", "dejavu", "free")):
        penalty = 2
    else:  # STIX and the stylised historic fonts of fonts-ancient-scripts
        penalty = 3
    penalty += 4 * any(w in name for w in ("bold", "black", "heavy"))
    penalty += 4 * any(w in name for w in ("italic", "oblique", "slant"))
    penalty += 3 * any(w in name for w in ("math", "symbols", "music"))
    penalty += 2 * ("mono" in name)
    penalty += any(w in name for w in ("display", "condensed", "light", "unjoined"))
    return penalty, Path(path).name


@dataclass(frozen=True)
class _Letter:
    codepoint: int
    script: str
    fonts: tuple[str, ...]  # in the global font order
    secondary: bool  # a sign/mark rather than a letter proper: picked last

    @property
    def priority(self) -> tuple[bool, bool, int]:
        return (len(self.fonts) < 2, self.secondary, self.codepoint)


def _scan_letters(fonts: Sequence[Path]) -> list[_Letter]:
    """Every base letter any font covers, with its merged script name and covering fonts."""
    coverage: dict[int, list[str]] = {}
    for path in fonts:
        for cp in _font_letters(path):
            coverage.setdefault(cp, []).append(str(path))
    raw = {cp: letter_script(cp) or "" for cp in coverage}
    names = set(raw.values())

    @functools.cache
    def merged(script: str) -> str:
        # "GEORGIAN MTAVRULI" -> "GEORGIAN", "PAHAWH HMONG CLAN" -> "PAHAWH HMONG".
        words = script.split()
        for k in range(1, len(words)):
            if " ".join(words[:k]) in names:
                return " ".join(words[:k])
        return script

    letters = []
    for cp in sorted(coverage):
        words = set(unicodedata.name(chr(cp)).split())
        letters.append(
            _Letter(cp, merged(raw[cp]).title(), tuple(coverage[cp]), bool(words & _SECONDARY_WORDS))
        )
    return letters


# --------------------------------------------------------------------------------------------
# Rendering (runs in worker processes: numpy and Pillow only)
# --------------------------------------------------------------------------------------------

_FONT_CACHE: dict[tuple[str, int], ImageFont.FreeTypeFont | None] = {}
_FONT_CACHE_PID = [os.getpid()]
_NOTDEF_CACHE: dict[tuple[str, int], np.ndarray | None] = {}


def _font(path: str, size: int) -> ImageFont.FreeTypeFont | None:
    if _FONT_CACHE_PID[0] != os.getpid():  # never share FreeType handles across a fork
        _FONT_CACHE.clear()
        _NOTDEF_CACHE.clear()
        _FONT_CACHE_PID[0] = os.getpid()
    key = (path, size)
    if key not in _FONT_CACHE:
        if len(_FONT_CACHE) >= 96:
            _FONT_CACHE.clear()
            _NOTDEF_CACHE.clear()
        try:
            _FONT_CACHE[key] = ImageFont.truetype(path, size, layout_engine=ImageFont.Layout.BASIC)
        except OSError:
            _FONT_CACHE[key] = None
    return _FONT_CACHE[key]


def _draw(font: ImageFont.FreeTypeFont, ch: str) -> np.ndarray | None:
    box = font.getbbox(ch)
    left, top, right, bottom = math.floor(box[0]), math.floor(box[1]), math.ceil(box[2]), math.ceil(box[3])
    if right <= left or bottom <= top:
        return None
    im = Image.new("L", (right - left + 2, bottom - top + 2))
    ImageDraw.Draw(im).text((1 - left, 1 - top), ch, font=font, fill=255)
    ink = im.getbbox()
    if ink is None:
        return None
    return np.asarray(im.crop(ink), dtype=np.uint8)


def _glyph_bitmap(ch: str, path: str, size: int) -> np.ndarray | None:
    """The glyph's ink cropped to its bounding box (uint8), or None if empty or tofu."""
    font = _font(path, size)
    if font is None:
        return None
    try:
        bitmap = _draw(font, ch)
    except (OSError, ValueError):
        return None
    if bitmap is None or int(bitmap.max()) < 128:
        return None
    key = (path, size)
    if key not in _NOTDEF_CACHE:
        _NOTDEF_CACHE[key] = _draw(font, "\u0378")  # unassigned: the font's .notdef box
    notdef = _NOTDEF_CACHE[key]
    if notdef is not None and notdef.shape == bitmap.shape and np.array_equal(notdef, bitmap):
        return None
    return bitmap


def canonical_glyph(
    ch: str, font_paths: Sequence[str | Path], size: int = _CANONICAL_SIZE
) -> np.ndarray | None:
    """A clean, normalised rendering of ``ch`` for near-duplicate detection.

    The glyph is drawn in the first of ``font_paths`` that renders it (not empty, not tofu),
    cropped to its ink, scaled so its larger side spans ``size - 2`` pixels (aspect kept),
    centred on a ``size`` x ``size`` canvas and slightly blurred, so that small differences
    between font designs matter less than differences in shape.

    Returns:
        float32 array (size, size) in [0, 1], or None if no font draws ``ch``.
    """
    for path in font_paths:
        bitmap = _glyph_bitmap(ch, str(path), _CANONICAL_RENDER_PX)
        if bitmap is None:
            continue
        h, w = bitmap.shape
        r = (size - 2) / max(h, w)
        nh, nw = max(1, round(h * r)), max(1, round(w * r))
        small = Image.fromarray(bitmap).resize((nw, nh), Image.Resampling.BOX)
        canvas = Image.new("L", (size, size))
        canvas.paste(small, ((size - nw) // 2, (size - nh) // 2))
        canvas = canvas.filter(ImageFilter.GaussianBlur(_CANONICAL_BLUR * size / _CANONICAL_SIZE))
        return np.asarray(canvas, dtype=np.float32) / 255.0
    return None


def _interp_matrix(n_out: int, n_in: int) -> np.ndarray:
    """(n_out, n_in) linear interpolation from n_in evenly spaced control points."""
    pos = np.linspace(0.0, n_in - 1.0, n_out)
    lo = np.minimum(np.floor(pos).astype(np.int64), n_in - 2)
    frac = (pos - lo).astype(np.float32)
    m = np.zeros((n_out, n_in), np.float32)
    m[np.arange(n_out), lo] = 1.0 - frac
    m[np.arange(n_out), lo + 1] = frac
    return m


def _max3(x: np.ndarray, reduce: Callable[..., np.ndarray] = np.maximum) -> np.ndarray:
    """3x3 grey dilation (or erosion with ``reduce=np.minimum``) of a batch (n, H, W), zero-padded."""
    p = np.pad(x, ((0, 0), (1, 1), (1, 1)))
    rows = reduce(reduce(p[:, :-2], p[:, 1:-1]), p[:, 2:])
    return reduce(reduce(rows[:, :, :-2], rows[:, :, 1:-1]), rows[:, :, 2:])


def _stroke_weight(x: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """Thicken (steps > 0) or thin (steps < 0) each image by a fractional number of 3x3 steps."""
    grow, shrink = [x], [x]
    for _ in range(math.ceil(max(float(steps.max(initial=0.0)), 0.0))):
        grow.append(_max3(grow[-1]))
    for _ in range(math.ceil(max(-float(steps.min(initial=0.0)), 0.0))):
        shrink.append(_max3(shrink[-1], np.minimum))
    out = np.empty_like(x)
    for i, step in enumerate(steps):
        levels = grow if step >= 0 else shrink
        k, frac = int(abs(step)), abs(float(step)) - int(abs(step))
        out[i] = (
            levels[k][i] if k + 1 >= len(levels) else levels[k][i] + frac * (levels[k + 1][i] - levels[k][i])
        )
    return out


def _canvas_size(image_size: int) -> tuple[int, int]:
    """(canvas side, supersampling factor): glyphs are drawn on a canvas of at least 56 px."""
    factor = max(1, math.ceil(_MIN_CANVAS / image_size))
    return image_size * factor, factor


def _distort(
    bitmaps: Sequence[np.ndarray], which: np.ndarray, image_size: int, rng: np.random.Generator
) -> np.ndarray:
    """Draw ``which[i]``-th bitmap with a random affine, elastic and weight distortion, per i.

    Returns uint8 (n, image_size, image_size) with the brightest pixel of each image at 255.
    """
    n = len(which)
    canvas, factor = _canvas_size(image_size)
    hs = np.array([b.shape[0] for b in bitmaps], np.float32)
    ws = np.array([b.shape[1] for b in bitmaps], np.float32)
    hp, wp = int(hs.max()) + 2, int(ws.max()) + 2
    stack = np.zeros((len(bitmaps), hp, wp), np.float32)
    for k, b in enumerate(bitmaps):
        stack[k, 1 : 1 + b.shape[0], 1 : 1 + b.shape[1]] = b / np.float32(255.0)
    h, w = hs[which], ws[which]

    # Forward map glyph -> canvas: p = R(theta) Shear(k) diag(sx, sy) q + t; we need its inverse.
    scale = _FILL * canvas / np.maximum(h, w) * np.exp(rng.uniform(-_SCALE_JITTER, _SCALE_JITTER, n))
    aspect = np.exp(rng.uniform(-_ASPECT_JITTER, _ASPECT_JITTER, n))
    sx, sy = scale * aspect, scale / aspect
    theta = np.deg2rad(rng.uniform(-_ROTATION_DEG, _ROTATION_DEG, n))
    shear = rng.uniform(-_SHEAR, _SHEAR, n)
    t = rng.uniform(-_TRANSLATION, _TRANSLATION, (2, n)) * canvas
    c, s = np.cos(theta), np.sin(theta)
    a, b_, cc, d = c * sx, (c * shear - s) * sy, s * sx, (s * shear + c) * sy
    det = a * d - b_ * cc
    inv = np.stack([d, -b_, -cc, a]).astype(np.float32) / det.astype(np.float32)  # (4, n)

    # Smooth elastic displacement: random control grid, bilinearly upsampled to the canvas.
    control = rng.normal(0.0, _ELASTIC_SIGMA * canvas, (n, 2, _ELASTIC_GRID, _ELASTIC_GRID)).astype(
        np.float32
    )
    up = _interp_matrix(canvas, _ELASTIC_GRID)
    disp = np.einsum("yi,ncij->ncyj", up, control)
    disp = np.einsum("ncyj,xj->ncyx", disp, up)
    weight = rng.uniform(*_WEIGHT_RANGE, n) * (canvas / _MIN_CANVAS)

    grid = np.arange(canvas, dtype=np.float32) + 0.5 - canvas / 2
    px = grid[None, None, :] + disp[:, 0] - t[0, :, None, None].astype(np.float32)
    py = grid[None, :, None] + disp[:, 1] - t[1, :, None, None].astype(np.float32)
    qx = inv[0, :, None, None] * px + inv[1, :, None, None] * py
    qy = inv[2, :, None, None] * px + inv[3, :, None, None] * py
    # Glyph coordinates (centred on its box) -> padded bitmap pixel index (centres at k + 0.5).
    col = np.clip(qx + (w / 2 + 0.5)[:, None, None], 0.0, wp - 1.001)
    row = np.clip(qy + (h / 2 + 0.5)[:, None, None], 0.0, hp - 1.001)
    c0, r0 = col.astype(np.int64), row.astype(np.int64)
    fc, fr = col - c0, row - r0
    flat = stack.reshape(-1)
    base = (which.astype(np.int64) * (hp * wp))[:, None, None] + r0 * wp + c0
    top = flat[base] * (1 - fc) + flat[base + 1] * fc
    bottom = flat[base + wp] * (1 - fc) + flat[base + wp + 1] * fc
    img = top * (1 - fr) + bottom * fr

    img = _stroke_weight(img, weight)
    img = img.reshape(n, image_size, factor, image_size, factor).mean(axis=(2, 4))
    peak = img.reshape(n, -1).max(axis=1)
    img = img / np.maximum(peak, 1e-6)[:, None, None]
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)


def render_glyph_instances(
    ch: str, font_paths: Sequence[str | Path], n: int, *, image_size: int = 28, seed: int = 0
) -> np.ndarray | None:
    """``n`` distorted drawings of ``ch``, each by one of the fonts that draw it.

    Fonts are tried in an order shuffled by ``(seed, ord(ch))`` and used round-robin, so with
    enough fonts every instance has its own; each instance gets its own random distortion.

    Returns:
        uint8 array (n, image_size, image_size), strokes bright; None if no font draws ``ch``.
    """
    rng = np.random.default_rng([seed % 2**64, ord(ch)])
    canvas, _ = _canvas_size(image_size)
    paths = [str(p) for p in font_paths]
    bitmaps: list[np.ndarray] = []
    for k in rng.permutation(len(paths)):
        bitmap = _glyph_bitmap(ch, paths[k], canvas)
        if bitmap is not None:
            bitmaps.append(bitmap)
            if len(bitmaps) == n:
                break
    if not bitmaps:
        return None
    return _distort(bitmaps, np.arange(n) % len(bitmaps), image_size, rng)


def _canonical_job(job: tuple[int, tuple[str, ...]]) -> np.ndarray | None:
    return canonical_glyph(chr(job[0]), job[1])


def _instances_job(job: tuple[int, tuple[str, ...], int, int, int]) -> np.ndarray | None:
    cp, fonts, n, image_size, seed = job
    return render_glyph_instances(chr(cp), fonts, n, image_size=image_size, seed=seed)


# --------------------------------------------------------------------------------------------
# Near-duplicates and class selection
# --------------------------------------------------------------------------------------------


def dedup_near_duplicates(
    images: np.ndarray | Sequence[np.ndarray],
    min_correlation: float = DEDUP_MIN_CORRELATION,
    max_pixel_diff: float = DEDUP_MAX_PIXEL_DIFF,
    block: int = 2048,
) -> np.ndarray:
    """Greedily keep images that are not near-duplicates of an earlier kept one.

    Two images are near-duplicates when the Pearson correlation of their pixels exceeds
    ``min_correlation`` and no pixel differs by more than ``max_pixel_diff`` (images in
    [0, 1]). Image ``i`` is dropped when it is a near-duplicate of an earlier *kept* image, so
    order the input by preference: earlier images win.

    Args:
        images: (N, H, W) canonical renderings (see :func:`canonical_glyph`).
        min_correlation: correlation above which two images may be the same character.
        max_pixel_diff: largest pixel difference two same-character images may have.
        block: rows compared at a time (bounds memory at ``block * N`` floats).

    Returns:
        bool array (N,): True for images kept.
    """
    raw = np.asarray(images, dtype=np.float32).reshape(len(images), -1)
    x = raw - raw.mean(axis=1, keepdims=True)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-6)
    n = x.shape[0]
    earlier: list[np.ndarray] = []  # for each i, the j < i it duplicates
    for i0 in range(0, n, block):
        sims = x[i0 : i0 + block] @ x[: i0 + block].T
        for r in range(sims.shape[0]):
            i = i0 + r
            close = np.flatnonzero(sims[r, :i] > min_correlation)
            if len(close):
                close = close[np.abs(raw[close] - raw[i]).max(axis=1) <= max_pixel_diff]
            earlier.append(close)
    keep = np.ones(n, dtype=bool)
    for i in range(n):
        if len(earlier[i]) and keep[earlier[i]].any():
            keep[i] = False
    return keep


def _waterfill(sizes: Sequence[int], cap: int) -> list[int]:
    """Per-group quotas summing to at most ``cap``: the largest common level, ties to earlier groups."""
    if sum(sizes) <= cap:
        return list(sizes)
    level = 0
    while sum(min(s, level + 1) for s in sizes) <= cap:
        level += 1
    quotas = [min(s, level) for s in sizes]
    spare = cap - sum(quotas)
    for i, s in enumerate(sizes):
        if spare and s > level:
            quotas[i] += 1
            spare -= 1
    return quotas


def _allot(sizes: Sequence[int], cap: int) -> list[int]:
    """Quotas for groups in priority order: drop the last groups while fewer than ~20 letters each fit."""

    def short(k: int) -> bool:
        quotas = _waterfill(sizes[:k], cap)
        return any(q < min(s, _TARGET_LETTERS_PER_SCRIPT) for q, s in zip(quotas, sizes[:k], strict=True))

    k = len(sizes)
    while k > 3 and short(k):
        k -= 1
    return _waterfill(sizes[:k], cap) + [0] * (len(sizes) - k)


def _by_script(letters: Iterable[_Letter]) -> list[list[_Letter]]:
    """Eligible scripts (enough letters), most multi-font letters first, letters by priority."""
    groups: dict[str, list[_Letter]] = {}
    for letter in letters:
        groups.setdefault(letter.script, []).append(letter)
    eligible = [sorted(g, key=lambda le: le.priority) for g in groups.values()]
    eligible = [g for g in eligible if len(g) >= MIN_LETTERS_PER_SCRIPT]
    return sorted(eligible, key=lambda g: (-sum(len(le.fonts) >= 2 for le in g), -len(g), g[0].script))


# --------------------------------------------------------------------------------------------
# Building and caching
# --------------------------------------------------------------------------------------------

_J = TypeVar("_J")
_R = TypeVar("_R")


_WORKER_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _init_worker() -> None:
    """Pool initializer: the default SIGTERM (so ``Pool.terminate`` ends the worker) and no SIGINT.

    A forked worker inherits the parent's Python signal handlers. A handler that only records a
    stop request (a trainer's, say) would make the worker survive ``Pool.terminate()``'s single
    SIGTERM, and the pool's ``join`` would then wait forever. Ctrl-C is the parent's to handle.
    """
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _WORKER_SIGNALS)


@contextlib.contextmanager
def _worker_pool(context: Any, processes: int) -> Iterator[Any]:
    """A process pool whose workers never run the parent's SIGINT/SIGTERM handlers.

    The signals are blocked while the workers are forked (they inherit the mask), and each worker
    installs the defaults before unblocking them, so there is no moment at which a worker could run
    an inherited handler. The parent's mask is restored at once; a signal that arrived meanwhile is
    delivered to it then.
    """
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _WORKER_SIGNALS) if hasattr(signal, "pthread_sigmask") else None
    try:
        pool = context.Pool(processes, initializer=_init_worker)
    finally:
        if previous is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    with pool:
        yield pool


def _map(func: Callable[[_J], _R], jobs: Sequence[_J], workers: int, progress: bool, desc: str) -> list[_R]:
    """``[func(j) for j in jobs]`` in order, over ``workers`` processes, with a progress bar."""
    bar = tqdm(total=len(jobs), desc=desc, unit="class", disable=not progress, leave=False)
    try:
        if workers <= 1 or len(jobs) < 2:
            results = []
            for job in jobs:
                results.append(func(job))
                bar.update()
            return results
        method = "fork" if sys.platform.startswith("linux") else "spawn"
        chunk = max(1, min(64, len(jobs) // (workers * 8)))
        with _worker_pool(mp.get_context(method), min(workers, len(jobs))) as pool:
            results = []
            for result in pool.imap(func, jobs, chunksize=chunk):
                results.append(result)
                bar.update()
            return results
    finally:
        bar.close()


def _select(letters: Sequence[_Letter], cap: int, workers: int, progress: bool) -> list[_Letter]:
    """Choose at most ``cap`` distinct-looking letters, balanced over the best-covered scripts."""
    scripts = _by_script(letters)
    if len(scripts) < 3:
        raise ValueError(
            f"the fonts cover only {len(scripts)} scripts with at least {MIN_LETTERS_PER_SCRIPT} "
            "letters, but 3 splits need 3; pass font_dirs with more scripts (or use the default fonts)."
        )
    quotas = _allot([len(g) for g in scripts], cap)
    level = max(quotas)
    # Candidates: a margin over each quota (duplicates get removed), plus a few spare scripts.
    pool: list[_Letter] = []
    spare = 8
    for g, q in zip(scripts, quotas, strict=True):
        if q == 0:
            if spare == 0:
                continue
            spare -= 1
        pool.extend(g[: 2 * max(q, level) + 10])
    pool.sort(key=lambda le: (-len(le.fonts), le.codepoint))
    jobs = [(le.codepoint, tuple(sorted(le.fonts, key=_font_rank)[:_CANONICAL_MAX_FONTS])) for le in pool]
    canon = _map(_canonical_job, jobs, workers, progress, "glyphs: canonical")
    drawn = [(le, im) for le, im in zip(pool, canon, strict=True) if im is not None]
    keep = dedup_near_duplicates(np.stack([im for _, im in drawn])) if drawn else np.zeros(0, bool)
    distinct = [le for (le, _), k in zip(drawn, keep, strict=True) if k]
    scripts = _by_script(distinct)
    if len(scripts) < 3:
        raise ValueError(
            f"after removing near-duplicates only {len(scripts)} scripts keep at least "
            f"{MIN_LETTERS_PER_SCRIPT} letters; install more fonts or pass a larger max_classes."
        )
    quotas = _allot([len(g) for g in scripts], cap)
    chosen = [le for g, q in zip(scripts, quotas, strict=True) for le in g[:q]]
    return sorted(chosen, key=lambda le: (le.script, le.codepoint))


def _build(
    fonts: Sequence[Path], image_size: int, instances: int, seed: int, cap: int, workers: int, progress: bool,
    name: str,
) -> dict[str, ImageDataset]:
    letters = _scan_letters(fonts)
    chosen = _select(letters, cap, workers, progress)
    jobs = [(le.codepoint, le.fonts, instances, image_size, seed) for le in chosen]
    rendered = _map(_instances_job, jobs, workers, progress, "glyphs: rendering")
    kept = [(le, im) for le, im in zip(chosen, rendered, strict=True) if im is not None]
    images = np.concatenate([im for _, im in kept])[:, None]
    labels = np.repeat(np.arange(len(kept), dtype=np.int64), instances)
    dataset = ImageDataset(
        torch.from_numpy(images),
        torch.from_numpy(labels),
        tuple(f"U+{le.codepoint:04X} {unicodedata.name(chr(le.codepoint))}" for le, _ in kept),
        tuple(le.script for le, _ in kept),
        name=name,
    )
    return split_by_group(dataset, SPLIT_FRACTIONS, ("train", "val", "test"), seed=_SPLIT_SEED)


def _cache_root(cache_dir: str | Path | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    if os.environ.get("META_RL_CACHE"):
        return Path(os.environ["META_RL_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "meta_rl"
    return Path.home() / ".cache" / "meta_rl"


def _file_sha256(path: Path) -> str:
    """SHA-256 (hex) of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _font_fingerprints(fonts: Sequence[Path]) -> list[tuple[str, str, Path]]:
    """``(file name, content SHA-256, path)`` of each font, sorted by name, then content.

    The build draws with the fonts in this order, so neither the dataset nor its cache key
    depends on the folders the fonts are installed in or on the order they were listed in.
    """
    return sorted(((p.name, _file_sha256(p), p) for p in fonts), key=lambda f: (f[0], f[1], str(f[2])))


def _cache_key(prints: Sequence[tuple[str, str, Path]], params: dict[str, Any]) -> str:
    """Cache key of a build: the cache format, the build parameters and the fonts' names and contents.

    Args:
        prints: the fonts' :func:`_font_fingerprints`.
        params: the build parameters.
    """
    font_list = sorted([name, digest] for name, digest, _ in prints)
    blob = json.dumps({"format": _CACHE_FORMAT, "params": params, "fonts": font_list}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _to_payload(splits: dict[str, ImageDataset]) -> dict[str, Any]:
    """The cache file's content: the splits' tensors and names, with a SHA-256 of them."""
    payload: dict[str, Any] = {
        "format": _CACHE_FORMAT,
        "splits": {
            k: {
                "images": v.images,
                "labels": v.labels,
                "class_names": list(v.class_names),
                "groups": list(v.groups),
            }
            for k, v in splits.items()
        },
    }
    payload[CHECKSUM_KEY] = checksum(payload)
    return payload


def _from_payload(payload: Any, name: str) -> dict[str, ImageDataset]:
    """The splits of a cache file's content, checked against its checksum, named ``name/split``.

    Raises:
        ValueError: the content is not of this format, has no checksum, or does not match it.
    """
    if not isinstance(payload, dict) or payload.get("format") != _CACHE_FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise ValueError(f"not a {_CACHE_FORMAT} glyph cache (found {found!r})")
    stored = payload.get(CHECKSUM_KEY)
    if not isinstance(stored, str):
        raise ValueError("the file has no checksum")
    if stored != checksum(payload):
        raise ValueError("its content does not match its checksum: the file is damaged")
    out = {}
    for k in ("train", "val", "test"):
        s = payload["splits"][k]
        out[k] = ImageDataset(
            s["images"], s["labels"], tuple(s["class_names"]), tuple(s["groups"]), name=f"{name}/{k}"
        )
    return out


def _save_cache(payload: dict[str, Any], path: Path) -> None:
    """Write the cache file atomically; a cache that cannot be written is only a warning (the data is built)."""
    buffer = io.BytesIO()
    try:
        torch.save(payload, buffer)
    except (RuntimeError, MemoryError) as exc:  # out of memory while serialising: the splits are still usable
        warnings.warn(f"cannot serialise the glyph cache {path} ({type(exc).__name__}: {exc}); the glyphs "
                      "will be built again next time. Free some memory or use a smaller image_size.", stacklevel=3)
        return
    try:
        write_atomic(path, buffer.getbuffer(), what="glyph cache")
    except WriteError as exc:
        warnings.warn(f"{exc} The glyphs will be built again next time; set META_RL_CACHE to a writable folder.",
                      stacklevel=3)


def _remove_stale_temp_files(root: Path) -> None:
    """Delete the ``.glyphs-*.tmp`` files of cache writers that were killed half-way.

    :func:`~meta_rl.atomic.write_atomic` writes the cache to a temporary file and renames it; a
    writer killed in between leaves the temporary file behind. Its name holds no process id and
    the writer holds no lock, so age tells a dead writer's file from a live one's: a writer fills
    its file from a buffer already in memory (4 MiB per write, each updating the file's mtime),
    then fsyncs and renames it at once, so a live writer's file was modified seconds ago. A file
    not modified (mtime) for :data:`_STALE_TEMP_SECONDS` (10 minutes) is a killed writer's and is
    deleted; a younger one may be another process's write in progress and is left alone (the
    first build or load after its 10 minutes deletes it). Files that cannot be examined or
    deleted (a read-only cache folder) are left as they are.

    Args:
        root: the cache folder.
    """
    now = time.time()
    try:
        leftovers = list(root.glob(".glyphs-*.tmp"))
    except OSError:
        return
    for leftover in leftovers:
        with contextlib.suppress(OSError):
            if now - leftover.stat().st_mtime > _STALE_TEMP_SECONDS:
                leftover.unlink(missing_ok=True)


def _free_disk(folder: Path) -> int | None:
    """Free bytes on the file system that holds (or will hold) ``folder``; None if unknown."""
    existing = folder.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        return shutil.disk_usage(existing).free
    except OSError:
        return None


def _check_room(image_size: int, n_images: int, root: Path) -> None:
    """Refuse a build whose images would not fit in memory (while building) or on the cache's disk.

    Raises:
        ValueError: naming ``image_size``, the bytes needed and those available, and the fix.
    """
    n_bytes = n_images * image_size * image_size  # uint8
    what = f"{n_images:,} images of {image_size}x{image_size} = {n_bytes:,} bytes"
    fix = "pass a smaller image_size (env_kwargs.image_size in a config), e.g. 28, or fewer classes or instances"
    memory = available_memory(torch.device("cpu"))  # MemAvailable, and the cgroup's limit where there is one
    if memory is not None and _BUILD_PEAK_COPIES * n_bytes > memory:
        raise ValueError(
            f"image_size={image_size}: the glyph build would hold {what}, and needs about "
            f"{_BUILD_PEAK_COPIES * n_bytes:,} bytes of memory at its peak, but only {memory:,} are available; "
            f"{fix}."
        )
    disk = _free_disk(root)
    if disk is not None and n_bytes > disk:
        raise ValueError(
            f"image_size={image_size}: the glyph cache would hold {what}, but the cache folder {root} has only "
            f"{disk:,} bytes free; {fix}, or free some space or set META_RL_CACHE to a folder on a larger disk."
        )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_arguments(
    image_size: int, instances_per_class: int, seed: int, max_classes: int | None, num_workers: int | None
) -> None:
    """Refuse invalid :func:`load_glyphs` arguments, and an ``image_size`` above :data:`MAX_IMAGE_SIZE`.

    Raises:
        ValueError: naming the argument, the values allowed and the fix.
    """
    if not _is_int(image_size) or image_size < 8:
        raise ValueError(f"image_size must be an int >= 8, got {image_size!r}; use e.g. image_size=28.")
    if not _is_int(instances_per_class) or instances_per_class < 1:
        raise ValueError(f"instances_per_class must be an int >= 1, got {instances_per_class!r}; use e.g. 20.")
    if not _is_int(seed):
        raise ValueError(f"seed must be an int, got {seed!r}.")
    min_classes = 3 * MIN_LETTERS_PER_SCRIPT
    if max_classes is not None and (not _is_int(max_classes) or max_classes < min_classes):
        raise ValueError(
            f"max_classes={max_classes!r} is too small for 3 splits of whole scripts (each needs "
            f"{MIN_LETTERS_PER_SCRIPT} letters); pass max_classes >= {min_classes}, or None for "
            f"the default {DEFAULT_MAX_CLASSES}."
        )
    if num_workers is not None and (not _is_int(num_workers) or num_workers < 1):
        raise ValueError(f"num_workers must be an int >= 1 or None, got {num_workers!r}.")
    if image_size > MAX_IMAGE_SIZE:
        n_images = (DEFAULT_MAX_CLASSES if max_classes is None else max_classes) * instances_per_class
        raise ValueError(
            f"image_size={image_size} is above the glyph dataset's limit of {MAX_IMAGE_SIZE}: its cache would hold "
            f"up to {n_images:,} images of {image_size}x{image_size} = {n_images * image_size**2:,} bytes "
            f"(about {_BUILD_PEAK_COPIES}x that in memory while building). Pass image_size <= {MAX_IMAGE_SIZE} "
            "(env_kwargs.image_size in a config), e.g. image_size=28."
        )


def load_glyphs(
    *,
    image_size: int = 28,
    instances_per_class: int = 20,
    seed: int = 0,
    max_classes: int | None = None,
    font_dirs: Sequence[str | Path] | None = None,
    system_fonts: bool = False,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    num_workers: int | None = None,
) -> dict[str, ImageDataset]:
    """Build (or load from cache) the Omniglot-style glyph dataset, split by script.

    Classes are letters, groups are scripts; ``"test"`` holds held-out evaluation scripts
    (about 25% of classes), ``"train"`` and ``"val"`` disjoint scripts from the rest (about 60%
    and 15%). The split depends only on the fonts and ``max_classes``, not on ``seed``.

    Args:
        image_size: side of the square uint8 images, from 8 to :data:`MAX_IMAGE_SIZE` (128). The
            build must also fit in memory (about 3 x the images' bytes, ``classes x instances x
            image_size**2``) and the cache on disk (1 x), which is checked before it starts.
        instances_per_class: drawings per letter (at least 1).
        seed: seed of the random distortions; the same seed gives identical tensors.
        max_classes: cap on the number of classes (at least 42: 3 scripts of 14 letters);
            ``None`` means :data:`DEFAULT_MAX_CLASSES`.
        font_dirs: folders of ``.ttf``/``.otf`` fonts; ``None`` for matplotlib's bundled fonts (see
            :func:`glyph_fonts`), the same on every machine.
        system_fonts: with ``font_dirs=None``, also the Debian fonts installed on this machine
            (:data:`DEBIAN_FONT_DIRS`): ``dataset="glyphs-system"``, whose content depends on the machine.
        cache_dir: cache folder; default ``$META_RL_CACHE``, else ``$XDG_CACHE_HOME/meta_rl``,
            else ``~/.cache/meta_rl``.
        progress: show tqdm progress bars while building.
        num_workers: processes used to render; ``None`` means ``os.cpu_count()``.

    Returns:
        ``{"train", "val", "test"}`` to :class:`ImageDataset` of uint8 images (N, 1, H, W).

    Raises:
        ValueError: for an invalid argument, a build too large for the memory or the cache's disk,
            fonts that cover fewer than 3 scripts, or ``system_fonts`` with ``font_dirs``.
    """
    _check_arguments(image_size, instances_per_class, seed, max_classes, num_workers)
    fonts = glyph_fonts(font_dirs, system_fonts=system_fonts)
    name = "glyphs-system" if system_fonts else "glyphs"
    if not fonts:
        raise ValueError(
            f"no .ttf/.otf fonts found in {[str(d) for d in font_dirs or []] or 'the default folders'}; "
            "pass font_dirs holding fonts, or font_dirs=None."
        )
    cap = DEFAULT_MAX_CLASSES if max_classes is None else max_classes
    params = {
        "image_size": image_size,
        "instances_per_class": instances_per_class,
        "seed": seed,
        "max_classes": cap,
    }
    prints = _font_fingerprints(fonts)
    fonts = [p for _, _, p in prints]
    key = _cache_key(prints, params)
    root = _cache_root(cache_dir)
    path = root / f"glyphs-{image_size}px-{instances_per_class}x-seed{seed}-{key}.pt"
    _remove_stale_temp_files(root)
    if path.is_file():
        try:
            return _from_payload(torch.load(path, map_location="cpu", weights_only=True), name)
        except Exception as exc:  # damaged, truncated, of another format: never used as it is
            warnings.warn(
                f"glyph cache {path} is damaged or unreadable ({exc}); rebuilding it.", stacklevel=2
            )
    _check_room(image_size, cap * instances_per_class, root)
    workers = (os.cpu_count() or 1) if num_workers is None else num_workers
    splits = _build(fonts, image_size, instances_per_class, seed, cap, workers, progress, name)
    _save_cache(_to_payload(splits), path)
    return splits
