"""``enhance_files`` / ``cyclesr enhance`` with frozen frame-level InstanceNorm statistics.

One tiny trained CycleGAN (ngf 4, 1 block) with generator.stats.onnx + generator.tile.onnx; a
float32 256x256 stack tiled at 96 px must equal whole-frame (tile 0) output with frozen
statistics (ONNX Runtime and PyTorch), and differ with naive per-tile instance norm.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

pytest.importorskip("torch")
pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime")

from cyclesr_deploy.cli import app
from cyclesr_deploy.engines import FrozenStatsEngine, OnnxRuntimeEngine
from cyclesr_deploy.engines.frozen import (
    OnnxFrozenEngine,
    TorchFrozenEngine,
    open_frozen_engine,
)
from cyclesr_deploy.errors import InputError
from cyclesr_deploy.model import load_model
from cyclesr_deploy.runtime.pipeline import EnhanceConfig, enhance_files
from cyclesr_deploy.synthetic import SynthConfig, simulate_pair

EXACT = 1e-4  # of the output range
SIZE = 256


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from cyclesr_deploy.export.frozen_onnx import (
        stats_onnx_from_checkpoint,
        tile_onnx_from_checkpoint,
    )
    from tests.tiny_models import export_tiny_model, train_tiny_model

    root = tmp_path_factory.mktemp("frozen-pipeline")
    folder = train_tiny_model(root)
    export_tiny_model(folder)
    stats_onnx_from_checkpoint(folder)
    tile_onnx_from_checkpoint(folder)
    model = load_model(folder)
    lo, hi = model.normalization.low_a, model.normalization.high_a
    frames = [simulate_pair(SynthConfig(size=SIZE), seed).lr for seed in (1, 2)]
    stack = np.stack([lo + (f - f.min()) / np.ptp(f) * (hi - lo) for f in frames])
    path = root / "in" / "stack.tif"
    path.parent.mkdir()
    tifffile.imwrite(path, stack.astype(np.float32))
    return {"folder": folder, "model": model, "input": path, "root": root}


def _run(setup, engine, name, **cfg):
    out = setup["root"] / name
    with engine:
        summary = enhance_files(
            [setup["input"]], out, engine, setup["model"], EnhanceConfig(overwrite=True, **cfg)
        )
    assert summary.ok, summary.files
    return tifffile.imread(out / "stack.tif").astype(np.float64)


@pytest.fixture(scope="module")
def reference(setup):
    return _run(setup, OnnxFrozenEngine(setup["folder"]), "whole", tile=0)


def _err(a, ref):
    return float(np.abs(a - ref).max() / np.ptp(ref))


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_frozen_tiling_equals_whole_frame(setup, reference, backend):
    engine = open_frozen_engine(setup["folder"], backend)
    assert isinstance(engine, FrozenStatsEngine)
    assert isinstance(engine, OnnxFrozenEngine if backend == "onnxruntime" else TorchFrozenEngine)
    got = _run(setup, engine, f"frozen-{backend}", tile=96, batch=3, tiling_mode="frozen")
    assert got.shape == reference.shape
    assert _err(got, reference) < EXACT


def test_naive_tiling_differs_and_whole_frame_backends_agree(setup, reference):
    naive = _run(
        setup, OnnxFrozenEngine(setup["folder"]), "naive", tile=96, batch=3, tiling_mode="naive"
    )
    assert _err(naive, reference) > 1e-2
    plain = _run(setup, OnnxRuntimeEngine(setup["folder"], providers="cpu"), "plain", tile=0)
    assert _err(plain, reference) < EXACT  # the frozen engine's infer is plain instance norm


def test_auto_picks_frozen_when_available(setup, reference, caplog):
    # whole_max_px=0: frames over the whole-frame budget are tiled
    tiled = {"tile": 96, "batch": 4, "whole_max_px": 0}
    auto = _run(setup, OnnxFrozenEngine(setup["folder"]), "auto", **tiled)
    assert _err(auto, reference) < EXACT
    with caplog.at_level(logging.WARNING, logger="cyclesr_deploy.runtime.pipeline"):
        plain = OnnxRuntimeEngine(setup["folder"], providers="cpu")
        naive = _run(setup, plain, "auto-naive", **tiled)
    assert _err(naive, reference) > 1e-2
    assert "normalised independently" in caplog.text


def test_auto_runs_frames_within_the_budget_whole(setup, reference, caplog):
    # a 256 x 256 frame within the default budget: whole-frame inference even with a plain
    # engine and 96-px tiles (exact, no per-tile warning); over a 128 x 128 budget it is tiled
    with caplog.at_level(logging.WARNING, logger="cyclesr_deploy.runtime.pipeline"):
        plain = OnnxRuntimeEngine(setup["folder"], providers="cpu")
        auto = _run(setup, plain, "auto-whole", tile=96, batch=4)
    assert _err(auto, reference) < EXACT
    assert "normalised independently" not in caplog.text
    plain = OnnxRuntimeEngine(setup["folder"], providers="cpu")
    over = _run(setup, plain, "auto-over", tile=96, batch=4, whole_max_px=128 * 128)
    assert _err(over, reference) > 1e-2


def test_pipeline_default_estimate_is_auto(setup):
    """The pipeline sets the engine's estimate from the config (default auto: the model
    folder's check, frozen_stats.json; this folder has none: crops), whatever the engine was
    opened with (tests/integration/test_frozen_check.py: auto with a check)."""
    assert EnhanceConfig().stats == "auto"
    engine = open_frozen_engine(setup["folder"], "torch", stats="whole")
    _run(setup, engine, "auto-default", tile=96, batch=4, tiling_mode="frozen")
    assert engine.stats == "crops"
    whole = open_frozen_engine(setup["folder"], "torch", stats="crops")
    _run(setup, whole, "whole-stats", tile=96, tiling_mode="frozen", stats="whole")
    assert whole.stats == "whole"


def test_frozen_mode_needs_a_capable_engine(setup):
    engine = OnnxRuntimeEngine(setup["folder"], providers="cpu")
    with engine, pytest.raises(InputError, match="frozen"):
        enhance_files(
            [setup["input"]],
            setup["root"] / "bad",
            engine,
            setup["model"],
            EnhanceConfig(tile=96, tiling_mode="frozen"),
        )
    with pytest.raises(InputError, match="tensorrt"):
        open_frozen_engine(setup["folder"], "tensorrt")


def test_cli_tiling(setup, reference):
    runner = CliRunner()
    base = ["enhance", str(setup["input"]), "--model", str(setup["folder"]), "--tile", "96"]
    res = runner.invoke(app, [*base, "-o", str(setup["root"] / "cli-naive"), "--tiling", "naive"])
    assert res.exit_code == 0, res.output
    naive = tifffile.imread(setup["root"] / "cli-naive" / "stack.tif").astype(np.float64)
    assert _err(naive, reference) > 1e-2
    res = runner.invoke(
        app, [*base, "-o", str(setup["root"] / "cli-frozen"), "--backend", "onnxruntime"]
    )
    assert res.exit_code == 0, res.output
    assert "frozen" in res.output
    frozen = tifffile.imread(setup["root"] / "cli-frozen" / "stack.tif").astype(np.float64)
    assert _err(frozen, reference) < EXACT
