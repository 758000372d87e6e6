"""``cyclesr export bioimageio MODEL -o PACKAGE``: a BioImage Model Zoo package (extra
``bioimageio``).

The package is a bioimageio.spec 0.5 model description (``rdf.yaml``) with

- ONNX weights (the model folder's ``generator.onnx``) and the PyTorch state dict
  (``generator_ab.pt``, parent of the ONNX) with its architecture from source: this package's
  ``nets.py``, entry point :func:`cyclesr_deploy.nets.resnet_generator` (only torch needed);
- preprocessing ``scale_linear`` = the model's intensity mapping of the LR domain
  (``NormalizationConfig.to_model``, exactly) and postprocessing ``scale_linear`` =
  ``from_model`` (float32 output; ``cyclesr enhance`` then rounds to the input's integer type);
- y/x sizes ``min + n * size_multiple`` and the generator's halo (``GeneratorConfig.halo``,
  output px); the pixel size (axis ``scale``) rounded to float32 precision so that the spec's
  halo and size arithmetic is exact (:func:`axis_scales`);
- test tensors: a synthetic LR frame mapped onto the model's LR range (its pmin/pmax
  percentiles onto low_a/high_a) and the output of this project's runtime for it
  (:class:`~cyclesr_deploy.runtime.enhancer.Enhancer`, ONNX Runtime, CPU);
- a cover, a README with a Validation section and the paper's citation, tags (by training
  mode), authors, a licence (``license``; MIT only for the built-in models, whose licence is
  the project's: other weights must name theirs).

The package is saved next to its target, then tested with ``bioimageio.core``'s
``test_description`` (every weight format, CPU, in this interpreter; every file is local, so
nothing is fetched) and only then moved onto ``output``; a failed test raises
:class:`~cyclesr_deploy.export.parity.ExportError` and leaves nothing behind.
"""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import numpy as np

from cyclesr_deploy.errors import InputError, require
from cyclesr_deploy.export.bioimageio_docs import MODE_TITLE
from cyclesr_deploy.export.parity import ExportError
from cyclesr_deploy.model import ModelConfig, ModelFolder, load_model
from cyclesr_deploy.normalization import IntensityMapping, stretch_to_range

__all__ = ["BioimageioExport", "axis_scales", "export_bioimageio", "package_tolerance"]

TEST_SEED = 21  # the test input's synthetic ground truth (not a benchmark or check seed)
TEST_SIZE = 256  # px, the test tensors' y and x
MIN_SIZE = 256  # px, default smallest y/x a tool may feed (the reference models' crop size)
TOLERANCE_OF_RANGE = 1e-4  # absolute tolerance as a fraction of the output range
INPUT_ID, OUTPUT_ID = "lr", "hr"
RDF = "rdf.yaml"  # a package folder's description (bioimageio.spec's file name)
TAGS = (
    "super-resolution",
    "image-restoration",
    "confocal",
    "fluorescence-light-microscopy",
    "2d",
    "pytorch",
    "onnx",
    "cyclesr-deploy",
)
MODE_TAGS = {"cyclegan": ("cyclegan", "unpaired"), "supervised": ("supervised", "paired")}
BUILTIN_LICENSE = "MIT"  # the project's licence (pyproject.toml), which covers its built-in weights
MAX_CHECKED_SIZE = 1 << 16  # px: axis_scales checks the spec's size arithmetic up to this


@dataclass(frozen=True)
class BioimageioExport:
    """Result of :func:`export_bioimageio`: where the package is, its format, each weight
    format's test status, the halo and the time taken."""

    path: Path
    format_version: str
    tests: dict[str, str] = field(default_factory=dict)
    halo: int = 0
    seconds: float = 0.0


def package_tolerance(model: ModelConfig) -> dict[str, float]:
    """``reproducibility_tolerance`` of the package: absolute 1e-4 of the output range (the
    project's ONNX Runtime vs PyTorch bound) and relative 0, so that bioimageio.core's bound
    |diff| <= absolute + relative * |expected| is the absolute one for every pixel."""
    n = model.normalization
    return {
        "absolute_tolerance": TOLERANCE_OF_RANGE * (n.high_b - n.low_b),
        "relative_tolerance": 0.0,
        "mismatched_elements_per_million": 100,
    }


def axis_scales(model: ModelConfig, min_size: int) -> tuple[float, float]:
    """(input, output) y/x axis ``scale``: the LR pixel size (micrometres; 1 when unknown)
    rounded to float32 precision (6e-8 relative), and that / ``scale``.

    The spec infers the input halo as ``halo * out / in`` and refuses a result that is not an
    integer, and sizes the output as ``int(size * in / out)``, in float64: with 0.04 um and a
    halo of 116, ``116 * 0.02 / 0.04`` is 57.99999999999999. A pixel size with a 24-bit
    mantissa makes these products exact (sizes below 2**29), so both come out whole; checked
    here with the spec's expressions, InputError otherwise."""
    px = model.provenance.pixel_size_um_a
    scale_in = float(np.float32(px)) if px else 1.0
    scale_out = scale_in / model.scale  # exact: a power of 2
    halo, step = model.generator.halo, model.size_multiple
    sizes = np.arange(min_size, max(MAX_CHECKED_SIZE, min_size + step), step, dtype=np.int64)
    out_sizes = (sizes * scale_in / scale_out).astype(np.int64)  # SizeReference.get_size
    if halo * scale_out / scale_in != halo // model.scale or np.any(
        out_sizes != sizes * model.scale
    ):
        raise InputError(
            f"pixel size {px} um: the BioImage Model Zoo spec's float arithmetic gives no whole "
            f"input halo or output size for it (halo {halo} px, scale {model.scale}); set "
            "provenance.pixel_size_um_a in model.json to a rounder value"
        )
    return scale_in, scale_out


def _test_tensors(folder: ModelFolder, model: ModelConfig, size: int):
    """A synthetic LR frame mapped onto the model's LR range (float32, raw units) and the
    runtime's output for it."""
    from cyclesr_deploy.runtime.enhancer import Enhancer
    from cyclesr_deploy.synthetic import SynthConfig, simulate_pair

    n = model.normalization
    lr = stretch_to_range(
        simulate_pair(SynthConfig(size=size, seed=TEST_SEED)).lr, n.low_a, n.high_a, n.pmin, n.pmax
    )
    with Enhancer(folder.path, backend="onnxruntime", precision="fp32") as enhancer:
        hr = enhancer(lr)
    return lr, hr


def _check_model(folder: ModelFolder, model: ModelConfig, min_size: int, test_size: int) -> None:
    g = model.generator
    if g.in_channels != 1 or g.out_channels != 1:
        raise InputError(f"{folder.path}: only 1-channel generators can be packaged")
    if g.downscale != 1:  # the output axes are sized as the input's times ``scale``
        raise InputError(f"{folder.path}: downscaling (HR -> LR) generators cannot be packaged")
    for size, name in ((min_size, "--min-size"), (test_size, "--test-size")):
        if size % model.size_multiple or size * model.scale <= 2 * g.halo:
            raise InputError(
                f"{name} {size}: must be a multiple of {model.size_multiple} and larger than "
                f"twice the halo ({g.halo} output px = {g.halo // model.scale} input px per side)"
            )
    if test_size < min_size:
        raise InputError(f"--test-size {test_size}: must be at least --min-size {min_size}")
    onnx = folder.onnx("fp32")
    if not onnx.is_file():
        raise InputError(
            f"{folder.path} has no {onnx.name}; run `cyclesr export onnx {folder.path}` first"
        )
    folder.verify(onnx, folder.weights("ab"))


def _tensor_axes(v: Any, model: ModelConfig, min_size: int, halo: int):
    """(input axes, output axes): batch, channel, y, x; output y/x referenced to the input's
    with the model's scale (axis ``scale`` = pixel size, micrometres when known)."""
    unit = "micrometer" if model.provenance.pixel_size_um_a else None
    scale_in, scale_out = axis_scales(model, min_size)
    size = v.ParameterizedSize(min=min_size, step=model.size_multiple)
    inputs = [v.BatchAxis(), v.ChannelAxis(channel_names=[v.Identifier("lr")])]
    outputs = [v.BatchAxis(), v.ChannelAxis(channel_names=[v.Identifier("hr")])]
    for axis in ("y", "x"):
        inputs.append(v.SpaceInputAxis(id=v.AxisId(axis), size=size, unit=unit, scale=scale_in))
        ref = v.SizeReference(tensor_id=v.TensorId(INPUT_ID), axis_id=v.AxisId(axis))
        outputs.append(
            v.SpaceOutputAxisWithHalo(
                id=v.AxisId(axis),
                size=ref,
                halo=halo,
                unit=unit,
                scale=scale_out,
            )
        )
    return inputs, outputs


def _processing(v: Any, model: ModelConfig):
    """(preprocessing, postprocessing): the runtime's IntensityMapping of the model, each a
    ``scale_linear`` with its constants."""
    (pre_gain, pre_offset), (post_gain, post_offset) = IntensityMapping.from_config(
        model.normalization
    ).scale_linear()
    pre = [
        v.EnsureDtypeDescr(kwargs=v.EnsureDtypeKwargs(dtype="float32")),
        v.ScaleLinearDescr(kwargs=v.ScaleLinearKwargs(gain=pre_gain, offset=pre_offset)),
    ]
    post = [
        v.ScaleLinearDescr(kwargs=v.ScaleLinearKwargs(gain=post_gain, offset=post_offset)),
        v.EnsureDtypeDescr(kwargs=v.EnsureDtypeKwargs(dtype="float32")),
    ]
    return pre, post


def _weights(v: Any, folder: ModelFolder, model: ModelConfig, with_torch: bool):
    import onnx

    import cyclesr_deploy.nets as nets

    onnx_path = folder.onnx("fp32")
    opset = max(o.version for o in onnx.load(onnx_path, load_external_data=False).opset_import)
    entries: dict[str, Any] = {}
    if with_torch:
        import torch

        entries["pytorch_state_dict"] = v.PytorchStateDictWeightsDescr(
            source=folder.weights("ab"),
            architecture=v.ArchitectureFromFileDescr(
                source=Path(nets.__file__),
                callable=nets.resnet_generator.__name__,
                kwargs=model.generator.model_dump(mode="json"),
            ),
            pytorch_version=v.Version(torch.__version__.split("+")[0]),
        )
    parent = "pytorch_state_dict" if with_torch else None
    entries["onnx"] = v.OnnxWeightsDescr(source=onnx_path, opset_version=opset, parent=parent)
    return v.WeightsDescr(**entries)


def _tensor(v: Any, kind: str, tensor_id: str, image: np.ndarray, stage: Path, **fields: Any):
    """The input or output (``kind``) tensor description, its test tensor (``test_<kind>.npy``,
    with batch and channel axes) and sample (``sample_<kind>.tif``) written into ``stage``."""
    import tifffile

    test, sample = stage / f"test_{kind}.npy", stage / f"sample_{kind}.tif"
    np.save(test, image[None, None])
    tifffile.imwrite(sample, image)
    descr = v.InputTensorDescr if kind == "input" else v.OutputTensorDescr
    return descr(
        id=v.TensorId(tensor_id),
        test_tensor=v.FileDescr(source=test),
        sample_tensor=v.FileDescr(source=sample),
        **fields,
    )


def _checked_meta(v: Any, name: str, license: str) -> dict[str, Any]:
    """{"name", "license"} validated as the spec validates ModelDescr's fields; InputError in
    one line otherwise."""
    from pydantic import TypeAdapter, ValidationError

    info = v.ModelDescr.model_fields["name"]
    checks = {
        "name": (
            name,
            TypeAdapter(Annotated[(info.annotation, *info.metadata)]),
            "--name {!r}: a BioImage Model Zoo name has 5 to 128 letters, digits and `_+- ()`",
        ),
        "license": (
            license,
            TypeAdapter(v.LicenseId),
            "--license {!r}: not an SPDX licence id (https://spdx.org/licenses/, e.g. MIT)",
        ),
    }
    meta = {}
    for key, (value, adapter, message) in checks.items():
        try:
            meta[key] = adapter.validate_python(value)
        except ValidationError:
            raise InputError(message.format(value)) from None
    return meta


def default_name(v: Any, model: ModelConfig) -> str:
    """``cyclesr <model name>`` with the characters the spec forbids in a name replaced by
    ``-``, cut to its maximum length."""
    info = v.ModelDescr.model_fields["name"]
    allowed = next(m.alphabet for m in info.metadata if hasattr(m, "alphabet"))
    longest = next(m.max_length for m in info.metadata if hasattr(m, "max_length"))
    return "".join(c if c in allowed else "-" for c in f"cyclesr {model.name}")[:longest]


def _license(folder: ModelFolder, license: str | None) -> str:
    """The given licence, else MIT for the built-in models; other weights must name theirs."""
    from cyclesr_deploy.builtin import MODELS_DIR

    if license:
        return license
    if folder.path.resolve().parent == MODELS_DIR:
        return BUILTIN_LICENSE
    raise InputError(
        f"{folder.path}: pass --license with the SPDX id of your weights' licence (e.g. "
        "CC-BY-4.0, MIT); only the built-in models default to the project's MIT"
    )


def _describe(v, folder, model, *, stage: Path, min_size, test_size, authors, with_torch, meta):
    """The ModelDescr, its test tensors, cover and README written into ``stage``; ``meta``:
    name and license."""
    from pydantic import ValidationError

    from cyclesr_deploy.export.bioimageio_docs import PAPER, PAPER_DOI, readme, write_cover

    lr, hr = _test_tensors(folder, model, test_size)
    cover = write_cover(stage / "cover.png", lr, hr)
    halo = model.generator.halo
    tolerance = package_tolerance(model)
    formats = ["pytorch_state_dict", "onnx"] if with_torch else ["onnx"]
    doc = stage / "README.md"
    doc.write_text(
        readme(
            model,
            halo=halo,
            min_size=min_size,
            step=model.size_multiple,
            tolerance=tolerance,
            test_shape=lr.shape,
            tests=dict.fromkeys(formats, "passed"),
        ),
        encoding="utf-8",
    )
    in_axes, out_axes = _tensor_axes(v, model, min_size, halo)
    pre, post = _processing(v, model)
    mode = model.provenance.mode
    fields = dict(
        name=meta["name"],
        description=f"{MODE_TITLE[mode]} super-resolution of low-resolution confocal images "
        "(cyclesr-deploy, after Trujillo et al., Opt. Lett. 2024)",
        authors=[v.Author(name=a) for a in authors],
        cite=[v.CiteEntry(text=PAPER, doi=v.Doi(PAPER_DOI))],
        license=meta["license"],
        documentation=v.FileDescr(source=doc),
        covers=[v.FileDescr(source=cover)],
        tags=[*TAGS[:5], *MODE_TAGS[mode], *TAGS[5:]],
        inputs=[_tensor(v, "input", INPUT_ID, lr, stage, axes=in_axes, preprocessing=pre)],
        outputs=[_tensor(v, "output", OUTPUT_ID, hr, stage, axes=out_axes, postprocessing=post)],
        weights=_weights(v, folder, model, with_torch),
        config=v.Config(
            bioimageio=v.BioimageioConfig(
                reproducibility_tolerance=[v.ReproducibilityTolerance(**tolerance)]
            ),
            cyclesr=model.to_json_dict(),
        ),
    )
    try:
        return v.ModelDescr(**fields)
    except ValidationError as exc:
        why = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ExportError(f"the package description is not valid: {why}") from None


def _test(package: Path, formats: list[str]) -> dict[str, str]:
    """``bioimageio.core.test_description`` on the saved package, per weight format, CPU;
    ExportError listing the failed checks when one fails."""
    from bioimageio.core import test_description

    statuses = {}
    for fmt in formats:
        summary = test_description(package, weight_format=fmt, devices=["cpu"])  # type: ignore[arg-type]
        statuses[fmt] = summary.status
        failed = [
            f"{d.name}: {'; '.join(e.msg for e in d.errors)}"
            for d in summary.details
            if d.status != "passed"
        ]
        # a failed dynamic test still leaves the status "valid-format": only "passed" passes
        if summary.status != "passed" or failed:
            raise ExportError(
                f"bioimageio.core's test of the {fmt} weights failed: " + " | ".join(failed)
            )
    return statuses


def _check_output(output: Path, folder: ModelFolder, overwrite: bool) -> None:
    """InputError unless ``output`` may be written: not the model folder, inside it or
    containing it; when it exists, only with ``overwrite`` and, for a folder, only a package
    (one with ``rdf.yaml``) is replaced."""
    out, model = output.resolve(), folder.path.resolve()
    if out == model or model in out.parents or out in model.parents:
        raise InputError(f"{output}: the package cannot be, contain or lie inside the model folder")
    if not output.exists():
        return
    if not overwrite:
        raise InputError(f"{output} exists; pass --overwrite to replace it")
    if output.is_dir() and not (output / RDF).is_file():
        raise InputError(f"{output} is a folder but not a package (no {RDF}); not replacing it")


def _place(staged: Path, output: Path) -> None:
    """Move the tested package onto ``output`` (a .zip file or a folder), replacing what is
    there only now that the new one is complete; an old folder is moved back if that fails."""
    if not output.is_dir():
        staged.replace(output)
        return
    old = output.with_name(f".{output.name}.old-{time.time_ns()}")
    output.replace(old)
    try:
        staged.replace(output)
    except BaseException:
        old.replace(output)
        raise
    shutil.rmtree(old, ignore_errors=True)


def export_bioimageio(
    model_dir: str | Path | None,
    output: str | Path,
    *,
    overwrite: bool = False,
    authors: tuple[str, ...] = ("cyclesr-deploy developers",),
    min_size: int = MIN_SIZE,
    test_size: int = TEST_SIZE,
    name: str | None = None,
    license: str | None = None,
) -> BioimageioExport:
    """Write a BMZ package of ``model_dir`` (a model folder or a built-in name) to ``output``:
    a ``.zip`` file (any case), or a folder for any other name. ``name``: the package's name
    (default :func:`default_name`); ``license``: an SPDX id (default MIT for the built-in
    models, required for others). InputError when ``output`` exists and not ``overwrite``, is
    an existing folder that is not a package, overlaps the model folder, or the model, name or
    licence cannot be packaged; ExportError when bioimageio.core's test fails (nothing is
    written then). The PyTorch weights are packaged (and tested) when torch is installed, the
    ONNX weights always."""
    require("bioimageio.spec", "bioimageio", "cyclesr export bioimageio")
    require("bioimageio.core", "bioimageio", "cyclesr export bioimageio")
    require("onnx", "export", "cyclesr export bioimageio")
    import bioimageio.spec.model.v0_5 as v
    from bioimageio.spec import save_bioimageio_package, save_bioimageio_package_as_folder

    from cyclesr_deploy.builtin import resolve_model

    start = time.perf_counter()
    output = Path(output)
    folder = ModelFolder(resolve_model(model_dir))
    _check_output(output, folder, overwrite)
    model = load_model(folder.path)
    _check_model(folder, model, min_size, test_size)
    meta = _checked_meta(v, name or default_name(v, model), _license(folder, license))
    axis_scales(model, min_size)  # before the slow part
    with_torch = importlib.util.find_spec("torch") is not None
    formats = ["pytorch_state_dict", "onnx"] if with_torch else ["onnx"]
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output.parent, prefix=".cyclesr-bmz-") as tmp:
        stage = Path(tmp) / "stage"
        stage.mkdir()
        staged = Path(tmp) / ("package.zip" if output.suffix.lower() == ".zip" else "package")
        descr = _describe(
            v,
            folder,
            model,
            stage=stage,
            min_size=min_size,
            test_size=test_size,
            authors=authors,
            with_torch=with_torch,
            meta=meta,
        )
        if staged.suffix == ".zip":
            save_bioimageio_package(descr, output_path=staged)
        else:
            save_bioimageio_package_as_folder(descr, output_path=staged)
        tests = _test(staged if staged.suffix == ".zip" else staged / "rdf.yaml", formats)
        _place(staged, output)
    return BioimageioExport(
        path=output,
        format_version=str(descr.format_version),
        tests=tests,
        halo=model.generator.halo,
        seconds=time.perf_counter() - start,
    )
