"""FP32 ONNX -> mixed-precision FP16 ONNX (``generator.fp16.onnx``), checked on CPU.

Conversion: ``onnxconverter_common.float16.convert_float_to_float16`` with ``keep_io_types`` and
an op block list (InstanceNormalization by default: full-FP16 InstanceNorm gives wrong results,
ORT#10079), then these fix-ups of what it gets wrong:

* FP32 constants of blocked nodes: it rounds them to FP16 and casts them back (its block list
  is looked up after the inputs were renamed to the casts), so the original FP32 values are
  restored and the casts dropped.
* ``Cast(to=FLOAT)`` nodes of the source graph that feed FP16 nodes are retargeted to FLOAT16
  (the converter leaves them, which strongly typed TensorRT rejects; rf-detr does the same).
* A graph output written by a blocked node (``keep_last_conv``) is declared FP16 behind an
  extra Cast, despite ``keep_io_types``; the Cast is dropped and the output is FP32 again.
* Its per-value warnings about constants clamped to [1e-7, 1e4] in magnitude are counted
  (``clamped_constants``) instead of printed.
* ``value_info`` is rebuilt by strict shape inference, then every node is checked: blocked
  nodes see FP32 inputs and outputs, all other float edges are FP16, graph I/O is FP32, so no
  mixed-type edge is left for a strongly typed builder to trip on.

Ops in the converter's ``DEFAULT_OP_BLOCK_LIST`` (Resize, ...) stay FP32 too: their scale/ROI
inputs must be float32.
"""

from __future__ import annotations

import copy
import logging
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper
from onnxconverter_common import __version__ as converter_version
from onnxconverter_common import float16

from cyclesr_deploy.errors import InputError
from cyclesr_deploy.export.parity import (
    DEFAULT_SYNTHETIC_SIZES,
    ExportError,
    ParityError,
    adapt_sizes,
    check_sizes,
    format_cases,
    ort_session,
    run_parity,
    synthetic_inputs,
)
from cyclesr_deploy.export.report import (
    ArtifactEntry,
    ExportReport,
    ParityCase,
    artifact_entry,
    write_export_report,
)
from cyclesr_deploy.integrity import file_digest
from cyclesr_deploy.io import atomic_path
from cyclesr_deploy.model import MODEL_JSON
from cyclesr_deploy.onnx_metadata import OnnxMetadata, parse_metadata

Evaluator = Literal["auto", "onnxruntime", "reference"]
FLOAT, FLOAT16 = TensorProto.FLOAT, TensorProto.FLOAT16
_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Fp16Export:
    """Result of :func:`fp16_onnx_from_onnx`.

    ``kept_fp32``: names of the nodes computed in FP32; ``fixups``: counts of the fix-ups
    applied (``clamped_constants``, ``restored_fp32_constants``, ``retargeted_casts``,
    ``restored_fp32_outputs``); ``parity``: FP16 vs FP32 ONNX
    per synthetic tile (output units, range [-1, 1]); ``evaluators``: what ran the FP16 model
    on CPU (``"onnxruntime"``, ``"reference"`` = onnx's ReferenceEvaluator).
    """

    path: Path
    source: Path
    kept_fp32: tuple[str, ...]
    fixups: dict[str, int]
    parity: tuple[ParityCase, ...]
    evaluators: tuple[str, ...]
    seconds: float
    metadata: OnnxMetadata
    artifact: ArtifactEntry | None

    @property
    def rel_l2_error(self) -> float:
        """Largest relative L2 error vs the FP32 ONNX over the cases."""
        return max(c.rel_l2 for c in self.parity)

    @property
    def max_abs_error(self) -> float:
        """Largest max-abs error vs the FP32 ONNX over the cases."""
        return max(c.max_abs for c in self.parity)


def default_fp16_path(onnx_path: Path) -> Path:
    """``generator.onnx`` -> ``generator.fp16.onnx`` (same folder)."""
    return onnx_path.with_name(f"{onnx_path.stem}.fp16.onnx")


def _name_nodes(graph: onnx.GraphProto) -> None:
    """Give unnamed nodes unique names (the block list addresses nodes by name)."""
    taken = {n.name for n in graph.node if n.name}
    for i, node in enumerate(graph.node):
        if not node.name:
            name = f"{node.op_type}_{i}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)


def _producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in graph.node for out in node.output}


def last_conv_and_tanh(graph: onnx.GraphProto) -> tuple[str, ...]:
    """Names of the final ``Conv -> Tanh`` pair that produces the graph output."""
    producers = _producers(graph)
    tanh = producers.get(graph.output[0].name)
    conv = producers.get(tanh.input[0]) if tanh is not None and tanh.op_type == "Tanh" else None
    if conv is None or conv.op_type != "Conv":
        raise InputError("keep_last_conv: the graph does not end in Conv -> Tanh")
    return conv.name, tanh.name


def _constant_values(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """FP32 initializers and Constant-node values of ``model``, by tensor name."""
    values = {
        t.name: numpy_helper.to_array(t) for t in model.graph.initializer if t.data_type == FLOAT
    }
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value" and attr.t.data_type == FLOAT:
                    values[node.output[0]] = numpy_helper.to_array(attr.t)
    return values


def _restore_fp32_constants(model: onnx.ModelProto, originals: dict[str, np.ndarray]) -> int:
    """Replace ``Cast(to=FLOAT)`` of a constant by the constant's original FP32 value."""
    graph = model.graph
    keep, added = [], []
    for node in graph.node:
        to = next((a.i for a in node.attribute if a.name == "to"), None)
        if node.op_type == "Cast" and to == FLOAT and node.input[0] in originals:
            added.append(numpy_helper.from_array(originals[node.input[0]], node.output[0]))
        else:
            keep.append(node)
    if not added:
        return 0
    del graph.node[:]
    graph.node.extend(keep)
    graph.initializer.extend(added)
    _drop_unused(graph)
    return len(added)


def _drop_unused(graph: onnx.GraphProto) -> None:
    """Remove initializers and Constant nodes that nothing reads any more."""
    while True:
        used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
        dead = [n for n in graph.node if n.op_type == "Constant" and n.output[0] not in used]
        for node in dead:
            graph.node.remove(node)
        if not dead:
            break
    unused = [t for t in graph.initializer if t.name not in used]
    for tensor in unused:
        graph.initializer.remove(tensor)


def _restore_fp32_outputs(model: onnx.ModelProto) -> int:
    """Graph outputs the converter turned into FP16 (it does when a blocked node writes them,
    despite ``keep_io_types``) become FP32 again: the trailing ``Cast(to=FLOAT16)`` is dropped
    and the blocked node writes the output directly."""
    graph = model.graph
    producers = _producers(graph)
    count = 0
    for out in graph.output:
        if out.type.tensor_type.elem_type != FLOAT16:
            continue
        cast = producers.get(out.name)
        if cast is None or cast.op_type != "Cast":
            raise ExportError(f"FP16 conversion left graph output {out.name} in FP16")
        source = producers.get(cast.input[0])
        others = [n for n in graph.node if cast.input[0] in n.input and n is not cast]
        if source is not None and not others:
            source.output[list(source.output).index(cast.input[0])] = out.name
            graph.node.remove(cast)
        else:
            next(a for a in cast.attribute if a.name == "to").i = FLOAT
        out.type.tensor_type.elem_type = FLOAT
        count += 1
    return count


def _retarget_float_casts(model: onnx.ModelProto, blocked: set[str]) -> int:
    """``Cast(to=FLOAT)`` whose readers are all FP16 compute nodes -> ``Cast(to=FLOAT16)``."""
    graph = model.graph
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}
    count = 0
    for node in graph.node:
        to = next((a for a in node.attribute if a.name == "to"), None)
        if node.op_type != "Cast" or to is None or to.i != FLOAT or node.output[0] in outputs:
            continue
        users = readers.get(node.output[0], [])
        if users and all(u.name not in blocked and u.op_type != "Cast" for u in users):
            to.i = FLOAT16
            count += 1
    return count


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    types = {t.name: t.data_type for t in model.graph.initializer}
    for vi in (*model.graph.input, *model.graph.value_info, *model.graph.output):
        types[vi.name] = vi.type.tensor_type.elem_type
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    types[node.output[0]] = attr.t.data_type
    return types


def check_mixed_precision(model: onnx.ModelProto, blocked: Iterable[str]) -> None:
    """ExportError unless the typing is consistent: graph I/O FP32; every node named in
    ``blocked`` reads and writes FP32 floats; every other non-Cast node reads and writes FP16
    floats; every float edge has a known type. Run after shape inference."""
    blocked = set(blocked)
    types = _elem_types(model)
    problems = []
    for vi in (*model.graph.input, *model.graph.output):
        if vi.type.tensor_type.elem_type != FLOAT:
            problems.append(f"graph I/O {vi.name} is not float32")
    for node in model.graph.node:
        if node.op_type in ("Cast", "Constant"):
            continue
        want = FLOAT if node.name in blocked else FLOAT16
        for edge in (*node.input, *node.output):
            if not edge:
                continue
            kind = types.get(edge)
            if kind is None or kind == TensorProto.UNDEFINED:
                problems.append(f"{node.name} ({node.op_type}): no type for {edge}")
            elif kind in (FLOAT, FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16) and (
                kind != want
            ):
                problems.append(
                    f"{node.name} ({node.op_type}): {edge} is "
                    f"{TensorProto.DataType.Name(kind)}, expected "
                    f"{TensorProto.DataType.Name(want)}"
                )
    if problems:
        more = f" (and {len(problems) - 8} more)" if len(problems) > 8 else ""
        raise ExportError("FP16 graph has mixed-type edges: " + "; ".join(problems[:8]) + more)


def convert_to_fp16(
    model: onnx.ModelProto, *, keep_fp32_ops: Sequence[str], keep_last_conv: bool
) -> tuple[onnx.ModelProto, tuple[str, ...], dict[str, int]]:
    """Mixed-precision copy of ``model``; returns (model, FP32 node names, fix-up counts)."""
    source = copy.deepcopy(model)
    _name_nodes(source.graph)
    block_ops = set(keep_fp32_ops) | set(float16.DEFAULT_OP_BLOCK_LIST)
    block_nodes = set(last_conv_and_tanh(source.graph)) if keep_last_conv else set()
    blocked = {n.name for n in source.graph.node if n.op_type in block_ops} | block_nodes
    originals = _constant_values(source)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        converted = float16.convert_float_to_float16(
            copy.deepcopy(source),
            keep_io_types=True,
            op_block_list=sorted(block_ops),
            node_block_list=sorted(block_nodes),
        )
    clamped = sum("will be truncated to" in str(w.message) for w in caught)
    for w in caught:
        if "will be truncated to" not in str(w.message):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    fixups = {
        "clamped_constants": clamped,
        "restored_fp32_constants": _restore_fp32_constants(converted, originals),
        "retargeted_casts": _retarget_float_casts(converted, blocked),
        "restored_fp32_outputs": _restore_fp32_outputs(converted),
    }
    del converted.graph.value_info[:]
    try:
        converted = onnx.shape_inference.infer_shapes(converted, check_type=True, strict_mode=True)
    except onnx.shape_inference.InferenceError as exc:
        raise ExportError(f"FP16 graph fails strict type/shape inference: {exc}") from exc
    check_mixed_precision(converted, blocked)
    return converted, tuple(sorted(blocked)), fixups


def _runner(
    model_or_path: onnx.ModelProto | Path, evaluator: Literal["onnxruntime", "reference"]
) -> Callable[[np.ndarray], np.ndarray]:
    """A numpy -> numpy callable running the model with ONNX Runtime CPU or ReferenceEvaluator."""
    if evaluator == "reference":
        from onnx.reference import ReferenceEvaluator

        session = ReferenceEvaluator(model_or_path)

        def run_reference(x: np.ndarray) -> np.ndarray:
            with np.errstate(over="ignore", invalid="ignore"):  # overflow shows up as inf error
                return np.asarray(session.run(None, {"input": x})[0], dtype=np.float32)

        return run_reference
    if isinstance(model_or_path, onnx.ModelProto):
        raise TypeError("ONNX Runtime runs a path here")
    session = ort_session(model_or_path)
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


def _evaluate(
    evaluator: Evaluator,
    fp32_path: Path,
    fp16_path: Path,
    fp16_model: onnx.ModelProto,
    meta: OnnxMetadata,
    sizes: tuple[tuple[int, ...], ...],
    seed: int,
) -> tuple[tuple[str, ...], list[ParityCase]]:
    """Compare the FP16 model with the FP32 one on synthetic tiles; returns (evaluators used,
    cases). Case names end in ``[onnxruntime]`` or ``[reference]``.

    ONNX Runtime CPU lacks FP16 kernels for most of these ops: it inserts Casts and drops
    FP32->FP16->FP32 pairs, so it measures FP16 weights with mostly FP32 activations (an
    optimistic figure). onnx's ReferenceEvaluator computes in FP16 with numpy (pessimistic: FP16
    accumulation) but is slow, so ``auto`` runs ORT on ``sizes`` and the ReferenceEvaluator on
    one tile of 8 size multiples per side.
    """
    m = meta.model.generator if meta.direction == "ab" else meta.model.generator.inverse()
    reference = _runner(fp32_path, "onnxruntime")
    plan: list[tuple[Literal["onnxruntime", "reference"], tuple[tuple[int, ...], ...]]] = []
    if evaluator in ("auto", "onnxruntime"):
        plan.append(("onnxruntime", sizes))
    if evaluator == "reference":
        plan.append(("reference", sizes))
    if evaluator == "auto":
        plan.append(("reference", ((8 * m.size_multiple, 8 * m.size_multiple),)))
    used, cases = [], []
    for kind, tile_sizes in plan:
        try:
            candidate = _runner(fp16_model if kind == "reference" else fp16_path, kind)
        except Exception as exc:  # ORT: NOT_IMPLEMENTED for a missing FP16 kernel, ...
            if evaluator != "auto":
                raise ExportError(f"{kind} cannot run the FP16 model: {exc}") from exc
            _log.warning("%s cannot run the FP16 model (%s); skipped", kind, exc)
            continue
        inputs = synthetic_inputs(meta.model, tile_sizes, direction=meta.direction, seed=seed)
        for case in run_parity(inputs, reference, candidate):
            cases.append(case.model_copy(update={"name": f"{case.name} [{kind}]"}))
        used.append(kind)
    return tuple(used), cases


def fp16_onnx_from_onnx(
    onnx_path: str | Path,
    out_path: str | Path | None = None,
    *,
    keep_fp32_ops: Sequence[str] = ("InstanceNormalization",),
    keep_last_conv: bool = False,
    overwrite: bool = False,
    tolerance_rel: float = 1e-2,
    synthetic_sizes: Sequence[tuple[int, int]] | None = None,
    seed: int = 0,
    evaluator: Evaluator = "auto",
    record: bool = True,
) -> Fp16Export:
    """Write a mixed-precision FP16 copy of an exported FP32 ONNX (default
    ``<stem>.fp16.onnx`` beside it).

    ``keep_fp32_ops`` (and with ``keep_last_conv`` the final Conv + Tanh) stay FP32, with
    explicit Casts at the boundaries; graph input and output stay float32. The result passes
    strict shape inference, a per-node dtype check and ``onnx.checker`` (full), then is run on
    CPU against the FP32 ONNX on synthetic tiles of ``synthetic_sizes`` ((H, W); default
    128x128, 96x160 rounded up to the size multiple) with ONNX Runtime CPU and, for
    ``evaluator="auto"``, also on one small tile with onnx's ReferenceEvaluator (true FP16
    arithmetic; see :func:`_evaluate`). A relative L2 error above ``tolerance_rel`` in any case
    raises ParityError and leaves no file. Metadata
    is copied with ``cyclesr.precision=fp16``. ``record`` adds the artifact to the export.json
    of the output's folder when that folder is a model folder.
    """
    start = time.perf_counter()
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise InputError(f"onnx: {onnx_path} does not exist")
    target = default_fp16_path(onnx_path) if out_path is None else Path(out_path)
    if target.resolve() == onnx_path.resolve():
        raise InputError(f"out_path: {target} is the input file; choose another name")
    if target.exists() and not overwrite:
        raise InputError(f"output: {target} exists; pass overwrite=True to replace it")
    if not tolerance_rel > 0:
        raise InputError(f"tolerance_rel: must be > 0, got {tolerance_rel}")
    if evaluator not in ("auto", "onnxruntime", "reference"):
        raise InputError(f"evaluator: expected auto, onnxruntime or reference, got {evaluator!r}")
    try:
        model = onnx.load(str(onnx_path))
    except Exception as exc:  # DecodeError, OSError
        raise InputError(f"onnx: cannot read {onnx_path} ({exc})") from exc
    props = {p.key: p.value for p in model.metadata_props}
    meta = parse_metadata(props, source=str(onnx_path))
    if meta.precision != "fp32":
        raise InputError(f"onnx: {onnx_path} is already {meta.precision}; convert the FP32 file")
    cfg = meta.model.generator if meta.direction == "ab" else meta.model.generator.inverse()
    sizes = check_sizes(
        adapt_sizes(DEFAULT_SYNTHETIC_SIZES, cfg.size_multiple)
        if synthetic_sizes is None
        else synthetic_sizes,
        2,
        cfg.check_shape,
        "synthetic_sizes",
    )

    converted, kept, fixups = convert_to_fp16(
        model, keep_fp32_ops=keep_fp32_ops, keep_last_conv=keep_last_conv
    )
    fp16_settings = {
        "source": onnx_path.name,
        "source_sha256": file_digest(onnx_path)[1],
        "keep_fp32_ops": sorted(keep_fp32_ops),
        "keep_last_conv": keep_last_conv,
        "keep_io_types": True,
        "converter": f"onnxconverter-common {converter_version}",
        "fixups": fixups,
    }
    meta16 = OnnxMetadata(
        model=meta.model, export=meta.export, precision="fp16", fp16=fp16_settings
    )
    new_props = meta16.to_props()
    merged = {**props, **new_props}
    del converted.metadata_props[:]
    onnx.helper.set_model_props(converted, merged)

    with atomic_path(target) as part:
        onnx.save_model(converted, part)
        try:
            onnx.checker.check_model(str(part), full_check=True)
        except onnx.checker.ValidationError as exc:
            raise ExportError(f"onnx.checker rejects the FP16 model: {exc}") from exc
        used, cases = _evaluate(evaluator, onnx_path, part, converted, meta16, sizes, seed)
        if not cases:
            raise ExportError("no CPU evaluator could run the FP16 model; nothing written")
        worst = max(c.rel_l2 for c in cases)
        if not worst <= tolerance_rel:
            raise ParityError(
                f"FP16 ONNX differs from the FP32 ONNX by a relative L2 error of {worst:.3g} "
                f"(tolerance {tolerance_rel:g}); nothing written:\n{format_cases(cases)}"
            )
    seconds = time.perf_counter() - start
    model_dir = target.parent
    artifact = None
    if (model_dir / MODEL_JSON).is_file():
        artifact = artifact_entry(
            model_dir,
            target,
            kind="onnx",
            precision="fp16",
            seconds=seconds,
            direction=meta.direction,
            reference=onnx_path.name,
            tolerance={"rel_l2": tolerance_rel},
            parity=cases,
            settings={**fp16_settings, "evaluators": list(used), "kept_fp32_nodes": len(kept)},
        )
        if record:
            write_export_report(
                model_dir,
                ExportReport.of(artifact, versions={"onnxconverter_common": converter_version}),
            )
    _log.info("wrote %s, relative L2 error vs FP32 %.3g (%s)", target, worst, ", ".join(used))
    return Fp16Export(
        path=target,
        source=onnx_path,
        kept_fp32=kept,
        fixups=fixups,
        parity=tuple(cases),
        evaluators=used,
        seconds=seconds,
        metadata=meta16,
        artifact=artifact,
    )
