"""The synthetic time-lapse: drift, bleaching, noise per frame, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from cyclesr_deploy.errors import InputError
from cyclesr_deploy.synthetic import SynthConfig
from cyclesr_deploy.synthetic.timeseries import simulate_time_series

CFG = SynthConfig(size=128, seed=3)


def test_shapes_types_and_determinism():
    a = simulate_time_series(CFG, 3)
    b = simulate_time_series(CFG, 3)
    assert a.lr.shape == a.hr.shape == a.gt.shape == (3, 128, 128)
    assert a.lr.dtype == a.hr.dtype == np.uint16 and a.gt.dtype == np.float32
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    c = simulate_time_series(CFG, 3, rng_or_seed=4)
    assert not np.array_equal(a.lr, c.lr)


def test_truth_drifts_by_whole_pixels_and_bleaches():
    ts = simulate_time_series(CFG, 3, drift_px=(2, 1), bleach_per_frame=0.1)
    # frame t+1 sees the field shifted by (2, 1): its truth at (y, x) is frame t's at (y+2, x+1)
    np.testing.assert_allclose(ts.gt[1][:-2, :-1], 0.9 * ts.gt[0][2:, 1:], rtol=1e-5, atol=1e-6)
    means = ts.hr.reshape(3, -1).mean(axis=1)
    assert means[0] > means[1] > means[2]


def test_each_frame_has_its_own_noise():
    ts = simulate_time_series(CFG, 2, drift_px=(0, 0), bleach_per_frame=0.0)
    np.testing.assert_array_equal(ts.gt[0], ts.gt[1])
    assert not np.array_equal(ts.hr[0], ts.hr[1])


def test_bad_arguments():
    with pytest.raises(InputError, match="n_frames"):
        simulate_time_series(CFG, 0)
    with pytest.raises(InputError, match="bleach"):
        simulate_time_series(CFG, 2, bleach_per_frame=1.0)
