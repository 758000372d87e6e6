"""Per-model check of the crops statistics estimate (``frozen_stats.json``, ``--stats auto``).

A tiny trained CycleGAN folder: the check writes a record tied to its files, ``auto`` then uses
the choice in the torch and ONNX Runtime frozen engines and in ``enhance_files`` (frames over
the whole-frame budget keep the crops), and the check's PSNR (frozen whole-frame pass) is the
frozen tile pass's.
"""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest
import tifffile

from cyclesr_deploy.model import FROZEN_ONNX, WEIGHTS

pytest.importorskip("torch")
pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime")

import torch

from cyclesr_deploy.engines import frozen_stats as frozen_engines
from cyclesr_deploy.engines.frozen import open_frozen_engine
from cyclesr_deploy.engines.frozen_stats import CHECK_MIN_PSNR_DB, estimate_for_model
from cyclesr_deploy.errors import InputError
from cyclesr_deploy.export import frozen_check
from cyclesr_deploy.export.frozen_check import check_frames, check_model
from cyclesr_deploy.integrity import file_digest
from cyclesr_deploy.model import (
    FROZEN_CHECK,
    GeneratorConfig,
    ModelConfig,
    load_model,
    save_model_config,
)
from cyclesr_deploy.runtime.pipeline import EnhanceConfig, enhance_files
from cyclesr_deploy.runtime.tiling import TilingConfig


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


@pytest.fixture(scope="module")
def frames_1024(folder):
    return check_frames(load_model(folder), sizes=(1024,))


def _force(monkeypatch, threshold):
    """Make the check choose: -inf -> crops, inf -> whole (record and runtime alike)."""
    monkeypatch.setattr(frozen_check, "CHECK_MIN_PSNR_DB", threshold)
    monkeypatch.setattr(frozen_engines, "CHECK_MIN_PSNR_DB", threshold)


def test_check_writes_a_record_tied_to_the_files(folder):
    record = check_model(folder)  # the default frames: synthetic 1024^2 and 2048^2
    on_disk = json.loads((folder / FROZEN_CHECK).read_text(encoding="utf-8"))
    assert on_disk == json.loads(json.dumps(record))
    checks = record["checks"]
    assert [c["frame"]["shape"] for c in checks] == [[1024, 1024], [2048, 2048]]
    assert [(c["crop"], c["n"]) for c in checks] == [(384, 2), (256, 12)]
    assert all(c["frame"]["source"] == "synthetic LR" and c["frame"]["seed"] == 11 for c in checks)
    psnr = record["psnr_db"]
    assert psnr == min(c["psnr_db"] for c in checks) and psnr > 0
    assert record["choice"] == ("crops" if psnr >= CHECK_MIN_PSNR_DB else "whole")
    files = {WEIGHTS["ab"], FROZEN_ONNX["stats"], FROZEN_ONNX["tile"]}
    assert set(record["files"]) == files
    assert record["files"][WEIGHTS["ab"]] == file_digest(folder / WEIGHTS["ab"])[1]
    assert estimate_for_model(folder).estimate == record["choice"]
    assert not list(folder.glob("*.part*"))  # written atomically


def test_check_psnr_is_the_frozen_tile_pass_psnr(folder, frames_1024):
    """The check scores the frozen *whole-frame* pass with the crops statistics; with a halo
    covering the receptive field the frozen tile pass gives the same PSNR."""
    from cyclesr_deploy.engines.frozen_torch import (
        check_crops_estimate,
        predict_tiled_frozen,
        psnr_range2,
    )
    from cyclesr_deploy.export.onnx_export import load_generator

    model = load_model(folder)
    x = frames_1024[0][0]
    net = load_generator(folder, model, "ab")
    result = check_crops_estimate(net, torch.from_numpy(x), size_multiple=model.size_multiple)
    with torch.no_grad():
        whole = net(torch.from_numpy(x)[None]).numpy()[0]
    tiling = TilingConfig.for_model(model.receptive_field, tile=256, batch_size=4)
    tiled = predict_tiled_frozen(net, x, tiling, stats="crops")
    assert abs(psnr_range2(tiled, whole) - result["psnr_db"]) < 0.05
    naive = predict_tiled_frozen(net, x, tiling, stats="tile")
    assert psnr_range2(naive, whole) < result["psnr_db"]


@pytest.mark.parametrize(("threshold", "choice"), [(-math.inf, "crops"), (math.inf, "whole")])
@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_auto_uses_the_choice_in_both_engines(
    folder, frames_1024, monkeypatch, threshold, choice, backend
):
    _force(monkeypatch, threshold)
    assert check_model(folder, frames=frames_1024)["choice"] == choice
    x = frames_1024[0][0][None]
    with open_frozen_engine(folder, backend) as engine:
        assert engine.stats == "auto"
        auto = engine.frame_statistics(x)
        whole = engine.frame_statistics(x, "whole")
        crops = engine.frame_statistics(x, "crops")
    assert not np.allclose(whole, crops)
    np.testing.assert_array_equal(auto, whole if choice == "whole" else crops)


@pytest.fixture(scope="module")
def stack(folder, tmp_path_factory):
    model = load_model(folder)
    lo, hi = model.normalization.low_a, model.normalization.high_a
    rng = np.random.default_rng(3)
    frame = rng.uniform(lo, hi, (2, 512, 512)).astype(np.float32)
    frame[:, 100:300, 50:250] *= 0.3  # uneven content: crops differ from the frame
    path = tmp_path_factory.mktemp("stack") / "stack.tif"
    tifffile.imwrite(path, frame)
    return path


def _enhance(folder, stack, out, **cfg):
    engine = open_frozen_engine(folder, "torch")
    with engine:
        summary = enhance_files(
            [stack],
            out,
            engine,
            load_model(folder),
            EnhanceConfig(overwrite=True, tile=128, batch=4, tiling_mode="frozen", **cfg),
        )
    assert summary.ok, summary.files
    manifest = json.loads(next(out.glob("*.json")).read_text(encoding="utf-8"))
    return tifffile.imread(out / "stack.tif").astype(np.float64), manifest


def test_enhance_follows_the_check_within_the_budget(
    folder, frames_1024, stack, tmp_path, monkeypatch, caplog
):
    whole, _ = _enhance(folder, stack, tmp_path / "whole", stats="whole")
    crops, _ = _enhance(folder, stack, tmp_path / "crops", stats="crops")
    assert not np.array_equal(whole, crops)
    _force(monkeypatch, math.inf)
    check_model(folder, frames=frames_1024)
    auto, manifest = _enhance(folder, stack, tmp_path / "auto")
    np.testing.assert_array_equal(auto, whole)
    assert manifest["stats_estimate"]["estimate"] == "whole"
    assert FROZEN_CHECK in manifest["stats_estimate"]["reason"]
    # a frame over the whole-frame budget: crops, with a warning (memory of a whole pass)
    with caplog.at_level(logging.WARNING, logger="cyclesr_deploy.runtime.pipeline"):
        over, _ = _enhance(folder, stack, tmp_path / "over", whole_max_px=256 * 256)
    np.testing.assert_array_equal(over, crops)
    assert caplog.text.count("exceeds --whole-max-px") == 1  # once per run, not per frame
    _force(monkeypatch, -math.inf)
    check_model(folder, frames=frames_1024)
    auto, manifest = _enhance(folder, stack, tmp_path / "auto-crops")
    np.testing.assert_array_equal(auto, crops)
    assert manifest["stats_estimate"]["estimate"] == "crops"


def test_check_on_a_frame_of_the_users_acquisition(folder, tmp_path):
    raw = np.random.default_rng(0).uniform(100, 4000, (1024, 1100)).astype(np.uint16)
    path = tmp_path / "lr.tif"
    tifffile.imwrite(path, raw)
    record = check_model(folder, frame=path, write=False)
    assert [c["frame"] for c in record["checks"]] == [{"source": str(path), "shape": [1024, 1100]}]
    assert not (tmp_path / FROZEN_CHECK).exists()
    stack = tmp_path / "stack.tif"
    tifffile.imwrite(stack, np.stack([raw, raw]))
    with pytest.raises(InputError, match="2-D"):
        check_model(folder, frame=stack, write=False)
    bad = tmp_path / "nan.tif"
    tifffile.imwrite(bad, np.full((1024, 1024), np.nan, np.float32))
    with pytest.raises(InputError, match="NaN"):
        check_model(folder, frame=bad, write=False)
    small = tmp_path / "small.tif"
    tifffile.imwrite(small, raw[:512, :512])
    with pytest.raises(InputError, match="too small"):  # one 384-px crop = 56 % of it
        check_model(folder, frame=small, write=False)


def test_no_check_for_generators_without_instance_norm(tmp_path):
    save_model_config(tmp_path, ModelConfig(generator=GeneratorConfig(norm="none")))
    with pytest.raises(InputError, match="no InstanceNorm"):
        check_model(tmp_path)
    assert not (tmp_path / FROZEN_CHECK).exists()
