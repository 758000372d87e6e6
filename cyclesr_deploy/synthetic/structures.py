"""Seeded ground-truth fluorescent structures, sampled finer than the pixel and integrated to
pixels.

Everything is drawn from the ``numpy.random.Generator`` passed in (never the global RNG) and is
vectorised over objects. Each pixel holds the dye amount inside it (the box integral of the
object over the pixel), computed at sub-pixel resolution ``oversample`` (default 4):

* curves are sampled as dense point sets, one point every ``pixel / (2·oversample)`` carrying
  ``brightness x step``; each point is added to the pixel containing it (one ``np.bincount``);
  this equals rendering on an oversampled grid and summing its blocks, without the big grid;
* filled areas are rasterised on the ``oversample`` x finer grid (even-odd scanline rule) and
  block-summed;
* puncta are Gaussians integrated analytically over each pixel (erf differences).

Objects (sizes in µm, positions uniform over the rendered field, counts Poisson(density x area)):

* filaments: 2-D worm-like chains (tangent angle random walk with variance ds / persistence
  length), random length and brightness, sub-resolution width; many cross (cytoskeleton-like);
* puncta: pixel-integrated Gaussian spots of sigma 15-40 nm (default);
* vesicles: small closed rings (radius 100-300 nm);
* a cell membrane outline (large closed curve) and a nucleus (dim uniform fill plus a faint
  envelope), each present with a given probability; the nucleus sits near the cell centre.

Intensity unit: the dye in 1 µm of a brightness-1 filament (curves deposit ``brightness`` per µm,
puncta ``brightness`` each, the nucleus ``nucleus_fill`` per µm²).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import erf

from cyclesr_deploy.synthetic.config import Structures

_HARMONICS = np.arange(2, 6)  # shape harmonics of closed outlines


class _Canvas:
    """Accumulates dye on a square pixel grid (float64), in µm coordinates.

    Pixel ``i`` covers [i, i + 1) · pixel_um; points are integrated exactly (each lands in the
    pixel that contains it), areas are filled on an ``oversample`` x finer grid and block-summed.
    """

    def __init__(self, n_px: int, pixel_um: float, oversample: int) -> None:
        self.n = n_px
        self.pixel_um = pixel_um
        self.oversample = oversample
        self._idx: list[np.ndarray] = []
        self._w: list[np.ndarray] = []
        self._dense = np.zeros((n_px, n_px))

    @property
    def step_um(self) -> float:
        """Sampling step along curves: half a sub-pixel."""
        return self.pixel_um / (2 * self.oversample)

    def points(self, y_um: np.ndarray, x_um: np.ndarray, w: np.ndarray) -> None:
        """Add weights ``w`` at points (µm) to the pixels that contain them."""
        iy = np.floor(np.ravel(y_um) / self.pixel_um).astype(np.int64)
        ix = np.floor(np.ravel(x_um) / self.pixel_um).astype(np.int64)
        w = np.ravel(w)
        ok = (iy >= 0) & (iy < self.n) & (ix >= 0) & (ix < self.n) & (w != 0)
        self._idx.append((iy * self.n + ix)[ok])
        self._w.append(w[ok])

    def indexed(self, flat: np.ndarray, w: np.ndarray) -> None:
        """Add weights at flat pixel indices (already inside the grid)."""
        self._idx.append(np.ravel(flat).astype(np.int64, copy=False))
        self._w.append(np.ravel(w).astype(np.float64, copy=False))

    def fill_polygon(self, y_um: np.ndarray, x_um: np.ndarray, density: float) -> None:
        """Add ``density`` (per µm²) inside a closed polygon (µm vertices, spaced well under a
        sub-pixel), by the even-odd rule on the sub-pixel grid: scanline crossings become toggles,
        a cumulative sum per row gives the inside mask, which is block-summed into pixels."""
        os_ = self.oversample
        n_fine = self.n * os_
        sub = self.pixel_um / os_
        ya = y_um / sub - 0.5  # sub-pixel centres at integer coordinates
        xa = x_um / sub - 0.5
        yb, xb = np.roll(ya, -1), np.roll(xa, -1)
        lo = np.ceil(np.minimum(ya, yb)).astype(np.int64)
        count = np.ceil(np.maximum(ya, yb)).astype(np.int64) - lo  # rows lo <= i < hi
        edge = np.repeat(np.arange(len(ya)), count)
        row = lo[edge] + (np.arange(len(edge)) - np.repeat(np.cumsum(count) - count, count))
        t = (row - ya[edge]) / (yb[edge] - ya[edge])
        xc = xa[edge] + t * (xb[edge] - xa[edge])
        keep = (row >= 0) & (row < n_fine)
        row, col = row[keep], np.clip(np.ceil(xc[keep]), 0, n_fine).astype(np.int64)
        if row.size == 0:
            return
        r0 = int(row.min()) // os_ * os_
        r1 = min(-(-(int(row.max()) + 1) // os_) * os_, n_fine)
        toggles = np.bincount(
            (row - r0) * (n_fine + 1) + col, minlength=(r1 - r0) * (n_fine + 1)
        ).reshape(r1 - r0, n_fine + 1)
        inside = np.cumsum(toggles[:, :n_fine], axis=1, dtype=np.int32) & 1
        covered = inside.reshape((r1 - r0) // os_, os_, self.n, os_).sum(axis=(1, 3))
        self._dense[r0 // os_ : r1 // os_] += covered * (density * sub * sub)

    def render(self) -> np.ndarray:
        """The accumulated dye per pixel, float32."""
        out = self._dense.ravel()
        if self._idx:
            out = out + np.bincount(
                np.concatenate(self._idx), np.concatenate(self._w), minlength=self.n * self.n
            )
        return out.reshape(self.n, self.n).astype(np.float32)


def _uniform(rng: np.random.Generator, lo_hi: tuple[float, float], n: int) -> np.ndarray:
    return rng.uniform(lo_hi[0], lo_hi[1], size=n)


def _filaments(rng: np.random.Generator, s: Structures, field_um: float, canvas: _Canvas) -> None:
    """Worm-like chains centred uniformly in the field, laid out ragged (no padding)."""
    n = int(rng.poisson(s.filament_density * field_um**2))
    if n == 0:
        return
    ds = canvas.step_um
    lengths = _uniform(rng, s.filament_length_um, n)
    brightness = _uniform(rng, s.filament_brightness, n)
    centre = rng.uniform(0, field_um, size=(n, 2))
    theta0 = rng.uniform(0, 2 * math.pi, size=n)
    steps = np.maximum(np.ceil(lengths / ds).astype(np.int64), 2)
    start = np.cumsum(steps) - steps  # first flat index of each filament
    seg = np.repeat(np.arange(n), steps)
    dtheta = rng.normal(0.0, math.sqrt(ds / s.persistence_length_um), size=int(steps.sum()))
    dtheta[start] = 0.0
    theta = np.cumsum(dtheta)
    theta += (theta0 - theta[start])[seg]
    y = np.cumsum(np.sin(theta)) * ds
    x = np.cumsum(np.cos(theta)) * ds
    mid = start + steps // 2
    y += (centre[:, 0] - y[mid])[seg]
    x += (centre[:, 1] - x[mid])[seg]
    canvas.points(y, x, (brightness * ds)[seg])


def _closed_curves(
    rng: np.random.Generator,
    centre_um: np.ndarray,
    radius_um: np.ndarray,
    irregularity: float,
    ds: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Smooth random closed outlines r(t) = R (1 + Σ_k a_k cos(k t + φ_k)), k = 2..5.

    Returns y, x (µm) of shape (n, n_points) and each point's share of the arc length (µm).
    """
    n = len(radius_um)
    n_pts = max(32, math.ceil(2 * math.pi * float(radius_um.max()) * (1 + 2 * irregularity) / ds))
    t = np.linspace(0, 2 * math.pi, n_pts, endpoint=False)
    amp = rng.normal(0.0, irregularity, size=(n, len(_HARMONICS))) / _HARMONICS
    phase = rng.uniform(0, 2 * math.pi, size=(n, len(_HARMONICS)))
    wobble = np.cos(_HARMONICS[None, :, None] * t[None, None, :] + phase[:, :, None])
    r = radius_um[:, None] * np.clip(1 + (amp[:, :, None] * wobble).sum(axis=1), 0.3, None)
    y = centre_um[:, :1] + r * np.sin(t)
    x = centre_um[:, 1:] + r * np.cos(t)
    seg = np.hypot(np.roll(y, -1, axis=1) - y, np.roll(x, -1, axis=1) - x)
    return y, x, seg


def _puncta(rng: np.random.Generator, s: Structures, field_um: float, canvas: _Canvas) -> None:
    """Gaussian spots integrated exactly over pixels (products of erf differences)."""
    n = int(rng.poisson(s.puncta_density * field_um**2))
    if n == 0:
        return
    px = canvas.pixel_um
    cy, cx = rng.uniform(0, field_um, size=(2, n)) / px  # pixel i covers [i, i + 1)
    sigma = np.maximum(_uniform(rng, s.punctum_sigma_nm, n) * 1e-3 / px, 1e-3)
    brightness = _uniform(rng, s.punctum_brightness, n)
    off = np.arange(-math.ceil(4 * float(sigma.max())), math.ceil(4 * float(sigma.max())) + 1)
    z = math.sqrt(2.0) * sigma[:, None]

    def profile(c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        idx = np.floor(c).astype(np.int64)[:, None] + off[None, :]
        w = 0.5 * (erf((idx + 1 - c[:, None]) / z) - erf((idx - c[:, None]) / z))
        return idx, w

    iy, wy = profile(cy)
    ix, wx = profile(cx)
    ok = ((iy >= 0) & (iy < canvas.n))[:, :, None] & ((ix >= 0) & (ix < canvas.n))[:, None, :]
    flat = iy[:, :, None] * canvas.n + ix[:, None, :]
    w = brightness[:, None, None] * wy[:, :, None] * wx[:, None, :]
    canvas.indexed(flat[ok], w[ok])


def _vesicles(rng: np.random.Generator, s: Structures, field_um: float, canvas: _Canvas) -> None:
    n = int(rng.poisson(s.vesicle_density * field_um**2))
    if n == 0:
        return
    centre = rng.uniform(0, field_um, size=(n, 2))
    radius = _uniform(rng, s.vesicle_radius_nm, n) * 1e-3
    brightness = _uniform(rng, s.vesicle_brightness, n)
    y, x, seg = _closed_curves(rng, centre, radius, s.irregularity, canvas.step_um)
    canvas.points(y, x, brightness[:, None] * seg)


def _cell(rng: np.random.Generator, s: Structures, field_um: float, canvas: _Canvas) -> None:
    """Membrane outline and/or nucleus around one cell centre near the field."""
    has_membrane = rng.random() < s.membrane_probability
    has_nucleus = rng.random() < s.nucleus_probability
    centre = rng.uniform(-0.25 * field_um, 1.25 * field_um, size=(1, 2))
    ds = canvas.step_um
    if has_membrane:
        radius = _uniform(rng, s.membrane_radius_um, 1)
        brightness = _uniform(rng, s.membrane_brightness, 1)
        y, x, seg = _closed_curves(rng, centre, radius, s.irregularity, ds)
        canvas.points(y, x, brightness[:, None] * seg)
    if has_nucleus:
        radius = _uniform(rng, s.nucleus_radius_um, 1)
        nuc_centre = centre + rng.normal(0.0, 0.1 * float(radius[0]), size=(1, 2))
        y, x, seg = _closed_curves(rng, nuc_centre, radius, s.irregularity / 2, ds)
        envelope = _uniform(rng, s.nucleus_envelope_brightness, 1)
        canvas.points(y, x, envelope[:, None] * seg)
        if s.nucleus_fill > 0:
            canvas.fill_polygon(y[0], x[0], s.nucleus_fill)


def render_structures(
    structures: Structures,
    size_px: int,
    pixel_nm: float,
    rng: np.random.Generator,
    *,
    oversample: int = 4,
) -> np.ndarray:
    """Render a random ``size_px`` x ``size_px`` ground truth: float32 dye amount per pixel.

    The field is ``size_px · pixel_nm`` wide. Curves are sampled every ``pixel/(2·oversample)``,
    areas on an ``oversample`` x finer grid, puncta integrated analytically; all are integrated
    over each pixel. Deterministic for a given ``rng`` state; draws only from ``rng``.
    """
    pixel_um = pixel_nm * 1e-3
    field_um = size_px * pixel_um
    canvas = _Canvas(size_px, pixel_um, oversample)
    _cell(rng, structures, field_um, canvas)
    _filaments(rng, structures, field_um, canvas)
    _vesicles(rng, structures, field_um, canvas)
    _puncta(rng, structures, field_um, canvas)
    return canvas.render()
