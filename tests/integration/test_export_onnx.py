"""FP32 ONNX export of a model folder: graph, parity with PyTorch, metadata, refusals (CPU)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from cyclesr_deploy.model import EXPORT_JSON, ONNX_FILES, WEIGHTS

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
ort = pytest.importorskip("onnxruntime")

from cyclesr_deploy.errors import InputError  # noqa: E402
from cyclesr_deploy.export import (  # noqa: E402
    ExportError,
    ParityError,
    onnx_from_checkpoint,
    read_export_report,
)
from cyclesr_deploy.model import (  # noqa: E402
    GeneratorConfig,
    ModelConfig,
    load_model,
    save_model_config,
)
from cyclesr_deploy.nets import build_generator  # noqa: E402
from cyclesr_deploy.onnx_metadata import read_onnx_metadata  # noqa: E402
from cyclesr_deploy.synthetic import SynthConfig, generate_dataset  # noqa: E402
from cyclesr_deploy.training.config import load_train_config  # noqa: E402
from cyclesr_deploy.training.trainer import train  # noqa: E402

TINY = {"generator.ngf": 8, "generator.n_blocks": 2, "discriminator.ndf": 8}
DYNAMO_OPS = ("Add", "Conv", "ConvTranspose", "InstanceNormalization", "Pad", "Relu", "Tanh")
SIZES = {"random 1x1x64x64", "random 2x1x256x192", "random 1x1x68x92"}


def _train(tmp_path_factory, name: str, **overrides) -> object:
    root = tmp_path_factory.mktemp(f"{name}-data")
    synth = {"binning": 2, "lr_grid": "native"} if overrides.get("mode") == "supervised" else {}
    generate_dataset(root, SynthConfig(size=64, seed=5, **synth), n_train=4, n_test=0)
    cfg = load_train_config(
        None,
        {
            "out": str(tmp_path_factory.mktemp(name) / "model"),
            "data.train_a": str(root / "trainA"),
            "data.train_b": str(root / "trainB"),
            "data.crop": 32,
            "data.batch_size": 2,
            "optim.steps": 3,
            "checkpoint_every": 100,
            **TINY,
            **overrides,
        },
    )
    return train(cfg).model_dir


@pytest.fixture(scope="module")
def cyclegan_dir(tmp_path_factory):
    """A tiny CycleGAN model folder (ngf 8, 2 blocks, 3 steps); copy it before writing."""
    return _train(tmp_path_factory, "cyclegan")


@pytest.fixture(scope="module")
def dynamo_export(cyclegan_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("dynamo") / "model"
    shutil.copytree(cyclegan_dir, folder)
    return onnx_from_checkpoint(folder, dynamo=True)


@pytest.fixture
def model_copy(cyclegan_dir, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(cyclegan_dir, folder)
    return folder


def _listing(folder):
    return sorted(p.name for p in folder.iterdir())


def _graph_checks(path):
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    nodes = model.graph.node
    ops = {n.op_type for n in nodes}
    assert "InstanceNormalization" in ops
    assert "BatchNormalization" not in ops
    pads = [n for n in nodes if n.op_type == "Pad"]
    assert pads and all(
        onnx.helper.get_attribute_value(a) == b"reflect"
        for n in pads
        for a in n.attribute
        if a.name == "mode"
    )
    assert all(any(a.name == "mode" for a in n.attribute) for n in pads)
    return model, ops


def test_dynamo_export_matches_pytorch_from_64x64_to_2x256x192(dynamo_export):
    result = dynamo_export
    assert result.path.name == ONNX_FILES["ab"] and result.path.is_file()
    assert result.exporter == "dynamo" and result.opset == 20
    assert {c.name for c in result.parity if c.kind == "random"} == SIZES
    assert sum(c.kind == "synthetic" for c in result.parity) == 2
    for case in result.parity:
        assert case.max_abs <= 1e-4, case
        assert case.mean_abs <= case.max_abs and case.psnr_db > 80
    model, ops = _graph_checks(result.path)
    assert tuple(sorted(ops)) == DYNAMO_OPS == result.op_types
    assert model.opset_import[0].version == 20
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 1, "4*h", "4*w"]
    assert model.graph.input[0].name == "input" and model.graph.output[0].name == "output"
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT


def test_exported_model_runs_at_other_batch_and_tile_sizes(dynamo_export):
    session = ort.InferenceSession(str(dynamo_export.path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(3).uniform(-1, 1, (3, 1, 36, 100)).astype(np.float32)
    assert session.run(None, {"input": x})[0].shape == (3, 1, 36, 100)


def test_metadata_and_export_json(dynamo_export):
    folder = dynamo_export.path.parent
    meta = read_onnx_metadata(dynamo_export.path)
    assert meta.model == load_model(folder)
    assert meta.precision == "fp32" and meta.direction == "ab"
    assert meta.export["exporter"] == "dynamo" and meta.export["opset"] == 20
    assert {"torch", "onnx", "cyclesr_deploy"} <= set(meta.export["versions"])
    report = read_export_report(folder)
    entry = report.artifacts[ONNX_FILES["ab"]]
    assert entry.precision == "fp32" and entry.reference == "torch"
    assert entry.bytes == dynamo_export.path.stat().st_size and len(entry.sha256) == 64
    assert entry.max_abs == dynamo_export.max_abs_error <= 1e-4
    assert "torch" in report.versions
    raw = json.loads((folder / EXPORT_JSON).read_text())
    assert raw["artifacts"][ONNX_FILES["ab"]]["parity"][0]["max_abs"] <= 1e-4
    assert not list(folder.glob("*.part"))


def test_torchscript_export_matches_pytorch(model_copy):
    result = onnx_from_checkpoint(model_copy, dynamo=False)
    assert result.exporter == "torchscript" and result.opset == 17
    assert max(c.max_abs for c in result.parity) <= 1e-4
    assert {c.name for c in result.parity if c.kind == "random"} == SIZES
    model, ops = _graph_checks(result.path)
    assert set(DYNAMO_OPS) <= ops
    assert ops - set(DYNAMO_OPS) <= {
        "Cast",
        "Concat",
        "Constant",
        "ConstantOfShape",
        "Identity",
        "Reshape",
        "Slice",
        "Transpose",
    }
    assert model.opset_import[0].version == 17
    assert read_onnx_metadata(result.path).export["exporter"] == "torchscript"


def test_supervised_scale_two_output_is_twice_the_input(tmp_path_factory):
    folder = _train(tmp_path_factory, "supervised", mode="supervised", **{"generator.scale": 2})
    result = onnx_from_checkpoint(folder, parity_sizes=[(1, 64, 64), (2, 68, 92)])
    assert max(c.max_abs for c in result.parity) <= 1e-4
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    x = np.zeros((2, 1, 44, 60), np.float32)
    assert session.run(None, {"input": x})[0].shape == (2, 1, 88, 120)
    assert all(
        c.output_shape[-2:] == tuple(2 * s for s in c.input_shape[-2:]) for c in result.parity
    )
    assert "DepthToSpace" in result.op_types
    with pytest.raises(InputError, match=r"no weights file generator_ba\.pt \(supervised"):
        onnx_from_checkpoint(folder, direction="ba")


def test_direction_ba_of_a_cyclegan_folder(model_copy):
    result = onnx_from_checkpoint(
        model_copy, direction="ba", dynamo=False, parity_sizes=[(1, 64, 64)]
    )
    assert result.path.name == ONNX_FILES["ba"]
    assert max(c.max_abs for c in result.parity) <= 1e-4
    assert read_onnx_metadata(result.path).direction == "ba"
    assert not (model_copy / ONNX_FILES["ab"]).exists()
    assert read_export_report(model_copy).artifacts[ONNX_FILES["ba"]].direction == "ba"


def test_direction_ba_of_a_scale_two_model_halves_the_size(tmp_path):
    """F of a scale-2 CycleGAN downscales: size multiple 8, default sizes rounded up to it."""
    gen = GeneratorConfig(ngf=4, n_blocks=1, scale=2)
    save_model_config(tmp_path, ModelConfig(generator=gen))
    torch.save(build_generator(gen).state_dict(), tmp_path / WEIGHTS["ab"])
    torch.save(build_generator(gen.inverse()).state_dict(), tmp_path / WEIGHTS["ba"])
    result = onnx_from_checkpoint(tmp_path, direction="ba")
    shapes = {c.input_shape: c.output_shape for c in result.parity if c.kind == "random"}
    assert shapes[(1, 1, 72, 96)] == (1, 1, 36, 48)  # 68x92 rounded up to multiples of 8
    assert max(c.max_abs for c in result.parity) <= 1e-4
    with pytest.raises(InputError, match="multiples of 8"):
        onnx_from_checkpoint(tmp_path, direction="ba", overwrite=True, parity_sizes=[(1, 68, 92)])


def test_folder_without_weights(model_copy):
    (model_copy / WEIGHTS["ab"]).unlink()
    before = _listing(model_copy)
    with pytest.raises(InputError, match=r"no weights file generator_ab\.pt"):
        onnx_from_checkpoint(model_copy)
    assert _listing(model_copy) == before


def test_folder_without_model_json(tmp_path):
    with pytest.raises(InputError, match=r"has no model\.json"):
        onnx_from_checkpoint(tmp_path)
    assert _listing(tmp_path) == []


def test_checkpoint_for_another_architecture(model_copy):
    model = load_model(model_copy)
    wider = model.generator.model_copy(update={"ngf": 16})
    save_model_config(model_copy, model.model_copy(update={"generator": wider}))
    before = _listing(model_copy)
    with pytest.raises(
        InputError, match=r"ngf=16.*shape mismatch: model\.1\.weight \(8, 1, 7, 7\)"
    ):
        onnx_from_checkpoint(model_copy)
    assert _listing(model_copy) == before


def test_tile_size_breaking_the_size_multiple(model_copy):
    before = _listing(model_copy)
    with pytest.raises(InputError, match=r"parity_sizes\[1\]: 66x64 px .* multiples of 4"):
        onnx_from_checkpoint(model_copy, parity_sizes=[(1, 64, 64), (1, 66, 64)])
    with pytest.raises(InputError, match=r"parity_sizes\[0\]: expected \(N, H, W\)"):
        onnx_from_checkpoint(model_copy, parity_sizes=[(64, 64)])
    assert _listing(model_copy) == before


def test_existing_output_needs_overwrite(model_copy):
    quick = {"dynamo": False, "parity_sizes": [(1, 64, 64)], "synthetic_sizes": []}
    first = onnx_from_checkpoint(model_copy, **quick)
    content = first.path.read_bytes()
    before = _listing(model_copy)
    with pytest.raises(InputError, match="exists; pass overwrite=True"):
        onnx_from_checkpoint(model_copy)
    assert _listing(model_copy) == before and first.path.read_bytes() == content
    again = onnx_from_checkpoint(model_copy, overwrite=True, opset=18, **quick)
    assert again.path == first.path and read_onnx_metadata(again.path).export["opset"] == 18
    assert read_export_report(model_copy).artifacts[ONNX_FILES["ab"]].settings["opset"] == 18


@pytest.mark.filterwarnings("ignore:Exporting to ONNX opset version 99")
def test_parity_failure_and_unsupported_opset_leave_no_file(model_copy):
    before = _listing(model_copy)
    with pytest.raises(ExportError, match="opset"):
        onnx_from_checkpoint(model_copy, dynamo=False, opset=99, parity_sizes=[(1, 64, 64)])
    with pytest.raises(ParityError, match="differs from PyTorch"):
        onnx_from_checkpoint(model_copy, dynamo=False, tolerance=1e-12, parity_sizes=[(1, 64, 64)])
    assert _listing(model_copy) == before
