"""``cyclesr_deploy.bench`` on a tiny trained model with the CPU backends: FLOP count, latency,
compare and quality results with their documented fields, and valid PNGs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.tiny_models import train_tiny_model

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from cyclesr_deploy.bench.latency import (  # noqa: E402
    LatencySettings,
    generator_flops,
    latency_markdown,
    run_latency,
)
from cyclesr_deploy.model import GeneratorConfig  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def tiny_model(root):
    """Tiny trained model exported to FP32 and FP16 ONNX; paired test data in root/d."""
    return train_tiny_model(root, n_test=2, onnx=True, fp16=True)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("bench"))


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_generator_flops_matches_a_hand_count():
    # ngf 2, 1 block, 1 -> 1 channel, 8x8 input, transposed-conv decoder
    cfg = GeneratorConfig(ngf=2, n_blocks=1)
    macs = (
        1 * 2 * 49 * 64  # c7s1-2 at 8x8
        + 2 * 4 * 9 * 16  # down 2 -> 4 at 4x4
        + 4 * 8 * 9 * 4  # down 4 -> 8 at 2x2
        + 2 * (8 * 8 * 9 * 4)  # one block: two conv3 8 -> 8 at 2x2
        + 8 * 4 * 9 * 4  # convT 8 -> 4, 2x2 inputs
        + 4 * 2 * 9 * 16  # convT 4 -> 2, 4x4 inputs
        + 2 * 1 * 49 * 64  # c7s1-1 at 8x8
    )
    assert generator_flops(cfg, 8, 8) == 2 * macs
    # scale 2, pixel-shuffle head: + conv3 2 -> 8 at 8x8, last conv at 16x16
    up = GeneratorConfig(ngf=2, n_blocks=1, scale=2)
    extra = 2 * 8 * 9 * 64 + 2 * 1 * 49 * (256 - 64)
    assert generator_flops(up, 8, 8) == 2 * (macs + extra)


def test_generator_flops_agrees_with_torch_hooks():
    from cyclesr_deploy.nets import build_generator

    for cfg in (
        GeneratorConfig(ngf=4, n_blocks=2, upsample="resize_conv"),
        GeneratorConfig(ngf=4, n_blocks=1, scale=2, head="resize_conv"),
        GeneratorConfig(ngf=4, n_blocks=1, downscale=2),
    ):
        net = build_generator(cfg)
        macs = 0

        def hook(mod, inp, out):
            nonlocal macs
            k = mod.weight[0].numel()  # C_in/groups * kh * kw (conv) or C_out * kh * kw (convT)
            if isinstance(mod, torch.nn.ConvTranspose2d):
                macs += inp[0][0].numel() * k
            else:
                macs += out[0].numel() * k

        for mod in net.modules():
            if isinstance(mod, torch.nn.Conv2d | torch.nn.ConvTranspose2d):
                mod.register_forward_hook(hook)
        with torch.no_grad():
            net(torch.zeros(1, cfg.in_channels, 32, 48))
        assert generator_flops(cfg, 32, 48) == 2 * macs, cfg


def test_latency_rows_and_fields(model_dir, tmp_path):
    settings = LatencySettings(
        backends=("onnxruntime", "torch"),
        precisions=("fp32", "fp16"),
        tiles=(96,),
        batches=(2,),
        whole_frame=True,
        frame_size=128,
        repeats=2,
        warmup=1,
    )
    result = run_latency(model_dir, settings)
    assert {"machine", "software", "settings", "model", "rows", "skipped"} <= set(result)
    engines = {(r["backend"], r["precision"]) for r in result["rows"]}
    assert ("onnxruntime", "fp32") in engines and ("torch", "fp32") in engines
    tiles = {r["tile"] for r in result["rows"]}
    assert tiles == {96, 0}
    for r in result["rows"]:
        for part in ("engine_only", "end_to_end"):
            stats = r[part]
            assert stats["p50_ms"] > 0 and len(stats["samples_ms"]) == 2
            assert stats["p50_ms"] <= stats["p95_ms"] <= stats["p99_ms"]
            assert stats["frames_per_s"] > 0 and stats["mpx_per_s"] > 0 and stats["tflops"] > 0
        assert r["engine"]
        assert r["gpu_peak_mb"] is None
        assert r["host_peak_rss_mb"] is None or r["host_peak_rss_mb"] > 0
        if r["tile"] == 0:
            assert r["tiles_per_frame"] == 1
            assert r["flops_per_frame"] == generator_flops(
                GeneratorConfig(ngf=4, n_blocks=1), 128, 128
            )
        else:
            assert r["tiles_per_frame"] > 1
    json.dumps(result)  # JSON-ready
    md = latency_markdown(result)
    assert "| onnxruntime[CPUExecutionProvider] |" in md and result["machine"]["cpu"] in md

    pytest.importorskip("matplotlib")
    from cyclesr_deploy.bench import plots

    for fn, name in (
        (plots.throughput_vs_tile, "t.png"),
        (plots.latency_distribution, "d.png"),
    ):
        w, h = png_size(fn(result, tmp_path / name))
        assert w >= 300 and h >= 200


def test_compare_every_pair(model_dir):
    from cyclesr_deploy.bench.compare import compare_markdown, run_compare

    result = run_compare(model_dir, synthetic=1, size=64, backends=("onnxruntime", "torch"))
    ok = [e["key"] for e in result["engines"] if e["status"] == "ok"]
    assert {"onnxruntime/fp32", "onnxruntime/fp16", "torch/fp32"} <= set(ok)
    assert len(result["pairs"]) == len(ok) * (len(ok) - 1) // 2
    by = {(p["a"], p["b"]): p for p in result["pairs"]}
    fp32 = by[("onnxruntime/fp32", "torch/fp32")]
    assert fp32["max_abs"] < 1e-3 and fp32["share_beyond_tolerance"] == 0.0
    half = by[("onnxruntime/fp32", "onnxruntime/fp16")]
    assert 0 < half["max_abs"] < 0.1 and half["psnr_db"] > 30
    for p in result["pairs"]:
        assert {"max_abs", "mean_abs", "psnr_db", "share_beyond_tolerance", "tolerance"} <= set(p)
    assert "onnxruntime/fp16" in compare_markdown(result)


def test_quality_rows_and_figure(model_dir, tmp_path):
    from cyclesr_deploy.bench.quality import quality_markdown, run_quality

    data = model_dir.parent / "d"
    result = run_quality(
        data / "testA",
        data / "testB",
        {"cyclegan": model_dir},
        hr_repeat_dir=data / "testB",
        backend="onnxruntime",
        keep_images=True,
    )
    assert result["methods"] == ["input", "cyclegan", "HR"]
    rows = {r["method"]: r for r in result["rows"]}
    assert all(r["n"] == 2 for r in rows.values())
    for key in ("psnr", "ssim", "mse", "nrmse", "bgstd", "cuf_ring_index"):
        assert np.isfinite(rows["cyclegan"]["mean"][key])
        assert key in rows["cyclegan"]["std"]
    assert rows["HR"]["mean"]["mse"] == 0.0
    assert "frc_resolution_px" in rows["HR"]["mean"]  # --hr-repeat: FRC on the HR row
    assert result["settings"]["pixel_size_nm"] is not None  # from the OME metadata
    assert rows["cyclegan"]["mean"]["decorrelation_resolution"] is not None
    assert "| cyclegan | 2 |" in quality_markdown(result)

    pytest.importorskip("matplotlib")
    from cyclesr_deploy.bench.plots import quality_figure

    w, h = png_size(quality_figure(result["_images"], tmp_path / "fig.png"))
    assert w >= 600 and h >= 600


def test_quality_of_a_scale2_model_has_a_bicubic_row(tmp_path):
    from cyclesr_deploy.bench.quality import run_quality
    from cyclesr_deploy.model import WEIGHTS, ModelConfig, save_model_config
    from cyclesr_deploy.nets import build_generator
    from cyclesr_deploy.synthetic import SynthConfig, generate_dataset

    folder = tmp_path / "x2"
    gen = GeneratorConfig(ngf=4, n_blocks=1, scale=2)
    save_model_config(folder, ModelConfig(generator=gen))
    net = build_generator(gen, generator=torch.Generator().manual_seed(0))
    torch.save(net.state_dict(), folder / WEIGHTS["ab"])
    data = tmp_path / "d"
    cfg = SynthConfig(size=128, binning=2, lr_grid="native", seed=3)
    generate_dataset(data, cfg, n_train=0, n_test=1)
    result = run_quality(
        data / "testA", data / "testB", {"x2": folder}, backend="torch", pixel_size_nm=40.0
    )
    assert result["methods"] == ["bicubic", "x2", "HR"]
    assert result["rows"][0]["mean"]["decorrelation_resolution"] is not None


@pytest.mark.slow
def test_latency_end_to_end_runs_the_engine_figures_work(model_dir, monkeypatch):
    """Each row's end-to-end figure runs the same engine calls as its engine figure (tile rows
    tile, also where ``auto`` would run the frame whole), OpenVINO rows included; the old
    mismatch (end to end on whole frames) is caught."""
    from cyclesr_deploy.bench import latency

    pytest.importorskip("openvino")
    settings = LatencySettings(
        backends=("onnxruntime", "openvino"), tiles=(96,), frame_size=128, repeats=1, warmup=0
    )
    result = run_latency(model_dir, settings)
    assert {r["backend"] for r in result["rows"]} == {"onnxruntime", "openvino"}
    for r in result["rows"]:
        assert r["work"]["end_to_end_same"] and "x1x96x96" in r["work"]["engine_calls"]
    original = latency.end_to_end

    def whole_frames(src, dst, engine, model, cfg):  # what the bug did
        return original(src, dst, engine, model, cfg.model_copy(update={"whole_max_px": 1 << 30}))

    monkeypatch.setattr(latency, "end_to_end", whole_frames)
    with pytest.raises(latency.WorkMismatch, match="other engine work"):
        run_latency(model_dir, settings.model_copy(update={"backends": ("onnxruntime",)}))
