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
    zero = ts.tile_budget(MODEL, 0, free_bytes=plenty)  # 0: always tile, small tiles
    assert zero.side == 512 and "always tile" in zero.reason
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


class StaticEngine(Identity):
    """A static TensorRT engine's spec (the default `cyclesr export tensorrt`): H = W = 512,
    min tile = max tile, batch up to 4."""

    def __init__(self):
        self.input_spec = TensorSpec(
            "input", (None, 1, 512, 512), np.dtype("float32"), 4, 1,
            max_batch=4, max_tile=(512, 512), min_tile=(512, 512),
        )  # fmt: skip
        self.shapes = []

    def infer(self, batch):
        self.shapes.append(batch.shape)
        return batch


@pytest.mark.parametrize("free", [1 << 40, 64 << 20])  # plenty, or a budget below the engine's
@pytest.mark.parametrize("shape", [(1024, 1024), (700, 900), (2000, 1500)])
def test_auto_tile_runs_on_a_static_engine(monkeypatch, shape, free):
    """The auto tile is the engine's tile: never trimmed below its minimum (which refused every
    tiled frame: 'tiles of 448x448 px are below this engine's minimum of 512x512')."""
    monkeypatch.setattr(ts, "available_memory", lambda: free)
    engine = StaticEngine()
    runner = FrameRunner(engine, MODEL, EnhanceConfig(tiling_mode="naive"))
    assert runner.tile_side == 512
    assert runner.plan(shape).tiles.tile_shape == (512, 512)
    frame = np.random.default_rng(1).integers(0, 60000, shape, dtype=np.uint16)
    out = runner(frame)
    assert out.shape == frame.shape and np.abs(out.astype(int) - frame).max() <= 1
    assert {s[2:] for s in engine.shapes} == {(512, 512)}


def test_a_dynamic_engines_minimum_tile_bounds_the_trim(monkeypatch):
    monkeypatch.setattr(ts, "available_memory", lambda: 1 << 40)
    engine = Identity((1024, 1024))
    engine.input_spec = TensorSpec(
        "input", (None, 1, None, None), np.dtype("float32"), 4, 1,
        max_tile=(1024, 1024), min_tile=(640, 640),
    )  # fmt: skip
    runner = FrameRunner(engine, MODEL, EnhanceConfig(tiling_mode="naive"))
    for shape in [(1100, 1100), (700, 1500), (3000, 2000)]:
        assert min(runner.plan(shape).tiles.tile_shape) >= 640


def test_whole_max_px_0_always_tiles(monkeypatch):
    """`--whole-max-px 0` = always tile (the help's promise): a 2048^2 frame is tiled, the auto
    tile from a small budget; and a frame over the memory-lowered budget never runs whole."""
    monkeypatch.setattr(ts, "available_memory", lambda: 1 << 40)
    runner = FrameRunner(Identity(), MODEL, EnhanceConfig(whole_max_px=0, tiling_mode="auto"))
    plan = runner.plan((2048, 2048))
    assert runner.tile_side == 512 and plan.mode != "whole" and len(plan.tiles.tiles) > 1
    assert runner.plan((600, 600)).mode != "whole"
    # little free memory: 1 MP per call; a 1500^2 frame (within whole_max_px) is tiled
    monkeypatch.setattr(ts, "available_memory", lambda: 2 * ts.bytes_per_px(MODEL) * 1024 * 1024)
    low = FrameRunner(Identity(), MODEL, EnhanceConfig())
    assert low.budget.budget_px == 1024 * 1024
    assert low.plan((1500, 1500)).mode != "whole"


def test_the_auto_budget_is_settled_once_and_recorded(monkeypatch, tmp_path):
    """The runner settles the auto tile's budget (free memory measured once) into its cfg, so
    the manifest records it; a settled budget is used as it is, whatever the free memory."""
    import json

    import tifffile

    from cyclesr_deploy.runtime.manifest import MANIFEST_NAME
    from cyclesr_deploy.runtime.pipeline import enhance_files

    monkeypatch.setattr(ts, "available_memory", lambda: 2 * ts.bytes_per_px(MODEL) * 1024 * 1024)
    runner = FrameRunner(Identity(), MODEL, EnhanceConfig(tiling_mode="naive"))
    assert runner.cfg.tile_budget_px == 1024 * 1024 and runner.tile_side == 1024
    monkeypatch.setattr(ts, "available_memory", lambda: 1 << 40)  # more memory later/elsewhere
    again = FrameRunner(Identity(), MODEL, runner.cfg)
    assert again.tile_side == 1024
    assert again.plan((3000, 2000)).tiles == runner.plan((3000, 2000)).tiles
    frame = tmp_path / "in" / "f.tif"
    frame.parent.mkdir()
    tifffile.imwrite(frame, np.full((64, 64), 100, np.uint16))
    enhance_files([frame], tmp_path / "out", Identity(), MODEL, EnhanceConfig(tiling_mode="naive"))
    header = json.loads((tmp_path / "out" / MANIFEST_NAME).read_text("utf-8"))
    assert header["config"]["tile"] == "auto"
    assert header["config"]["tile_budget_px"] == 2048 * 2048  # plenty of memory: whole_max_px
