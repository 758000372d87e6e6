"""Validation at the edge: turn user arrays into what the numeric code expects, or raise InputError.

Called once per public call, never inside per-pixel or per-tile loops.
"""

from __future__ import annotations

import numpy as np

from cyclesr_deploy.errors import InputError


def image2d(
    x: object, name: str, *, allow_nonfinite: bool = False, ndim: int | None = 2
) -> np.ndarray:
    """Return ``x`` as a numeric array of ``ndim`` dimensions (no copy when possible).

    Raises InputError naming ``name`` for: non-numeric data (bool included: a mask is not an
    image), a dimensionality other than ``ndim`` (a singleton leading or trailing axis is *not*
    squeezed silently: the caller must choose the plane; ``ndim=None`` accepts any), empty arrays,
    and NaN/inf values unless ``allow_nonfinite``.
    """
    a = np.asarray(x)
    if a.dtype.kind not in "iuf":
        raise InputError(f"{name}: expected a numeric image, got dtype {a.dtype}")
    if ndim is not None and a.ndim != ndim:
        raise InputError(
            f"{name}: expected a {ndim}-D image"
            + (" (Y, X)" if ndim == 2 else "")
            + f", got shape {a.shape} ({a.ndim}-D); select one plane/channel first"
        )
    if a.size == 0:
        raise InputError(f"{name}: image is empty (shape {a.shape})")
    if a.dtype.kind == "f" and not allow_nonfinite and not np.isfinite(a).all():
        n = int((~np.isfinite(a)).sum())
        raise InputError(f"{name}: contains {n} non-finite value(s) (NaN or inf)")
    return a


def same_shape(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    if a.shape != b.shape:
        raise InputError(
            f"{name_a} has shape {a.shape} but {name_b} has shape {b.shape}; they must match"
        )


def min_size(a: np.ndarray, name: str, minimum: int) -> None:
    if min(a.shape) < minimum:
        raise InputError(f"{name}: needs at least {minimum} px per side, got shape {a.shape}")


def positive(value: float | None, name: str) -> None:
    if value is not None and not (np.isfinite(value) and value > 0):
        raise InputError(f"{name}: must be a positive finite number, got {value!r}")
