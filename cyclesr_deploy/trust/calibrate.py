"""Calibrate a model's trust score on frames of its training domain (``cyclesr export trust``).

Every frame goes through the one frame runner (the settings ``cyclesr enhance`` would use), its
statistics are collected, the LR-from-HR blur ``sigma`` is fitted (the one that best explains
the inputs from the outputs, :data:`SIGMAS`), and the robust centre and spread of every
statistic are stored in ``trust.json`` with the weights' sha256. The threshold is the
calibration frames' own ``FALSE_ALARM`` quantile of trust (at most ``ALPHA``), so about that
fraction of in-domain frames is flagged.

Calibrate on frames of several sizes and contents of the training domain, held out from
training (:func:`synthetic_frames` draws them for a synthetic recipe): the statistics are
size-independent by construction (:mod:`.features`), but their spread is learnt from these
frames only.
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
from cyclesr_deploy.trust.calibration import TrustCalibration, tied_digests
from cyclesr_deploy.trust.features import InputStats, input_stats, output_stats
from cyclesr_deploy.trust.score import SIDES, TrustScorer, robust_stats

log = logging.getLogger(__name__)

SIGMAS = tuple(np.round(np.arange(0.0, 6.01, 0.5), 2))
MIN_FRAMES = 8
ALPHA = 0.01  # the highest threshold: a frame below 1 % normal-tail trust is untrusted
FALSE_ALARM = 0.01  # target rate of flagged calibration frames
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
    from cyclesr_deploy.synthetic.config import as_config
    from cyclesr_deploy.synthetic.simulate import simulate_sample

    base = dict(recipe or {})
    for i in range(n):
        cfg = as_config(base | {"size": sizes[i % len(sizes)], "seed": seed + i})
        yield simulate_sample(cfg, np.random.SeedSequence(seed + i), gt=False, hr=False)["lr"]


def _fit_sigma(pairs: list[tuple[InputStats, np.ndarray]], mapping, scale: int) -> float:
    best, best_cost = 0.0, np.inf
    for s in SIGMAS:
        cost = float(
            np.median(
                [
                    output_stats(st, y, mapping.low_out, mapping.high_out, float(s), scale)[
                        "consistency"
                    ]
                    for st, y in pairs
                ]
            )
        )
        if cost < best_cost:
            best, best_cost = float(s), cost
    return best


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
    cfg = (cfg or EnhanceConfig()).model_copy(update={"trust": False})  # unscored: renewals
    engine, model = open_model(folder.path, backend, cfg, precision=precision)
    pairs: list[tuple[InputStats, np.ndarray]] = []
    with engine:
        runner = FrameRunner(engine, model, cfg)
        m = runner.mapping
        for frame in frames:
            frame = np.asarray(frame)
            if frame.ndim != 2:
                raise InputError(f"trust calibration: frames must be 2-D, got {frame.shape}")
            st = input_stats(frame, m.low_in, m.high_in)
            pairs.append((st, runner(frame)))
    if len(pairs) < MIN_FRAMES:
        raise InputError(
            f"trust calibration needs at least {MIN_FRAMES} in-domain frames, got {len(pairs)}"
        )
    scale = model.scale
    sigma = _fit_sigma(pairs, m, scale)
    draft = TrustCalibration(
        weights_sha256=tied_digests(folder),
        sigma=sigma,
        features={},
        threshold=ALPHA,
        n_frames=len(pairs),
        false_alarm_rate=0.0,
        data=data,
    )
    rows = []
    for st, y in pairs:
        values = st.scalars()
        values.update(output_stats(st, y, m.low_out, m.high_out, sigma, scale))
        rows.append(values)
    features = {k: robust_stats([r[k] for r in rows], SIDES[k]) for k in SIDES}
    scorer = TrustScorer(draft.model_copy(update={"features": features}), scale)
    scores = np.array([scorer.judge(r).score for r in rows])
    threshold = float(max(1e-6, min(ALPHA, np.quantile(scores, FALSE_ALARM))))
    cal = draft.model_copy(
        update={
            "features": features,
            "threshold": threshold,
            "false_alarm_rate": float(np.mean(scores < threshold)),
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
