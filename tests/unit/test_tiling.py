"""Tiled inference: exact reconstruction, coverage, finite-receptive-field equivalence, seams,
batching across frames, plan cache and config validation (research/tiling_io.md §6.5)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cyclesr_deploy.errors import InputError
from cyclesr_deploy.runtime.tiling import (
    BLENDS,
    Blender,
    TiledPredictor,
    TilingConfig,
    plan_cache_info,
    plan_tiles,
    predict_tiled,
    predict_tiled_batch,
)


def identity(batch: np.ndarray) -> np.ndarray:
    return batch


def nearest_x2(batch: np.ndarray) -> np.ndarray:
    return np.repeat(np.repeat(batch, 2, axis=2), 2, axis=3)


def upsample(frame: np.ndarray, scale: int) -> np.ndarray:
    return frame if scale == 1 else np.repeat(np.repeat(frame, scale, -2), scale, -1)


def config(blend: str, tile: int = 256, overlap: int = 64, **kw) -> TilingConfig:
    halo = kw.pop("halo", 16 if blend == "cosine" else 0)
    return TilingConfig(tile=tile, overlap=overlap, blend=blend, halo=halo, **kw)


# --- exact reconstruction --------------------------------------------------------------------


@pytest.mark.parametrize("blend", BLENDS)
@pytest.mark.parametrize("shape", [(1001, 2047), (100, 37), (7, 1), (256, 520)])
@pytest.mark.parametrize("scale", [1, 2])
def test_identity_and_nearest_x2_reproduce_the_frame(rng, blend, shape, scale):
    frame = rng.uniform(-1, 1, shape).astype(np.float32)
    out = predict_tiled(frame, identity if scale == 1 else nearest_x2, config(blend, scale=scale))
    assert out.shape == (shape[0] * scale, shape[1] * scale) and out.dtype == np.float32
    # float32 accumulation: with a 0.95 overlap up to ~16 tiles add into one pixel (1.1e-6 seen)
    assert np.abs(out - upsample(frame, scale)).max() <= 4e-6


@pytest.mark.parametrize("blend", BLENDS)
def test_overlap_zero_and_multichannel(rng, blend):
    frame = rng.uniform(-1, 1, (3, 130, 203)).astype(np.float32)
    cfg = TilingConfig(tile=64, overlap=0, blend=blend)
    assert plan_tiles(frame.shape[1:], cfg).grid == (3, 4)  # the last tiles overlap, moved in
    assert np.abs(predict_tiled(frame, identity, cfg) - frame).max() <= 1e-6


@pytest.mark.parametrize("blend", BLENDS)
def test_uint16_round_trip_is_exact(rng, blend):
    frame = rng.integers(0, 65536, (300, 517), dtype=np.uint16)
    cfg = config(blend, tile=128, overlap=32, halo=8 if blend == "cosine" else 0)
    for source in (frame.astype(np.float32), frame):  # uint16 is cast while gathering tiles
        out = predict_tiled(source, identity, cfg)
        back = np.clip(np.rint(out), 0, 65535).astype(np.uint16)
        np.testing.assert_array_equal(back, frame)


@pytest.mark.parametrize("blend", BLENDS)
def test_analytic_predictors(rng, blend):
    frame = rng.uniform(-1, 1, (2, 333, 190)).astype(np.float32)
    cfg = config(blend, tile=96, overlap=32, halo=8 if blend == "cosine" else 0)
    np.testing.assert_allclose(predict_tiled(frame, lambda b: b + 1, cfg), frame + 1, atol=1e-6)
    np.testing.assert_allclose(predict_tiled(frame, lambda b: 2 * b, cfg), 2 * frame, atol=2e-6)
    both = predict_tiled(frame, lambda b: np.concatenate([b, -b], axis=1), cfg)  # C -> 2C
    np.testing.assert_allclose(both, np.concatenate([frame, -frame]), atol=1e-6)


@settings(max_examples=60, deadline=None)
@given(
    height=st.integers(1, 300),
    width=st.integers(1, 300),
    tile_blocks=st.integers(2, 32),
    overlap_frac=st.floats(0, 0.95),
    halo_frac=st.floats(0, 1),
    blend=st.sampled_from(BLENDS),
    scale=st.sampled_from([1, 2]),
    multiple=st.sampled_from([1, 4, 8]),
)
def test_any_geometry_covers_and_reconstructs(
    height, width, tile_blocks, overlap_frac, halo_frac, blend, scale, multiple
):
    tile = tile_blocks * multiple
    overlap = int(overlap_frac * (tile - multiple))
    halo = int(halo_frac * overlap // 2) if blend == "cosine" else 0
    cfg = TilingConfig(tile, overlap, multiple, scale, blend, halo)  # type: ignore[arg-type]
    plan = plan_tiles((height, width), cfg)
    padded = plan.padded_shape
    for axis in (0, 1):
        assert padded[axis] % multiple == 0 and 0 <= padded[axis] - plan.shape[axis] < multiple
        origins = sorted({t.origin[axis] for t in plan.tiles})
        assert all(o % multiple == 0 for o in origins)  # translation lattice
        assert origins[0] == 0 and origins[-1] + plan.tile_shape[axis] == padded[axis]
        steps = np.diff([*origins, padded[axis]])
        assert (steps <= plan.tile_shape[axis]).all()  # no gaps
    total = np.zeros((padded[0] * scale, padded[1] * scale), np.float64)
    for t in plan.tiles:
        total[t.write] += t.weight()
    np.testing.assert_allclose(total, 1.0, atol=1e-6)  # every output pixel fully covered
    assert (plan.weight_sum() > 0).all()
    frame = np.random.default_rng(height * 1000 + width).uniform(-1, 1, (height, width))
    out = predict_tiled(frame.astype(np.float32), identity if scale == 1 else nearest_x2, cfg)
    # float32 accumulation: with a 0.95 overlap up to ~16 tiles add into one pixel (1.1e-6 seen)
    assert np.abs(out - upsample(frame, scale)).max() <= 4e-6


@pytest.mark.parametrize("blend", BLENDS)
def test_border_windows_are_not_tapered(blend):
    plan = plan_tiles((1000, 700), config(blend))
    ny, nx = plan.grid
    assert ny > 2 and nx > 2
    for t in plan.tiles:
        iy, ix = t.grid_index
        if iy == 0:
            assert t.window_y[0] == 1.0 and t.weight_y[0] == 1.0
        if iy == ny - 1:
            assert t.window_y[-1] == 1.0 and t.weight_y[-1] == 1.0
        if ix == 0:
            assert t.window_x[0] == 1.0 and t.weight_x[0] == 1.0
        if ix == nx - 1:
            assert t.window_x[-1] == 1.0 and t.weight_x[-1] == 1.0
    if blend == "cosine":  # interior sides: the halo has weight 0, the core weight 1
        middle = plan.tiles[nx + 1].window_y
        assert (middle[:16] == 0).all() and (middle[:-16] > 0).any() and middle.max() == 1.0
    if blend == "gaussian":
        first = plan.tiles[0].window_y
        assert (first[:128] == 1.0).all() and first[-1] < 1e-2 and first.min() >= 1e-3


@pytest.mark.parametrize("scale", [1, 2])
def test_cosine_ramp_has_the_same_width_at_every_seam(scale):
    cfg = TilingConfig(tile=512, overlap=64, halo=16, scale=scale)
    plan = plan_tiles((2048, 2048), cfg)
    assert [t.origin[0] for t in plan.tiles[:: plan.grid[1]]] == [0, 448, 896, 1344, 1536]
    for t in plan.tiles[: plan.grid[1]]:  # first row of tiles: the x windows
        w = t.window_x
        ramps = np.flatnonzero((w > 0) & (w < 1))
        sides = (ramps < w.size // 2).sum(), (ramps >= w.size // 2).sum()
        first, last = t.grid_index[1] == 0, t.grid_index[1] == plan.grid[1] - 1
        assert sides == (0 if first else 32 * scale, 0 if last else 32 * scale)
        if not first:  # a zero halo of at least 16 px at the interior edge
            assert (w[: 16 * scale] == 0).all()


def test_small_frame_is_predicted_whole_without_blending(rng):
    calls: list[tuple[int, ...]] = []

    def record(batch: np.ndarray) -> np.ndarray:
        calls.append(batch.shape)
        return batch

    frame = rng.uniform(size=(50, 37)).astype(np.float32)
    plan = plan_tiles(frame.shape, config("cosine"))
    assert plan.whole_frame and plan.padded_shape == (52, 40) and plan.tile_shape == (52, 40)
    np.testing.assert_array_equal(predict_tiled(frame, record, plan), frame)
    assert calls == [(1, 1, 52, 40)]  # reflect-padded to multiples of 4, cropped after


def test_tiles_read_reflect_padding_only_past_the_frame_end(rng):
    frame = rng.uniform(size=(1, 130, 131)).astype(np.float32)
    cfg = TilingConfig(tile=64, overlap=16, halo=4)
    padded = np.pad(frame, ((0, 0), (0, 2), (0, 1)), mode="reflect")
    seen: list[np.ndarray] = []
    TiledPredictor(lambda b: seen.append(b.copy()) or b, cfg)(frame)
    tiles = np.concatenate(seen)
    plan = plan_tiles((130, 131), cfg)
    for t, tile in zip(plan.tiles, tiles, strict=True):
        np.testing.assert_array_equal(tile, padded[(slice(None), *t.read)])
        buffer = np.empty((1, 64, 64), np.float32)
        np.testing.assert_array_equal(plan.read_tile(frame, t.index, buffer), tile)


# --- batching, buffers, blender --------------------------------------------------------------


def test_stacks_run_frame_by_frame(rng):
    frames = rng.uniform(-1, 1, (2, 1, 150, 230)).astype(np.float32)
    cfg = TilingConfig(tile=96, overlap=32, halo=8, batch_size=3)
    sizes: list[int] = []

    def predict(batch: np.ndarray) -> np.ndarray:  # position-dependent: blending matters
        sizes.append(batch.shape[0])
        return np.tanh(3 * batch) + batch.mean(axis=(1, 2, 3), keepdims=True)

    stacked = predict_tiled_batch(frames, predict, cfg)
    n_tiles = len(plan_tiles((150, 230), cfg).tiles)
    assert n_tiles % 3 != 0  # a partial last batch per frame: batches never span two frames
    assert sizes == ([3] * (n_tiles // 3) + [n_tiles % 3]) * 2
    one_by_one = np.stack([predict_tiled(f, predict, cfg) for f in frames])
    np.testing.assert_array_equal(stacked, one_by_one)
    flat = predict_tiled_batch(frames[:, 0], predict, cfg)  # (N, H, W)
    np.testing.assert_array_equal(flat, one_by_one[:, 0])


def test_whole_frames_run_one_per_call(rng):
    frames = rng.uniform(size=(6, 40, 44)).astype(np.float32)
    sizes: list[int] = []
    out = predict_tiled_batch(frames, lambda b: sizes.append(len(b)) or b, config("cosine"))
    assert sizes == [1] * 6
    np.testing.assert_array_equal(out, frames)


def test_predict_may_return_a_reused_buffer(rng):
    frames = rng.uniform(size=(2, 1, 200, 230)).astype(np.float32)
    cfg = TilingConfig(tile=64, overlap=16, halo=4, blend="gaussian", batch_size=2)
    reused = np.empty((2, 1, 64, 64), np.float32)

    def predict(batch: np.ndarray) -> np.ndarray:
        view = reused[: len(batch)]
        np.multiply(batch, 2, out=view)
        batch[:] = np.nan  # predict may also scribble on its input batch
        return view

    np.testing.assert_allclose(predict_tiled_batch(frames, predict, cfg), 2 * frames, atol=2e-6)


def test_plan_cache_is_hit_for_frames_of_the_same_shape(rng):
    cfg = TilingConfig(tile=64, overlap=16, halo=4)
    assert plan_tiles((100, 120), cfg) is plan_tiles([100, 120], cfg)
    predictor = TiledPredictor(identity, cfg)
    predictor(rng.uniform(size=(101, 99)).astype(np.float32))
    before = plan_cache_info()
    out = np.empty((101, 99), np.float32)
    second = rng.uniform(size=(101, 99)).astype(np.float32)
    np.testing.assert_allclose(predictor(second, out=out), second, atol=1e-6)
    after = plan_cache_info()
    assert after.hits == before.hits + 1 and after.misses == before.misses


def test_blender_accepts_tiles_in_any_order_and_checks_them(rng):
    frame = rng.uniform(size=(1, 180, 152)).astype(np.float32)
    plan = plan_tiles((180, 152), TilingConfig(tile=64, overlap=24, halo=4))
    tiles = [frame[(slice(None), *t.read)] * (1 + 0.1 * t.index) for t in plan.tiles]  # differ
    blender = Blender(plan)
    for t in plan.tiles:
        blender.add(t.index, tiles[t.index])
    in_order = blender.result()
    order = rng.permutation(len(tiles))
    for i in order[:-1]:
        blender.add(int(i), tiles[i])
    with pytest.raises(RuntimeError, match="tiles added"):
        blender.result()
    blender.add(int(order[-1]), tiles[order[-1]])
    with pytest.raises(RuntimeError, match="call result"):
        blender.add(0, tiles[0])
    np.testing.assert_allclose(blender.result(), in_order, atol=1e-6)
    with pytest.raises(ValueError, match="expected"):
        blender.add(0, tiles[0][:, :10])


def test_predict_returning_the_wrong_shape_is_reported(rng):
    frame = rng.uniform(size=(100, 100)).astype(np.float32)
    with pytest.raises(ValueError, match="scale 2"):
        predict_tiled(frame, identity, config("cosine", scale=2))
    with pytest.raises(ValueError, match="N = 1"):
        predict_tiled(frame, lambda b: b[0], config("cosine"))


# --- configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tile": 250}, "multiple of size_multiple=4"),
        ({"tile": (256, 30)}, "multiple of size_multiple=4"),
        ({"tile": 64, "overlap": 64}, "overlap < tile"),
        ({"tile": 64, "overlap": 62}, "overlap < tile"),
        ({"overlap": -1}, "overlap must be >= 0"),
        ({"halo": -1}, "halo must be >= 0"),
        ({"overlap": 32, "halo": 17}, "overlap >= 2 \\* halo"),
        ({"blend": "hann"}, "blend must be one of"),
        ({"batch_size": 0}, "batch_size"),
        ({"scale": 0}, "scale"),
        ({"pad_mode": "constant"}, "pad_mode"),
        ({"overlap": 10.5}, "overlap must be an integer"),
        ({"tile": 64, "size_multiple": 0}, "size_multiple must be >= 1"),
    ],
)
def test_invalid_configs_raise_input_error(kwargs, message):
    with pytest.raises(InputError, match=message):
        TilingConfig(**kwargs)


def test_for_model_derives_halo_and_overlap_from_the_receptive_field():
    canonical = TilingConfig.for_model(169)  # resnet_9blocks
    assert (canonical.halo, canonical.overlap, canonical.tile) == (86, 204, (512, 512))
    tiny = TilingConfig.for_model(41, size_multiple=4, scale=2, tile=128, batch_size=8)
    assert (tiny.halo, tiny.overlap, tiny.scale, tiny.batch_size) == (22, 76, 2, 8)
    with pytest.raises(InputError, match="too small for receptive field"):
        TilingConfig.for_model(169, tile=192)


def test_frame_and_plan_shapes_are_checked(rng):
    plan = plan_tiles((64, 64), config("cosine"))
    with pytest.raises(InputError, match="does not match"):
        predict_tiled(np.zeros((60, 64), np.float32), identity, plan)
    with pytest.raises(InputError, match="positive"):
        plan_tiles((0, 10), config("cosine"))
    with pytest.raises(InputError, match=r"\(H, W\) or \(C, H, W\)"):
        predict_tiled(np.zeros(10, np.float32), identity, plan)


# --- a real convolutional network with a known receptive field ------------------------------


@pytest.fixture(scope="module")
def torch_one_thread():
    """torch with one intra-op thread (tiny convs run 10x faster than with contended threads),
    restored afterwards."""
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield torch
    torch.set_num_threads(threads)


def _random_generator(scale: int = 1, positive: bool = False):
    """Tiny CycleGAN ResNet generator without normalization (finite receptive field), random
    weights scaled so that outputs are O(0.1-1); ``positive``: averaging kernels (a smooth
    network, on whose output a seam stands out)."""
    torch = pytest.importorskip("torch")
    from torch import nn

    from cyclesr_deploy.model import GeneratorConfig
    from cyclesr_deploy.nets import build_generator

    gcfg = GeneratorConfig(ngf=4, n_blocks=1, norm="none", scale=scale)
    net = build_generator(gcfg).eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
                if positive:
                    w = torch.rand(m.weight.shape, generator=generator)
                    m.weight.copy_(w / w[0].sum())
                    m.bias.zero_()
                else:
                    fan_in = m.weight[0].numel()
                    m.weight.normal_(0, (2 / fan_in) ** 0.5, generator=generator)
                    m.bias.normal_(0, 0.1, generator=generator)

    def predict(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return net(torch.from_numpy(batch)).numpy()

    return gcfg, predict


def _whole_frame(predict, frame: np.ndarray, multiple: int, scale: int) -> np.ndarray:
    h, w = frame.shape
    pad = ((0, -h % multiple), (0, -w % multiple))
    return predict(np.pad(frame, pad, mode="reflect")[None, None])[0, 0, : h * scale, : w * scale]


@pytest.mark.parametrize("scale", [1, 2])
def test_finite_receptive_field_net_matches_whole_frame(torch_one_thread, scale):
    gcfg, predict = _random_generator(scale)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:180, :201]
    frame = 0.5 * np.sin(yy / 17) * np.cos(xx / 23) + 0.3 * rng.standard_normal(yy.shape)
    frame = frame.astype(np.float32)  # odd width: reflect-padded to 204
    whole = _whole_frame(predict, frame, gcfg.size_multiple, scale)
    assert whole.std() > 0.1
    cfg = TilingConfig.for_model(gcfg.receptive_field, gcfg.size_multiple, scale, tile=128)
    assert plan_tiles(frame.shape, cfg).grid == (2, 3)
    assert cfg.overlap >= gcfg.receptive_field and 2 * cfg.halo >= gcfg.receptive_field
    assert np.abs(predict_tiled(frame, predict, cfg) - whole).max() <= 1e-5
    crop = TilingConfig(tile=128, overlap=gcfg.receptive_field + 3, scale=scale, blend="crop")
    assert np.abs(predict_tiled(frame, predict, crop) - whole).max() <= 1e-5
    # sensitivity: too little overlap, or no halo, is visibly wrong
    short = TilingConfig(tile=64, overlap=16, halo=4, scale=scale)
    assert np.abs(predict_tiled(frame, predict, short) - whole).max() > 1e-2
    gaussian = TilingConfig(tile=128, overlap=cfg.overlap, scale=scale, blend="gaussian")
    assert 1e-5 < np.abs(predict_tiled(frame, predict, gaussian) - whole).max() < 0.05


def test_tile_origins_off_the_stride_lattice_would_change_the_output(torch_one_thread):
    _, predict = _random_generator()
    frame = np.random.default_rng(2).uniform(-1, 1, (96, 96)).astype(np.float32)
    whole = predict(frame[None, None])[0, 0]
    shifted = predict(frame[None, None, 2:94, 2:94])[0, 0]  # origin 2: not a multiple of 4
    aligned = predict(frame[None, None, 4:96, 4:96])[0, 0]  # origin 4
    inner = slice(30, 60)
    assert np.abs(aligned[inner, inner] - whole[4:, 4:][inner, inner]).max() <= 1e-5
    assert np.abs(shifted[inner, inner] - whole[2:, 2:][inner, inner]).max() > 1e-3


def _seam_ratio(y: np.ndarray, plan, margin: int) -> float:
    """Worst of rows/cols: mean |gradient| across the tile overlaps / mean elsewhere (away from
    the image border by ``margin``)."""
    ratios = []
    for axis in (0, 1):
        grad = np.abs(np.diff(y, axis=axis)).mean(axis=1 - axis)
        origins = sorted({t.origin[axis] for t in plan.tiles})
        seam = np.zeros(grad.size, bool)
        for start, next_start in itertools.pairwise(origins):
            seam[next_start - 1 : start + plan.tile_shape[axis]] = True
        other = ~seam
        other[:margin] = other[grad.size - margin :] = False
        ratios.append(grad[seam].mean() / grad[other].mean())
    return max(ratios, key=lambda r: abs(r - 1))


def test_no_seams_on_a_smooth_frame(torch_one_thread):
    gcfg, predict = _random_generator(positive=True)
    yy, xx = np.mgrid[:384, :384].astype(np.float32)
    # diagonal stripes: every row and column has the same gradient statistics, so the ratio
    # is 1 without seams
    frame = 0.5 + 0.25 * np.sin(2 * np.pi * (xx + yy) / 32) + 0.2 * np.sin(np.pi * (xx - yy) / 24)
    cfg = TilingConfig.for_model(gcfg.receptive_field, tile=128)
    tiled = predict_tiled(frame.astype(np.float32), predict, cfg)
    margin = gcfg.receptive_field
    assert abs(_seam_ratio(tiled, plan_tiles(frame.shape, cfg), margin) - 1) <= 0.05
    naive = TilingConfig(tile=128, overlap=0)  # sensitivity: abutting tiles show seams
    ratio = _seam_ratio(
        predict_tiled(frame, predict, naive), plan_tiles(frame.shape, naive), margin
    )
    assert ratio > 1.5
