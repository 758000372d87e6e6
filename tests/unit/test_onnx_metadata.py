"""ONNX metadata reader (torch-free), lazy export package, missing-extra errors."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from cyclesr_deploy.errors import InputError
from cyclesr_deploy.model import ONNX_FILES, GeneratorConfig, ModelConfig, NormalizationConfig
from cyclesr_deploy.onnx_metadata import (
    KEY_EXPORT,
    KEY_MODEL,
    KEY_SCHEMA,
    OnnxMetadata,
    parse_metadata,
    read_onnx_metadata,
)

MODEL = ModelConfig(
    name="tiny",
    generator=GeneratorConfig(ngf=8, n_blocks=2, scale=2),
    normalization=NormalizationConfig(low_a=100, high_a=4000, low_b=90, high_b=6000),
)
EXPORT = {"exporter": "dynamo", "opset": 20, "direction": "ab", "input_name": "input"}


def _run_blocked(code: str, blocked: tuple[str, ...]) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter in which importing ``blocked`` fails."""
    blocker = textwrap.dedent(
        f"""
        import sys, importlib.abc
        BLOCKED = {blocked!r}
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split('.')[0] in BLOCKED:
                    raise ImportError('blocked for test: ' + name)
                return None
        sys.meta_path.insert(0, Block())
        """
    )
    return subprocess.run(
        [sys.executable, "-c", blocker + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_props_round_trip():
    meta = OnnxMetadata(model=MODEL, export=EXPORT, precision="fp16", fp16={"keep": ["X"]})
    props = meta.to_props()
    assert all(isinstance(v, str) for v in props.values())
    assert props[KEY_SCHEMA] == "1"
    assert json.loads(props[KEY_MODEL])["derived"]["size_multiple"] == 4
    back = parse_metadata(props)
    assert back == meta and back.model.scale == 2 and back.direction == "ab"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda p: p.pop(KEY_MODEL), "no cyclesr metadata"),
        (lambda p: p.update({KEY_SCHEMA: "9"}), "schema_version '9' is not supported"),
        (lambda p: p.update({KEY_EXPORT: "{nope"}), "not valid JSON"),
        (lambda p: p.update({KEY_EXPORT: "[1]"}), "not a JSON object"),
        (lambda p: p.update({KEY_MODEL: '{"generator": {"ngf": 0}}'}), "model.json is not valid"),
        (lambda p: p.update({"cyclesr.precision": "int8"}), "unknown precision"),
    ],
)
def test_bad_metadata_is_a_clear_error(change, message):
    props = OnnxMetadata(model=MODEL, export=EXPORT).to_props()
    change(props)
    with pytest.raises(InputError, match=message):
        parse_metadata(props, source="m.onnx")


def test_missing_or_unreadable_file(tmp_path):
    pytest.importorskip("onnxruntime")
    with pytest.raises(InputError, match="does not exist"):
        read_onnx_metadata(tmp_path / "none.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a protobuf")
    with pytest.raises(InputError, match="cannot load"):
        read_onnx_metadata(tmp_path / "junk.onnx")


def _tiny_onnx(path, props):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 1, "h", "w"])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, ["n", 1, "h", "w"])
    graph = helper.make_graph([helper.make_node("Identity", ["input"], ["output"])], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, props)
    onnx.save_model(model, path)


def test_read_round_trips_without_torch_or_onnx(tmp_path):
    pytest.importorskip("onnxruntime")
    path = tmp_path / ONNX_FILES["ab"]
    _tiny_onnx(path, OnnxMetadata(model=MODEL, export=EXPORT).to_props())
    res = _run_blocked(
        f"""
        import sys
        from cyclesr_deploy.onnx_metadata import read_onnx_metadata
        meta = read_onnx_metadata({str(path)!r})
        print('MODEL', meta.model.model_dump_json())
        print('EXPORT', meta.export['exporter'], meta.precision)
        print('LOADED', sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'onnx')))
        """,
        ("torch", "onnx", "onnxconverter_common", "onnxscript"),
    )
    assert res.returncode == 0, res.stderr
    lines = dict(line.split(" ", 1) for line in res.stdout.splitlines())
    assert ModelConfig.model_validate_json(lines["MODEL"]) == MODEL
    assert lines["EXPORT"] == "dynamo fp32" and lines["LOADED"] == "[]"


def test_file_without_cyclesr_metadata(tmp_path):
    pytest.importorskip("onnxruntime")
    path = tmp_path / "other.onnx"
    _tiny_onnx(path, {"author": "someone"})
    with pytest.raises(InputError, match="no cyclesr metadata"):
        read_onnx_metadata(path)


def test_importing_the_metadata_reader_and_export_package_is_light():
    res = _run_blocked(
        """
        import sys
        import cyclesr_deploy.onnx_metadata, cyclesr_deploy.export
        import cyclesr_deploy.export.report, cyclesr_deploy.export.parity
        from cyclesr_deploy.export import ExportReport, ParityCase, compare_outputs
        heavy = ('torch', 'onnx', 'onnxruntime', 'onnxscript', 'onnxconverter_common')
        print('LOADED', sorted(m for m in sys.modules if m.split('.')[0] in heavy))
        """,
        ("torch", "onnx", "onnxruntime", "onnxscript", "onnxconverter_common", "tensorrt"),
    )
    assert res.returncode == 0, res.stderr
    assert "LOADED []" in res.stdout


@pytest.mark.parametrize(
    ("name", "blocked", "module"),
    [
        ("onnx_from_checkpoint", ("onnx",), "onnx"),
        ("onnx_from_checkpoint", ("torch",), "torch"),
        ("fp16_onnx_from_onnx", ("onnxconverter_common",), "onnxconverter_common"),
    ],
)
def test_missing_export_dependency_names_the_extra(name, blocked, module):
    res = _run_blocked(
        f"""
        from cyclesr_deploy.errors import MissingExtraError
        try:
            from cyclesr_deploy.export import {name}
        except MissingExtraError as exc:
            print('MSG', exc)
        """,
        blocked,
    )
    assert res.returncode == 0, res.stderr
    assert f"'{module}'" in res.stdout and "pip install 'cyclesr-deploy[export]'" in res.stdout


def test_export_package_exposes_its_public_names():
    import cyclesr_deploy.export as export

    assert set(export.__all__) == set(export._LAZY)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        export.nope  # noqa: B018


def test_fp16_conversion_does_not_need_torch():
    pytest.importorskip("onnx")
    pytest.importorskip("onnxconverter_common")
    res = _run_blocked(
        """
        import sys
        from cyclesr_deploy.export import fp16_onnx_from_onnx
        print('TORCH', 'torch' in sys.modules)
        """,
        ("torch",),
    )
    assert res.returncode == 0, res.stderr
    assert "TORCH False" in res.stdout
