"""``cyclesr bench latency|quality|compare`` end to end through typer's CliRunner on a tiny
model with the CPU backends: files written, documented JSON fields, valid PNGs, exit codes."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

pytest.importorskip("torch")
pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("matplotlib")

from cyclesr_deploy.cli import app
from tests.integration.test_bench import png_size, tiny_model

runner = CliRunner()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("cli-bench"))


def test_bench_help_lists_the_three_commands():
    res = runner.invoke(app, ["bench", "--help"])
    assert res.exit_code == 0
    for cmd in ("latency", "quality", "compare"):
        assert cmd in res.output


def test_bench_latency(model_dir, tmp_path):
    out = tmp_path / "lat"
    args = ["bench", "latency", str(model_dir), "--backend", "onnxruntime", "--backend", "torch"]
    args += ["--tile", "96", "--batch", "2", "--whole-frame", "--frame-size", "128"]
    args += ["--repeats", "2", "--warmup", "1", "-o", str(out)]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    result = json.loads((out / "latency.json").read_text())
    for key in ("machine", "software", "settings", "model", "rows", "skipped"):
        assert key in result
    assert {"cpu", "cores", "os", "python"} <= set(result["machine"])
    row = result["rows"][0]
    for key in ("backend", "precision", "engine", "tile", "batch", "tiles_per_frame",
                "flops_per_frame", "engine_only", "end_to_end", "host_peak_rss_mb",
                "gpu_peak_mb"):  # fmt: skip
        assert key in row
    for key in ("p50_ms", "p95_ms", "p99_ms", "frames_per_s", "mpx_per_s", "tflops"):
        assert key in row["engine_only"] and key in row["end_to_end"]
    assert len(result["rows"]) == 4  # 2 backends x (tile 96, whole frame)
    assert "onnxruntime[CPUExecutionProvider]" in (out / "latency.md").read_text()
    for name in ("throughput_vs_tile.png", "latency_distribution.png"):
        w, h = png_size(out / name)
        assert w >= 300 and h >= 200
    assert res.stdout.startswith("latency") and "┃" in res.stdout  # the table, on stdout


def test_bench_compare(model_dir, tmp_path):
    out = tmp_path / "cmp"
    res = runner.invoke(
        app,
        ["bench", "compare", str(model_dir), "--synthetic", "1", "--size", "64", "-o", str(out)],
    )
    assert res.exit_code == 0, res.output
    result = json.loads((out / "compare.json").read_text())
    assert {"engines", "pairs", "settings", "machine"} <= set(result)
    keys = {(p["a"], p["b"]) for p in result["pairs"]}
    assert ("onnxruntime/fp32", "onnxruntime/fp16") in keys
    assert ("onnxruntime/fp32", "torch/fp32") in keys
    assert (out / "compare.md").is_file()


def test_bench_compare_on_a_frames_folder(model_dir, tmp_path):
    frames = model_dir.parent / "d" / "testA"
    res = runner.invoke(
        app, ["bench", "compare", str(model_dir), "--frames", str(frames), "-o", str(tmp_path)]
    )
    assert res.exit_code == 0, res.output
    result = json.loads((tmp_path / "compare.json").read_text())
    assert len(result["frames"]) == 2 and result["pairs"]


def test_bench_quality(model_dir, tmp_path):
    data = model_dir.parent / "d"
    out = tmp_path / "q"
    args = ["bench", "quality", "--lr", str(data / "testA"), "--hr", str(data / "testB")]
    args += ["--model", f"cyclegan={model_dir}", "--pixel-size", "50", "-o", str(out)]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    result = json.loads((out / "quality.json").read_text())
    assert result["methods"] == ["input", "cyclegan", "HR"]
    assert result["settings"]["pixel_size_nm"] == 50
    row = result["rows"][1]
    for key in ("psnr", "ssim", "mse", "nrmse", "bgstd", "cuf_ring_index",
                "decorrelation_resolution_px", "decorrelation_resolution"):  # fmt: skip
        assert key in row["mean"] and key in row["std"]
    assert "_images" not in result
    assert "cyclegan" in (out / "quality.md").read_text()
    w, h = png_size(out / "figure.png")
    assert w >= 600 and h >= 600


def test_bench_errors_exit_2(model_dir, tmp_path):
    res = runner.invoke(
        app, ["bench", "latency", str(model_dir), "--tile", "30", "-o", str(tmp_path)]
    )
    assert res.exit_code == 2
    assert "--tile 30" in res.output
    res = runner.invoke(
        app, ["bench", "quality", "--lr", str(tmp_path / "no"), "--hr", str(tmp_path), "-o",
              str(tmp_path)]
    )  # fmt: skip
    assert res.exit_code == 2
    res = runner.invoke(
        app, ["bench", "latency", str(model_dir), "--backend", "nope", "--tile", "96",
              "--frame-size", "64", "--repeats", "1", "-o", str(tmp_path)]
    )  # fmt: skip
    assert res.exit_code == 2


def test_bench_quality_takes_builtin_model_names(model_dir, tmp_path):
    data = model_dir.parent / "d"
    out = tmp_path / "q"
    args = ["bench", "quality", "--lr", str(data / "testA"), "--hr", str(data / "testB")]
    args += ["--model", "reference-cyclegan", "--no-figure", "-o", str(out)]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    result = json.loads((out / "quality.json").read_text())
    assert result["methods"] == ["input", "reference-cyclegan", "HR"]
    assert result["settings"]["models"]["reference-cyclegan"].endswith("reference-cyclegan")
    res = runner.invoke(app, [*args[:-5], "--model", "nope", "-o", str(out)])
    assert res.exit_code == 2 and "built-in model" in " ".join(res.output.split())
