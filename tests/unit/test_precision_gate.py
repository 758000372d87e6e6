"""The reduced-precision gate: ``precision="auto"`` takes the fastest recorded precision this CPU
runs whose recorded quality loss is within the documented thresholds, else FP32, and says why."""

from __future__ import annotations

import json

import pytest

from cyclesr_deploy.engines import precision as gate
from cyclesr_deploy.errors import InputError
from cyclesr_deploy.model import EXPORT_JSON, ONNX_FILES, ONNX_INT8, ModelConfig, ModelFolder
from cyclesr_deploy.model import save_model_config as save

ALL = ("FP32", "BF16", "INT8")


def record(precision: str, **kw) -> dict:
    base = {
        "precision": precision,
        "artifact": gate.ONNX_BY_CPU_PRECISION[precision],
        "frame_size": 512,
        "frames": 4,
        "ms": 100.0,
        "fp32_ms": 200.0,
        "psnr_vs_fp32_db": 60.0,
        "max_abs_vs_fp32": 0.01,
        "psnr_gt_fp32_db": 25.0,
        "psnr_gt_db": 24.99,
        "ssim_gt_fp32": 0.8,
        "ssim_gt": 0.7999,
    }
    return {**base, **kw}


@pytest.fixture
def folder(tmp_path):
    d = tmp_path / "m"
    save(d, ModelConfig())
    (d / ONNX_FILES["ab"]).write_bytes(b"fp32 graph")
    (d / ONNX_INT8).write_bytes(b"int8 graph")
    return d


def write_records(folder, **records):
    sha = ModelFolder(folder).digest(ONNX_FILES["ab"])
    data = {
        "schema_version": "1",
        "artifacts": {},
        "precisions": {
            gate.record_key("openvino", p): {"source_sha256": sha, **r} for p, r in records.items()
        },
    }
    (folder / EXPORT_JSON).write_text(json.dumps(data), encoding="utf-8")


def test_fastest_passing_precision_is_chosen_and_said(folder):
    write_records(folder, bf16=record("bf16", ms=120.0), int8=record("int8", ms=80.0))
    choice = gate.choose_precision(folder, ALL)
    assert choice.precision == "int8"
    assert "int8" in choice.reason and "2.50x FP32" in choice.reason


def test_doctored_record_over_the_threshold_is_refused(folder):
    """A record whose PSNR loss against the ground truth exceeds the gate: refused, FP32."""
    write_records(folder, bf16=record("bf16", psnr_gt_db=24.5))  # -0.5 dB
    choice = gate.choose_precision(folder, ALL)
    assert choice.precision == "fp32"
    why = dict(choice.rejected)["bf16"]
    assert why.startswith("quality gate") and f"> {gate.MAX_PSNR_LOSS_DB}" in why


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("ssim_gt", 0.79, "SSIM"),
        ("psnr_vs_fp32_db", 30.0, "vs FP32"),
        ("ms", 250.0, "not faster"),
    ],
)
def test_each_criterion_refuses(folder, field, value, words):
    write_records(folder, int8=record("int8", **{field: value}))
    choice = gate.choose_precision(folder, ALL)
    assert choice.precision == "fp32" and words in dict(choice.rejected)["int8"]


@pytest.mark.parametrize("field", ["psnr_gt_db", "ssim_gt", "psnr_vs_fp32_db"])
def test_a_nan_in_a_record_fails_the_gate(folder, field):
    write_records(folder, int8=record("int8", **{field: float("nan")}))
    choice = gate.choose_precision(folder, ALL)
    assert choice.precision == "fp32" and "quality gate" in dict(choice.rejected)["int8"]


def test_a_refused_fast_precision_falls_back_to_the_next(folder):
    write_records(folder, int8=record("int8", ms=50.0, psnr_gt_db=20.0), bf16=record("bf16"))
    choice = gate.choose_precision(folder, ALL)
    assert choice.precision == "bf16" and "quality gate" in dict(choice.rejected)["int8"]


def test_bf16_without_cpu_support_is_refused_with_the_reason(folder):
    write_records(folder, bf16=record("bf16"))
    choice = gate.choose_precision(folder, ("FP32", "INT8"))
    assert choice.precision == "fp32"
    assert "avx512_bf16/AMX" in dict(choice.rejected)["bf16"]


def test_stale_record_of_another_graph_is_refused(folder):
    write_records(folder, bf16=record("bf16"))
    (folder / ONNX_FILES["ab"]).write_bytes(b"re-exported graph")
    choice = gate.choose_precision(folder, ALL)
    assert choice.precision == "fp32" and "another generator.onnx" in dict(choice.rejected)["bf16"]


def test_missing_int8_graph_and_no_records(folder):
    write_records(folder, int8=record("int8"))
    (folder / ONNX_INT8).unlink()
    choice = gate.choose_precision(folder, ALL)
    assert choice.precision == "fp32"
    assert "no generator.int8.onnx" in dict(choice.rejected)["int8"]
    assert "not recorded" in dict(choice.rejected)["bf16"]
    (folder / EXPORT_JSON).unlink()
    assert gate.choose_precision(folder, ALL).precision == "fp32"


def test_unreadable_record_is_an_input_error(folder):
    (folder / EXPORT_JSON).write_text('{"precisions": {"openvino/bf16": {"ms": "x"}}}', "utf-8")
    with pytest.raises(InputError, match="precision records"):
        gate.read_records(folder)


def test_export_report_keeps_the_records(folder):
    from cyclesr_deploy.export.report import ExportReport, read_export_report, write_export_report

    write_records(folder, bf16=record("bf16"))
    write_export_report(folder, ExportReport())  # another export step merges its entries
    assert set(read_export_report(folder).precisions) == {"openvino/bf16"}
    assert gate.read_records(folder)["openvino/bf16"].speedup == 2.0
