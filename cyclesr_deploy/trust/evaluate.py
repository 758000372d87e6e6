"""How good is a trust score: did the model help or hurt a frame (against its truth), and the
score's ROC AUC for "hurt" vs "helped" (``benchmarks/ood_trust.py``, the trust tests).

Hand-written (one line why): sklearn is not a dependency; the AUC is the Mann-Whitney rank
statistic (scipy's ``rankdata`` gives tie-averaged ranks).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata

from cyclesr_deploy.errors import InputError
from cyclesr_deploy.metrics import psnr, ssim
from cyclesr_deploy.normalization import scale_to_unit

#: pixels at each edge left out of the comparison (blur borders of the truth)
BORDER = 8
#: the one definition of the labels (margins: smaller changes are noise, not help or harm):
#: hurt = PSNR gain < -HURT_DB or SSIM gain < -HURT_SSIM; helped = PSNR gain > +HELP_DB and
#: SSIM gain > +HELP_SSIM; anything else is neutral (counted, left out of the ROC AUC)
HURT_DB, HURT_SSIM = 0.1, 0.01
HELP_DB, HELP_SSIM = 0.1, 0.01
LABEL_RULE = (
    f"hurt = PSNR gain < -{HURT_DB} dB or SSIM gain < -{HURT_SSIM}; helped = PSNR gain > "
    f"+{HELP_DB} dB and SSIM gain > +{HELP_SSIM}; else neutral (not in the AUC). Output vs "
    f"input against the noise-free truth, CARE scaling, {BORDER} px border left out"
)


def label(psnr_gain: float, ssim_gain: float) -> str:
    """``hurt``, ``helped`` or ``neutral`` (:data:`LABEL_RULE`)."""
    if psnr_gain < -HURT_DB or ssim_gain < -HURT_SSIM:
        return "hurt"
    if psnr_gain > HELP_DB and ssim_gain > HELP_SSIM:
        return "helped"
    return "neutral"


@dataclass(frozen=True)
class Gain:
    """PSNR (dB) and SSIM of the input and of the output against the truth, CARE scaling (the
    truth percentile-normalised 0.1/99.9 %, each image affinely fitted to it, so an offset or
    gain is not an error); ``label``: hurt / helped / neutral (:data:`LABEL_RULE`)."""

    psnr_in: float
    psnr_out: float
    ssim_in: float
    ssim_out: float

    @property
    def psnr_gain(self) -> float:
        return self.psnr_out - self.psnr_in

    @property
    def ssim_gain(self) -> float:
        return self.ssim_out - self.ssim_in

    @property
    def label(self) -> str:
        return label(self.psnr_gain, self.ssim_gain)

    @property
    def hurt(self) -> bool:
        return self.label == "hurt"


def quality_gain(lr: np.ndarray, output: np.ndarray, truth: np.ndarray) -> Gain:
    """:class:`Gain` of ``output`` over ``lr`` against ``truth`` (same shape, scale-1 model)."""
    if not lr.shape == output.shape == truth.shape:
        raise InputError(
            f"shapes differ: lr {lr.shape}, output {output.shape}, truth {truth.shape}"
        )
    b = BORDER
    inner = (slice(b, -b), slice(b, -b))
    g = np.asarray(truth, np.float64)[inner]
    pi, gi = scale_to_unit(np.asarray(lr, np.float64)[inner], g, "care")
    po, go = scale_to_unit(np.asarray(output, np.float64)[inner], g, "care")
    return Gain(psnr(pi, gi), psnr(po, go), ssim(pi, gi), ssim(po, go))


def degrade(
    image: np.ndarray, rng: np.random.Generator, *, photons: float, background: float
) -> tuple[np.ndarray, np.ndarray]:
    """(lr uint16, truth) of a real image: the image (min-max to [0, 1]) blurred by the LR PSF of
    the simulator's default optics, ``background`` (fraction of the peak) added, Poisson noise
    at ``photons`` per peak pixel, the expected peak at 75 % of 16-bit full scale; truth = the
    image blurred by the default HR PSF (the benchmark's and the tests' own degradation)."""
    from scipy.ndimage import gaussian_filter

    from cyclesr_deploy.synthetic.config import SynthConfig

    optics = SynthConfig()
    x = np.asarray(image, np.float64)
    x = (x - x.min()) / max(float(np.ptp(x)), 1e-12)
    truth = gaussian_filter(x, optics.psf_sigma_px("hr"), mode="nearest")
    lam = photons * (gaussian_filter(x, optics.psf_sigma_px("lr"), mode="nearest") + background)
    counts = rng.poisson(lam).astype(np.float64)
    gain = 0.75 * 65535 / (photons * (1.0 + background))
    lr = np.clip(np.rint(counts * gain), 0, 65535).astype(np.uint16)
    return lr, truth.astype(np.float32)


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for the ``positive`` class (higher score = more
    likely positive): P(score of a positive > score of a negative), ties counted half.
    NaN when either class is empty."""
    s = np.asarray(scores, np.float64).ravel()
    y = np.asarray(positive, bool).ravel()
    if s.shape != y.shape:
        raise InputError(f"scores {s.shape} and labels {y.shape} differ in length")
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(s)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
