"""Two-pass tiled inference with frame-level InstanceNorm statistics
(cyclesr_deploy.engines.frozen_torch).

Module fixtures: the tiny CycleGAN trained for two steps (ngf 4, 1 block, RF 41 px) and a random
canonical-architecture generator at reduced width (ngf 8, 3 blocks, RF 73 px). Frames are
synthetic LR images mapped to [-1, 1]. With exact (whole-frame) statistics the tiled output must
equal whole-frame inference; the estimates are reported as PSNR(tiled, whole) (range 2).
"""

from __future__ import annotations

import io

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from cyclesr_deploy.engines.frozen_torch import (  # noqa: E402
    FrozenInstanceNorm,
    freeze_instance_norms,
    load_packed,
    packed_statistics,
    predict_tiled_frozen,
    record_statistics,
    set_mode,
    statistics_from_crops,
    statistics_from_thumbnail,
)
from cyclesr_deploy.errors import InputError  # noqa: E402
from cyclesr_deploy.model import WEIGHTS, GeneratorConfig, load_model  # noqa: E402
from cyclesr_deploy.nets import build_generator  # noqa: E402
from cyclesr_deploy.runtime.tiling import TilingConfig  # noqa: E402
from cyclesr_deploy.synthetic import SynthConfig, simulate_pair  # noqa: E402

EXACT_TOL = 1e-4  # max abs, FP32, output range [-1, 1]


def psnr2(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB for images in [-1, 1] (peak-to-peak 2)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(4.0 / mse)


def tiling_for(rf: int, tile: int, batch_size: int = 8) -> TilingConfig:
    """TilingConfig.for_model, with the blend ramp narrowed only where the tile is too small
    for the default 32-px ramp (the halo, which exactness needs, is never reduced)."""
    for ramp in (32, 16, 8, 0):
        try:
            return TilingConfig.for_model(rf, tile=tile, ramp=ramp, batch_size=batch_size)
        except InputError:
            continue
    raise AssertionError(f"tile {tile} cannot hold the halo of RF {rf}")


def frame(shape: tuple[int, int], seed: int = 1) -> np.ndarray:
    """A synthetic LR frame (1, H, W) mapped to [-1, 1] by its min/max."""
    side = max(shape)
    lr = simulate_pair(SynthConfig(size=side), seed).lr[: shape[0], : shape[1]].astype(np.float64)
    lo, hi = lr.min(), lr.max()
    return ((lr - lo) / (hi - lo) * 2 - 1).astype(np.float32)[None]


def whole(gen, x: np.ndarray) -> np.ndarray:
    set_mode(gen, "instance")
    with torch.inference_mode():
        return gen(torch.from_numpy(x)[None]).numpy()[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from tests.tiny_models import train_tiny_model

    folder = train_tiny_model(tmp_path_factory.mktemp("frozen-norm"))
    cfg = load_model(folder).generator
    gen = build_generator(cfg)
    state = torch.load(folder / WEIGHTS["ab"], map_location="cpu", weights_only=True)
    gen.load_state_dict(state, strict=True)
    return gen.eval(), cfg


@pytest.fixture(scope="module")
def random_gen():
    cfg = GeneratorConfig(ngf=8, n_blocks=3)
    return build_generator(cfg, generator=torch.Generator().manual_seed(0)).eval(), cfg


@pytest.fixture(scope="module")
def frames():
    return {(256, 256): frame((256, 256)), (320, 448): frame((320, 448), seed=2)}


def test_swap_keeps_state_dict_and_weights():
    cfg = GeneratorConfig(ngf=4, n_blocks=2)
    gen = build_generator(cfg, generator=torch.Generator().manual_seed(3)).eval()
    buf = io.BytesIO()
    torch.save(gen.state_dict(), buf)
    n_norms = sum(isinstance(m, torch.nn.InstanceNorm2d) for m in gen.modules())
    layers = freeze_instance_norms(gen)
    assert len(layers) == n_norms == 1 + 2 + 2 * 2 + 2  # c7s1, 2 down, 2 per block, 2 up
    assert not any(isinstance(m, torch.nn.InstanceNorm2d) for m in gen.modules())
    assert freeze_instance_norms(gen) == layers  # idempotent
    buf.seek(0)
    before = torch.load(buf, weights_only=True)
    assert set(gen.state_dict()) == set(before)
    gen.load_state_dict(before, strict=True)  # saved before, loads after
    fresh = build_generator(cfg)
    fresh.load_state_dict(gen.state_dict(), strict=True)  # saved after, loads before
    for k, v in before.items():
        assert torch.equal(gen.state_dict()[k], v)


def test_only_canonical_instance_norm_is_swapped():
    with pytest.raises(InputError, match="affine=False"):
        FrozenInstanceNorm.from_instance_norm(torch.nn.InstanceNorm2d(4, affine=True))


def test_record_then_frozen_reproduces_instance(random_gen):
    gen, _ = random_gen
    layers = freeze_instance_norms(gen)
    x = torch.from_numpy(frame((96, 128), seed=5))[None]
    with torch.inference_mode():
        set_mode(layers, "instance")
        ref = gen(x)
        set_mode(layers, "record")
        rec = gen(x)
        set_mode(layers, "frozen")
        frozen = gen(x)
    set_mode(layers, "instance")
    assert torch.equal(rec, ref)  # record normalises exactly as InstanceNorm2d
    assert (frozen - ref).abs().max().item() < 1e-5
    # stored statistics are InstanceNorm's: biased variance, per channel, one frame
    first = layers[0]
    assert first.mean.shape == first.var.shape == (first.num_features,)
    conv = gen.model[1](gen.model[0](x))
    var, mean = torch.var_mean(conv, dim=(2, 3), correction=0)
    torch.testing.assert_close(first.mean, mean[0])
    torch.testing.assert_close(first.var, var[0])


def test_frozen_without_statistics_is_an_error():
    layer = FrozenInstanceNorm(3)
    layer.mode = "frozen"
    with pytest.raises(InputError, match="before any statistics"):
        layer(torch.zeros(1, 3, 4, 4))


def test_packed_statistics_round_trip(random_gen, frames):
    gen, cfg = random_gen
    x = frames[(256, 256)]
    layers = record_statistics(gen, x)
    vec = packed_statistics(layers)
    assert vec.shape == (sum(2 * layer.num_features for layer in layers),)
    c0 = layers[0].num_features
    torch.testing.assert_close(vec[:c0], layers[0].mean)
    torch.testing.assert_close(vec[c0 : 2 * c0], layers[0].var)
    other = build_generator(cfg)
    other.load_state_dict(gen.state_dict())
    other.eval()
    load_packed(freeze_instance_norms(other), vec.numpy())
    torch.testing.assert_close(packed_statistics(other), vec)
    with pytest.raises(InputError, match="values"):
        load_packed(other, vec[:-1])
    tiling = tiling_for(cfg.receptive_field, 128)
    a = predict_tiled_frozen(gen, x, tiling, packed=vec)
    b = predict_tiled_frozen(other, x, tiling, stats="whole")
    np.testing.assert_allclose(a, b, atol=1e-6)


CASES = [
    ("trained", (256, 256), 64),
    ("trained", (256, 256), 96),
    ("trained", (320, 448), 128),
    ("random", (256, 256), 128),
    ("random", (320, 448), 160),
]


@pytest.mark.parametrize(("model", "shape", "tile"), CASES)
def test_whole_frame_statistics_make_tiling_exact(request, frames, model, shape, tile):
    gen, cfg = request.getfixturevalue("trained" if model == "trained" else "random_gen")
    x = frames[shape]
    tiling = tiling_for(cfg.receptive_field, tile)
    ref = whole(gen, x)
    exact = predict_tiled_frozen(gen, x, tiling, stats="whole")
    naive = predict_tiled_frozen(gen, x, tiling, stats="tile")
    err_exact = float(np.abs(exact - ref).max())
    err_naive = float(np.abs(naive - ref).max())
    print(
        f"\n{model} {shape} tile {tile} overlap {tiling.overlap}: max|tiled - whole| exact "
        f"{err_exact:.2e} (PSNR {psnr2(exact, ref):.1f} dB), naive {err_naive:.2e} "
        f"(PSNR {psnr2(naive, ref):.1f} dB)"
    )
    assert exact.shape == ref.shape
    assert err_exact <= EXACT_TOL
    assert err_naive > 100 * EXACT_TOL  # per-tile instance norm is measurably off
    assert psnr2(naive, ref) < psnr2(exact, ref) - 30


def test_estimated_statistics(trained, frames):
    gen, cfg = trained
    x = frames[(256, 256)]
    tiling = tiling_for(cfg.receptive_field, 64)
    ref = whole(gen, x)
    got = {
        s: psnr2(predict_tiled_frozen(gen, x, tiling, stats=s, crop=128, n_crops=4, factor=2), ref)
        for s in ("tile", "crops", "thumbnail", "whole")
    }
    print("\nPSNR(tiled, whole) dB, trained tiny model, 256^2, tile 64:", got)
    assert got["tile"] < got["crops"] < got["whole"]
    assert got["crops"] >= 45.0
    assert got["thumbnail"] < got["whole"]


def test_estimators_store_sane_statistics(random_gen, frames):
    gen, _ = random_gen
    x = frames[(320, 448)]
    exact = packed_statistics(record_statistics(gen, x)).clone()
    crops = packed_statistics(statistics_from_crops(gen, x, crop=160, n=6)).clone()
    thumb = packed_statistics(statistics_from_thumbnail(gen, x, factor=2)).clone()
    assert crops.shape == thumb.shape == exact.shape
    assert torch.isfinite(crops).all() and torch.isfinite(thumb).all()
    # crops covering the whole frame at 6 x 160^2 ~ 1.1 x frame: close to exact
    assert (crops - exact).norm() < (thumb - exact).norm()
    with pytest.raises(InputError, match="multiple"):
        statistics_from_crops(gen, x, crop=162, n=2)


def test_statistics_passes_stop_after_the_last_norm(random_gen, frames):
    """The generator's tail after its last InstanceNorm (the output convolution) is skipped by
    the statistics passes, every layer is still recorded, and plain inference is unaffected."""
    gen, _ = random_gen
    last_conv = [m for m in gen.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    calls: list[int] = []
    hook = last_conv.register_forward_hook(lambda *args: calls.append(1))
    try:
        x = frames[(320, 448)]
        layers = record_statistics(gen, x)
        assert all(layer.recorded for layer in layers)
        statistics_from_crops(gen, x, crop=160, n=2)
        assert not calls
        whole(gen, x)
        assert calls
    finally:
        hook.remove()


def test_calibrated_crops_pool_with_weights_and_equal_crops_do_not(random_gen, frames):
    gen, _ = random_gen
    x = frames[(320, 448)]
    calibrated = packed_statistics(statistics_from_crops(gen, x, crop=160, n=4)).clone()
    equal = packed_statistics(statistics_from_crops(gen, x, crop=160, n=4, calibrate=False))
    assert torch.isfinite(calibrated).all() and not torch.allclose(calibrated, equal)
    # the weights are cleared afterwards: the next pass without calibration is the equal one
    again = packed_statistics(statistics_from_crops(gen, x, crop=160, n=4, calibrate=False))
    assert torch.equal(again, equal)


@pytest.mark.parametrize("shape", [(3, 5, 32, 48), (2, 4, 30, 37)])  # equal / uneven blocks
def test_weighted_statistics_match_a_per_pixel_computation(shape):
    from cyclesr_deploy.engines.frozen_stats import block_index
    from cyclesr_deploy.engines.frozen_torch import weighted_statistics

    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g) * 3 + 10  # an offset: cancellation would show
    n, _, h, w = shape
    weights = torch.rand(n + 2, 4, 4, generator=g) + 0.1  # extra rows unused
    by, bx = block_index(h, 4), block_index(w, 4)
    pix = weights[:n][:, by][:, :, bx].double()  # (N, h, w): each pixel's weight
    xd = x.double()
    mean = (pix[:, None] * xd).sum((0, 2, 3)) / pix.sum()
    var = (pix[:, None] * (xd - mean[None, :, None, None]) ** 2).sum((0, 2, 3)) / pix.sum()
    m, v = weighted_statistics(x, weights)
    torch.testing.assert_close(m.double(), mean, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(v.double(), var, rtol=1e-5, atol=1e-6)
