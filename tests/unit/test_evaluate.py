"""evaluate(): wiring, known answers through it, scaling conventions and their guards, JSON
round trip, validation, properties."""

from __future__ import annotations

import itertools
import json
import math
import re
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage as ndi
from skimage.draw import disk

from cyclesr_deploy.errors import InputError
from cyclesr_deploy.metrics import (
    QualityReport,
    background_mask,
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
    assert r.bgstd == pytest.approx(bgstd(ps, gs, data_range=1.0, quantize=False))
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
    conventions = {name: conv for name, _, _, conv in rows}
    assert "unclipped float" in conventions["BGSTD"]
    assert (
        "uint8 as paper"
        in dict((name, conv) for name, _, _, conv in evaluate(p, g, scaling="dtype").rows())[
            "BGSTD"
        ]
    )
    assert "clipped+truncated uint8" in conventions["BGSTD (paper)"]
    assert (
        "ImageJ" in conventions["decorrelation A0"] and "MATLAB" in conventions["decorrelation A0"]
    )
    assert "min/max if sparse" in conventions["PSNR (CARE)"]


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


@settings(max_examples=10, deadline=None, derandomize=True)
@given(a=st.floats(0.05, 50), b=st.floats(-50, 50), seed=st.integers(0, 1000))
def test_care_scaling_undoes_any_positive_affine_map_of_the_prediction(a, b, seed):
    """pred = a * gt + b is a perfect prediction up to its intensity scale: "care" fits a and b
    away (psnr_care stays high whatever a > 0, b), while "gt" scaling keeps them and is hurt."""
    rng = np.random.default_rng(seed)
    g = ndi.gaussian_filter(rng.random((64, 64)), 2)
    r = evaluate(a * g + b, g, scaling="care")
    assert r.psnr_care > 90 and r.psnr == r.psnr_care  # float32 rounding: ~110-145 dB, not inf
    assert r.ssim_care == pytest.approx(1.0, abs=1e-5)
    assert r.decorrelation_kc_max == pytest.approx(evaluate(g, g).decorrelation_kc_max_gt, abs=0.03)
    if abs(a - 1) > 0.1 or abs(b) > 0.1:
        assert evaluate(a * g + b, g).psnr < 30


@settings(max_examples=10, deadline=None, derandomize=True)
@given(
    sigmas=st.lists(st.floats(0.005, 0.1), min_size=2, max_size=4, unique=True),
    scaling=st.sampled_from(["gt", "care", "dtype"]),
    seed=st.integers(0, 1000),
)
def test_fidelity_falls_as_noise_rises(sigmas, scaling, seed):
    """The same noise pattern at growing amplitude: PSNR and SSIM strictly fall, MSE rises; so
    does BGSTD under "gt" (unclipped float; "care" shrinks a noisier prediction's fitted scale,
    "dtype" clips)."""
    rng = np.random.default_rng(seed)
    g = np.full((64, 64), 0.2)
    g[disk((32, 32), 12)] = 0.8
    g = ndi.gaussian_filter(g, 1.5)
    noise = rng.standard_normal(g.shape)
    reports = [evaluate(g + s * noise, g, scaling=scaling) for s in sorted(sigmas)]
    for lo, hi in itertools.pairwise(reports):
        assert hi.psnr < lo.psnr and hi.mse > lo.mse and hi.ssim < lo.ssim
        if scaling == "gt":
            assert hi.bgstd > lo.bgstd


def test_row_names_are_unique(cells):
    p, g, _ = cells
    names = [row[0] for row in evaluate(p, g).rows()]
    assert len(names) == len(set(names))


# --- known answers through evaluate (not only through the helpers) ---------------------------


def test_dtype_float_offset_known_answer(rng):
    gt = rng.random((64, 64)) * 0.9
    r = evaluate(gt + 0.1, gt, scaling="dtype")
    assert r.psnr == pytest.approx(20.0, abs=1e-9)
    assert r.mse == pytest.approx(0.01, rel=1e-12)


def test_dtype_uint8_disk_known_answer(rng):
    """test_bgstd's disk through evaluate: background 30 + N(0, 5^2), uint8 taken as is."""
    gt = np.zeros((256, 256), np.uint8)
    gt[disk((128, 128), 40)] = 200
    pred = np.clip(gt + 30 + rng.normal(0, 5, gt.shape), 0, 255).astype(np.uint8)
    r = evaluate(pred, gt, scaling="dtype")
    assert r.bgstd == pytest.approx(5.02, abs=0.1)  # 5.00 with this seed
    assert r.bgstd_zero_filled == pytest.approx(10.5, abs=0.15)  # 10.51
    assert r.background_fraction == pytest.approx(0.885, abs=0.002)  # 0.8852


@pytest.mark.parametrize("scaling", ["gt", "care"])
def test_bgstd_keeps_the_noise_below_the_gt_minimum(rng, scaling):
    """GT background 20 (its minimum) with a disk at 200; prediction = GT + N(0, 5^2) in raw units:
    the background noise is 5 * 255 / 180 = 7.08 grey levels of the GT-scaled image. Clipping the
    scaled prediction at 0 and truncating it to 8 bit (before the fix) gave 3.96."""
    gt = np.full((256, 256), 20.0)
    gt[disk((128, 128), 40)] = 200
    pred = gt + rng.normal(0, 5, gt.shape)
    r = evaluate(pred, gt, scaling=scaling)
    expect = 5 * 255 / 180
    # "care" fits the prediction to the GT by least squares, which shrinks it by
    # var(gt) / (var(gt) + 25) ~ 0.99
    assert r.bgstd == pytest.approx(expect, rel=0.01 if scaling == "gt" else 0.02)
    bg = background_mask(gt, data_range=gt.max())
    assert r.bgstd == pytest.approx(pred[bg].std() * 255 / 180, rel=0.02)
    # the paper's zero-filled number keeps its clipped uint8 definition
    ps, gs = scale_to_unit(pred, gt, scaling)
    assert r.bgstd_zero_filled == bgstd(ps, gs, data_range=1.0, zero_filled=True)
    assert r.bgstd_zero_filled < 4.0


def _scene(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    g = np.zeros(shape)
    g[disk((shape[0] // 2, shape[1] // 3), min(shape) // 5, shape=shape)] = 1
    g[disk((shape[0] // 3, 3 * shape[1] // 4), min(shape) // 7, shape=shape)] = 0.6
    g = ndi.gaussian_filter(g, 1.5) * 0.8 + 0.05
    return np.clip(g + rng.normal(0, 0.02, shape), 0, 1), g


@pytest.mark.parametrize("shape", [(96, 160), (160, 96)])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32, np.float64])
@pytest.mark.parametrize("scaling", ["gt", "care", "dtype"])
def test_non_square_and_every_dtype_give_finite_values(shape, dtype, scaling):
    p, g = _scene(shape)
    if np.dtype(dtype).kind == "u":
        top = np.iinfo(dtype).max
        p, g = (p * top).astype(dtype), (g * top).astype(dtype)
    else:
        p, g = p.astype(dtype), g.astype(dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # data using the dtype's range: no "dtype" warning
        r = evaluate(p, g, scaling=scaling, pixel_size=0.1, prediction_repeat=p[::-1].copy())
    assert r.shape == shape
    values = {k: v for k, v in r.model_dump().items() if isinstance(v, float)}
    assert len(values) == 23  # all but shape and scaling
    assert all(math.isfinite(v) for v in values.values()), values
    assert 25 < r.psnr < 40 and 0.5 < r.background_fraction < 0.8


# --- scaling guards ---------------------------------------------------------------------------


def test_dtype_scaling_rejects_floats_that_are_not_in_0_1(cells):
    p, g, _ = cells
    with pytest.raises(InputError, match=r"prediction: scaling='dtype'.*\[0, 1\].*scaling='gt'"):
        evaluate(p.astype(np.float64), g / 255, scaling="dtype")
    with pytest.raises(InputError, match=r"ground_truth: scaling='dtype'.*scaling='gt'"):
        evaluate(p / 255, g.astype(np.float32), scaling="dtype")
    # the same 0..255 floats are fine with the GT's range
    assert evaluate(p.astype(np.float64), g.astype(np.float64)).psnr > 20
    # a little over- and undershoot of an unclamped float prediction is accepted
    over = (p / 255) * 1.3 - 0.1
    assert math.isfinite(evaluate(over, g / 255, scaling="dtype").psnr)


def test_dtype_scaling_warns_when_the_dtype_range_is_mostly_unused(cells):
    p, g, _ = cells
    p12, g12 = p.astype(np.uint16) * 16, g.astype(np.uint16) * 16  # 12-bit data in uint16
    with pytest.warns(UserWarning) as record:
        r = evaluate(p12, g12, scaling="dtype")
    messages = sorted(str(w.message) for w in record)
    assert len(messages) == 2
    for name, msg in zip(("ground_truth", "prediction"), messages, strict=True):
        assert re.match(rf"{name}: .*uint16.*inflates PSNR/SSIM.*'gt'", msg), msg
    assert record[0].filename == __file__  # points at the caller of evaluate
    # the unused range is the inflation: +24 dB (16x) against the same data under "gt"
    assert r.psnr > evaluate(p12, g12).psnr + 20
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        evaluate(p12, g12)  # "gt": no warning
        evaluate(p, g, scaling="dtype")  # uint8 using its range: no warning


def test_care_scaling_survives_a_sparse_ground_truth():
    """8 bright 2x2 puncta on 0 (32 px < 0.1 % of 256^2): the 0.1 and 99.9 % percentiles are both
    0, so the CSBDeep normalisation divides by eps = 1e-20; before the min/max fall-back a
    near-perfect prediction scored psnr_care -400 dB (-10 dB with a faint noisy background)."""
    rng = np.random.default_rng(5)
    gt = np.zeros((256, 256))
    for y, x in rng.integers(10, 246, (8, 2)):
        gt[y : y + 2, x : x + 2] = 1000
    pred = gt + rng.normal(0, 1, gt.shape)  # noise 0.1 % of the peak: ~60 dB
    for g in (gt, gt + rng.normal(0, 0.05, gt.shape)):
        r = evaluate(pred, g)
        assert r.psnr_care == pytest.approx(60.0, abs=0.5)
        assert r.ssim_care > 0.99
        assert r.psnr_care == pytest.approx(r.psnr, abs=0.5)  # min/max: "care" ~ "gt" here


def test_bool_images_are_rejected(cells):
    p, g, _ = cells
    with pytest.raises(InputError, match="ground_truth: expected a numeric image, got dtype bool"):
        evaluate(p, g > 100)
    with pytest.raises(InputError, match="prediction: expected a numeric image"):
        evaluate(p > 100, g)
