"""``cyclesr export bioimageio``: a BioImage Model Zoo package of the built-in CycleGAN, tested by
bioimageio.core offline (sockets blocked, cache in tmp); refused and failed exports leave
nothing behind."""

from __future__ import annotations

import io
import json
import socket
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("bioimageio.core")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from typer.testing import CliRunner

from cyclesr_deploy.builtin import builtin_model
from cyclesr_deploy.errors import InputError
from cyclesr_deploy.model import (
    GeneratorConfig,
    ModelConfig,
    ModelFolder,
    NormalizationConfig,
    Provenance,
    load_model,
    save_model_config,
)

pytestmark = pytest.mark.slow  # each export runs bioimageio.core's test (~5 s on 2 cores)

MODEL = "reference-cyclegan"


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """bioimageio's cache inside tmp, and any network connection fails the test."""
    from bioimageio.spec._internal._settings import settings

    cache = tmp_path / "bioimageio-cache"
    monkeypatch.setenv("BIOIMAGEIO_CACHE_PATH", str(cache))
    monkeypatch.setattr(settings, "cache_path", cache)
    attempts: list[object] = []

    def connect(self, address):
        attempts.append(address)
        raise OSError(f"network blocked in test: {address}")

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect)
    yield attempts
    assert attempts == [], f"the export reached for the network: {attempts}"


def _leftovers(folder: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


def _user_model(folder: Path, cfg: ModelConfig) -> Path:
    """A model folder with random weights (seed 0) and its ONNX: a user's model."""
    import torch

    from cyclesr_deploy.export import onnx_from_checkpoint
    from cyclesr_deploy.nets import build_generator

    save_model_config(folder, cfg)
    net = build_generator(cfg.generator, generator=torch.Generator().manual_seed(0))
    torch.save(net.state_dict(), ModelFolder(folder).weights("ab"))
    size = 2 * cfg.size_multiple * (cfg.receptive_field // cfg.size_multiple // 2 + 1)
    onnx_from_checkpoint(folder, dynamo=False, parity_sizes=[(1, size, size)], synthetic_sizes=[])
    return folder


def test_zip_package_reproduces_the_runtime_and_passes_bioimageio_core(tmp_path, offline):
    from bioimageio.spec import load_description
    from bioimageio.spec.model import v0_5

    from cyclesr_deploy.export.bioimageio import TEST_SEED, export_bioimageio
    from cyclesr_deploy.normalization import stretch_to_range
    from cyclesr_deploy.runtime.enhancer import Enhancer
    from cyclesr_deploy.synthetic import SynthConfig, simulate_pair

    out = tmp_path / "pkg" / "cyclegan.zip"
    res = export_bioimageio(MODEL, out, authors=("A. Tester",))
    assert res.tests == {"pytorch_state_dict": "passed", "onnx": "passed"}
    assert _leftovers(out.parent, {"cyclegan.zip"}) == []  # no staging folder left
    model = load_model(builtin_model(MODEL))
    folder = ModelFolder(builtin_model(MODEL))
    with zipfile.ZipFile(out) as zf:
        names = set(zf.namelist())
        readme = zf.read("README.md").decode()
        cover = zf.read("cover.png")
    # the model folder's file names, not literals
    assert {folder.onnx("fp32").name, folder.weights("ab").name, "nets.py"} <= names
    assert "## Validation" in readme and "10.1364/OL.537713" in readme
    assert cover[:8] == b"\x89PNG\r\n\x1a\n" and len(cover) < 500_000

    descr = load_description(out)
    assert isinstance(descr, v0_5.ModelDescr), descr
    assert descr.authors[0].name == "A. Tester"
    halo = {a.id: a.halo for a in descr.outputs[0].axes if hasattr(a, "halo")}
    assert halo == {"y": model.generator.halo, "x": model.generator.halo}
    (tolerance,) = descr.config.bioimageio.reproducibility_tolerance
    assert tolerance.relative_tolerance == 0  # |diff| <= absolute, for bright pixels too
    # preprocessing then postprocessing == the runtime's NormalizationConfig, on any values
    pre = next(p for p in descr.inputs[0].preprocessing if p.id == "scale_linear").kwargs
    post = next(p for p in descr.outputs[0].postprocessing if p.id == "scale_linear").kwargs
    x = np.random.default_rng(0).uniform(0, 60000, 1000).astype(np.float32)
    norm = model.normalization
    np.testing.assert_allclose(x * pre.gain + pre.offset, norm.to_model(x), rtol=0, atol=2e-6)
    y = np.random.default_rng(1).uniform(-1, 1, 1000).astype(np.float32)
    span = norm.high_b - norm.low_b  # float32 rounding of y * g + g vs (y + 1) * g only:
    np.testing.assert_allclose(y * post.gain + post.offset, norm.from_model(y), atol=1e-6 * span)

    # the test output is this runtime's output for a synthetic LR frame ...
    lr = simulate_pair(SynthConfig(size=256, seed=TEST_SEED)).lr
    lr = stretch_to_range(lr, norm.low_a, norm.high_a, norm.pmin, norm.pmax)
    with Enhancer(MODEL, backend="onnxruntime") as enhancer:
        ours = enhancer(lr)
    with zipfile.ZipFile(out) as zf:
        expected = np.load(io.BytesIO(zf.read(str(descr.outputs[0].test_tensor.source))))
    np.testing.assert_array_equal(expected[0, 0], ours)
    # ... and bioimageio.core's own reproduction (the spec's test: the image as it is, no
    # halo padding) agrees within 1e-4 of the output range
    from bioimageio.core import create_prediction_pipeline
    from bioimageio.core.digest_spec import create_sample_for_model

    sample = create_sample_for_model(descr, inputs={"lr": lr[None, None]})
    with create_prediction_pipeline(descr, weight_format="onnx", devices=["cpu"]) as pipeline:
        raw = pipeline.predict_sample_without_blocking(
            sample, skip_input_padding=True, skip_output_cropping=True
        )
    theirs = raw.members["hr"].data.values[0, 0]
    assert np.abs(theirs - ours).max() <= 1e-4 * span


def test_packaged_architecture_runs_without_cyclesr_deploy(tmp_path, offline):
    """The package's nets.py + state dict build the generator with torch alone."""
    pytest.importorskip("torch")
    from cyclesr_deploy.export.bioimageio import export_bioimageio

    out = tmp_path / "folder-package"
    res = export_bioimageio(MODEL, out)  # a folder this time
    assert res.path == out and (out / "nets.py").is_file()
    kwargs = load_model(builtin_model(MODEL)).generator.model_dump(mode="json")
    code = textwrap.dedent(
        f"""
        import importlib.abc, importlib.util, sys
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split('.')[0] == 'cyclesr_deploy':
                    raise ImportError('blocked: ' + name)
        sys.meta_path.insert(0, Block())
        import numpy as np, torch
        spec = importlib.util.spec_from_file_location('nets', {str(out / "nets.py")!r})
        nets = importlib.util.module_from_spec(spec); spec.loader.exec_module(nets)
        net = nets.resnet_generator(**{json.dumps(kwargs)})
        sd = torch.load({str(out / ModelFolder(out).weights("ab").name)!r}, map_location='cpu',
                        weights_only=True)
        net.load_state_dict(sd)
        x = torch.from_numpy(np.load({str(out / "test_input.npy")!r}))
        print('OK', tuple(net(x * 0).shape))
        """
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "OK (1, 1, 256, 256)" in run.stdout


def test_failed_bioimageio_test_writes_nothing(tmp_path, offline, monkeypatch):
    import cyclesr_deploy.export.bioimageio as bmz
    from cyclesr_deploy.export.parity import ExportError

    real = bmz._test_tensors

    def wrong_output(*args, **kwargs):
        lr, hr = real(*args, **kwargs)
        return lr, hr + 1000  # not what the model computes

    monkeypatch.setattr(bmz, "_test_tensors", wrong_output)
    out = tmp_path / "pkg.zip"
    with pytest.raises(ExportError, match="test of the pytorch_state_dict weights failed"):
        bmz.export_bioimageio(MODEL, out)
    assert _leftovers(tmp_path, {"bioimageio-cache"}) == []


def test_cli_refuses_to_overwrite_and_reports_failure(tmp_path, offline, monkeypatch):
    import cyclesr_deploy.export.bioimageio as bmz
    from cyclesr_deploy.cli import app

    out = tmp_path / "pkg.ZIP"  # the suffix in any case is a zip file
    out.write_bytes(b"someone's file")
    runner = CliRunner()
    res = runner.invoke(app, ["export", "bioimageio", MODEL, "-o", str(out)])
    assert res.exit_code == 2 and "--overwrite" in res.output
    assert out.read_bytes() == b"someone's file"
    with pytest.raises(InputError, match="exists"):
        bmz.export_bioimageio(MODEL, out)

    with monkeypatch.context() as patch:
        patch.setattr(bmz, "_test", lambda *a: (_ for _ in ()).throw(bmz.ExportError("boom")))
        res = runner.invoke(app, ["export", "bioimageio", MODEL, "-o", str(out), "--overwrite"])
    assert res.exit_code == 1 and "boom" in res.output
    assert out.read_bytes() == b"someone's file"  # a failed export keeps the old package
    res = runner.invoke(
        app, ["export", "bioimageio", MODEL, "-o", str(out), "--name", "a.b.c", "--overwrite"]
    )
    assert res.exit_code == 2 and "--name 'a.b.c'" in res.output and "Traceback" not in res.output
    res = runner.invoke(
        app,
        [
            *("export", "bioimageio", MODEL, "-o", str(out), "--overwrite", "--author", "Me"),
            *("--name", "Reference CycleGAN (v1)", "--license", "CC-BY-4.0"),
        ],
    )
    assert res.exit_code == 0, res.output
    assert zipfile.is_zipfile(out)
    with zipfile.ZipFile(out) as zf:
        rdf = zf.read("rdf.yaml").decode()
    assert "name: Reference CycleGAN (v1)" in rdf and "license: CC-BY-4.0" in rdf


def test_scale_2_model_gets_output_pixel_size_and_halo_of_the_hr_grid(tmp_path, offline):
    """A random scale-2 generator (ngf 4, 1 block): output y/x twice the input's, pixel size
    halved, halo in output pixels; bioimageio.core's test passes for both weight formats."""
    pytest.importorskip("torch")
    from bioimageio.spec import load_description

    from cyclesr_deploy.export.bioimageio import export_bioimageio

    cfg = ModelConfig(
        name="s2",
        generator=GeneratorConfig(ngf=4, n_blocks=1, scale=2),
        normalization=NormalizationConfig(low_a=100, high_a=4000, low_b=0, high_b=3000),
        provenance=Provenance(pixel_size_um_a=0.08, pixel_size_um_b=0.04),
    )
    folder = _user_model(tmp_path / "s2", cfg)
    res = export_bioimageio(folder, tmp_path / "s2.zip", min_size=64, test_size=64, license="MIT")
    assert res.tests == {"pytorch_state_dict": "passed", "onnx": "passed"}
    descr = load_description(res.path)
    y_in, y_out = descr.inputs[0].axes[2], descr.outputs[0].axes[2]
    assert y_in.scale == float(np.float32(0.08)) and y_out.scale * 2 == y_in.scale
    assert y_out.halo == res.halo == cfg.generator.halo
    assert y_out.size.get_size(y_out, y_in, n=0) == 128


def test_unpackageable_models_are_refused_before_anything_runs(tmp_path, offline):
    from cyclesr_deploy.export.bioimageio import export_bioimageio
    from cyclesr_deploy.model import MODEL_JSON

    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / MODEL_JSON).write_bytes((builtin_model(MODEL) / MODEL_JSON).read_bytes())
    with pytest.raises(InputError, match="cyclesr export onnx"):
        export_bioimageio(bare, tmp_path / "a.zip")
    with pytest.raises(InputError, match="--min-size 100: must be a multiple of 4 and larger"):
        export_bioimageio(MODEL, tmp_path / "b.zip", min_size=100)
    assert _leftovers(tmp_path, {"bare", "bioimageio-cache"}) == []


def test_supervised_8_bit_scale_2_model_with_a_dotted_name(tmp_path, offline):
    """A user's model: name with a dot, scale 2 with 6 blocks at 0.04 um (the spec's float
    halo arithmetic: 116 * 0.02 / 0.04 = 57.99999999999999), trained on 0..255 data,
    supervised, no InstanceNorm."""
    pytest.importorskip("torch")
    from bioimageio.spec import load_description

    from cyclesr_deploy.export.bioimageio import export_bioimageio

    cfg = ModelConfig(
        name="s2.v1",
        generator=GeneratorConfig(ngf=2, n_blocks=6, scale=2, norm="none"),
        normalization=NormalizationConfig(low_a=3, high_a=255, low_b=0, high_b=255),
        provenance=Provenance(mode="supervised", pixel_size_um_a=0.04),
    )
    folder = _user_model(tmp_path / "s2.v1", cfg)
    with pytest.raises(InputError, match="--license"):  # the weights' licence is the user's
        export_bioimageio(folder, tmp_path / "a.zip", min_size=128, test_size=128)
    res = export_bioimageio(
        folder, tmp_path / "a.zip", min_size=128, test_size=128, license="CC-BY-4.0"
    )
    assert res.tests == {"pytorch_state_dict": "passed", "onnx": "passed"}
    descr = load_description(res.path)
    assert descr.name == "cyclesr s2-v1" and descr.license == "CC-BY-4.0"
    y_in, y_out = descr.inputs[0].axes[2], descr.outputs[0].axes[2]
    assert y_out.halo == res.halo == 118  # 117 output px needed (half the RF: 116)
    assert y_out.halo * y_out.scale / y_in.scale == 59  # the spec's own arithmetic
    assert "supervised" in descr.tags and "cyclegan" not in descr.tags
    assert "CycleGAN" not in descr.description
    with zipfile.ZipFile(res.path) as zf:
        readme = zf.read("README.md").decode()
        lr = np.load(io.BytesIO(zf.read("test_input.npy")))
        hr = np.load(io.BytesIO(zf.read("test_output.npy")))
    assert readme.startswith("# s2.v1: Supervised (paired) super-resolution")
    assert "InstanceNorm" not in readme and "no normalization layers" in readme
    # the test input lies in the model's LR range, so the output is not pinned at a bound
    n = cfg.normalization
    lo, hi = np.percentile(lr, [n.pmin, n.pmax])
    assert lo == pytest.approx(n.low_a, abs=1e-3) and hi == pytest.approx(n.high_a, abs=1e-3)
    assert hr.shape == (1, 1, 256, 256)
    assert np.mean((hr <= n.low_b + 1) | (hr >= n.high_b - 1)) < 0.01


@pytest.mark.parametrize(
    "generator, pixel_sizes",
    [
        (dict(n_blocks=6, scale=2), [0.04, 0.08, 0.1]),
        (dict(n_blocks=9, scale=2), [0.049, 0.052, 0.056, 0.098, 0.104]),
        (dict(n_blocks=9), [0.056, 0.04, 0.065]),
    ],
)
def test_axis_scales_give_whole_halos_and_sizes_in_the_specs_arithmetic(generator, pixel_sizes):
    import bioimageio.spec.model.v0_5 as v

    from cyclesr_deploy.export.bioimageio import _tensor_axes

    for px in pixel_sizes:
        model = ModelConfig(
            generator=GeneratorConfig(**generator), provenance=Provenance(pixel_size_um_a=px)
        )
        halo = model.generator.halo
        (*_, y_in, _), (*_, y_out, _) = _tensor_axes(v, model, 256, halo)
        assert y_in.scale == pytest.approx(px, rel=1e-7)
        assert halo * y_out.scale / y_in.scale == halo // model.scale, px  # the spec's check
        for n in range(0, 4000, 7):
            s = y_out.size.get_size(y_out, y_in, n=n)  # int(size * in / out)
            assert s == model.scale * (256 + 4 * n), (px, n)


def test_output_never_replaces_the_model_or_a_folder_that_is_not_a_package(tmp_path):
    import shutil

    from cyclesr_deploy.export.bioimageio import export_bioimageio

    model = tmp_path / "models" / "mine"
    shutil.copytree(builtin_model(MODEL), model)
    before = sorted(p.name for p in model.iterdir())
    for out in (model, model / "pkg", tmp_path / "models", model / ".." / "mine"):
        with pytest.raises(InputError, match="model folder"):
            export_bioimageio(model, out, overwrite=True, license="MIT")
    data = tmp_path / "data"
    data.mkdir()
    (data / "image.tif").write_bytes(b"raw")
    with pytest.raises(InputError, match="not a package"):
        export_bioimageio(model, data, overwrite=True, license="MIT")
    assert sorted(p.name for p in model.iterdir()) == before
    assert (data / "image.tif").read_bytes() == b"raw"
    with pytest.raises(InputError, match=r"--name 'x\.y': a BioImage Model Zoo name has"):
        export_bioimageio(model, tmp_path / "n.zip", name="x.y", license="MIT")
    with pytest.raises(InputError, match="--license 'MITT': not an SPDX"):
        export_bioimageio(model, tmp_path / "n.zip", license="MITT")
    downscale = ModelConfig(generator=GeneratorConfig(downscale=2))
    save_model_config(tmp_path / "f", downscale)
    with pytest.raises(InputError, match="downscaling"):
        export_bioimageio(tmp_path / "f", tmp_path / "f.zip", license="MIT")


def test_a_failed_move_puts_the_old_package_folder_back(tmp_path, monkeypatch):
    import cyclesr_deploy.export.bioimageio as bmz

    old, new = tmp_path / "pkg", tmp_path / "staged"
    for folder, text in ((old, "old"), (new, "new")):
        folder.mkdir()
        (folder / "rdf.yaml").write_text(text)
    real = Path.replace

    def replace(self, target):
        if self == new:
            raise OSError("disk full")
        return real(self, target)

    monkeypatch.setattr(Path, "replace", replace)
    with pytest.raises(OSError, match="disk full"):
        bmz._place(new, old)
    assert (old / "rdf.yaml").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pkg", "staged"]
