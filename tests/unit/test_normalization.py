"""Percentile normalisation, affine fit and the (prediction, GT) scaling modes."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cyclesr_deploy.errors import InputError
from cyclesr_deploy.normalization import normalize_to, percentile_normalize, scale_to_unit


def test_percentile_normalize_csbdeep_semantics(rng):
    x = rng.gamma(2.0, 50.0, (3, 40, 50))  # any dimensionality
    out = percentile_normalize(x)
    lo, hi = np.percentile(x, [3, 99.8])
    assert out.dtype == np.float32 and out.shape == x.shape
    np.testing.assert_allclose(out, (x - lo) / (hi - lo), rtol=1e-5, atol=1e-6)
    assert (out < 0).any() and (out > 1).any()  # not clipped by default
    clipped = percentile_normalize(x, 1, 99, clip=True)
    assert clipped.min() == 0 and clipped.max() == 1
    assert np.all(percentile_normalize(np.full((4, 4), 3.0)) == 0)  # eps: no NaN


def test_percentile_normalize_validation():
    with pytest.raises(InputError, match="x: contains 1 non-finite"):
        percentile_normalize(np.array([1.0, np.nan]))
    with pytest.raises(InputError, match="pmin, pmax"):
        percentile_normalize(np.ones(3), 50, 10)


def test_normalize_to_recovers_affine_map(rng):
    x = rng.random((32, 32))
    t = 3.0 * x - 2.0
    out = normalize_to(x, t)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, t, atol=1e-5)
    noisy = t + rng.normal(0, 0.3, t.shape)
    alpha, beta = np.polyfit(x.ravel(), noisy.ravel(), 1)
    np.testing.assert_allclose(normalize_to(x, noisy), alpha * x + beta, atol=1e-5)
    with pytest.raises(InputError, match="x has shape"):
        normalize_to(x, t[:, :5])


def test_scale_to_unit_modes(rng):
    g8 = rng.integers(10, 200, (16, 16), dtype=np.uint8)
    p16 = rng.integers(0, 65535, (16, 16), dtype=np.uint16)
    p, g = scale_to_unit(p16, g8, "dtype")
    np.testing.assert_allclose(g, g8 / 255)
    np.testing.assert_allclose(p, p16 / 65535)
    f = rng.random((16, 16))
    assert scale_to_unit(f, f, "dtype")[0] is not f  # a copy, values unchanged
    np.testing.assert_array_equal(scale_to_unit(f, f, "dtype")[0], f)

    p, g = scale_to_unit(g8.astype(float) * 2, g8, "gt")
    assert g.min() == 0 and g.max() == 1
    np.testing.assert_allclose(p, (2.0 * g8 - g8.min()) / (g8.max() - g8.min()))

    p, g = scale_to_unit(5 * g8.astype(float) + 7, g8, "care")
    np.testing.assert_allclose(p, g, atol=1e-5)  # affine fit undoes 5x + 7
    assert np.percentile(g, 0.1) == pytest.approx(0, abs=1e-6)
    assert np.percentile(g, 99.9) == pytest.approx(1, abs=1e-6)


def test_dtype_mode_guards(rng):
    f = rng.random((16, 16))
    with pytest.raises(InputError, match=r"prediction: scaling='dtype'.*spans \[0, 255\].*'gt'"):
        scale_to_unit(np.linspace(0, 255, 256).reshape(16, 16), f, "dtype")
    with pytest.raises(InputError, match="ground_truth: scaling='dtype'"):
        scale_to_unit(f, f - 0.6, "dtype")
    scale_to_unit(f * 1.5, f - 0.5, "dtype")  # the margin: [-0.5, 1.5] accepted
    u16 = (f * 4095).astype(np.uint16)
    with pytest.warns(UserWarning, match="ground_truth: .*uint16 maximum 65535.*peak at 40"):
        scale_to_unit(u16 * 16, u16, "dtype")
    i16 = (f * 8000 - 4000).astype(np.int16)  # signed: peak = max |x| ~ 4000 > 32767 / 16
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scale_to_unit(i16, u16 * 16, "dtype")
        scale_to_unit(np.full((4, 4), 16, np.uint8), np.full((4, 4), 16, np.uint8), "dtype")
    with pytest.warns(UserWarning, match="prediction: .*int16"):
        scale_to_unit(i16 // 4, u16 * 16, "dtype")


def test_care_mode_falls_back_to_min_max_for_a_sparse_gt(rng):
    g = np.zeros((100, 100))
    g[10, 10:15] = 7.0  # 5 of 10000 px: P0.1 = P99.9 = 0
    p, gn = scale_to_unit(g + rng.normal(0, 1e-3, g.shape), g, "care")
    np.testing.assert_allclose(gn, g / 7, atol=1e-6)
    np.testing.assert_allclose(p, gn, atol=1e-2)
    # a faint background spread: P99.9 - P0.1 = 6e-3 < 1e-3 * 7 still counts as sparse
    g2 = g + rng.uniform(0, 6e-3, g.shape)
    assert scale_to_unit(g2, g2, "care")[1].max() == pytest.approx(1.0, abs=1e-5)
    # a dense GT keeps the CSBDeep percentiles
    g3 = rng.random((100, 100))
    _, gn3 = scale_to_unit(g3, g3, "care")
    np.testing.assert_allclose(gn3, percentile_normalize(g3, 0.1, 99.9), atol=1e-7)


def test_bool_arrays_are_rejected():
    m = np.zeros((8, 8), bool)
    with pytest.raises(InputError, match="x: expected a numeric image, got dtype bool"):
        percentile_normalize(m)
    with pytest.raises(InputError, match="target: expected a numeric image"):
        normalize_to(np.ones((8, 8)), m)


def test_scale_to_unit_errors():
    with pytest.raises(InputError, match="mode"):
        scale_to_unit(np.ones((4, 4)), np.ones((4, 4)), "minmax")
    with pytest.raises(InputError, match="ground_truth: is constant"):
        scale_to_unit(np.ones((4, 4)), np.ones((4, 4)), "gt")
    with pytest.raises(InputError, match="prediction has shape"):
        scale_to_unit(np.ones((4, 3)), np.ones((4, 4)), "dtype")


@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    a=st.floats(0.01, 100),
    b=st.floats(-100, 100),
    seed=st.integers(0, 2**16),
)
def test_gt_and_care_modes_are_affine_invariant(a, b, seed):
    rng = np.random.default_rng(seed)
    g = rng.random((16, 16))
    p = g + rng.normal(0, 0.1, g.shape)
    ref_p, ref_g = scale_to_unit(p, g, "gt")
    new_p, new_g = scale_to_unit(a * p + b, a * g + b, "gt")
    np.testing.assert_allclose(new_p, ref_p, atol=1e-7)
    np.testing.assert_allclose(new_g, ref_g, atol=1e-7)
    care_p, _ = scale_to_unit(a * p + b, g, "care")
    np.testing.assert_allclose(care_p, scale_to_unit(p, g, "care")[0], atol=1e-4)
