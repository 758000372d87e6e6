"""export.json merging and parity figures (numpy only)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from cyclesr_deploy.errors import InputError
from cyclesr_deploy.export.parity import (
    ParityError,
    ParityInput,
    adapt_sizes,
    check_sizes,
    compare_outputs,
    random_inputs,
    run_parity,
    synthetic_inputs,
)
from cyclesr_deploy.export.report import (
    ExportReport,
    artifact_entry,
    read_export_report,
    write_export_report,
)
from cyclesr_deploy.model import (
    EXPORT_JSON,
    ONNX_FILES,
    ONNX_FP16,
    GeneratorConfig,
    ModelConfig,
    NormalizationConfig,
)


def _item(shape=(1, 1, 8, 8)):
    return ParityInput("random 1x1x8x8", "random", np.zeros(shape, np.float32))


def test_compare_outputs_figures():
    ref = np.zeros((1, 1, 8, 8), np.float32)
    cand = ref.copy()
    cand[0, 0, 0, 0] = 0.5
    case = compare_outputs(_item(), ref + 1, cand + 1)
    assert case.max_abs == pytest.approx(0.5) and case.mean_abs == pytest.approx(0.5 / 64)
    assert case.psnr_db == pytest.approx(10 * math.log10(4 / (0.25 / 64)))
    assert case.rel_l2 == pytest.approx(0.5 / 8)
    assert compare_outputs(_item(), ref, ref).psnr_db == math.inf
    nan = compare_outputs(_item(), ref, ref * np.nan)
    assert nan.max_abs == math.inf and nan.rel_l2 == math.inf
    with pytest.raises(ParityError, match="output shape"):
        compare_outputs(_item(), ref, ref[..., :4])


def test_run_parity_accepts_any_callable():
    inputs = random_inputs([(1, 8, 8), (2, 4, 12)], channels=2, seed=1)
    assert [i.data.shape for i in inputs] == [(1, 2, 8, 8), (2, 2, 4, 12)]
    assert all(i.data.min() >= -1 and i.data.max() <= 1 for i in inputs)
    cases = run_parity(inputs, lambda x: x, lambda x: x + 1e-3)
    assert [c.max_abs for c in cases] == pytest.approx([1e-3, 1e-3], rel=1e-4)


def test_synthetic_inputs_follow_the_model_normalization_and_scale():
    model = ModelConfig(
        generator=GeneratorConfig(ngf=4, n_blocks=0, scale=2),
        normalization=NormalizationConfig(high_a=50000, high_b=50000),
    )
    (tile,) = synthetic_inputs(model, [(24, 40)], seed=3)
    assert tile.data.shape == (1, 1, 24, 40) and tile.data.dtype == np.float32
    low, high = np.percentile(tile.data, [0.1, 99.9])
    assert low == pytest.approx(-1, abs=1e-3) and high == pytest.approx(1, abs=1e-3)
    # whatever the model's intensity units (default: already in [0, 1])
    (unit,) = synthetic_inputs(ModelConfig(), [(32, 32)])
    assert np.percentile(unit.data, 99.9) == pytest.approx(1, abs=1e-3)
    assert tile.data.flags.writeable
    (hr,) = synthetic_inputs(model, [(32, 32)], direction="ba", seed=3)
    assert hr.name == "synthetic 1x1x32x32 seed 3"


def test_sizes_are_checked_against_the_size_multiple():
    gen = GeneratorConfig(scale=2).inverse()  # size multiple 8
    assert adapt_sizes([(1, 68, 92), (64, 3)], 8) == ((1, 72, 96), (64, 8))
    assert check_sizes([(2, 64, 72)], 3, gen.check_shape, "sizes") == ((2, 64, 72),)
    with pytest.raises(InputError, match=r"sizes\[0\]: 68x92 px .* multiples of 8"):
        check_sizes([(1, 68, 92)], 3, gen.check_shape, "sizes")
    with pytest.raises(InputError, match=r"expected \(H, W\) positive integers"):
        check_sizes([(8, 0)], 2, gen.check_shape, "sizes")


def test_export_json_merges_entries(tmp_path):
    for name in (ONNX_FILES["ab"], ONNX_FP16):
        (tmp_path / name).write_bytes(name.encode())
    case = compare_outputs(_item(), np.zeros((1, 1, 8, 8)), np.zeros((1, 1, 8, 8)))
    fp32 = artifact_entry(
        tmp_path,
        tmp_path / ONNX_FILES["ab"],
        kind="onnx",
        precision="fp32",
        seconds=1.5,
        parity=[case],
    )
    assert fp32.path == ONNX_FILES["ab"] and fp32.bytes == len(b"generator.onnx")
    write_export_report(tmp_path, ExportReport.of(fp32, versions={"torch": "2"}))
    fp16 = artifact_entry(
        tmp_path, tmp_path / ONNX_FP16, kind="onnx", precision="fp16", seconds=0.2
    )
    merged = write_export_report(tmp_path, ExportReport.of(fp16, versions={"onnx": "1"}))
    assert set(merged.artifacts) == {ONNX_FILES["ab"], ONNX_FP16}
    assert merged.versions == {"torch": "2", "onnx": "1"}
    text = (tmp_path / EXPORT_JSON).read_text()
    assert json.loads(text)["artifacts"][ONNX_FILES["ab"]]["parity"][0]["psnr_db"] == "Infinity"
    back = read_export_report(tmp_path)
    assert back == merged and back.artifacts[ONNX_FILES["ab"]].parity[0].psnr_db == math.inf
    # a new entry with the same name replaces the old one
    again = fp32.model_copy(update={"seconds": 9.0})
    assert (
        write_export_report(tmp_path, ExportReport.of(again)).artifacts[ONNX_FILES["ab"]].seconds
        == 9.0
    )
    assert not list(tmp_path.glob("*.part"))


def test_broken_export_json_is_a_clear_error(tmp_path):
    assert read_export_report(tmp_path) == ExportReport()
    (tmp_path / EXPORT_JSON).write_text("{")
    with pytest.raises(InputError, match=r"not a valid export\.json"):
        read_export_report(tmp_path)
