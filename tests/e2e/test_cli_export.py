"""``cyclesr export`` through the CLI on a tiny trained model folder."""

from __future__ import annotations

import importlib.util
import json

import pytest
from typer.testing import CliRunner

from cyclesr_deploy.model import (
    EXPORT_JSON,
    FROZEN_CHECK,
    FROZEN_ONNX,
    MODEL_JSON,
    ONNX_FILES,
    ONNX_FP16,
)

pytest.importorskip("torch")
pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from cyclesr_deploy.cli import app
from tests.tiny_models import train_tiny_model

runner = CliRunner()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return train_tiny_model(tmp_path_factory.mktemp("cli-export"))


def test_export_all_writes_onnx_fp16_and_report(model_dir):
    res = runner.invoke(app, ["export", "all", str(model_dir)])
    assert res.exit_code == 0, res.output
    assert (model_dir / ONNX_FILES["ab"]).is_file()
    assert (model_dir / ONNX_FP16).is_file()
    report = json.loads((model_dir / EXPORT_JSON).read_text())
    assert {ONNX_FILES["ab"], ONNX_FP16} <= set(report["artifacts"])
    # InstanceNorm generator: the frozen-statistics graphs are a default step, with entries
    for name in (FROZEN_ONNX["stats"], FROZEN_ONNX["tile"]):
        assert (model_dir / name).is_file()
        entry = report["artifacts"][name]
        assert entry["bytes"] == (model_dir / name).stat().st_size
        assert entry["parity"] and entry["parity"][0]["max_abs"] < 1e-3
        assert entry["settings"]["graph"] in name
        assert entry["settings"]["frozen_stats"]["length"] > 0
    assert "ONNX stats" in res.output and "ONNX tile" in res.output
    # ... followed by the check of the crops estimate that --stats auto follows
    check = json.loads((model_dir / FROZEN_CHECK).read_text())
    assert check["choice"] in ("crops", "whole") and len(check["checks"]) == 2
    assert f"--stats auto uses {check['choice']}" in " ".join(res.output.split())
    if importlib.util.find_spec("tensorrt") is None:
        assert "skipped" in res.output

    # a second export without --overwrite refuses and keeps the file
    before = (model_dir / ONNX_FILES["ab"]).read_bytes()
    again = runner.invoke(app, ["export", "onnx", str(model_dir)])
    assert again.exit_code == 2
    assert "overwrite" in again.output
    assert (model_dir / ONNX_FILES["ab"]).read_bytes() == before


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT present")
def test_export_tensorrt_without_tensorrt_names_the_extra(model_dir):
    res = runner.invoke(app, ["export", "tensorrt", str(model_dir), "--tile", "64"])
    assert res.exit_code == 2
    assert "cyclesr-deploy[tensorrt]" in res.output


def test_export_tensorrt_rejects_a_tile_breaking_the_size_multiple(model_dir):
    res = runner.invoke(app, ["export", "tensorrt", str(model_dir), "--tile", "66"])
    assert res.exit_code == 2
    assert "66" in res.output


def test_export_folder_without_weights(tmp_path):
    (tmp_path / "m").mkdir()
    res = runner.invoke(app, ["export", "onnx", str(tmp_path / "m")])
    assert res.exit_code == 2
    assert MODEL_JSON in res.output


def test_export_onnx_frozen_switch(model_dir):
    graphs = [model_dir / FROZEN_ONNX["stats"], model_dir / FROZEN_ONNX["tile"]]
    for graph in graphs:
        graph.unlink(missing_ok=True)
    res = runner.invoke(
        app, ["export", "onnx", str(model_dir), "--overwrite", "--no-fp16", "--no-frozen"]
    )
    assert res.exit_code == 0, res.output
    assert "ONNX stats" not in res.output
    assert not any(g.exists() for g in graphs)
    res = runner.invoke(app, ["export", "onnx", str(model_dir), "--overwrite", "--no-fp16"])
    assert res.exit_code == 0, res.output
    assert "ONNX stats" in res.output and "ONNX tile" in res.output
    # ... followed by the check of the crops estimate that --stats auto follows
    check = json.loads((model_dir / FROZEN_CHECK).read_text())
    assert check["choice"] in ("crops", "whole") and len(check["checks"]) == 2
    assert f"--stats auto uses {check['choice']}" in " ".join(res.output.split())
    assert all(g.is_file() for g in graphs)


def test_export_checks_the_estimate_on_the_users_frame(model_dir, tmp_path):
    import numpy as np
    import tifffile

    rng = np.random.default_rng(1)
    frame = tmp_path / "acq.tif"
    tifffile.imwrite(frame, rng.integers(0, 4000, (1024, 1088), np.uint16))
    args = ["export", "onnx", str(model_dir), "--overwrite", "--no-fp16"]
    res = runner.invoke(app, [*args, "--check-frame", str(frame)])
    assert res.exit_code == 0, res.output
    check = json.loads((model_dir / FROZEN_CHECK).read_text())
    assert [c["frame"] for c in check["checks"]] == [{"source": str(frame), "shape": [1024, 1088]}]
    # an unusable check frame is refused before anything is exported
    small = tmp_path / "small.tif"
    tifffile.imwrite(small, rng.integers(0, 4000, (300, 300), np.uint16))
    before = (model_dir / ONNX_FILES["ab"]).stat().st_mtime_ns
    res = runner.invoke(app, [*args, "--check-frame", str(small)])
    assert res.exit_code == 2
    assert "too small" in res.output
    assert (model_dir / ONNX_FILES["ab"]).stat().st_mtime_ns == before
    missing = runner.invoke(app, [*args, "--check-frame", str(tmp_path / "none.tif")])
    assert missing.exit_code == 2
    assert "none.tif" in missing.output


def test_export_onnx_calibrates_trust(model_dir, tmp_path):
    """export onnx calibrates the trust score on --trust-data (the training folder of the tiny
    model holds too few frames: skipped, said, the export stands); export check reports it."""
    import numpy as np
    import tifffile

    from cyclesr_deploy.model import ModelFolder
    from cyclesr_deploy.synthetic.simulate import simulate_pair

    trust_json = ModelFolder(model_dir).trust_json
    trust_json.unlink(missing_ok=True)
    args = ["export", "onnx", str(model_dir), "--overwrite", "--no-fp16", "--no-frozen"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "trust not calibrated" in res.output and not trust_json.exists()
    data = tmp_path / "lr"
    data.mkdir()
    stack = np.stack([simulate_pair({"size": 64}, i).lr for i in range(8)])
    tifffile.imwrite(data / "lr.tif", stack, photometric="minisblack", metadata={"axes": "TYX"})
    res = runner.invoke(app, [*args, "--trust-data", str(data)])
    assert res.exit_code == 0, res.output
    assert json.loads(trust_json.read_text())["n_frames"] == 8
    res = runner.invoke(app, ["export", "check", str(model_dir)])
    assert "trust calibration: ok: 8 frames" in " ".join(res.output.split())
    trust_json.unlink()
    res = runner.invoke(app, [*args, "--trust-data", str(data), "--no-trust-calibration"])
    assert res.exit_code == 0, res.output
    assert not trust_json.exists() and "trust" not in res.output.lower()


def test_export_check_alone(model_dir, tmp_path):
    (model_dir / FROZEN_CHECK).unlink(missing_ok=True)
    res = runner.invoke(
        app, ["export", "onnx", str(model_dir), "--overwrite", "--no-fp16", "--no-frozen"]
    )
    assert res.exit_code == 0, res.output
    assert "stats check" not in res.output
    assert not (model_dir / FROZEN_CHECK).exists()
    res = runner.invoke(app, ["export", "check", str(model_dir)])
    assert res.exit_code == 0, res.output
    check = json.loads((model_dir / FROZEN_CHECK).read_text())
    assert [c["frame"]["shape"] for c in check["checks"]] == [[1024, 1024], [2048, 2048]]
    assert f"--stats auto uses {check['choice']}" in " ".join(res.output.split())
    res = runner.invoke(app, ["export", "check", str(tmp_path)])
    assert res.exit_code == 2
    assert MODEL_JSON in res.output
    from cyclesr_deploy.model import GeneratorConfig, ModelConfig, save_model_config

    save_model_config(tmp_path, ModelConfig(generator=GeneratorConfig(norm="none")))
    res = runner.invoke(app, ["export", "check", str(tmp_path)])
    assert res.exit_code == 2
    assert "InstanceNorm" in res.output
    assert not (tmp_path / FROZEN_CHECK).exists()


@pytest.mark.slow
def test_export_precision_writes_int8_and_records(tmp_path):
    """`cyclesr export precision` on a copy of a built-in model: generator.int8.onnx recorded
    and verified like the other artifacts, a record per precision, read by the gate."""
    import shutil

    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    from cyclesr_deploy.builtin import builtin_model
    from cyclesr_deploy.engines.precision import read_records
    from cyclesr_deploy.model import ONNX_INT8, ModelFolder

    folder = tmp_path / "m"
    shutil.copytree(builtin_model("reference-supervised"), folder)
    (folder / ONNX_INT8).unlink()
    res = runner.invoke(
        app, ["export", "precision", str(folder), "--precision", "int8", "--frames", "1",
              "--size", "128"]
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "openvino/int8: int8:" in res.output and "x FP32" in res.output
    records = read_records(folder)
    assert records["openvino/int8"].frames == 1 and records["openvino/int8"].frame_size == 128
    ModelFolder(folder).verify(ONNX_INT8)  # recorded in export.json: accepted
    (folder / ONNX_INT8).write_bytes(b"changed")
    with pytest.raises(Exception, match="export precision"):
        ModelFolder(folder).verify(ONNX_INT8)
