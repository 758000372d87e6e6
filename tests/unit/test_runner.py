"""The one frame runner with fake engines, numpy only."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from cyclesr_deploy.errors import InputError
from cyclesr_deploy.model import GeneratorConfig, ModelConfig, NormalizationConfig
from cyclesr_deploy.runtime.runner import EnhanceConfig, FrameRunner
from tests.conftest import FakeEngine


def _model(norm="instance", scale=1):
    return ModelConfig(
        generator=GeneratorConfig(ngf=4, n_blocks=1, norm=norm, scale=scale),
        normalization=NormalizationConfig(low_a=0, high_a=65535, low_b=0, high_b=65535),
    )


class FakeFrozen(FakeEngine):
    """A FakeEngine with the FrozenStatsEngine capability: statistics = the frame's mean,
    added to every tile (so a test sees which statistics a tile ran with)."""

    def __init__(self) -> None:
        super().__init__("identity")
        self.stats_shapes: list[tuple[int, ...]] = []

    def frame_statistics(self, frame_nchw):
        self.stats_shapes.append(tuple(frame_nchw.shape))
        return np.array([frame_nchw.mean()], np.float32)

    def infer_with_stats(self, batch, stats):
        self.calls += 1
        self.shapes.append(tuple(batch.shape))
        return batch + stats[0]


def test_staged_equals_one_call_and_batches_hold_one_frame(rng):
    frame = rng.integers(0, 60000, (70, 90)).astype(np.uint16)
    cfg = EnhanceConfig(tile=32, overlap=8, batch=3)
    engine = FakeEngine("plus1")
    runner = FrameRunner(engine, _model("none"), cfg)
    once = runner(frame)
    work = runner.start(frame, 0)
    batches = list(work.batches())
    for batch in batches:
        work.add(batch, runner.infer(work, batch))
    np.testing.assert_array_equal(work.result(), once)
    n_tiles = len(runner.plan(frame.shape).tiles.tiles)
    assert sum(len(b.tiles) for b in batches) == n_tiles
    assert all(b.data.shape[0] == 3 for b in batches)  # fixed-size buffers, unused slots zero
    assert not batches[-1].data[len(batches[-1].tiles) :].any()


def test_plans_whole_frozen_and_tiles():
    cfg = EnhanceConfig(tile=32, overlap=8, whole_max_px=64 * 64)
    runner = FrameRunner(FakeFrozen(), _model(), cfg)
    assert runner.plan((32, 32)).mode == "whole"  # one tile
    assert runner.plan((64, 64)).mode == "whole"  # auto: within whole_max_px
    big = runner.plan((96, 64))
    assert big.mode == "frozen" and big.stats is not None
    assert big.stats.tile_shape == (96, 64)
    assert FrameRunner(FakeEngine(), _model("none"), cfg).plan((96, 64)).mode == "tiles"


def test_frozen_frames_run_with_their_own_statistics(rng):
    engine = FakeFrozen()
    cfg = EnhanceConfig(tile=32, overlap=8, tiling_mode="frozen", batch=2)
    runner = FrameRunner(engine, _model(), cfg)
    a = rng.integers(0, 30000, (64, 96)).astype(np.uint16)
    b = a + np.uint16(20000)
    out_a, out_b = runner(a), runner(b)
    assert engine.stats_shapes == [(1, 1, 64, 96)] * 2  # once per frame, the whole frame
    assert out_b.astype(np.int64).mean() > out_a.astype(np.int64).mean() + 20000


def test_frozen_mode_needs_a_frozen_engine():
    with pytest.raises(InputError, match="frozen"):
        FrameRunner(FakeEngine(), _model(), EnhanceConfig(tiling_mode="frozen"))


@pytest.mark.parametrize("shape", [(3, 3), (4, 64), (64, 2)])
def test_frames_below_the_minimum_are_refused_clearly(shape):
    runner = FrameRunner(FakeEngine(), _model(), EnhanceConfig())
    with pytest.raises(InputError, match=r"smaller than this model's minimum of 5 x 5 px"):
        runner(np.zeros(shape, np.uint16))
    assert runner(np.zeros((5, 5), np.uint16)).shape == (5, 5)


def test_naive_tiling_warns_once_when_it_tiles(caplog):
    cfg = EnhanceConfig(tiling_mode="naive", tile=32, overlap=8)
    with caplog.at_level(logging.WARNING, logger="cyclesr_deploy.runtime.runner"):
        runner = FrameRunner(FakeEngine(), _model(), cfg)
        runner(np.zeros((32, 32), np.uint16))  # one tile: nothing to warn about
        assert not caplog.records
        runner(np.zeros((64, 96), np.uint16))
        runner(np.zeros((96, 96), np.uint16))  # another tiled shape: no second warning
    warnings = [r for r in caplog.records if "naive" in r.getMessage()]
    assert len(warnings) == 1 and "brightness steps" in warnings[0].getMessage()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="cyclesr_deploy.runtime.runner"):
        runner = FrameRunner(FakeEngine(), _model("none"), cfg)
        runner(np.zeros((64, 96), np.uint16))
    assert not caplog.records  # no InstanceNorm: tiles are exact, nothing to warn about


def test_auto_without_frozen_engine_warns_once_and_tiles(caplog):
    runner = FrameRunner(FakeEngine(), _model(), EnhanceConfig(tile=32, overlap=8, whole_max_px=0))
    with caplog.at_level(logging.WARNING, logger="cyclesr_deploy.runtime.runner"):
        assert runner.plan((64, 96)).mode == "tiles"
        assert runner.plan((96, 96)).mode == "tiles"
    assert sum("frozen" in r.getMessage() for r in caplog.records) == 1


def test_bad_frames_are_refused():
    runner = FrameRunner(FakeEngine(), _model(), EnhanceConfig())
    with pytest.raises(InputError, match="2-D"):
        runner(np.zeros((2, 8, 8), np.uint16))
    with pytest.raises(InputError, match="int32"):
        runner(np.zeros((8, 8), np.int32))


def test_interleaved_frames_keep_their_own_statistics_and_blenders(rng):
    """As in the pipeline: frame B starts before frame A is blended; each keeps its statistics
    (frozen) and its blender, and both equal a frame-at-a-time run."""
    cfg = EnhanceConfig(tile=32, overlap=8, tiling_mode="frozen", batch=2)
    a = rng.integers(0, 30000, (64, 96)).astype(np.uint16)
    b = rng.integers(30000, 60000, (64, 96)).astype(np.uint16)
    alone = FrameRunner(FakeFrozen(), _model(), cfg)
    want_a, want_b = alone(a), alone(b)
    runner = FrameRunner(FakeFrozen(), _model(), cfg)
    work_a, work_b = runner.start(a, 0), runner.start(b, 1)
    pending = []
    for pair in zip(work_a.batches(), work_b.batches(), strict=True):
        for work, batch in zip((work_a, work_b), pair, strict=True):
            pending.append((work, batch, runner.infer(work, batch).copy()))
    for work, batch, y in reversed(pending):  # blended in another order than inferred
        work.add(batch, y)
    np.testing.assert_array_equal(work_a.result(), want_a)
    np.testing.assert_array_equal(work_b.result(), want_b)
    assert len(runner.plan(a.shape)._blenders) == 2  # both blenders back in the pool


def test_a_stack_through_the_pipeline_equals_frame_by_frame(tmp_path, rng):
    import tifffile

    from cyclesr_deploy.runtime.pipeline import enhance_files

    stack = rng.integers(0, 60000, (3, 64, 96)).astype(np.uint16)
    src = tmp_path / "in" / "s.tif"
    src.parent.mkdir()
    tifffile.imwrite(src, stack, photometric="minisblack")
    cfg = EnhanceConfig(tile=32, overlap=8, tiling_mode="frozen", batch=2, queue_size=1)
    enhance_files([src], tmp_path / "out", FakeFrozen(), _model(), cfg)
    runner = FrameRunner(FakeFrozen(), _model(), cfg)
    out = tifffile.imread(tmp_path / "out" / "s.tif")
    for i in range(3):
        np.testing.assert_array_equal(out[i], runner(stack[i]))
