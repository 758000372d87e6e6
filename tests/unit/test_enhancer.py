"""The Python API (Enhancer, FrameRunner) with a fake engine, numpy only."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

import cyclesr_deploy.engines as engines
import cyclesr_deploy.model as model_mod
from cyclesr_deploy.errors import InputError
from cyclesr_deploy.model import GeneratorConfig, ModelConfig, NormalizationConfig
from cyclesr_deploy.runtime.enhancer import Enhancer
from cyclesr_deploy.runtime.pipeline import EnhanceConfig, enhance_files
from cyclesr_deploy.runtime.runner import FrameRunner
from tests.conftest import FakeEngine


def _model(scale=1, low=0.0, high=2.0):
    return ModelConfig(
        generator=GeneratorConfig(ngf=4, n_blocks=0, scale=scale),
        normalization=NormalizationConfig(low_a=low, high_a=high, low_b=low, high_b=high),
    )


@pytest.fixture
def patched(monkeypatch):
    """open_engine / load_model replaced: Enhancer(any folder) gets a FakeEngine."""
    made: list[FakeEngine] = []

    def fake_open(model_dir, backend="auto", **kw):
        made.append(FakeEngine("identity"))
        made[-1].backend_asked = backend
        return made[-1]

    monkeypatch.setattr(engines, "open_engine", fake_open)
    monkeypatch.setattr(model_mod, "load_model", lambda _d: _model(low=0, high=65535))
    return made


def test_uint16_round_trip_through_model_dir(patched, rng, tmp_path):
    frame = rng.integers(0, 65535, (64, 64)).astype(np.uint16)
    with Enhancer(tmp_path, backend="onnxruntime", tile=32, overlap=8) as enhancer:
        out = enhancer(frame)
        assert patched[0].entered and patched[0].backend_asked == "onnxruntime"
        assert enhancer.backend == "fake[identity]"
    assert not patched[0].entered  # closed on exit
    assert out.dtype == np.uint16 and out.shape == (64, 64)
    np.testing.assert_array_equal(out, frame)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_plus_one_and_dtype_kept(dtype):
    enhancer = Enhancer(None, engine=FakeEngine("plus1"), model=_model(), tile=0)
    frame = (np.arange(64 * 64).reshape(64, 64) % 200).astype(dtype)
    out = enhancer(frame)
    assert out.dtype == dtype
    np.testing.assert_allclose(out.astype(np.float64), frame.astype(np.float64) + 1, atol=1e-4)
    enhancer.close()
    with pytest.raises(RuntimeError):
        enhancer(frame)


def test_matches_enhance_files(tmp_path, rng):
    import tifffile

    data = rng.integers(0, 60000, (2, 40, 52)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "a.tif", data, photometric="minisblack")
    cfg = EnhanceConfig(tile=16, overlap=8, batch=3)
    model = _model(2, 0, 65535)
    enhance_files([tmp_path / "a.tif"], tmp_path / "out", FakeEngine("nearest2"), model, cfg)
    ref = tifffile.imread(tmp_path / "out" / "a.tif")
    proc = FrameRunner(FakeEngine("nearest2"), model, cfg)
    for i in range(2):
        np.testing.assert_array_equal(proc(data[i]), ref[i])


def test_stream_and_stack_and_scale():
    enhancer = Enhancer(None, engine=FakeEngine("nearest2"), model=_model(2), tile=0)
    frames = [np.full((16, 20), v, np.uint16) for v in range(3)]
    outs = list(enhancer.stream(iter(frames)))
    assert [o.shape for o in outs] == [(32, 40)] * 3
    assert [int(o[0, 0]) for o in outs] == [0, 1, 2]
    stack = enhancer(np.stack(frames).reshape(3, 1, 16, 20))  # any leading axes
    assert stack.shape == (3, 1, 32, 40)
    np.testing.assert_array_equal(stack[:, 0], np.stack(outs))


def test_pycromanager_and_napari_shapes():
    enhancer = Enhancer(None, engine=FakeEngine("nearest2"), model=_model(2), tile=0)
    image, meta = enhancer.image_process_fn(np.ones((8, 12), np.uint16), {"Width": 12, "k": 1})
    assert image.shape == (16, 24) and meta["Width"] == 24 and meta["k"] == 1
    assert "CycleSR" in meta
    # napari/magicgui: a plain ndarray -> ndarray callable with one positional argument
    params = list(inspect.signature(enhancer.__call__).parameters)
    assert params == ["frame"]


def test_bad_inputs():
    enhancer = Enhancer(None, engine=FakeEngine("identity"), model=_model(), tile=0)
    with pytest.raises(InputError):
        enhancer(np.zeros(5, np.uint16))
    with pytest.raises(InputError):
        enhancer(np.zeros((8, 8), np.int64))
    with pytest.raises(InputError):
        Enhancer(None, engine=FakeEngine("nearest2"), model=_model(1))  # scale mismatch
