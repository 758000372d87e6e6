"""The napari dock widget, headless: offscreen Qt, pytest-qt's ``qtbot``, a napari viewer.

The viewer: napari's ``ViewerModel`` (layers, dims, selection: all the widget uses) by
default, because adding a layer to a full ``napari.Viewer`` creates its vispy canvas, and
offscreen Qt has no OpenGL (vispy fails in ``glGetParameter``). With a display (e.g.
``xvfb-run``) and ``CYCLESR_NAPARI_VIEWER=full``, the same tests run in napari's
``make_napari_viewer`` fixture: a real viewer window. The widget runs real frame runners (the
built-in model through ONNX Runtime, or an injected fake engine where a test needs a slow or x2
engine)."""

from __future__ import annotations

import os

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")
pytest.importorskip("onnxruntime")

from cyclesr_deploy.builtin import DEFAULT_MODEL
from cyclesr_deploy.model import GeneratorConfig, ModelConfig, NormalizationConfig
from cyclesr_deploy.napari import _follow, _widget
from cyclesr_deploy.napari._widget import CycleSRWidget
from cyclesr_deploy.napari._work import EnhancerPool, Settings
from cyclesr_deploy.runtime.enhancer import Enhancer
from tests.conftest import FakeEngine

TIMEOUT_MS = 60_000


def _stack(n: int, size: int = 64, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.poisson(300, (n, size, size)).astype(np.uint16)


def _fake_enhancer(mode: str, delay: float = 0.0) -> Enhancer:
    model = ModelConfig(
        generator=GeneratorConfig(ngf=4, n_blocks=0, scale=2 if mode == "nearest2" else 1),
        normalization=NormalizationConfig(low_a=0, high_a=2, low_b=0, high_b=2),
    )
    return Enhancer(engine=FakeEngine(mode, delay=delay), model=model, tile=0)


@pytest.fixture
def viewer_widget(request, qtbot):
    if os.environ.get("CYCLESR_NAPARI_VIEWER") == "full":
        viewer = request.getfixturevalue("make_napari_viewer")()
    else:
        from napari.components import ViewerModel

        viewer = ViewerModel()
    widget = CycleSRWidget(viewer)
    yield viewer, widget
    widget.follower.stop()


def _wait_idle(qtbot, widget) -> None:
    qtbot.waitUntil(lambda: widget.worker is None and not widget.follower.busy, timeout=TIMEOUT_MS)


def test_enhances_a_stack_with_the_builtin_model(viewer_widget, qtbot):
    viewer, widget = viewer_widget
    data = _stack(3)
    layer = viewer.add_image(data, name="cells", scale=(2.0, 0.1, 0.1), translate=(0, 5, 5))
    viewer.layers.selection.active = layer
    assert widget.layer() is layer and widget.run_button.isEnabled()
    widget.tile.setValue(0)
    assert widget.run() is not None
    assert not widget.run_button.isEnabled()  # one run at a time; the UI stays responsive
    _wait_idle(qtbot, widget)
    name = f"cells [CycleSR {DEFAULT_MODEL} x1]"
    result = viewer.layers[name]
    with Enhancer(DEFAULT_MODEL, tile=0) as enhancer:
        expected = enhancer(data)
    np.testing.assert_array_equal(result.data, expected)
    assert result.data.dtype == np.uint16
    assert tuple(result.scale) == (2.0, 0.1, 0.1) and tuple(result.translate) == (0, 5, 5)
    assert widget.progress.value() == 3 and widget.run_button.isEnabled()


def test_x2_model_result_scale_and_the_current_frame_only(viewer_widget, qtbot, monkeypatch):
    viewer, widget = viewer_widget
    fake = _fake_enhancer("nearest2")
    monkeypatch.setattr(widget, "enhancers", EnhancerPool(lambda settings: fake))
    data = _stack(4, 32)
    layer = viewer.add_image(data, name="cells", scale=(1.0, 0.2, 0.2))
    viewer.dims.set_current_step(0, 2)
    widget.frames.setCurrentIndex(1)  # current frame
    widget.run()
    _wait_idle(qtbot, widget)
    result = viewer.layers["cells [CycleSR reference-cyclegan x2]"]
    assert result.data.shape == (4, 64, 64)
    assert tuple(result.scale) == pytest.approx((1.0, 0.1, 0.1))
    assert tuple(result.translate) == pytest.approx((0.0, -0.05, -0.05))  # pixels cover input's
    np.testing.assert_array_equal(result.data[2], data[2].repeat(2, 0).repeat(2, 1))
    assert not result.data[[0, 1, 3]].any()  # only the frame on screen
    assert layer.data is data  # the input is never modified


def test_cancel_stops_between_frames_and_adds_nothing(viewer_widget, qtbot, monkeypatch):
    viewer, widget = viewer_widget
    fake = _fake_enhancer("plus1", delay=0.05)
    monkeypatch.setattr(widget, "enhancers", EnhancerPool(lambda settings: fake))
    viewer.add_image(_stack(60, 16), name="long")
    worker = widget.run()
    qtbot.waitUntil(lambda: widget.progress.value() >= 2, timeout=TIMEOUT_MS)
    with qtbot.waitSignal(worker.finished, timeout=TIMEOUT_MS):
        widget.cancel()
    assert fake.engine.calls < 60
    assert [ly.name for ly in viewer.layers] == ["long"]
    assert "cancelled" in widget.status.text()
    assert widget.run_button.isEnabled() and not widget.cancel_button.isEnabled()


def test_errors_go_to_notifications_and_the_widget_recovers(viewer_widget, qtbot, monkeypatch):
    viewer, widget = viewer_widget
    shown: list[str] = []
    monkeypatch.setattr(_widget, "show_error", shown.append)
    viewer.add_image(np.zeros((2, 32, 32), np.int32), name="wrong dtype")
    widget.tile.setValue(0)
    widget.run()
    _wait_idle(qtbot, widget)
    assert shown and "int32 is not supported" in shown[0]
    assert widget.run_button.isEnabled() and len(viewer.layers) == 1
    widget.model.setCurrentText("no-such-model")
    viewer.add_image(_stack(1, 32)[0], name="frame")
    widget.run()
    _wait_idle(qtbot, widget)
    assert "neither a model folder nor a built-in model" in shown[-1]


def test_follow_enhances_the_frame_on_screen_and_appended_frames(viewer_widget, qtbot, monkeypatch):
    viewer, widget = viewer_widget
    fake = _fake_enhancer("plus1")
    monkeypatch.setattr(widget, "enhancers", EnhancerPool(lambda settings: fake))
    data = _stack(3, 24)
    layer = viewer.add_image(data, name="live")
    viewer.dims.set_current_step(0, 0)
    widget.follow.setChecked(True)
    _wait_idle(qtbot, widget)
    result = viewer.layers["live [CycleSR reference-cyclegan x1 live]"]
    assert widget.follower.done == {(0,)}
    np.testing.assert_array_equal(result.data[0], data[0] + 1)
    assert not result.data[1:].any()
    viewer.dims.set_current_step(0, 2)  # the user scrolls
    _wait_idle(qtbot, widget)
    assert widget.follower.done == {(0,), (2,)}
    np.testing.assert_array_equal(result.data[2], data[2] + 1)
    grown = np.concatenate([data, _stack(1, 24, seed=9)])  # the acquisition appends a frame
    layer.data = grown
    _wait_idle(qtbot, widget)
    assert result.data.shape == (4, 24, 24) and (3,) in widget.follower.done
    np.testing.assert_array_equal(result.data[3], grown[3] + 1)
    np.testing.assert_array_equal(result.data[0], data[0] + 1)  # kept
    other = _stack(2, 16, seed=3)  # other data altogether: start again
    viewer.dims.set_current_step(0, 0)
    layer.data = other
    _wait_idle(qtbot, widget)
    assert result.data.shape == (2, 16, 16) and widget.follower.done == {(0,)}
    np.testing.assert_array_equal(result.data[0], other[0] + 1)
    widget.follow.setChecked(False)
    viewer.dims.set_current_step(0, 1)
    _wait_idle(qtbot, widget)
    assert (1,) not in widget.follower.done  # stopped following


def test_sample_data_and_manifest():
    from pathlib import Path

    from npe2 import PluginManifest

    import cyclesr_deploy.napari as pkg
    from cyclesr_deploy.napari._work import sample_frame, sample_timelapse

    manifest = PluginManifest.from_file(Path(pkg.__file__).parent / "napari.yaml")
    assert manifest.name == "cyclesr-deploy"
    manifest.validate_imports()  # every python_name resolves
    ids = {c.id for c in manifest.contributions.commands}
    assert {"cyclesr-deploy.widget", "cyclesr-deploy.sample_frame"} <= ids
    ((frame, meta, kind),) = sample_frame()
    assert kind == "image" and frame.shape == (512, 512) and frame.dtype == np.uint16
    assert meta["scale"] == (0.04, 0.04)
    ((stack, meta, _),) = sample_timelapse()
    assert stack.shape == (6, 256, 256) and len(meta["scale"]) == 3


def test_current_frame_run_writes_the_frame_on_screen_when_it_started(viewer_widget, qtbot,
                                                                      monkeypatch):  # fmt: skip
    viewer, widget = viewer_widget
    fake = _fake_enhancer("plus1")
    monkeypatch.setattr(widget, "enhancers", EnhancerPool(lambda settings: fake))
    data = _stack(3, 16)
    layer = viewer.add_image(data, name="cells")
    widget.run()  # all frames: the result layer exists
    _wait_idle(qtbot, widget)
    result = viewer.layers["cells [CycleSR reference-cyclegan x1]"]
    new = _stack(3, 16, seed=4)
    layer.data = new
    viewer.layers.selection.active = layer
    viewer.dims.set_current_step(0, 2)
    widget.frames.setCurrentIndex(1)  # current frame: 2
    widget.run()
    viewer.dims.set_current_step(0, 0)  # the user scrolls before the result arrives
    _wait_idle(qtbot, widget)
    np.testing.assert_array_equal(result.data[2], new[2] + 1)
    np.testing.assert_array_equal(result.data[0], data[0] + 1)  # untouched


def test_follow_drops_a_result_of_data_replaced_while_it_ran(viewer_widget, qtbot, monkeypatch):
    viewer, widget = viewer_widget
    fake = _fake_enhancer("plus1", delay=0.3)
    monkeypatch.setattr(widget, "enhancers", EnhancerPool(lambda settings: fake))
    old, new = _stack(3, 16), _stack(3, 16, seed=5)
    layer = viewer.add_image(old, name="live")
    viewer.dims.set_current_step(0, 0)
    widget.follow.setChecked(True)  # a worker enhances old[0] ...
    assert widget.follower.busy
    viewer.dims.set_current_step(0, 1)
    layer.data = new  # ... while the data are replaced
    _wait_idle(qtbot, widget)
    result = viewer.layers["live [CycleSR reference-cyclegan x1 live]"]
    assert widget.follower.done == {(1,)}  # old[0]'s result was dropped
    np.testing.assert_array_equal(result.data[1], new[1] + 1)
    assert not result.data[0].any()
    viewer.dims.set_current_step(0, 0)
    _wait_idle(qtbot, widget)
    np.testing.assert_array_equal(result.data[0], new[0] + 1)
    other = _stack(2, 12, seed=6)  # another frame size, a worker in flight: no broadcast error
    viewer.dims.set_current_step(0, 2)
    qtbot.waitUntil(lambda: widget.follower.busy, timeout=TIMEOUT_MS)
    layer.data = other
    _wait_idle(qtbot, widget)
    assert result.data.shape == (2, 12, 12)


def test_a_run_and_follow_with_other_settings_keep_their_own_engines(viewer_widget, qtbot,
                                                                     monkeypatch):  # fmt: skip
    viewer, widget = viewer_widget
    opened: list[Enhancer] = []

    def open_(self):
        opened.append(_fake_enhancer("plus1", delay=0.02))
        return opened[-1]

    monkeypatch.setattr(Settings, "open", open_)
    monkeypatch.setattr(widget, "enhancers", EnhancerPool())
    errors: list[str] = []
    monkeypatch.setattr(_widget, "show_error", errors.append)
    monkeypatch.setattr(_follow, "show_error", errors.append)
    data = _stack(12, 16)
    layer = viewer.add_image(data, name="cells")
    widget.tile.setValue(0)
    widget.run()  # all frames, settings A ...
    qtbot.waitUntil(lambda: widget.progress.value() >= 1, timeout=TIMEOUT_MS)
    widget.tile.setValue(64)
    widget.follow.setChecked(True)  # ... and follow with settings B at the same time
    for t in range(1, 4):
        viewer.dims.set_current_step(0, t)
        qtbot.waitUntil(lambda: not widget.follower.busy, timeout=TIMEOUT_MS)
    _wait_idle(qtbot, widget)
    assert errors == []
    np.testing.assert_array_equal(viewer.layers["cells [CycleSR reference-cyclegan x1]"].data,
                                  data + 1)  # fmt: skip
    assert len(opened) == 2  # one per settings, not one per frame
    assert opened[0]._closed and not opened[1]._closed  # the run's closed once done
    widget.follow.setChecked(False)
    layer.data = data


def test_follow_growth_copies_amortised(viewer_widget, qtbot, monkeypatch):
    viewer, widget = viewer_widget
    fake = _fake_enhancer("plus1")
    monkeypatch.setattr(widget, "enhancers", EnhancerPool(lambda settings: fake))
    frames = _stack(40, 8)
    layer = viewer.add_image(frames[:1], name="live")
    widget.follow.setChecked(True)
    _wait_idle(qtbot, widget)
    result = viewer.layers["live [CycleSR reference-cyclegan x1 live]"]
    buffers = set()
    for n in range(2, 41):  # the acquisition appends a frame at a time
        layer.data = frames[:n]
        _wait_idle(qtbot, widget)
        assert result.data.shape == (n, 8, 8) and (n - 1,) in widget.follower.done
        buffers.add(id(result.data.base if result.data.base is not None else result.data))
    assert len(buffers) <= 7  # capacity doubles: ~log2(40) reallocations, not 40
    np.testing.assert_array_equal(result.data, frames + 1)
