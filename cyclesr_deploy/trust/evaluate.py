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


@dataclass(frozen=True)
class Gain:
    """PSNR (dB) and SSIM of the input and of the output against the truth, CARE scaling (the
    truth percentile-normalised 0.1/99.9 %, each image affinely fitted to it, so an offset or
    gain is not an error); ``hurt``: the output is worse than its input by either measure."""

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
    def hurt(self) -> bool:
        """The one definition of a frame the model hurt: PSNR gain < 0 or SSIM gain < 0."""
        return self.psnr_gain < 0 or self.ssim_gain < 0


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
