"""Calibrate a model's trust score on frames of its training domain (``cyclesr export trust``).

Every frame goes through the one frame runner (the settings ``cyclesr enhance`` would use); only
the crops the statistics need are kept (never whole output frames). The LR-from-HR blur
``sigma`` is fitted (the one that best explains the inputs from the outputs, :data:`SIGMAS`),
and the robust centre and spread of every scored statistic (:data:`.score.SIDES`) are stored in
``trust.json`` with the sha256 of the files the outputs depend on, the backend and precision,
and every statistic of every calibration frame (``recorded``: for offline re-scoring).

Threshold (conformal): with n calibration frames and k = max(1, floor((n + 1) * FALSE_ALARM)),
a frame is untrusted when its trust is below both ``ALPHA`` and the k-th lowest trust of the
calibration frames. A fresh in-domain frame (exchangeable with the calibration frames) is then
flagged with probability at most k / (n + 1) (recorded as ``false_alarm_rate``; 1/25 = 4 % for
the default 24 frames), and no calibration frame is flagged by construction.

Calibrate on frames of several sizes and contents of the training domain, held out from
training, covering the recipe's variation (:func:`synthetic_frames` draws them for a synthetic
recipe, its ``vary`` included): the statistics are size-independent by construction
(:mod:`.features`), but their spread is learnt from these frames only.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from cyclesr_deploy import __version__
from cyclesr_deploy.errors import InputError
from cyclesr_deploy.io import atomic_path
from cyclesr_deploy.model import ModelFolder
from cyclesr_deploy.trust.calibration import TIED_WEIGHTS, TrustCalibration, tied_digests
from cyclesr_deploy.trust.features import InputStats, crop_stats, input_stats, output_crops
from cyclesr_deploy.trust.score import FLOORS, SIDES, STATISTICS, TrustScorer, finite, robust_stats

log = logging.getLogger(__name__)

SIGMAS = tuple(np.round(np.arange(0.0, 6.01, 0.5), 2))
MIN_FRAMES = 8
ALPHA = 0.01  # the highest threshold: a frame below 1 % normal-tail trust is untrusted
FALSE_ALARM = 0.02  # conformal level: at most this fraction of in-domain frames flagged
#: fresh seeds of synthetic calibration frames (never the reference models' training seeds)
CALIBRATION_SEED = 71_000
CALIBRATION_SIZES = (256, 512, 1024)


def synthetic_frames(
    recipe: Mapping | None = None,
    n: int = 24,
    sizes: tuple[int, ...] = CALIBRATION_SIZES,
    seed: int = CALIBRATION_SEED,
) -> Iterator[np.ndarray]:
    """``n`` LR frames of the synthetic ``recipe`` (a ``SynthConfig`` mapping; None: the
    ``cyclesr synth`` defaults), seeds ``seed``, ``seed + 1``, ..., sides cycling through
    ``sizes``: calibration frames of a model trained on that recipe."""

    for i in range(n):
        yield synthetic_sample(recipe, seed + i, sizes[i % len(sizes)])[0]


def synthetic_sample(
    recipe: Mapping | None, seed: int, size: int, truth: bool = False
) -> tuple[np.ndarray, np.ndarray | None]:
    """(lr, truth or None) of one simulated sample of ``recipe`` (seed ``seed``, side ``size``):
    truth = the noise-free HR image (the simulator's ground truth blurred by its HR PSF)."""
    from scipy.ndimage import gaussian_filter

    from cyclesr_deploy.synthetic.config import as_config
    from cyclesr_deploy.synthetic.simulate import simulate_sample

    cfg = as_config(dict(recipe or {}) | {"size": size, "seed": seed})
    parts = simulate_sample(cfg, np.random.SeedSequence(seed), gt=truth, hr=False)
    if not truth:
        return parts["lr"], None
    gt = gaussian_filter(parts["gt"], cfg.psf_sigma_px("hr"), mode="nearest")
    return parts["lr"], gt.astype(np.float32)


def _fit_sigma(pairs: list[tuple[InputStats, list[np.ndarray]]], scale: int) -> float:
    best, best_cost = 0.0, np.inf
    for s in SIGMAS:
        cost = float(
            np.median([crop_stats(st, c, float(s), scale)["unexplained"] for st, c in pairs])
        )
        if cost < best_cost:
            best, best_cost = float(s), cost
    return best


def conformal_threshold(scores: np.ndarray) -> tuple[float, float]:
    """(threshold, false-alarm bound k / (n + 1)) of calibration trust ``scores`` (module
    docstring): just below the k-th lowest score, at most ALPHA."""
    s = np.sort(np.asarray(scores, np.float64))
    k = max(1, int(np.floor((len(s) + 1) * FALSE_ALARM)))
    kth = float(s[k - 1])
    threshold = min(ALPHA, np.nextafter(kth, 0.0)) if kth > 0 else 0.0
    return float(max(threshold, 1e-300)), k / (len(s) + 1)


def calibrate(
    model_dir: str | Path,
    frames: Iterable[np.ndarray],
    *,
    data: str,
    backend: str = "auto",
    precision: str = "default",
    cfg=None,
) -> TrustCalibration:
    """Run ``model_dir`` over ``frames`` (2-D arrays of its training domain, ideally held out
    from training), write ``trust.json`` (atomically) and return it. ``data`` says where the
    frames came from (recorded)."""
    from cyclesr_deploy.builtin import resolve_model
    from cyclesr_deploy.runtime.enhancer import open_model
    from cyclesr_deploy.runtime.runner import EnhanceConfig, FrameRunner

    folder = ModelFolder(resolve_model(model_dir))
    digests = tied_digests(folder)
    if not any(n in digests for n in TIED_WEIGHTS):
        raise InputError(
            f"trust calibration: {folder.path} has no weights to tie a calibration to "
            f"(none of {', '.join(TIED_WEIGHTS)})"
        )
    cfg = (cfg or EnhanceConfig()).model_copy(update={"trust": False})  # unscored: renewals
    engine, model = open_model(folder.path, backend, cfg, precision=precision)
    pairs: list[tuple[InputStats, list[np.ndarray]]] = []
    with engine:
        runner = FrameRunner(engine, model, cfg)
        m = runner.mapping
        for frame in frames:
            frame = np.asarray(frame)
            if frame.ndim != 2:
                raise InputError(f"trust calibration: frames must be 2-D, got {frame.shape}")
            st = input_stats(frame, m.low_in, m.high_in)
            if not st.scored:
                raise InputError(f"trust calibration: frame {frame.shape} too small to score")
            y = runner(frame)
            pairs.append((st, output_crops(st, y, m.low_out, m.high_out, model.scale)))
            del y  # only the crops are kept
        ran = engine.name
    if len(pairs) < MIN_FRAMES:
        raise InputError(
            f"trust calibration needs at least {MIN_FRAMES} in-domain frames, got {len(pairs)}"
        )
    scale = model.scale
    sigma = _fit_sigma(pairs, scale)
    draft = TrustCalibration(
        weights_sha256=digests,
        sigma=sigma,
        features={},
        threshold=ALPHA,
        n_frames=len(pairs),
        false_alarm_rate=0.0,
        data=data,
        backend=ran,
        precision=precision,
    )
    rows = []
    for st, c in pairs:
        values = st.scalars()
        values.update(crop_stats(st, c, sigma, scale))
        rows.append(values)
    features = {k: robust_stats([r[k] for r in rows], SIDES[k], FLOORS.get(k)) for k in SIDES}
    scorer = TrustScorer(draft.model_copy(update={"features": features}), scale)
    scores = np.array([scorer.judge(r).score for r in rows])
    threshold, bound = conformal_threshold(scores)
    recorded = {k: [finite(float(r[k])) for r in rows] for k in STATISTICS}
    cal = draft.model_copy(
        update={
            "features": features,
            "threshold": threshold,
            "false_alarm_rate": bound,
            "recorded": recorded,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "version": __version__,
        }
    )
    with atomic_path(folder.trust_json) as part:
        part.write_text(json.dumps(cal.model_dump(mode="json"), indent=1) + "\n", encoding="utf-8")
    log.info(
        "trust calibration: %d frames, sigma %.2f px, threshold %.3g -> %s",
        len(pairs),
        sigma,
        threshold,
        folder.trust_json,
    )
    return cal
