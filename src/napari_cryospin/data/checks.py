"""Range checks of the CTF, optics and pose values read from particle files.

Every value is checked when the file is read, so a bad one ends the run with one line naming the file,
the (1-based) row, the column and a fix, instead of an inverted or NaN map later.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from .errors import ParticleFileError

_RECTIFY = "Fix: correct that value (re-run CTF estimation) or remove the particle"
_OPTICS = "Fix: correct it in the optics table (or re-import the movies with the right value)"

RULES: dict[str, tuple[Callable[[np.ndarray], np.ndarray], str, str]] = {
    "defocus_u": (lambda v: v > 0, "a defocus must be a number > 0 Å (underfocus)", _RECTIFY),
    "defocus_v": (lambda v: v > 0, "a defocus must be a number > 0 Å (underfocus)", _RECTIFY),
    "defocus_angle": (lambda v: np.isfinite(v), "the astigmatism angle must be a finite number", _RECTIFY),
    "voltage": (lambda v: v > 0, "the voltage must be a number > 0 kV", _OPTICS),
    "cs": (lambda v: v >= 0, "the spherical aberration must be a number ≥ 0 mm", _OPTICS),
    "amplitude_contrast": (
        lambda v: (v >= 0) & (v < 1),
        "the amplitude contrast must be a fraction 0 ≤ w < 1 (e.g. 0.1)",
        _OPTICS,
    ),
    "phase_shift": (lambda v: np.isfinite(v), "the phase shift must be a finite number", _RECTIFY),
    "bfactor": (lambda v: np.isfinite(v), "the CTF B-factor must be a finite number", _RECTIFY),
    "pixel_size": (lambda v: v > 0, "the pixel size must be a number > 0 Å", _OPTICS),
    "number": (lambda v: np.isfinite(v), "the value must be a finite number", _RECTIFY),
}
"""Per quantity: the test every value must pass, what is required, and the fix to suggest."""


def check_values(path: Path, values: np.ndarray, quantity: str, column: str, table: str = "") -> np.ndarray:
    """``values`` (n,) as float, or ParticleFileError naming ``path``, the first bad row and ``column``.

    ``quantity`` is a key of :data:`RULES`; ``table`` (e.g. ``"data_optics "``) prefixes the row number.
    NaN and ±inf always fail, whatever the rule.
    """
    values = np.asarray(values, dtype=float)
    test, requirement, fix = RULES[quantity]
    with np.errstate(invalid="ignore"):
        good = np.isfinite(values) & test(values)
    if good.all():
        return values
    row = int(np.flatnonzero(~good)[0])
    raise ParticleFileError(
        f"{path.name}: {table}row {row + 1}, column {column}: value {values[row]:g} is invalid "
        f"({requirement}). {fix}."
    )
