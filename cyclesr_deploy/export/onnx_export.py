"""PyTorch checkpoint -> FP32 ONNX inside the model folder, checked against PyTorch.

The ONNX graph has one input ``input`` (N x C x H x W float32 in [-1, 1], N, H and W dynamic;
H and W must be multiples of the model's size multiple) and one output ``output``
(N x C' x H*s x W*s, s = scale / downscale). The file carries ``model.json`` and the export
settings in its ``metadata_props`` (see :mod:`cyclesr_deploy.onnx_metadata`).
"""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import platform
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
import torch

from cyclesr_deploy import __version__
from cyclesr_deploy.errors import InputError, MissingExtraError, require
from cyclesr_deploy.export.parity import (
    DEFAULT_PARITY_SIZES,
    DEFAULT_SYNTHETIC_SIZES,
    ExportError,
    ParityError,
    adapt_sizes,
    check_sizes,
    format_cases,
    ort_session,
    random_inputs,
    run_parity,
    synthetic_inputs,
)
from cyclesr_deploy.export.report import (
    ArtifactEntry,
    ExportReport,
    ParityCase,
    artifact_entry,
    weights_entry,
    write_export_report,
)
from cyclesr_deploy.io import atomic_path
from cyclesr_deploy.model import (
    ONNX_FILES,
    WEIGHTS,
    GeneratorConfig,
    ModelConfig,
    load_model,
)
from cyclesr_deploy.onnx_metadata import OnnxMetadata

INPUT_NAME = "input"
OUTPUT_NAME = "output"
Direction = Literal["ab", "ba"]
Exporter = Literal["dynamo", "torchscript"]

# Ops a generator may export to: the layers themselves (DepthToSpace = PixelShuffle head,
# Resize = nearest x2 of resize-conv upsampling). The TorchScript exporter adds shape
# arithmetic around the reflection padding.
GENERATOR_OPS = frozenset(
    {"Add", "Conv", "ConvTranspose", "DepthToSpace", "InstanceNormalization", "Pad", "Relu"}
    | {"Resize", "Tanh"}
)
TORCHSCRIPT_SHAPE_OPS = frozenset(
    {"Cast", "Concat", "Constant", "ConstantOfShape", "Gather", "Identity", "Reshape", "Shape"}
    | {"Slice", "Squeeze", "Transpose", "Unsqueeze"}
)
ALLOWED_OPS: dict[Exporter, frozenset[str]] = {
    "dynamo": GENERATOR_OPS,
    "torchscript": GENERATOR_OPS | TORCHSCRIPT_SHAPE_OPS,
}

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OnnxExport:
    """Result of :func:`onnx_from_checkpoint`.

    ``path``: the ONNX file; ``op_types``: sorted op types of the graph; ``parity``: ONNX
    Runtime (CPU) vs PyTorch per input, in output units (data range 2); ``seconds``: wall time;
    ``artifact``: the export.json entry (also written there when ``record=True``).
    """

    path: Path
    direction: Direction
    exporter: Exporter
    opset: int
    op_types: tuple[str, ...]
    parity: tuple[ParityCase, ...]
    seconds: float
    metadata: OnnxMetadata
    artifact: ArtifactEntry

    @property
    def max_abs_error(self) -> float:
        """Largest max-abs error over the parity cases."""
        return max(c.max_abs for c in self.parity)


def versions() -> dict[str, str]:
    """Versions of the tools that shape an export."""
    out = {
        "cyclesr_deploy": __version__,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }
    for name in ("onnxscript", "onnxruntime"):
        with contextlib.suppress(ImportError):
            out[name] = __import__(name).__version__
    return out


def architecture(cfg: GeneratorConfig) -> str:
    """One line describing a generator config, for error messages."""
    return (
        f"ResnetGenerator(ngf={cfg.ngf}, n_blocks={cfg.n_blocks}, channels "
        f"{cfg.in_channels}->{cfg.out_channels}, scale={cfg.scale}, downscale={cfg.downscale}, "
        f"upsample={cfg.upsample}, head={cfg.head}, norm={cfg.norm})"
    )


def _describe_mismatch(
    expected: Mapping[str, torch.Tensor], found: Mapping[str, Any], limit: int = 3
) -> str:
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    shapes = [
        f"{k} {tuple(found[k].shape)} (expected {tuple(expected[k].shape)})"
        for k in expected
        if k in found
        and isinstance(found[k], torch.Tensor)
        and tuple(found[k].shape) != tuple(expected[k].shape)
    ]
    parts = []
    for label, items in (("shape mismatch", shapes), ("missing", missing)):
        if items:
            more = f" and {len(items) - limit} more" if len(items) > limit else ""
            parts.append(f"{label}: {', '.join(items[:limit])}{more}")
    if unexpected:
        more = f" and {len(unexpected) - limit} more" if len(unexpected) > limit else ""
        parts.append(f"unexpected: {', '.join(unexpected[:limit])}{more}")
    return "; ".join(parts)


def load_generator(model_dir: Path, model: ModelConfig, direction: Direction) -> torch.nn.Module:
    """The generator of ``direction`` with the folder's weights, in eval mode (CPU, FP32).

    InputError when the weights file is missing, unreadable, or made for another architecture
    than the one in model.json (the first mismatching state-dict keys are named).
    """
    from cyclesr_deploy.nets import build_generator

    cfg = model.generator if direction == "ab" else model.generator.inverse()
    path = model_dir / WEIGHTS[direction]
    if not path.is_file():
        hint = (
            " (supervised models have no HR -> LR generator)"
            if direction == "ba" and model.provenance.mode == "supervised"
            else ""
        )
        raise InputError(f"model: {model_dir} has no weights file {path.name}{hint}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
        raise InputError(f"weights: cannot read {path} as a PyTorch state dict ({exc})") from exc
    if not isinstance(state, Mapping):
        raise InputError(f"weights: {path} holds a {type(state).__name__}, not a state dict")
    net = build_generator(cfg)
    problem = _describe_mismatch(net.state_dict(), state)
    if problem:
        raise InputError(
            f"weights: {path.name} does not fit the architecture in model.json, "
            f"{architecture(cfg)}: {problem}"
        )
    net.load_state_dict(state, strict=True)
    return net.eval()


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporters' known, benign chatter (TorchScript deprecation, instance_norm
    train=True, constant folding of Slice, tracer notes on shape checks, optional torchvision
    ops)."""
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            for pattern in (
                ".*legacy TorchScript-based ONNX export.*",
                ".*instance_norm' is set to train=True.*",
                ".*Constant folding.*",
                ".*LeafSpec.*",
                ".*The feature will be removed.*",
            ):
                warnings.filterwarnings("ignore", message=pattern)
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            yield
    finally:
        registration.setLevel(level)


def _export_proto(
    net: torch.nn.Module, cfg: GeneratorConfig, *, dynamo: bool, opset: int
) -> onnx.ModelProto:
    """Export ``net`` to an in-memory ModelProto with dynamic N, H, W."""
    m = cfg.size_multiple
    example = torch.zeros(2, cfg.in_channels, 16 * m, 24 * m)
    has_dynamo = "dynamo" in inspect.signature(torch.onnx.export).parameters  # torch >= 2.5
    if dynamo and not has_dynamo:
        raise ExportError(f"dynamo=True needs torch >= 2.5 (found {torch.__version__})")
    choice = {"dynamo": dynamo} if has_dynamo else {}
    with torch.no_grad(), _quiet_exporter():
        if dynamo:
            require("onnxscript", "export", "ONNX export with dynamo=True")
            from torch.export import Dim

            shapes = ({0: Dim("batch"), 2: m * Dim("h"), 3: m * Dim("w")},)
            program = torch.onnx.export(
                net,
                (example,),
                dynamo=True,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=shapes,
                verbose=False,
            )
            if program is None:  # pragma: no cover - dynamo=True always returns a program
                raise ExportError("torch.onnx.export(dynamo=True) returned no program")
            return program.model_proto
        buffer = io.BytesIO()
        torch.onnx.export(
            net,
            (example,),
            buffer,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={
                INPUT_NAME: {0: "batch", 2: "height", 3: "width"},
                OUTPUT_NAME: {0: "batch", 2: "out_height", 3: "out_width"},
            },
            **choice,
        )
        return onnx.load_from_string(buffer.getvalue())


def _name_output_dims(proto: onnx.ModelProto, cfg: GeneratorConfig) -> None:
    """Give the output's spatial dims readable names in terms of the input's (the dynamo
    exporter invents ``8*s39`` for scale 2): ``4*h`` in -> ``8*h`` out for scale 2."""
    in_dims = proto.graph.input[0].type.tensor_type.shape.dim
    out_dims = proto.graph.output[0].type.tensor_type.shape.dim
    m, factor = cfg.size_multiple, cfg.scale / cfg.downscale
    for axis, symbol in ((2, "h"), (3, "w")):
        if in_dims[axis].dim_param == f"{m}*{symbol}" and out_dims[axis].dim_param:
            out_dims[axis].dim_param = f"{int(m * factor)}*{symbol}"


def check_generator_graph(
    proto: onnx.ModelProto, exporter: Exporter, cfg: GeneratorConfig
) -> tuple[str, ...]:
    """Structural checks of an exported generator; returns the sorted op types.

    ExportError when an op outside :data:`ALLOWED_OPS` appears (e.g. InstanceNorm decomposed
    into ``BatchNormalization(training_mode=1)``), a ``Pad`` is not ``mode=reflect``, or
    ``InstanceNormalization`` is missing although the model uses instance norm.
    """
    ops = sorted({node.op_type for node in proto.graph.node})
    problems = []
    unexpected = sorted(set(ops) - ALLOWED_OPS[exporter])
    if unexpected:
        problems.append(f"unexpected ops {unexpected}")
    for node in proto.graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "BatchNormalization" and attrs.get("training_mode", 0):
            problems.append(f"{node.name}: BatchNormalization with training_mode=1")
        if node.op_type == "Pad" and attrs.get("mode", b"constant") != b"reflect":
            problems.append(f"{node.name}: Pad mode {attrs.get('mode', b'constant')!r}")
    if cfg.norm == "instance" and "InstanceNormalization" not in ops:
        problems.append("no InstanceNormalization node")
    if problems:
        raise ExportError(f"the {exporter} export is not the expected graph: {'; '.join(problems)}")
    return tuple(ops)


def onnx_from_checkpoint(
    model_dir: str | Path,
    *,
    direction: Direction = "ab",
    dynamo: bool = True,
    opset: int | None = None,
    tolerance: float = 1e-4,
    overwrite: bool = False,
    parity_sizes: Sequence[tuple[int, int, int]] | None = None,
    synthetic_sizes: Sequence[tuple[int, int]] | None = None,
    seed: int = 0,
    record: bool = True,
) -> OnnxExport:
    """Export the folder's generator to ``generator.onnx`` (``ab``) or ``generator_ba.onnx``.

    ``dynamo``: True uses the torch.export-based exporter (H, W declared as multiples of the
    size multiple; default opset 20), False the TorchScript exporter (``dynamic_axes``; default
    opset 17). The file is checked (``onnx.checker`` full check, op types), then run in ONNX
    Runtime CPU against PyTorch on random tiles of ``parity_sizes`` ((N, H, W); default
    64x64, 2x256x192, 68x92 rounded up to the size multiple) and on synthetic microscopy tiles
    of ``synthetic_sizes`` ((H, W); default 128x128, 96x160); sizes given explicitly must be
    valid generator inputs. Above ``tolerance`` max-abs error (output units, range [-1, 1]) it
    raises ParityError. The file is written under a temporary name and renamed into place only
    after all checks pass; an existing file is replaced only with ``overwrite=True``.
    ``record`` adds the artifact to the folder's export.json.
    """
    start = time.perf_counter()
    model_dir = Path(model_dir)
    model = load_model(model_dir)
    if direction not in ONNX_FILES:
        raise InputError(f"direction: expected 'ab' or 'ba', got {direction!r}")
    cfg = model.generator if direction == "ab" else model.generator.inverse()
    target = model_dir / ONNX_FILES[direction]
    if target.exists() and not overwrite:
        raise InputError(f"output: {target} exists; pass overwrite=True to replace it")
    if not tolerance > 0:
        raise InputError(f"tolerance: must be > 0, got {tolerance}")
    m = cfg.size_multiple
    random_sizes = check_sizes(
        adapt_sizes(DEFAULT_PARITY_SIZES, m) if parity_sizes is None else parity_sizes,
        3,
        cfg.check_shape,
        "parity_sizes",
    )
    synth_sizes = check_sizes(
        adapt_sizes(DEFAULT_SYNTHETIC_SIZES, m) if synthetic_sizes is None else synthetic_sizes,
        2,
        cfg.check_shape,
        "synthetic_sizes",
    )
    if not random_sizes and not synth_sizes:
        raise InputError("parity_sizes, synthetic_sizes: at least one parity tile is needed")
    exporter: Exporter = "dynamo" if dynamo else "torchscript"
    opset = (20 if dynamo else 17) if opset is None else int(opset)

    net = load_generator(model_dir, model, direction)
    try:
        proto = _export_proto(net, cfg, dynamo=dynamo, opset=opset)
    except (ExportError, MissingExtraError):
        raise
    except Exception as exc:  # torch.export / onnxscript raise many types
        raise ExportError(
            f"the {exporter} exporter (opset {opset}) failed on {architecture(cfg)}: {exc}"
        ) from exc
    produced = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if produced != opset:
        raise ExportError(f"asked for opset {opset}, the {exporter} exporter produced {produced}")
    op_types = check_generator_graph(proto, exporter, cfg)
    _name_output_dims(proto, cfg)
    tool_versions = versions()
    settings = {
        "exporter": exporter,
        "opset": opset,
        "direction": direction,
        "input_name": INPUT_NAME,
        "output_name": OUTPUT_NAME,
        "layout": "NCHW",
        "value_range": [-1.0, 1.0],
        "size_multiple": m,
        "scale": cfg.scale,
        "downscale": cfg.downscale,
        "versions": tool_versions,
    }
    metadata = OnnxMetadata(model=model, export=settings, precision="fp32")
    onnx.helper.set_model_props(proto, metadata.to_props())
    proto.producer_name = "cyclesr_deploy"
    proto.producer_version = __version__
    proto.doc_string = (
        f"cyclesr generator {direction} ({'LR -> HR' if direction == 'ab' else 'HR -> LR'}), "
        f"{architecture(cfg)}; input N x C x H x W float32 in [-1, 1], H and W multiples of {m}"
    )

    inputs = random_inputs(random_sizes, cfg.in_channels, seed) + synthetic_inputs(
        model, synth_sizes, direction=direction, seed=seed
    )
    with atomic_path(target) as part:
        onnx.save_model(proto, part)
        try:
            onnx.checker.check_model(str(part), full_check=True)
        except onnx.checker.ValidationError as exc:
            raise ExportError(f"onnx.checker rejects the {exporter} export: {exc}") from exc
        cases = run_parity(inputs, _torch_runner(net), _ort_runner(part))
        worst = max(c.max_abs for c in cases)
        if not worst <= tolerance:
            raise ParityError(
                f"ONNX Runtime output differs from PyTorch by up to {worst:.3g} "
                f"(tolerance {tolerance:g}); nothing written:\n{format_cases(cases)}"
            )
    seconds = time.perf_counter() - start
    artifact = artifact_entry(
        model_dir,
        target,
        kind="onnx",
        precision="fp32",
        seconds=seconds,
        direction=direction,
        reference="torch",
        tolerance={"max_abs": tolerance},
        parity=cases,
        settings={k: v for k, v in settings.items() if k != "versions"},
    )
    if record:
        weights = weights_entry(model_dir, direction)
        write_export_report(model_dir, ExportReport.of(artifact, weights, versions=tool_versions))
    _log.info("wrote %s (%s, opset %d), max abs error %.3g", target, exporter, opset, worst)
    derived = target.with_name(f"{target.stem}.fp16.onnx")
    if derived.exists():
        _log.warning("%s was made from the previous %s; convert again", derived.name, target.name)
    return OnnxExport(
        path=target,
        direction=direction,
        exporter=exporter,
        opset=opset,
        op_types=op_types,
        parity=tuple(cases),
        seconds=seconds,
        metadata=metadata,
        artifact=artifact,
    )


def _torch_runner(net: torch.nn.Module) -> Callable[[np.ndarray], np.ndarray]:
    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return net(torch.from_numpy(x)).numpy()

    return run


def _ort_runner(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    session = ort_session(path)
    name = session.get_inputs()[0].name

    def run(x: np.ndarray) -> np.ndarray:
        return session.run(None, {name: x})[0]

    return run
