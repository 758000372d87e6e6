"""Tiles sized to the machine (``EnhanceConfig.tile = "auto"``, runtime/tile_size.py)."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from cyclesr_deploy.engines.base import TensorSpec
from cyclesr_deploy.model import GeneratorConfig, ModelConfig
from cyclesr_deploy.runtime import tile_size as ts
from cyclesr_deploy.runtime.runner import EnhanceConfig, FrameRunner
from cyclesr_deploy.runtime.tiling import TilingConfig, plan_tiles

MODEL = ModelConfig(generator=GeneratorConfig(ngf=16, n_blocks=6))  # the built-in's shape


def spec(max_tile=None):
    return TensorSpec("input", (None, 1, None, None), np.dtype("float32"), 4, 1, max_tile=max_tile)


class Identity:
    name = "identity"

    def __init__(self, max_tile=None):
        self.input_spec = spec(max_tile)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def infer(self, batch):
        return batch


@pytest.mark.parametrize("length", [300, 1000, 2049, 3000, 4096, 5000, 9999])
@pytest.mark.parametrize("cap", [512, 1024, 2048])
def test_trimmed_tile_keeps_the_count_and_is_the_smallest(length, cap):
    overlap, m = 156, 4
    n = ts.tiles_along(length, cap, overlap, m)
    t = ts.trimmed_tile(length, cap, overlap, m)
    assert t % m == 0 and t <= max(cap, -(-length // m) * m)
    assert ts.tiles_along(length, t, overlap, m) == n
    if n > 1:
        assert ts.tiles_along(length, t - m, overlap, m) > n
    # the rule is the one plan_tiles uses
    cfg = TilingConfig(tile=min(t, cap), overlap=overlap, halo=0, blend="constant")
    assert plan_tiles((length, 64), cfg).grid[0] == ts.tiles_along(length, min(t, cap), overlap, m)


def test_budget_from_whole_max_px_memory_and_engine():
    plenty = 1 << 40
    assert ts.tile_budget(MODEL, 2048 * 2048, free_bytes=plenty).side == 2048
    assert ts.tile_budget(MODEL, 0, free_bytes=plenty).side == 2048  # 0: the default budget
    assert ts.tile_budget(MODEL, 1000 * 1000, free_bytes=plenty).side == 1000
    low = ts.tile_budget(MODEL, 2048 * 2048, free_bytes=2 * 256 * 1024 * 1024)  # 1 MP fits
    assert low.side == 1024 and "free memory" in low.reason
    capped = ts.tile_budget(MODEL, 2048 * 2048, spec((768, 768)), free_bytes=plenty)
    assert capped.side == 768 and "maximum tile" in capped.reason


def test_default_tile_is_auto_and_a_4096_frame_computes_less(caplog, monkeypatch):
    monkeypatch.setattr(ts, "available_memory", lambda: 1 << 40)
    assert EnhanceConfig().tile == "auto"
    with caplog.at_level(logging.INFO, logger="cyclesr_deploy.runtime.runner"):
        runner = FrameRunner(Identity(), MODEL, EnhanceConfig(tiling_mode="naive"))
        plan = runner.plan((4096, 4096))
    fixed = FrameRunner(Identity(), MODEL, EnhanceConfig(tile=512, tiling_mode="naive"))
    old = fixed.plan((4096, 4096))

    def computed(p):
        return len(p.tiles.tiles) * p.tiles.tile_shape[0] * p.tiles.tile_shape[1]

    assert plan.tiles.tile_shape == (1472, 1472) and len(plan.tiles.tiles) == 9
    assert computed(plan) < 0.6 * computed(old)  # 1.16x vs 2.25x the frame's pixels
    assert plan.batch * 1472 * 1472 <= 2048 * 2048
    assert "tile auto: 1472x1472 px for 4096x4096 frames" in caplog.text
    assert "overlap 156 px = 11% of a tile side" in caplog.text
    # same output as an explicit tile of that size (identity engine: the frame itself)
    frame = np.random.default_rng(0).integers(0, 60000, (4096, 4096), dtype=np.uint16)
    out = runner(frame)
    assert out.shape == frame.shape and np.abs(out.astype(int) - frame).max() <= 1


def test_auto_tile_respects_a_static_engines_maximum(monkeypatch):
    monkeypatch.setattr(ts, "available_memory", lambda: 1 << 40)
    runner = FrameRunner(Identity((640, 640)), MODEL, EnhanceConfig(tiling_mode="naive"))
    assert runner.tile_side == 640
    assert max(runner.plan((3000, 3000)).tiles.tile_shape) <= 640


def test_auto_tiling_validates_like_a_number():
    cfg = EnhanceConfig()
    tiling = cfg.tiling(MODEL)
    assert tiling.tile_shape[0] % 4 == 0 and tiling.overlap == 156
    assert EnhanceConfig.model_validate({"tile": "auto"}).tile == "auto"
    with pytest.raises(ValueError):
        EnhanceConfig(tile=-1)
