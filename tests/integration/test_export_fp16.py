"""FP16 ONNX from the FP32 export: InstanceNorm and graph I/O in FP32, consistent types,
error vs FP32 on synthetic tiles (CPU)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from cyclesr_deploy.model import ONNX_FILES, ONNX_FP16, WEIGHTS

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
pytest.importorskip("onnxconverter_common")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto  # noqa: E402

from cyclesr_deploy.errors import InputError  # noqa: E402
from cyclesr_deploy.export import (  # noqa: E402
    ParityError,
    fp16_onnx_from_onnx,
    onnx_from_checkpoint,
    read_export_report,
)
from cyclesr_deploy.model import (  # noqa: E402
    GeneratorConfig,
    ModelConfig,
    NormalizationConfig,
    save_model_config,
)
from cyclesr_deploy.nets import build_generator  # noqa: E402
from cyclesr_deploy.onnx_metadata import read_onnx_metadata  # noqa: E402
from cyclesr_deploy.synthetic import SynthConfig, generate_dataset  # noqa: E402
from cyclesr_deploy.training.config import load_train_config  # noqa: E402
from cyclesr_deploy.training.trainer import train  # noqa: E402

FLOAT, FLOAT16 = TensorProto.FLOAT, TensorProto.FLOAT16


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny trained CycleGAN folder with generator.onnx (dynamo) and generator.ts.onnx."""
    root = tmp_path_factory.mktemp("data")
    generate_dataset(root, SynthConfig(size=64, seed=7), n_train=4, n_test=0)
    cfg = load_train_config(
        None,
        {
            "out": str(tmp_path_factory.mktemp("m") / "model"),
            "data.train_a": str(root / "trainA"),
            "data.train_b": str(root / "trainB"),
            "data.crop": 32,
            "data.batch_size": 2,
            "optim.steps": 3,
            "checkpoint_every": 100,
            "generator.ngf": 8,
            "generator.n_blocks": 2,
            "discriminator.ndf": 8,
        },
    )
    folder = train(cfg).model_dir
    onnx_from_checkpoint(folder, parity_sizes=[(1, 64, 64)], synthetic_sizes=[])
    return folder


@pytest.fixture
def folder(exported, tmp_path):
    copy = tmp_path / "model"
    shutil.copytree(exported, copy)
    return copy


def _types(model):
    """Edge name -> elem type, after shape inference (what a strongly typed builder sees)."""
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    types = {t.name: t.data_type for t in model.graph.initializer}
    for vi in (*model.graph.input, *model.graph.value_info, *model.graph.output):
        types[vi.name] = vi.type.tensor_type.elem_type
    return model, types


def _assert_typing(path, fp32_ops=("InstanceNormalization",), fp32_nodes=()):
    model, types = _types(onnx.load(str(path)))
    onnx.checker.check_model(model, full_check=True)
    for vi in (*model.graph.input, *model.graph.output):
        assert vi.type.tensor_type.elem_type == FLOAT, vi.name
    counts = {"fp32": 0, "fp16": 0}
    for node in model.graph.node:
        if node.op_type == "Cast":
            continue
        edges = [e for e in (*node.input, *node.output) if e]
        floats = [types[e] for e in edges if types[e] in (FLOAT, FLOAT16)]
        if not floats:  # shape arithmetic of the TorchScript export (int64 only)
            assert node.op_type not in ("Conv", "ConvTranspose", "InstanceNormalization")
            continue
        want = FLOAT if node.op_type in fp32_ops or node.name in fp32_nodes else FLOAT16
        assert all(t == want for t in floats), (node.name, node.op_type, floats)
        counts["fp32" if want == FLOAT else "fp16"] += 1
    # no FP32 Cast feeds an FP16 node
    readers = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    for node in model.graph.node:
        to = next((a.i for a in node.attribute if a.name == "to"), None)
        if node.op_type == "Cast" and to == FLOAT:
            for user in readers.get(node.output[0], []):
                assert user.op_type in fp32_ops or user.name in fp32_nodes, user.name
    return model, counts


def test_fp16_keeps_instance_norm_and_io_in_fp32(folder):
    result = fp16_onnx_from_onnx(folder / ONNX_FILES["ab"])
    assert result.path == folder / ONNX_FP16
    model, counts = _assert_typing(result.path)
    norms = [n for n in model.graph.node if n.op_type == "InstanceNormalization"]
    assert len(norms) == counts["fp32"] == 9 and counts["fp16"] > 20
    assert set(result.kept_fp32) == {n.name for n in norms}
    # the converter's FP16-rounded copies of the InstanceNorm scale/bias were replaced
    assert result.fixups["restored_fp32_constants"] > 0
    assert result.evaluators == ("onnxruntime", "reference")
    assert {c.name.split(" [")[1] for c in result.parity} == {"onnxruntime]", "reference]"}
    assert result.rel_l2_error <= 1e-2 and result.max_abs_error < 0.05
    meta = read_onnx_metadata(result.path)
    assert meta.precision == "fp16" and meta.fp16["keep_fp32_ops"] == ["InstanceNormalization"]
    assert meta.model == read_onnx_metadata(folder / ONNX_FILES["ab"]).model
    fp32_entry = read_export_report(folder).artifacts[ONNX_FILES["ab"]]
    assert meta.fp16["source_sha256"] == fp32_entry.sha256
    entry = read_export_report(folder).artifacts[ONNX_FP16]
    assert entry.precision == "fp16" and entry.reference == ONNX_FILES["ab"]
    assert entry.rel_l2 == result.rel_l2_error
    assert ONNX_FILES["ab"] in read_export_report(folder).artifacts


def test_fp16_runs_in_onnxruntime_with_fp32_io(folder):
    result = fp16_onnx_from_onnx(folder / ONNX_FILES["ab"], evaluator="onnxruntime")
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).uniform(-1, 1, (2, 1, 44, 52)).astype(np.float32)
    y = session.run(None, {"input": x})[0]
    assert y.dtype == np.float32 and y.shape == x.shape
    fp32 = ort.InferenceSession(str(folder / ONNX_FILES["ab"]), providers=["CPUExecutionProvider"])
    ref = fp32.run(None, {"input": x})[0]
    assert np.linalg.norm(y - ref) / np.linalg.norm(ref) <= 1e-2


def test_keep_last_conv_and_tanh_in_fp32(folder):
    out = folder / "last.fp16.onnx"
    result = fp16_onnx_from_onnx(
        folder / ONNX_FILES["ab"], out, keep_last_conv=True, evaluator="onnxruntime"
    )
    model = onnx.load(str(out))
    last_two = [n for n in model.graph.node if n.name in result.kept_fp32][-2:]
    assert [n.op_type for n in last_two] == ["Conv", "Tanh"]
    assert model.graph.node[-1].op_type == "Tanh"  # writes the FP32 graph output directly
    _assert_typing(out, fp32_nodes={n.name for n in last_two})
    assert result.fixups["restored_fp32_outputs"] == 1
    assert result.rel_l2_error <= 1e-2


def test_fp16_of_the_torchscript_export(folder):
    onnx_from_checkpoint(
        folder, dynamo=False, overwrite=True, parity_sizes=[(1, 64, 64)], synthetic_sizes=[]
    )
    result = fp16_onnx_from_onnx(folder / ONNX_FILES["ab"], evaluator="onnxruntime")
    _assert_typing(result.path)
    assert result.rel_l2_error <= 1e-2


def test_reference_evaluator_alone(folder):
    result = fp16_onnx_from_onnx(
        folder / ONNX_FILES["ab"], evaluator="reference", synthetic_sizes=[(32, 48)]
    )
    assert result.evaluators == ("reference",) and len(result.parity) == 1
    assert result.rel_l2_error <= 1e-2


def test_resize_upsampling_keeps_resize_in_fp32(tmp_path):
    gen = GeneratorConfig(ngf=4, n_blocks=1, upsample="resize_conv", scale=2, head="resize_conv")
    norm = NormalizationConfig(high_a=50000, high_b=50000)  # 16-bit synthetic data -> [-1, 1]
    save_model_config(tmp_path, ModelConfig(generator=gen, normalization=norm))
    torch.save(build_generator(gen).state_dict(), tmp_path / WEIGHTS["ab"])
    onnx_from_checkpoint(tmp_path, dynamo=True, parity_sizes=[(1, 32, 32)], synthetic_sizes=[])
    result = fp16_onnx_from_onnx(tmp_path / ONNX_FILES["ab"], synthetic_sizes=[(32, 32)])
    _assert_typing(result.path, fp32_ops=("InstanceNormalization", "Resize"))
    assert result.rel_l2_error <= 1e-2


def test_refusals_leave_the_folder_unchanged(folder):
    source = folder / ONNX_FILES["ab"]
    first = fp16_onnx_from_onnx(source, evaluator="onnxruntime")
    content = first.path.read_bytes()
    before = sorted(p.name for p in folder.iterdir())
    with pytest.raises(InputError, match="exists; pass overwrite=True"):
        fp16_onnx_from_onnx(source)
    with pytest.raises(InputError, match="already fp16"):
        fp16_onnx_from_onnx(first.path, folder / "again.onnx")
    with pytest.raises(InputError, match="is the input file"):
        fp16_onnx_from_onnx(source, source, overwrite=True)
    with pytest.raises(InputError, match=r"synthetic_sizes\[0\]: 30x32 px"):
        fp16_onnx_from_onnx(source, folder / "x.onnx", synthetic_sizes=[(30, 32)])
    with pytest.raises(InputError, match="does not exist"):
        fp16_onnx_from_onnx(folder / "missing.onnx")
    with pytest.raises(ParityError, match="relative L2 error"):
        fp16_onnx_from_onnx(source, overwrite=True, tolerance_rel=1e-9, evaluator="onnxruntime")
    assert sorted(p.name for p in folder.iterdir()) == before
    assert first.path.read_bytes() == content
