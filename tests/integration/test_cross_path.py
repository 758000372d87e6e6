"""Every door into the runtime gives the same frame, bit for bit, for the same settings.

``cyclesr enhance`` (CLI), ``cyclesr enhance --cluster local:1 --output-format zarr`` (a Dask
worker process writing OME-Zarr), ``cyclesr watch`` (CLI), the Python ``Enhancer``, ``cyclesr bench
latency``'s end-to-end path, the pycro-manager ``AcquisitionHook`` (its stacks on disk) and the
napari widget's work (``enhance_into`` with the widget's ``Settings``; Qt-free), on 512^2,
1024^2, 2048x1536 and 4096^2 uint16 frames made from a real micrograph (scikit-image's
``data.cell()``): with the default built-in model (InstanceNorm; the 4096^2 frame is tiled with
frozen statistics, the others run whole) and with a model without InstanceNorm (independent
tiles). Each door opens its own engine with the same factory: on a machine without an NVIDIA GPU
and with openvino installed that is the OpenVINO engine.
"""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

pytest.importorskip("onnxruntime")

from cyclesr_deploy.builtin import DEFAULT_MODEL, builtin_model
from cyclesr_deploy.cli import app
from cyclesr_deploy.engines.select import cuda_device_count
from cyclesr_deploy.model import load_model
from cyclesr_deploy.napari._work import Settings as NapariSettings
from cyclesr_deploy.napari._work import enhance_into, frame_indices, new_output
from cyclesr_deploy.runtime.acquisition import AcquisitionHook
from cyclesr_deploy.runtime.manifest import MANIFEST_NAME
from cyclesr_deploy.runtime.runner import EnhanceConfig, FrameRunner

SHAPES = {"f512": (512, 512), "f1024": (1024, 1024), "f2048x1536": (2048, 1536)}
BIG = {"f4096": (4096, 4096)}
cli = CliRunner()


def micrograph(shape: tuple[int, int], seed: int) -> np.ndarray:
    """A uint16 frame of ``shape`` tiled from scikit-image's real cell image (mirrored tiles,
    a per-frame gain and Poisson noise so that frames differ)."""
    from skimage import data

    cell = data.cell().astype(np.float64)
    tile = np.block([[cell, cell[:, ::-1]], [cell[::-1], cell[::-1, ::-1]]])
    reps = (-(-shape[0] // tile.shape[0]), -(-shape[1] // tile.shape[1]))
    img = np.tile(tile, reps)[: shape[0], : shape[1]]
    rng = np.random.default_rng(seed)
    img = rng.poisson(img * (8 + seed)).astype(np.float64) + 100
    return np.clip(img, 0, 65535).astype(np.uint16)


def _write_inputs(folder, shapes):
    folder.mkdir(parents=True, exist_ok=True)
    frames = {}
    for i, (name, shape) in enumerate(shapes.items()):
        frames[name] = micrograph(shape, i)
        tifffile.imwrite(folder / f"{name}.tif", frames[name], photometric="minisblack")
    return frames


def _outputs(folder, names):
    return {n: tifffile.imread(folder / f"{n}.tif") for n in names}


def _zarr_frame(path):
    from cyclesr_deploy.runtime.formats import open_frames

    with open_frames(path) as reader:
        return reader.read(0)


def _trust(t):
    """(score, trusted, worst) of a FrameTrust or a manifest's frame record; None: unscored."""
    if t is None:
        return None
    if isinstance(t, dict):
        return (t["trust"], t["trusted"], t["worst"])
    return (float(f"{t.score:.4g}"), t.trusted, t.worst)  # the manifest's 4 significant digits


def _manifest_trust(folder, names):
    """Each frame's trust in the manifest of ``folder``, by input name (one frame per input)."""
    entries = json.loads((folder / MANIFEST_NAME).read_text())["files"]
    found = {}
    for key, entry in entries.items():
        name = next(n for n in names if f"{n}." in key.replace("\\", "/").rsplit("/", 1)[-1] + ".")
        trust = entry.get("trust")
        found[name] = _trust(trust["worst"][0]) if trust else None  # its one frame
        assert not trust or trust["scores"] == [found[name][0]]
    return found


def _doors(tmp_path, model_dir, shapes, whole_max_px=None, tile=None):
    """The outputs of each entry point for the frames of ``shapes`` (default settings, or
    ``--whole-max-px``, ``--tile``), and the trust each door reports per frame."""
    from cyclesr_deploy.bench.latency import end_to_end
    from cyclesr_deploy.engines import open_engine
    from cyclesr_deploy.runtime.enhancer import Enhancer

    frames = _write_inputs(tmp_path / "in", shapes)
    results: dict[str, dict[str, np.ndarray]] = {}
    settings = {} if whole_max_px is None else {"whole_max_px": whole_max_px}
    extra = [] if whole_max_px is None else ["--whole-max-px", str(whole_max_px)]
    if tile is not None:
        settings["tile"] = tile
        extra += ["--tile", str(tile)]

    res = cli.invoke(app, ["enhance", str(tmp_path / "in"), "-o", str(tmp_path / "enh"),
                           "--model", str(model_dir), *extra])  # fmt: skip
    assert res.exit_code == 0, res.output
    results["enhance"] = _outputs(tmp_path / "enh", frames)
    trusts = {"enhance": _manifest_trust(tmp_path / "enh", frames)}

    res = cli.invoke(app, ["enhance", str(tmp_path / "in"), "-o", str(tmp_path / "cluster"),
                           "--model", str(model_dir), "--cluster", "local:1",
                           "--output-format", "zarr", *extra])  # fmt: skip
    assert res.exit_code == 0, res.output
    results["enhance --cluster"] = {
        n: _zarr_frame(tmp_path / "cluster" / f"{n}.ome.zarr") for n in frames
    }
    trusts["enhance --cluster"] = _manifest_trust(tmp_path / "cluster", frames)

    res = cli.invoke(app, ["watch", str(tmp_path / "in"), "-o", str(tmp_path / "watch"),
                           "--model", str(model_dir), "--exit-idle", "1", "--poll", "0.05",
                           "--stable", "0.1", "--polling", *extra])  # fmt: skip
    assert res.exit_code == 0, res.output
    results["watch"] = _outputs(tmp_path / "watch", frames)
    trusts["watch"] = _manifest_trust(tmp_path / "watch", frames)

    with Enhancer(model_dir, **settings) as enhancer:
        results["Enhancer"], trusts["Enhancer"] = {}, {}
        for n, f in frames.items():
            results["Enhancer"][n] = enhancer(f)
            trusts["Enhancer"][n] = _trust(enhancer.last_trust)

    hook_dir = tmp_path / "hook"
    with AcquisitionHook(hook_dir, model_dir, enhance=EnhanceConfig(**settings)) as hook:
        for name, frame in frames.items():  # one stack per "position": one page each
            assert hook(frame, {"Axes": {"position": name}})[0] is frame
    assert hook.report is not None and hook.report.ok
    results["acquisition hook"] = {
        n: tifffile.imread(hook_dir / f"acquisition_position-{n}.ome.tif") for n in frames
    }
    trusts["acquisition hook"] = _manifest_trust(hook_dir, frames)

    with NapariSettings(model=str(model_dir), **settings).open() as enhancer:
        napari, trusts["napari"] = {}, {}
        for name, frame in frames.items():
            out = new_output(frame.shape, frame.dtype, enhancer.scale)
            assert list(enhance_into(enhancer, frame, frame_indices(frame.shape), out)) == [1]
            napari[name] = out
            trusts["napari"][name] = _trust(enhancer.last_trust)
        results["napari"] = napari

    cfg = EnhanceConfig(overwrite=True, **settings)
    model = load_model(model_dir)
    with open_engine(model_dir, tiling=cfg.engine_tiling, stats=cfg.stats) as engine:
        bench = {}
        for name in frames:
            (out,) = end_to_end(tmp_path / "in" / f"{name}.tif", tmp_path / "bench", engine,
                                model, cfg)  # fmt: skip
            bench[name] = tifffile.imread(out)
        results["bench latency"] = bench
        trusts["bench latency"] = _manifest_trust(tmp_path / "bench", frames)
        plans = {n: FrameRunner(engine, model, cfg).plan(f.shape).mode for n, f in frames.items()}
        if importlib.util.find_spec("openvino") is not None and not cuda_device_count():
            assert engine.name.startswith("openvino["), engine.name  # the CPU default
    return frames, results, plans, trusts


def _assert_identical(frames, results, scale, trusts):
    reference = results["enhance"]
    for name, frame in frames.items():
        assert reference[name].shape == (frame.shape[0] * scale, frame.shape[1] * scale)
        assert reference[name].dtype == np.uint16
        for door, outs in results.items():
            np.testing.assert_array_equal(outs[name], reference[name], err_msg=f"{door} {name}")
    assert set(trusts) == set(results)
    for door, found in trusts.items():  # every door reports the same trust for the same frame
        assert found == trusts["enhance"], door


@pytest.mark.slow
@pytest.mark.parametrize("shapes", [SHAPES, BIG], ids=["512-2048x1536", "4096"])
def test_default_model_all_doors_bit_identical(tmp_path, shapes):
    model_dir = builtin_model(DEFAULT_MODEL)
    frames, results, plans, trusts = _doors(tmp_path, model_dir, shapes)
    if shapes is BIG:
        assert plans == {"f4096": "frozen"}  # tiled with frozen InstanceNorm statistics
    else:
        assert set(plans.values()) == {"whole"}
    _assert_identical(frames, results, load_model(model_dir).scale, trusts)


@pytest.mark.slow
def test_model_without_instance_norm_all_doors_bit_identical(tmp_path):
    pytest.importorskip("torch")
    from tests.tiny_models import train_tiny_model

    model_dir = train_tiny_model(tmp_path / "train", onnx=True, generator__norm="none")
    assert load_model(model_dir).generator.norm == "none"
    shapes = {**SHAPES, **BIG}
    frames, results, plans, trusts = _doors(tmp_path, model_dir, shapes)
    assert plans["f512"] == "whole" and plans["f4096"] == "tiles"
    _assert_identical(frames, results, load_model(model_dir).scale, trusts)


@pytest.mark.slow
def test_default_model_frozen_tiles_all_doors_bit_identical(tmp_path):
    """--whole-max-px 0 --tile 512: every frame larger than a tile runs in frozen-statistics
    tiles."""
    model_dir = builtin_model(DEFAULT_MODEL)
    shapes = {"f1024": (1024, 1024), "f600x900": (600, 900)}
    frames, results, plans, trusts = _doors(tmp_path, model_dir, shapes, whole_max_px=0, tile=512)
    assert set(plans.values()) == {"frozen"}
    _assert_identical(frames, results, load_model(model_dir).scale, trusts)


@pytest.mark.slow
def test_calibrated_model_all_doors_report_the_same_trust(tmp_path):
    """A copy of the default model with a trust calibration: every door reports the same
    trust (score, verdict, worst statistic) for the same frame, next to the same output."""
    import shutil

    from cyclesr_deploy.synthetic.simulate import simulate_pair
    from cyclesr_deploy.trust.calibrate import calibrate

    model_dir = tmp_path / "model"
    shutil.copytree(builtin_model(DEFAULT_MODEL), model_dir)
    calibrate(model_dir, [simulate_pair({"size": 128}, i).lr for i in range(8)], data="synthetic")
    shapes = {"f512": (512, 512), "f600x900": (600, 900)}
    frames, results, _plans, trusts = _doors(tmp_path, model_dir, shapes)
    assert all(t is not None for t in trusts["enhance"].values())
    _assert_identical(frames, results, load_model(model_dir).scale, trusts)
