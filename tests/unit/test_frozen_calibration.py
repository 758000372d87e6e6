"""Calibrated crop weights of the frozen-statistics "crops" estimate (numpy, torch-free)."""

from __future__ import annotations

import numpy as np
import pytest

from cyclesr_deploy.engines.frozen import (
    MAX_CROPS,
    MAX_TILT,
    calibration_weights,
    crop_batch,
    crop_origins,
    crops_for,
    padded_weights,
)
from cyclesr_deploy.errors import InputError


def gradient_frame(h: int = 256, w: int = 256) -> np.ndarray:
    """A frame whose crops have different means (a ramp plus a bright square)."""
    x = np.mgrid[0:h, 0:w][1]
    f = (x / w).astype(np.float64)
    f[40:90, 150:220] += 2.0
    return f


def crop_means(frame, origins, crop):
    return np.array([frame[y : y + crop[0], x : x + crop[1]].mean() for y, x in origins])


def test_weights_reproduce_the_frame_mean():
    f = gradient_frame()
    origins = crop_origins(f.shape, (64, 64), 9, 4)
    w = calibration_weights(f, origins, (64, 64))
    z = crop_means(f, origins, (64, 64))
    assert w.shape == (9,) and (w > 0).all() and w.sum() == pytest.approx(1.0)
    assert abs(z.mean() - f.mean()) > 0.01  # equal weights miss the frame mean ...
    assert w @ z == pytest.approx(f.mean(), abs=1e-9)  # ... the calibrated ones hit it
    assert w.max() / w.min() <= MAX_TILT * (1 + 1e-9)


def test_equal_crops_or_one_crop_get_equal_weights():
    flat = np.full((128, 128), 3.0)
    origins = crop_origins(flat.shape, (32, 32), 4, 4)
    assert np.array_equal(calibration_weights(flat, origins, (32, 32)), np.full(4, 0.25))
    assert np.array_equal(calibration_weights(gradient_frame(), [(0, 0)], (64, 64)), [1.0])
    with pytest.raises(InputError, match="no crops"):
        calibration_weights(flat, [], (32, 32))


def test_tilt_is_bounded_when_the_frame_mean_is_outside_the_crops_range():
    f = np.zeros((128, 128))
    f[:, 64:] = 1.0
    f[60:68, :] = 50.0  # a bright band that no crop sees: frame mean above every crop's
    origins = [(0, 0), (0, 64), (96, 0), (96, 64)]
    z = crop_means(f, origins, (32, 32))
    assert f.mean() > z.max()
    w = calibration_weights(f, origins, (32, 32))
    assert (w > 0).all() and w.sum() == pytest.approx(1.0)
    assert w.max() / w.min() == pytest.approx(MAX_TILT, rel=1e-6)  # as far as the bound allows
    assert w @ z > z.mean()  # moved towards the frame mean


def test_channels_are_averaged_and_crop_batch_returns_matching_weights():
    f = gradient_frame(1024, 1024)
    crop, n = crops_for(f.shape, 4)
    origins = crop_origins(f.shape, (crop, crop), n, 4)
    stacked = np.stack([f, f + 1.0])  # (C, H, W): the mean over channels is f + 0.5
    w1 = calibration_weights(f, origins, (crop, crop))
    assert np.allclose(calibration_weights(stacked, origins, (crop, crop)), w1)
    batch, w = crop_batch(f[None, None].astype(np.float32), 4)
    assert batch.shape == (n, 1, crop, crop) and batch.dtype == np.float32
    assert w.dtype == np.float32 and np.allclose(w, w1)


def test_default_crops_and_padding():
    assert crops_for((1024, 1024)) == (384, 2)
    assert crops_for((2048, 2048)) == (256, 12)  # a full 3 x 4 grid, ~19 %
    assert crops_for((4096, 4096)) == (256, 49)
    assert crops_for((8192, 8192)) == (256, MAX_CROPS)  # capped: memory of the stats pass
    assert crops_for((100, 60)) == (60, 1)
    p = padded_weights(np.array([0.25, 0.75]))
    assert p.shape == (MAX_CROPS,) and p.dtype == np.float32
    assert p[:2].tolist() == [0.25, 0.75] and not p[2:].any()
    with pytest.raises(InputError, match="takes <="):
        padded_weights(np.ones(MAX_CROPS + 1))
