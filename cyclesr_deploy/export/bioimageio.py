"""``cyclesr export bioimageio MODEL -o PACKAGE``: a BioImage Model Zoo package (extra
``bioimageio``).

The package is a bioimageio.spec 0.5 model description (``rdf.yaml``) with

- ONNX weights (the model folder's ``generator.onnx``) and the PyTorch state dict
  (``generator_ab.pt``, parent of the ONNX) with its architecture from source: this package's
  ``nets.py``, entry point :func:`cyclesr_deploy.nets.resnet_generator` (only torch needed);
- preprocessing ``scale_linear`` = the model's intensity mapping of the LR domain
  (``NormalizationConfig.to_model``, exactly) and postprocessing ``scale_linear`` =
  ``from_model`` (float32 output; ``cyclesr enhance`` then rounds to the input's integer type);
- y/x sizes ``min + n * size_multiple`` and a halo of half the receptive field (output px);
- test tensors: a synthetic LR frame and the output of this project's runtime for it
  (:class:`~cyclesr_deploy.runtime.enhancer.Enhancer`, ONNX Runtime, CPU);
- a cover, a README with a Validation section and the paper's citation, tags, authors, licence.

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
from typing import Any

import numpy as np

from cyclesr_deploy.errors import InputError, require
from cyclesr_deploy.export.parity import ExportError
from cyclesr_deploy.model import ModelConfig, ModelFolder, load_model

__all__ = ["BioimageioExport", "export_bioimageio", "package_tolerance"]

TEST_SEED = 21  # the test input's synthetic ground truth (not a benchmark or check seed)
TEST_SIZE = 256  # px, the test tensors' y and x
MIN_SIZE = 256  # px, default smallest y/x a tool may feed (the reference models' crop size)
TOLERANCE_OF_RANGE = 1e-4  # absolute tolerance as a fraction of the output range
INPUT_ID, OUTPUT_ID = "lr", "hr"
TAGS = (
    "super-resolution",
    "image-restoration",
    "confocal",
    "fluorescence-light-microscopy",
    "2d",
    "cyclegan",
    "unpaired",
    "pytorch",
    "onnx",
    "cyclesr-deploy",
)


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
    project's ONNX Runtime vs PyTorch bound), relative 1e-3 (the spec's default)."""
    n = model.normalization
    return {
        "absolute_tolerance": TOLERANCE_OF_RANGE * (n.high_b - n.low_b),
        "relative_tolerance": 1e-3,
        "mismatched_elements_per_million": 100,
    }


def _halo(model: ModelConfig) -> int:
    """Half the receptive field (input px, rounded up), in output px."""
    return (model.receptive_field // 2) * model.scale


def _test_tensors(folder: ModelFolder, model: ModelConfig, size: int):
    """A synthetic LR frame (float32, raw units) and the runtime's output for it."""
    from cyclesr_deploy.runtime.enhancer import Enhancer
    from cyclesr_deploy.synthetic import SynthConfig, simulate_pair

    lr = simulate_pair(SynthConfig(size=size, seed=TEST_SEED)).lr.astype(np.float32)
    with Enhancer(folder.path, backend="onnxruntime", precision="fp32") as enhancer:
        hr = enhancer(lr)
    return lr, hr


def _check_model(folder: ModelFolder, model: ModelConfig, min_size: int, test_size: int) -> None:
    g = model.generator
    if g.in_channels != 1 or g.out_channels != 1:
        raise InputError(f"{folder.path}: only 1-channel generators can be packaged")
    for size, name in ((min_size, "--min-size"), (test_size, "--test-size")):
        if size % model.size_multiple or size <= 2 * model.receptive_field // 2:
            raise InputError(
                f"{name} {size}: must be a multiple of {model.size_multiple} and larger than "
                f"the receptive field ({model.receptive_field} px)"
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
    px = model.provenance.pixel_size_um_a
    unit = "micrometer" if px else None
    scale_in = float(px) if px else 1.0
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
                scale=scale_in / model.scale,
            )
        )
    return inputs, outputs


def _processing(v: Any, model: ModelConfig):
    """(preprocessing, postprocessing) reproducing the runtime's IntensityMapping: x * gain +
    offset with the constants of ``NormalizationConfig.to_model`` / ``from_model``."""
    n = model.normalization
    pre_gain = 2.0 / (n.high_a - n.low_a)
    pre_offset = -(2.0 * n.low_a / (n.high_a - n.low_a) + 1)
    post_gain = (n.high_b - n.low_b) / 2
    pre = [
        v.EnsureDtypeDescr(kwargs=v.EnsureDtypeKwargs(dtype="float32")),
        v.ScaleLinearDescr(kwargs=v.ScaleLinearKwargs(gain=pre_gain, offset=pre_offset)),
    ]
    post = [
        v.ScaleLinearDescr(kwargs=v.ScaleLinearKwargs(gain=post_gain, offset=post_gain + n.low_b)),
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


def _describe(v, folder, model, *, stage: Path, min_size, test_size, authors, with_torch):
    """The ModelDescr, its test tensors, cover and README written into ``stage``."""
    from cyclesr_deploy.export.bioimageio_docs import PAPER, PAPER_DOI, readme, write_cover

    lr, hr = _test_tensors(folder, model, test_size)
    cover = write_cover(stage / "cover.png", lr, hr)
    halo = _halo(model)
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
    return v.ModelDescr(
        name=f"cyclesr {model.name}"[:128],
        description="CycleGAN super-resolution of low-resolution confocal images (cyclesr-deploy,"
        " after Trujillo et al., Opt. Lett. 2024)",
        authors=[v.Author(name=a) for a in authors],
        cite=[v.CiteEntry(text=PAPER, doi=v.Doi(PAPER_DOI))],
        license=v.LicenseId("MIT"),
        documentation=v.FileDescr(source=doc),
        covers=[v.FileDescr(source=cover)],
        tags=list(TAGS),
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


def _place(staged: Path, output: Path) -> None:
    """Move the tested package onto ``output`` (a .zip file or a folder), replacing what is
    there only now that the new one is complete."""
    if output.is_dir():
        old = output.with_name(f".{output.name}.old-{time.time_ns()}")
        output.replace(old)
        staged.replace(output)
        shutil.rmtree(old, ignore_errors=True)
    else:
        staged.replace(output)


def export_bioimageio(
    model_dir: str | Path | None,
    output: str | Path,
    *,
    overwrite: bool = False,
    authors: tuple[str, ...] = ("cyclesr-deploy developers",),
    min_size: int = MIN_SIZE,
    test_size: int = TEST_SIZE,
) -> BioimageioExport:
    """Write a BMZ package of ``model_dir`` (a model folder or a built-in name) to ``output``:
    a ``.zip`` file, or a folder for any other name. InputError when ``output`` exists and not
    ``overwrite``, or the model cannot be packaged; ExportError when bioimageio.core's test
    fails (nothing is written then). The PyTorch weights are packaged (and tested) when torch
    is installed, the ONNX weights always."""
    require("bioimageio.spec", "bioimageio", "cyclesr export bioimageio")
    require("bioimageio.core", "bioimageio", "cyclesr export bioimageio")
    require("onnx", "export", "cyclesr export bioimageio")
    import bioimageio.spec.model.v0_5 as v
    from bioimageio.spec import save_bioimageio_package, save_bioimageio_package_as_folder

    from cyclesr_deploy.builtin import resolve_model

    start = time.perf_counter()
    output = Path(output)
    if output.exists() and not overwrite:
        raise InputError(f"{output} exists; pass --overwrite to replace it")
    folder = ModelFolder(resolve_model(model_dir))
    model = load_model(folder.path)
    _check_model(folder, model, min_size, test_size)
    with_torch = importlib.util.find_spec("torch") is not None
    formats = ["pytorch_state_dict", "onnx"] if with_torch else ["onnx"]
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output.parent, prefix=".cyclesr-bmz-") as tmp:
        stage = Path(tmp) / "stage"
        stage.mkdir()
        staged = Path(tmp) / ("package.zip" if output.suffix == ".zip" else "package")
        descr = _describe(
            v,
            folder,
            model,
            stage=stage,
            min_size=min_size,
            test_size=test_size,
            authors=authors,
            with_torch=with_torch,
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
        halo=_halo(model),
        seconds=time.perf_counter() - start,
    )
