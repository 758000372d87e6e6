"""Image formation: PSF blur, background, binning, photon and read noise, quantisation, and the
optional interpolation of a binned LR image back onto the HR grid.

Order of operations for one modality (signal normalised so its brightest HR-grid pixel is 1):

1. expected photons per HR-grid pixel ``λ = photons · (signal + background)``;
2. binning ``b``: sum of ``b x b`` HR-grid pixels (the LR detector pixel is ``b`` times larger,
   so it collects up to ``b²`` times the photons);
3. counts ``Poisson(λ) + Normal(0, read_noise²)`` (electrons; read noise once per detector pixel);
4. digital values ``clip(round(counts · gain), 0, 2^bits - 1)`` with ``gain`` from
   :meth:`SynthConfig.gain` (the expected peak lands at ``peak_fraction`` of full scale);
5. ``lr_grid="hr"`` only: the digital LR image is resized to the HR grid with
   ``skimage.transform.resize(order=3)`` (cubic spline, ``mode="reflect"``, no anti-aliasing,
   since this enlarges), then rounded and clipped to the same integer type.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter
from skimage.transform import resize

from cyclesr_deploy.errors import InputError
from cyclesr_deploy.synthetic.config import Modality


def blur(image: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gaussian PSF blur (sigma in pixels), float32, zero outside the array, kernel cut at 4sigma.

    Applied to the pixel-integrated ground truth: pixel integration and blur commute, so this
    samples the blurred, pixel-integrated intensity (accurate for sigma ≳ 1 px).
    """
    return gaussian_filter(
        np.asarray(image, dtype=np.float32), float(sigma_px), mode="constant", truncate=4.0
    )


def bin_sum(image: np.ndarray, b: int) -> np.ndarray:
    """Sum ``b x b`` blocks (shape must be divisible by ``b``)."""
    if b == 1:
        return image
    h, w = image.shape
    if h % b or w % b:
        raise InputError(f"binning {b} does not divide the image shape {image.shape}")
    return image.reshape(h // b, b, w // b, b).sum(axis=(1, 3))


def expected_photons(signal: np.ndarray, modality: Modality, binning: int = 1) -> np.ndarray:
    """Expected photo-electrons per detector pixel (float64) for a peak-normalised ``signal``."""
    lam = modality.photons * (np.asarray(signal, dtype=np.float64) + modality.background)
    return bin_sum(lam, binning)


def add_noise(lam: np.ndarray, read_noise: float, rng: np.random.Generator) -> np.ndarray:
    """Poisson photon noise plus Gaussian read noise (sigma = ``read_noise`` e⁻), float64."""
    counts = rng.poisson(lam).astype(np.float64)
    if read_noise > 0:
        counts += rng.normal(0.0, read_noise, size=counts.shape)
    return counts


def quantise(values: np.ndarray, gain: float, bit_depth: int) -> np.ndarray:
    """``clip(round(values · gain), 0, 2^bits - 1)`` as uint8 or uint16."""
    if bit_depth not in (8, 16):
        raise InputError(f"bit_depth: expected 8 or 16, got {bit_depth!r}")
    top = 2**bit_depth - 1
    dtype = np.uint8 if bit_depth == 8 else np.uint16
    return np.clip(np.rint(values * gain), 0, top).astype(dtype)


def to_hr_grid(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Interpolate an integer LR image onto the HR grid (cubic spline), same dtype."""
    out = resize(
        image.astype(np.float64),
        shape,
        order=3,
        mode="reflect",
        anti_aliasing=False,
        preserve_range=True,
    )
    info = np.iinfo(image.dtype)
    return np.clip(np.rint(out), info.min, info.max).astype(image.dtype)
