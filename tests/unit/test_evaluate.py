"""evaluate(): wiring, scaling conventions, JSON round trip, validation, invariances."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage as ndi
from skimage.draw import disk

from cyclesr_deploy.errors import InputError
from cyclesr_deploy.metrics import (
    QualityReport,
    bgstd,
    cuf,
    decorrelation,
    evaluate,
    frc,
    psnr,
    ssim,
)
from cyclesr_deploy.normalization import scale_to_unit


@pytest.fixture
def cells(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """uint8 GT with two bright blobs on a dark background; two noisy blurred 'predictions'."""
    gt = np.zeros((256, 256))
    gt[disk((90, 100), 35)] = 1
    gt[disk((170, 170), 25)] = 0.7
    gt = ndi.gaussian_filter(gt + 0.3 * ndi.gaussian_filter(rng.random(gt.shape), 1), 1.5)
    gt8 = (gt / gt.max() * 220).astype(np.uint8)

    def pred() -> np.ndarray:
        p = ndi.gaussian_filter(gt8.astype(float), 1) + 12 + rng.normal(0, 4, gt.shape)
        return np.clip(p, 0, 255).astype(np.uint8)

    return pred(), gt8, pred()


def test_report_matches_the_individual_metrics(cells):
    p, g, rep = cells
    r = evaluate(p, g, pixel_size=0.05, prediction_repeat=rep)
    ps, gs = scale_to_unit(p, g, "gt")
    pc, gc = scale_to_unit(p, g, "care")
    assert r.scaling == "gt" and r.shape == (256, 256) and r.pixel_size == 0.05
    assert r.psnr == pytest.approx(psnr(ps, gs))
    assert r.ssim == pytest.approx(ssim(ps, gs))
    assert r.ssim_skimage == pytest.approx(ssim(ps, gs, convention="skimage"))
    assert r.psnr_care == pytest.approx(psnr(pc, gc))
    assert r.ssim_care == pytest.approx(ssim(pc, gc))
    assert r.bgstd == pytest.approx(bgstd(ps, gs, data_range=1.0))
    assert r.bgstd_zero_filled == pytest.approx(bgstd(ps, gs, data_range=1.0, zero_filled=True))
    assert 0.3 < r.background_fraction < 0.95
    assert r.cuf_ring_index == pytest.approx(cuf(ps).ring_index)
    assert r.cuf_ring_index_gt == pytest.approx(cuf(gs).ring_index)
    d = decorrelation(ps, pixel_size=0.05)
    assert r.decorrelation_kc_max == d.kc_max and r.decorrelation_resolution == d.resolution
    f = frc(p, rep, pixel_size=0.05)
    assert r.frc_cutoff == f.cutoff and r.frc_resolution == pytest.approx(f.resolution)


def test_dtype_scaling_uses_uint8_as_is(cells):
    p, g, _ = cells
    r = evaluate(p, g, scaling="dtype")
    assert r.psnr == pytest.approx(psnr(p / 255, g / 255))
    assert r.bgstd == pytest.approx(bgstd(p, g))
    assert r.frc_cutoff is None and r.frc_resolution is None and r.decorrelation_resolution is None


def test_json_round_trip_keeps_infinity(cells):
    _, g, _ = cells
    r = evaluate(g, g)
    assert r.psnr == math.inf and r.ssim == pytest.approx(1.0)
    text = r.model_dump_json()
    assert json.loads(text)["psnr"] == "Infinity"
    back = QualityReport.model_validate_json(text)
    assert back.psnr == math.inf and back == r


def test_rows_cover_the_report(cells):
    p, g, rep = cells
    r = evaluate(p, g, prediction_repeat=rep)
    rows = r.rows()
    assert all(len(row) == 4 and row[0] for row in rows)
    values = dict((name, value) for name, value, *_ in rows)
    assert values["PSNR"] == r.psnr and values["FRC cut-off"] == r.frc_cutoff
    assert ("SSIM", r.ssim) in [(n, v) for n, v, *_ in rows]


def test_validation_names_arguments(cells):
    p, g, _ = cells
    with pytest.raises(InputError, match="prediction has shape"):
        evaluate(p[:, :200], g)
    with pytest.raises(InputError, match="ground_truth: expected a 2-D"):
        evaluate(p, np.stack([g, g], axis=-1))
    bad = p.astype(float)
    bad[1, 2] = np.inf
    with pytest.raises(InputError, match="prediction: contains 1 non-finite"):
        evaluate(bad, g)
    with pytest.raises(InputError, match="prediction_repeat has shape"):
        evaluate(p, g, prediction_repeat=p[:100])
    with pytest.raises(InputError, match="scaling"):
        evaluate(p, g, scaling="minmax")
    with pytest.raises(InputError, match="pixel_size"):
        evaluate(p, g, pixel_size=-1.0)
    with pytest.raises(InputError, match="ground_truth: needs at least 48"):
        evaluate(p[:40, :40], g[:40, :40])


@settings(max_examples=8, deadline=None, derandomize=True)
@given(a=st.floats(0.1, 50), b=st.floats(-50, 50), seed=st.integers(0, 1000))
def test_gt_scaling_is_invariant_to_a_common_affine_map(a, b, seed):
    rng = np.random.default_rng(seed)
    g = ndi.gaussian_filter(rng.random((64, 64)), 2)
    p = g + rng.normal(0, 0.01, g.shape)
    r1, r2 = evaluate(p, g), evaluate(a * p + b, a * g + b)
    for key in ("psnr", "ssim", "ssim_skimage", "mse", "cuf_ring_index"):
        assert getattr(r2, key) == pytest.approx(getattr(r1, key), rel=1e-6, abs=1e-9), key
    for key in ("psnr_care", "ssim_care"):  # CSBDeep-style float32 normalisation
        assert getattr(r2, key) == pytest.approx(getattr(r1, key), rel=1e-4), key
    assert r2.decorrelation_kc_max == pytest.approx(r1.decorrelation_kc_max, abs=0.03)


def test_row_names_are_unique(cells):
    p, g, _ = cells
    names = [row[0] for row in evaluate(p, g).rows()]
    assert len(names) == len(set(names))
