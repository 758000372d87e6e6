"""``cyclesr enhance`` through the CLI: a fake engine (numpy only) and the real ONNX Runtime one."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

from cyclesr_deploy.cli import app
from cyclesr_deploy.model import GeneratorConfig, ModelConfig, save_model_config
from cyclesr_deploy.runtime.manifest import LOCK_NAME
from cyclesr_deploy.runtime.pipeline import MANIFEST_NAME
from tests.conftest import FakeEngine

runner = CliRunner()


def _text(res) -> str:
    """The output with rich's line wrapping undone."""
    return " ".join(res.output.split())


@pytest.fixture
def fake_model(tmp_path, monkeypatch):
    """A model folder (model.json only) whose engine is a FakeEngine (identity)."""
    model_dir = tmp_path / "model"
    save_model_config(model_dir, ModelConfig(generator=GeneratorConfig(ngf=4, n_blocks=0)))
    opened = []

    def fake_open_engine(path, backend="auto", **kwargs):
        engine = FakeEngine("identity")
        opened.append((path, backend, kwargs))
        return engine

    monkeypatch.setattr("cyclesr_deploy.engines.open_engine", fake_open_engine, raising=False)
    return model_dir, opened


def _stack(rng, shape, folder, name):
    folder.mkdir(parents=True, exist_ok=True)
    data = rng.integers(0, 60000, shape).astype(np.uint16)
    tifffile.imwrite(folder / name, data, ome=True, metadata={"axes": "TYX"[-len(shape) :]})
    return data


def test_enhance_folder_then_rerun_skips(tmp_path, rng, fake_model):
    model_dir, opened = fake_model
    a = _stack(rng, (3, 24, 20), tmp_path / "in", "a.tif")
    _stack(rng, (16, 16), tmp_path / "in", "b.tiff")
    args = ["enhance", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--model", str(model_dir)]
    res = runner.invoke(app, [*args, "--tile", "16", "--overlap", "8", "--batch", "2"])
    assert res.exit_code == 0, res.output
    assert "fake engine (identity)" in _text(res)  # the selection reason
    assert "a.tif" in res.output and "done" in res.output
    assert opened[0][1] == "auto" and opened[0][2]["precision"] == "default"
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "out" / "a.tif"), a)
    manifest = json.loads((tmp_path / "out" / MANIFEST_NAME).read_text())
    assert manifest["config"]["tile"] == 16 and manifest["engine"] == "fake[identity]"

    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    assert again.output.count("skipped") >= 2


def test_enhance_bad_files_exit_1_and_keep_going(tmp_path, rng, fake_model):
    model_dir, _ = fake_model
    _stack(rng, (2, 16, 16), tmp_path / "in", "good.tif")
    tifffile.imwrite(tmp_path / "in" / "rgb.tif", np.zeros((8, 8, 3), np.uint8), photometric="rgb")
    (tmp_path / "in" / "junk.tif").write_bytes(b"II*\x00garbage")
    res = runner.invoke(
        app,
        ["enhance", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--model", str(model_dir)],
    )
    assert res.exit_code == 1, res.output
    assert "RGB" in _text(res) and "failed" in res.output
    left = sorted(p.name for p in (tmp_path / "out").iterdir() if p.name != LOCK_NAME)
    assert left == [MANIFEST_NAME, "good.tif"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--tile", "30"], "multiple of"),
        (["--batch", "0"], "batch"),
        (["--normalize", "stack"], "normalize"),
    ],
)
def test_enhance_bad_arguments_exit_2(tmp_path, rng, fake_model, extra, message):
    model_dir, opened = fake_model
    _stack(rng, (16, 16), tmp_path / "in", "a.tif")
    res = runner.invoke(
        app,
        ["enhance", str(tmp_path / "in"), "-o", str(tmp_path / "o"), "-m", str(model_dir), *extra],
    )
    assert res.exit_code == 2, res.output
    assert message in _text(res)
    assert not opened  # refused before the engine was loaded


def test_enhance_refuses_input_folder_missing_model_and_missing_input(tmp_path, rng, fake_model):
    model_dir, opened = fake_model
    _stack(rng, (16, 16), tmp_path / "in", "a.tif")
    res = runner.invoke(
        app, ["enhance", str(tmp_path / "in"), "-o", str(tmp_path / "in"), "-m", str(model_dir)]
    )
    assert res.exit_code == 2 and "folder of input" in _text(res)
    res = runner.invoke(
        app, ["enhance", str(tmp_path / "in"), "-o", str(tmp_path / "o"), "-m", "no-such-model"]
    )
    assert res.exit_code == 2 and "neither a model folder nor a built-in model" in _text(res)
    res = runner.invoke(
        app,
        ["enhance", str(tmp_path / "nope.tif"), "-o", str(tmp_path / "o"), "-m", str(model_dir)],
    )
    assert res.exit_code == 2 and "no such file" in _text(res)
    assert not opened
    assert sorted(p.name for p in (tmp_path / "in").iterdir()) == ["a.tif"]


# --- the real ONNX Runtime engine on a tiny trained model -----------------------------------------
@pytest.fixture(scope="module")
def onnx_model_dir(tmp_path_factory):
    pytest.importorskip("torch")
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from tests.tiny_models import train_tiny_model

    return train_tiny_model(tmp_path_factory.mktemp("cli-enhance"), onnx=True)


def _psnr(a: np.ndarray, b: np.ndarray, data_range: float) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(data_range**2 / mse)


def test_enhance_with_onnxruntime_and_tiling_effect(tmp_path, rng, onnx_model_dir):
    from cyclesr_deploy.synthetic import SynthConfig, generate_dataset

    generate_dataset(tmp_path / "syn", SynthConfig(size=128, seed=7), n_train=1, n_test=0)
    frame = tifffile.imread(next((tmp_path / "syn" / "trainA").glob("*.tif")))
    stack = np.stack([frame, frame[::-1]])
    (tmp_path / "in").mkdir()
    tifffile.imwrite(tmp_path / "in" / "s.tif", stack, ome=True, metadata={"axes": "TYX"})
    common = ["enhance", str(tmp_path / "in"), "-m", str(onnx_model_dir), "--backend"]
    res = runner.invoke(app, [*common, "onnxruntime", "-o", str(tmp_path / "whole"), "--tile", "0"])
    assert res.exit_code == 0, res.output
    assert "onnxruntime" in res.output
    whole = tifffile.imread(tmp_path / "whole" / "s.tif")
    assert whole.shape == stack.shape and whole.dtype == stack.dtype
    assert whole.std() > 0
    # --whole-max-px 0: tiled although the frame fits the auto whole-frame budget
    tiled_out = ["-o", str(tmp_path / "tiled"), "--tile", "96", "--whole-max-px", "0"]
    res = runner.invoke(app, [*common, "onnxruntime", *tiled_out])
    assert res.exit_code == 0, res.output
    tiled = tifffile.imread(tmp_path / "tiled" / "s.tif")
    # InstanceNorm normalizes per tile: tiled != whole frame; only its size is measured
    psnr = _psnr(tiled, whole, float(whole.max()) - float(whole.min()))
    assert math.isfinite(psnr)


def test_enhance_interrupted_exits_130_without_partial_files(tmp_path, rng, monkeypatch):
    model_dir = tmp_path / "model"
    save_model_config(model_dir, ModelConfig(generator=GeneratorConfig(ngf=4, n_blocks=0)))

    def interrupting(path, backend="auto", **kwargs):
        return FakeEngine(raise_at=2, exc=KeyboardInterrupt())

    monkeypatch.setattr("cyclesr_deploy.engines.open_engine", interrupting, raising=False)
    _stack(rng, (4, 16, 16), tmp_path / "in", "a.tif")
    args = ["enhance", str(tmp_path / "in"), "-o", str(tmp_path / "o"), "-m", str(model_dir)]
    res = runner.invoke(app, [*args, "--batch", "1"], catch_exceptions=False)
    assert res.exit_code == 130, res.output
    assert "interrupted" in res.output
    left = sorted(p.name for p in (tmp_path / "o").iterdir() if p.name != LOCK_NAME)
    assert left == [MANIFEST_NAME]


def test_enhance_without_model_uses_the_builtin_cyclegan(tmp_path):
    """No --model: the shipped reference CycleGAN, on ONNX Runtime (CPU here); it sharpens a
    synthetic LR acquisition towards the HR one (PSNR against HR clearly up)."""
    pytest.importorskip("onnxruntime")
    from cyclesr_deploy.metrics import psnr
    from cyclesr_deploy.synthetic import SynthConfig, simulate_pair

    pair = simulate_pair(SynthConfig(size=192, seed=11))
    (tmp_path / "in").mkdir()
    tifffile.imwrite(tmp_path / "in" / "lr.tif", pair.lr, ome=True, metadata={"axes": "YX"})
    res = runner.invoke(
        app,
        ["enhance", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--backend", "onnxruntime"],
    )
    assert res.exit_code == 0, res.output
    manifest = json.loads((tmp_path / "out" / MANIFEST_NAME).read_text(encoding="utf-8"))
    assert "reference-cyclegan" in json.dumps(manifest)
    out = tifffile.imread(tmp_path / "out" / "lr.tif")
    assert out.shape == pair.hr.shape and out.dtype == np.uint16

    def unit(x):
        lo, hi = np.percentile(x, (0.1, 99.9))
        return np.clip((x.astype(np.float64) - lo) / (hi - lo), 0, 1)

    gain = psnr(unit(out), unit(pair.hr), data_range=1) - psnr(
        unit(pair.lr), unit(pair.hr), data_range=1
    )
    assert gain > 3, gain


def test_enhance_auto_runs_a_frame_within_the_budget_whole(tmp_path, onnx_model_dir):
    frame = (np.arange(128 * 128, dtype=np.uint16).reshape(128, 128) * 3) % 60000
    (tmp_path / "in").mkdir()
    tifffile.imwrite(tmp_path / "in" / "f.tif", frame)
    common = ["enhance", str(tmp_path / "in"), "-m", str(onnx_model_dir), "--backend"]
    res = runner.invoke(app, [*common, "onnxruntime", "-o", str(tmp_path / "w"), "--tile", "0"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, [*common, "onnxruntime", "-o", str(tmp_path / "a"), "--tile", "96"])
    assert res.exit_code == 0, res.output
    whole = tifffile.imread(tmp_path / "w" / "f.tif").astype(np.int64)
    auto = tifffile.imread(tmp_path / "a" / "f.tif").astype(np.int64)
    assert np.abs(auto - whole).max() <= 1  # --tiling auto: whole-frame inference
