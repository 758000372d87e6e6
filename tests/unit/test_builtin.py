"""The built-in reference models ship with the package and resolve from --model values."""

from __future__ import annotations

import json

import pytest

from cyclesr_deploy.builtin import (
    BUILTIN_MODELS,
    DEFAULT_MODEL,
    MODELS_DIR,
    builtin_model,
    resolve_model,
)
from cyclesr_deploy.errors import InputError
from cyclesr_deploy.model import (
    EXPORT_JSON,
    FROZEN_ONNX,
    MODEL_JSON,
    ONNX_FILES,
    ONNX_FP16,
    WEIGHTS,
    ModelFolder,
    load_model,
)

MB = 1e6


@pytest.mark.parametrize("name", BUILTIN_MODELS)
def test_builtin_folder_is_complete(name):
    folder = builtin_model(name)
    model = load_model(folder)
    assert model.generator.ngf == 16 and model.generator.n_blocks == 6
    for f in (MODEL_JSON, WEIGHTS["ab"], ONNX_FILES["ab"], ONNX_FP16):
        assert (folder / f).is_file(), f
    for f in ("train_config.yaml", "train_log.csv", "reference.json", EXPORT_JSON):
        assert (folder / f).is_file(), f
    ref = json.loads((folder / "reference.json").read_text(encoding="utf-8"))
    assert ref["command"].startswith("cyclesr train --config benchmarks/reference/")
    mode = "cyclegan" if name.endswith("cyclegan") else "supervised"
    assert model.provenance is not None and model.provenance.mode == mode


def test_builtin_models_fit_the_size_budget():
    total = sum(p.stat().st_size for p in MODELS_DIR.rglob("*") if p.is_file())
    assert total < 20 * MB, f"{total / MB:.1f} MB"


def test_default_model_has_the_seam_free_tiling_graphs():
    folder = builtin_model(DEFAULT_MODEL)
    assert (folder / FROZEN_ONNX["stats"]).is_file()
    assert (folder / FROZEN_ONNX["tile"]).is_file()


def test_resolve_model(tmp_path):
    assert resolve_model(None) == builtin_model(DEFAULT_MODEL)
    assert resolve_model("reference-supervised") == builtin_model("reference-supervised")
    assert resolve_model(tmp_path) == tmp_path  # an existing folder wins
    (tmp_path / "reference-cyclegan").mkdir()
    assert resolve_model(tmp_path / "reference-cyclegan") == tmp_path / "reference-cyclegan"
    with pytest.raises(InputError, match="neither a model folder nor a built-in model"):
        resolve_model(tmp_path / "missing")
    with pytest.raises(InputError, match="no built-in model 'x'"):
        builtin_model("x")


@pytest.mark.parametrize("name", BUILTIN_MODELS)
def test_builtin_weights_load_on_the_cpu_without_map_location(name):
    """Saved with CPU tensors: torch.load without map_location works on machines without CUDA
    (the BMZ package's PyTorch weights are this file)."""
    torch = pytest.importorskip("torch")
    state = torch.load(ModelFolder(builtin_model(name)).weights("ab"), weights_only=True)
    assert {t.device.type for t in state.values()} == {"cpu"}
