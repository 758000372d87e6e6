"""Per-model check of the crops statistics estimate (``frozen_stats.json``, ``--stats auto``).

A tiny trained CycleGAN folder: the check writes a record tied to its weights, ``auto`` then
uses the recorded choice in the torch and ONNX Runtime frozen engines, and the check's PSNR
(frozen whole-frame pass) is the frozen tile pass's.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import tifffile

pytest.importorskip("torch")
pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime")

import torch

from cyclesr_deploy.engines.frozen import (
    CHECK_FILE,
    CHECK_MIN_PSNR_DB,
    estimate_for_model,
    open_frozen_engine,
)
from cyclesr_deploy.errors import InputError
from cyclesr_deploy.export import frozen_check
from cyclesr_deploy.export.frozen_check import check_frame, check_model
from cyclesr_deploy.export.report import file_digest
from cyclesr_deploy.model import GeneratorConfig, ModelConfig, load_model, save_model_config
from cyclesr_deploy.tiling import TilingConfig


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from cyclesr_deploy.export.frozen_onnx import (
        stats_onnx_from_checkpoint,
        tile_onnx_from_checkpoint,
    )
    from tests.tiny_models import train_tiny_model

    folder = train_tiny_model(tmp_path_factory.mktemp("frozen-check"))
    stats_onnx_from_checkpoint(folder)
    tile_onnx_from_checkpoint(folder)
    return folder


def test_check_writes_a_record_tied_to_the_weights(folder):
    record = check_model(folder)
    on_disk = json.loads((folder / CHECK_FILE).read_text(encoding="utf-8"))
    assert on_disk == json.loads(json.dumps(record))
    psnr = record["crops"]["psnr_db"]
    assert math.isfinite(psnr) or psnr == math.inf
    assert record["choice"] == ("crops" if psnr >= CHECK_MIN_PSNR_DB else "whole")
    assert record["frame"] == {"source": "synthetic LR", "seed": 11, "shape": [1024, 1024]}
    assert (record["crops"]["crop"], record["crops"]["n"]) == (384, 2)
    assert record["weights"]["sha256"] == file_digest(folder / "generator_ab.pt")[1]
    assert estimate_for_model(folder).estimate == record["choice"]
    assert not list(folder.glob("*.part*"))  # written atomically


def test_check_psnr_is_the_frozen_tile_pass_psnr(folder):
    """The check scores the frozen *whole-frame* pass with the crops statistics; with a halo
    covering the receptive field the frozen tile pass gives the same PSNR."""
    from cyclesr_deploy.export.onnx_export import load_generator
    from cyclesr_deploy.frozen_norm import check_crops_estimate, predict_tiled_frozen, psnr_range2

    model = load_model(folder)
    x, _ = check_frame(model, size=512)
    net = load_generator(folder, model, "ab")
    result = check_crops_estimate(net, torch.from_numpy(x), size_multiple=model.size_multiple)
    with torch.no_grad():
        whole = net(torch.from_numpy(x)[None]).numpy()[0]
    tiling = TilingConfig.for_model(model.receptive_field, tile=128, batch_size=4)
    tiled = predict_tiled_frozen(net, x, tiling, stats="crops")
    assert abs(psnr_range2(tiled, whole) - result["psnr_db"]) < 0.05
    naive = predict_tiled_frozen(net, x, tiling, stats="tile")
    assert psnr_range2(naive, whole) < result["psnr_db"]


@pytest.mark.parametrize("threshold, choice", [(-math.inf, "crops"), (math.inf, "whole")])
@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_auto_uses_the_choice_in_both_engines(folder, monkeypatch, threshold, choice, backend):
    monkeypatch.setattr(frozen_check, "CHECK_MIN_PSNR_DB", threshold)
    assert check_model(folder)["choice"] == choice
    x = check_frame(load_model(folder), size=512)[0][None]
    with open_frozen_engine(folder, backend) as engine:
        assert engine.stats == "auto"
        auto = engine.frame_statistics(x)
        whole = engine.frame_statistics(x, "whole")
        crops = engine.frame_statistics(x, "crops")
    assert not np.allclose(whole, crops)  # 512 px: one 384-px crop, not the frame
    np.testing.assert_array_equal(auto, whole if choice == "whole" else crops)


def test_check_on_a_frame_of_the_users_acquisition(folder, tmp_path):
    raw = np.random.default_rng(0).uniform(100, 4000, (200, 168)).astype(np.uint16)
    path = tmp_path / "lr.tif"
    tifffile.imwrite(path, raw)
    record = check_model(folder, frame=path, write=False)
    assert record["frame"] == {"source": str(path), "shape": [200, 168]}
    assert not (tmp_path / CHECK_FILE).exists()
    stack = tmp_path / "stack.tif"
    tifffile.imwrite(stack, np.stack([raw, raw]))
    with pytest.raises(InputError, match="2-D"):
        check_model(folder, frame=stack, write=False)
    bad = tmp_path / "nan.tif"
    tifffile.imwrite(bad, np.full((64, 64), np.nan, np.float32))
    with pytest.raises(InputError, match="NaN"):
        check_model(folder, frame=bad, write=False)


def test_no_check_for_generators_without_instance_norm(tmp_path):
    save_model_config(tmp_path, ModelConfig(generator=GeneratorConfig(norm="none")))
    with pytest.raises(InputError, match="no InstanceNorm"):
        check_model(tmp_path)
    assert not (tmp_path / CHECK_FILE).exists()
