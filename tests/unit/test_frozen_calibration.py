"""Calibrated sub-block weights of the frozen-statistics "crops" estimate (numpy, torch-free)."""

from __future__ import annotations

import numpy as np
import pytest

from cyclesr_deploy.engines.frozen_stats import (
    BLOCKS,
    MAX_CROPS,
    MAX_TILT,
    block_index,
    calibration_weights,
    crop_batch,
    crop_origins,
    crops_for,
    padded_weights,
)
from cyclesr_deploy.errors import InputError


def gradient_frame(h: int = 256, w: int = 256) -> np.ndarray:
    """A frame whose crops and blocks have different means (a ramp plus a bright square)."""
    x = np.mgrid[0:h, 0:w][1]
    f = (x / w).astype(np.float64)
    f[40:90, 150:220] += 2.0
    return f


def pooled_mean(frame, origins, crop, w):
    """What weighted_statistics computes for the input itself: sum(W * x) / sum(W) over the
    crops, pixel (y, x) of a crop weighted by its block's weight."""
    by, bx = block_index(crop[0], w.shape[1]), block_index(crop[1], w.shape[2])
    num = den = 0.0
    for i, (y, x0) in enumerate(origins):
        wmap = w[i][by][:, bx]
        num += float((wmap * frame[y : y + crop[0], x0 : x0 + crop[1]]).sum())
        den += float(wmap.sum())
    return num / den


def test_block_index_partitions_any_side():
    assert block_index(8, 4).tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert block_index(6, 4).tolist() == [0, 0, 1, 2, 2, 3]  # uneven sides: every block used
    assert block_index(3, 4).tolist() == [0, 1, 2]  # fewer pixels than blocks: some unused
    assert np.bincount(block_index(96, 4)).tolist() == [24] * 4


def test_weights_reproduce_the_frame_mean():
    f = gradient_frame()
    origins = crop_origins(f.shape, (64, 64), 9, 4)
    w = calibration_weights(f, origins, (64, 64))
    assert w.shape == (9, BLOCKS, BLOCKS) and (w > 0).all()
    assert (w * (64 // BLOCKS) ** 2).sum() == pytest.approx(1.0)  # shares of the pixels
    equal = pooled_mean(f, origins, (64, 64), np.ones_like(w))
    assert abs(equal - f.mean()) > 0.01  # equal weights miss the frame mean ...
    assert pooled_mean(f, origins, (64, 64), w) == pytest.approx(
        f.mean(), abs=1e-9
    )  # ... these hit it
    assert w.max() / w.min() <= MAX_TILT * (1 + 1e-9)
    per_crop = calibration_weights(f, origins, (64, 64), blocks=1)
    assert per_crop.shape == (9, 1, 1)
    assert pooled_mean(f, origins, (64, 64), per_crop) == pytest.approx(f.mean(), abs=1e-9)


def test_uneven_blocks_are_weighted_by_their_pixels():
    f = gradient_frame(120, 120)
    origins = crop_origins(f.shape, (52, 52), 4, 4)  # 52 = 13 + 13 + 13 + 13; 13 rows a block
    w = calibration_weights(f, origins, (50, 50), blocks=3)  # 50 = 17 + 17 + 16: uneven
    assert pooled_mean(f, origins, (50, 50), w) == pytest.approx(f.mean(), abs=1e-9)


def test_equal_blocks_or_one_crop_get_equal_weights():
    flat = np.full((128, 128), 3.0)
    origins = crop_origins(flat.shape, (32, 32), 4, 4)
    w = calibration_weights(flat, origins, (32, 32))
    assert np.allclose(w, w.flat[0])
    one = calibration_weights(np.ones((64, 64)), [(0, 0)], (64, 64), blocks=1)
    assert one.shape == (1, 1, 1) and one[0, 0, 0] == pytest.approx(1 / 64**2)
    with pytest.raises(InputError, match="no crops"):
        calibration_weights(flat, [], (32, 32))
    with pytest.raises(InputError, match="blocks"):
        calibration_weights(flat, origins, (32, 32), blocks=0)


def test_tilt_is_bounded_when_the_frame_mean_is_outside_the_blocks_range():
    f = np.zeros((128, 128))
    f[:, 64:] = 1.0
    f[60:68, :] = 50.0  # a bright band that no crop sees: frame mean above every block's
    origins = [(0, 0), (0, 64), (96, 0), (96, 64)]
    w = calibration_weights(f, origins, (32, 32))
    assert (w > 0).all()
    assert w.max() / w.min() == pytest.approx(MAX_TILT, rel=1e-6)  # as far as the bound allows
    equal = pooled_mean(f, origins, (32, 32), np.ones_like(w))
    assert equal < pooled_mean(f, origins, (32, 32), w) < f.mean()  # moved towards the frame


def test_channels_are_averaged_and_crop_batch_returns_matching_weights():
    f = gradient_frame(1024, 1024)
    crop, n = crops_for(f.shape, 4)
    origins = crop_origins(f.shape, (crop, crop), n, 4)
    stacked = np.stack([f, f + 1.0])  # (C, H, W): the mean over channels is f + 0.5
    w1 = calibration_weights(f, origins, (crop, crop))
    assert np.allclose(calibration_weights(stacked, origins, (crop, crop)), w1)
    batch, w = crop_batch(f[None, None].astype(np.float32), 4)
    assert batch.shape == (n, 1, crop, crop) and batch.dtype == np.float32
    assert w.dtype == np.float32 and w.shape == (n, BLOCKS, BLOCKS) and np.allclose(w, w1)


def test_default_crops_and_padding():
    assert crops_for((1024, 1024)) == (384, 2)
    assert crops_for((2048, 2048)) == (256, 12)  # a full 3 x 4 grid, ~19 %
    assert crops_for((4096, 4096)) == (256, 49)
    assert crops_for((8192, 8192)) == (256, MAX_CROPS)  # capped: memory of the stats pass
    assert crops_for((100, 60)) == (60, 1)
    p = padded_weights(np.array([0.25, 0.75]))  # per crop: repeated over its blocks
    assert p.shape == (MAX_CROPS, BLOCKS, BLOCKS) and p.dtype == np.float32
    assert (p[0] == 0.25).all() and (p[1] == 0.75).all() and not p[2:].any()
    blocks = np.arange(2 * BLOCKS * BLOCKS, dtype=np.float32).reshape(2, BLOCKS, BLOCKS)
    assert np.array_equal(padded_weights(blocks)[:2], blocks)
    assert padded_weights(np.ones(1), 8, 1).shape == (8, 1, 1)
    with pytest.raises(InputError, match="takes <="):
        padded_weights(np.ones(MAX_CROPS + 1))
    with pytest.raises(InputError, match="shape"):
        padded_weights(np.ones((2, 3, 3)))
