"""Two ONNX graphs for tiled inference with frame-level InstanceNorm statistics (issue 6).

:mod:`cyclesr_deploy.engines.frozen_torch` runs two passes in PyTorch; this module exports them:

* ``generator.stats.onnx`` (:func:`stats_onnx_from_checkpoint`): input ``input``
  (N x C x H x W float32 in [-1, 1], N, H and W dynamic; H, W multiples of the size multiple),
  output ``stats`` (L,) float32: the packed vector ``[mean_0, var_0, mean_1, var_1, ...]`` that the
  generator's InstanceNorm layers see on the whole frame (biased variance, as
  :func:`cyclesr_deploy.engines.frozen_torch.record_statistics` /
  ``compute_statistics(..., "whole")``).
  Feed it a whole frame (exact statistics), or a batch of N equal crops of one frame: the
  statistics are then pooled over the batch at every layer, the pixels of sub-block (i, j) of
  crop n weighted by ``weights[n, i, j]`` (second input, (MAX_CROPS, BLOCKS, BLOCKS) float32:
  the calibration weights; crop 0 all ones, the rest zero, for one frame),
  and all crops normalised with them (``statistics_from_crops`` with ``margin=0``; metadata
  ``pooled: true``, ``weighted: true``). Graphs exported before pooling (no ``pooled`` key)
  take one frame only; before weighting (no ``weights`` input) pool the crops equally.
* ``generator.tile.onnx`` (:func:`tile_onnx_from_checkpoint`): inputs ``input``
  (N x C x h x w, N, h, w dynamic) and ``stats`` (L,), output ``output``: the generator with every
  InstanceNorm replaced by ``(x - mean) / sqrt(var + eps)`` with its slice of ``stats`` (mode
  ``"frozen"``); no global operation is left, so tiles with a halo >= the receptive-field
  half-width reproduce whole-frame inference.

The per-layer normalisation is written as explicit arithmetic (Sub, Div, Sqrt on slices of the
``stats`` input), not as ``BatchNormalization``: TensorRT's parser wants BatchNormalization's
statistics as initializers, while here they are a graph input. Both files carry the generator
ONNX metadata (``cyclesr.model_json``, ``cyclesr.export``, ...) plus ``cyclesr.frozen_stats``
(JSON: ``length`` L, ``layers``, ``channels`` per layer, ``eps``, ``layout``). They are written
atomically after ``onnx.checker`` and an ONNX Runtime parity check against PyTorch pass.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
import torch
from torch import nn

from cyclesr_deploy import __version__
from cyclesr_deploy.engines.frozen_stats import (
    BLOCKS,
    KEY_FROZEN_STATS,
    MAX_CROPS,
    STATS_NAME,
    WEIGHTS_NAME,
    padded_weights,
)
from cyclesr_deploy.errors import InputError, MissingExtraError, require
from cyclesr_deploy.export.onnx_export import (
    INPUT_NAME,
    OUTPUT_NAME,
    Direction,
    _name_output_dims,
    _quiet_exporter,
    architecture,
    load_generator,
    versions,
)
from cyclesr_deploy.export.parity import (
    ExportError,
    ParityError,
    ParityInput,
    compare_outputs,
    ort_session,
)
from cyclesr_deploy.export.report import ExportReport, artifact_entry, write_export_report
from cyclesr_deploy.io import atomic_path
from cyclesr_deploy.model import FROZEN_ONNX_BY_DIRECTION, ONNX_FILES, GeneratorConfig, load_model
from cyclesr_deploy.onnx_metadata import OnnxMetadata

__all__ = [
    "KEY_FROZEN_STATS",
    "STATS_NAME",
    "FrozenOnnxExport",
    "StatsGraph",
    "TileGraph",
    "frozen_stats_info",
    "stats_onnx_from_checkpoint",
    "tile_onnx_from_checkpoint",
]

STATS_FILES: dict[str, str] = {d: f["stats"] for d, f in FROZEN_ONNX_BY_DIRECTION.items()}
TILE_FILES: dict[str, str] = {d: f["tile"] for d, f in FROZEN_ONNX_BY_DIRECTION.items()}
Graph = Literal["stats", "tile"]

# Ops that would make a tile depend on its own statistics (per-tile normalisation).
GLOBAL_OPS = frozenset(
    {"InstanceNormalization", "ReduceMean", "ReduceSum", "GlobalAveragePool", "LayerNormalization"}
    | {"GroupNormalization", "MeanVarianceNormalization"}
)

_log = logging.getLogger(__name__)


# ---- torch wrappers ------------------------------------------------------------------------


def _instance_norms(net: nn.Module) -> list[tuple[nn.Module, str, nn.InstanceNorm2d]]:
    """(parent, attribute, layer) of every InstanceNorm2d in module order (the order of
    :func:`cyclesr_deploy.engines.frozen_torch.freeze_instance_norms`, hence of the packed
    vector)."""
    where: dict[int, tuple[nn.Module, str]] = {}
    for parent in net.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.InstanceNorm2d):
                if child.affine or child.track_running_stats:
                    raise InputError(
                        "frozen_onnx: only InstanceNorm2d(affine=False, "
                        f"track_running_stats=False) can be exported, got {child!r}"
                    )
                where[id(child)] = (parent, name)
    # depth-first module order, as freeze_instance_norms returns the layers
    return [(*where[id(m)], m) for m in net.modules() if isinstance(m, nn.InstanceNorm2d)]


class _Shared:
    """Plain state shared by a wrapper and its norm layers during one forward."""

    def __init__(self) -> None:
        self.stats: torch.Tensor | None = None
        self.weights: torch.Tensor | None = None
        self.recorded: list[tuple[int, torch.Tensor, torch.Tensor]] = []


class _RecordingNorm(nn.Module):
    """Norm with the statistics pooled over the batch and the spatial axes, the pixels of
    sample n's sub-block (i, j) weighted by ``weights[n, i, j]`` (``weighted_statistics``)
    (a batch of equal crops of one frame is normalised as one image: mode
    ``"pool"`` of FrozenInstanceNorm; for one frame with weight 1 plain instance norm); appends
    its (mean, var) (C,) to the shared list."""

    def __init__(self, index: int, channels: int, eps: float, shared: _Shared) -> None:
        super().__init__()
        self.index, self.channels, self.eps = index, channels, eps
        self._shared = shared

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from cyclesr_deploy.engines.frozen_torch import weighted_statistics

        weights = self._shared.weights
        assert weights is not None
        mean, var = weighted_statistics(x, weights)
        self._shared.recorded.append((self.index, mean, var))
        c = self.channels
        return (x - mean.reshape(1, c, 1, 1)) / torch.sqrt(var.reshape(1, c, 1, 1) + self.eps)


class _SlicedNorm(nn.Module):
    """Normalisation with ``stats[offset : offset + C]`` (mean), ``[offset + C : offset + 2C]``
    (var): mode ``"frozen"`` of FrozenInstanceNorm."""

    def __init__(self, offset: int, channels: int, eps: float, shared: _Shared) -> None:
        super().__init__()
        self.offset, self.channels, self.eps = offset, channels, eps
        self._shared = shared

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stats = self._shared.stats
        assert stats is not None
        o, c = self.offset, self.channels
        mean = stats[o : o + c].reshape(1, c, 1, 1).to(x.dtype)
        var = stats[o + c : o + 2 * c].reshape(1, c, 1, 1).to(x.dtype)
        return (x - mean) / torch.sqrt(var + self.eps)


def _layer_info(layers: Sequence[nn.InstanceNorm2d]) -> dict[str, Any]:
    channels = [int(layer.num_features) for layer in layers]
    eps = sorted({float(layer.eps) for layer in layers})
    return {
        "length": 2 * sum(channels),
        "layers": len(channels),
        "channels": channels,
        "eps": eps[0] if len(eps) == 1 else eps,
        "layout": "mean_0, var_0, mean_1, var_1, ... (per-channel, biased variance, float32)",
        "pooled": True,  # stats graph: statistics pooled over the input batch (equal crops)
        "weighted": True,  # ... with the weights input's first N crops (calibrated sub-blocks)
        "max_crops": MAX_CROPS,
        "blocks": BLOCKS,
    }


class StatsGraph(nn.Module):
    """``generator`` (modified in place) -> module mapping a frame (1, C, H, W) with weights
    ``[1, 0, ...]``, or N crops of one frame with their pooling weights (first N of
    ``weights`` (MAX_CROPS, BLOCKS, BLOCKS) per sub-block), to the packed statistics (L,) of
    its InstanceNorm
    layers (the generator output is computed and dropped; the exporter removes the dead
    tail)."""

    def __init__(self, generator: nn.Module) -> None:
        super().__init__()
        found = _instance_norms(generator)
        if not found:
            raise InputError(
                "frozen_onnx: the generator has no InstanceNorm layers (norm 'none'); "
                "generator.onnx is already exact under tiling"
            )
        self.info = _layer_info([layer for _, _, layer in found])
        self._shared = _Shared()
        for i, (parent, name, layer) in enumerate(found):
            setattr(parent, name, _RecordingNorm(i, layer.num_features, layer.eps, self._shared))
        self.generator = generator

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        self._shared.recorded = []
        self._shared.weights = weights
        try:
            self.generator(x)
        finally:
            self._shared.weights = None
        recorded, self._shared.recorded = self._shared.recorded, []
        order = [i for i, _, _ in recorded]
        if order != list(range(self.info["layers"])):
            raise ExportError(
                f"frozen_onnx: InstanceNorm layers ran in order {order}, not module order; "
                "the packed layout would not match frozen_norm's"
            )
        return torch.cat([t for _, mean, var in recorded for t in (mean, var)])


class TileGraph(nn.Module):
    """``generator`` (modified in place) -> module ``(tile (N, C, h, w), stats (L,)) -> output``
    with every InstanceNorm normalising by its slice of ``stats``."""

    def __init__(self, generator: nn.Module) -> None:
        super().__init__()
        found = _instance_norms(generator)
        if not found:
            raise InputError(
                "frozen_onnx: the generator has no InstanceNorm layers (norm 'none'); "
                "generator.onnx is already exact under tiling"
            )
        self.info = _layer_info([layer for _, _, layer in found])
        self._shared = _Shared()
        offset = 0
        for parent, name, layer in found:
            c = layer.num_features
            setattr(parent, name, _SlicedNorm(offset, c, layer.eps, self._shared))
            offset += 2 * c
        self.generator = generator

    def forward(self, x: torch.Tensor, stats: torch.Tensor) -> torch.Tensor:
        self._shared.stats = stats
        try:
            return self.generator(x)
        finally:
            self._shared.stats = None


# ---- export --------------------------------------------------------------------------------


@dataclass(frozen=True)
class FrozenOnnxExport:
    """Result of :func:`stats_onnx_from_checkpoint` / :func:`tile_onnx_from_checkpoint`.

    ``max_abs_error``: ONNX Runtime vs PyTorch on the built-in parity input (stats: relative to
    the vector's largest magnitude; tile: output units)."""

    path: Path
    graph: Graph
    direction: Direction
    opset: int
    op_types: tuple[str, ...]
    info: dict[str, Any]
    max_abs_error: float
    seconds: float
    metadata: OnnxMetadata


def frozen_stats_info(path: str | Path) -> dict[str, Any]:
    """The ``cyclesr.frozen_stats`` metadata of a stats or tile graph (via ONNX Runtime)."""
    session = ort_session(path)
    props = dict(session.get_modelmeta().custom_metadata_map)
    if KEY_FROZEN_STATS not in props:
        raise InputError(f"onnx: {path} has no {KEY_FROZEN_STATS} metadata")
    return json.loads(props[KEY_FROZEN_STATS])


def check_frozen_graph(proto: onnx.ModelProto, graph: Graph) -> tuple[str, ...]:
    """Sorted op types; ExportError on training-mode BatchNormalization, non-reflect Pad, or
    (tile graph) any op that normalises with per-tile statistics."""
    ops = sorted({node.op_type for node in proto.graph.node})
    problems = []
    for node in proto.graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "BatchNormalization" and attrs.get("training_mode", 0):
            problems.append(f"{node.name}: BatchNormalization with training_mode=1")
        if node.op_type == "Pad" and attrs.get("mode", b"constant") != b"reflect":
            problems.append(f"{node.name}: Pad mode {attrs.get('mode', b'constant')!r}")
    if graph == "tile":
        bad = sorted(set(ops) & GLOBAL_OPS)
        if bad:
            problems.append(f"per-tile statistics ops {bad}")
    if problems:
        raise ExportError(f"the {graph} graph is not the expected graph: {'; '.join(problems)}")
    return tuple(ops)


def _export(
    module: nn.Module,
    args: tuple[torch.Tensor, ...],
    input_names: list[str],
    output_names: list[str],
    dynamic_shapes: tuple[Any, ...],
    *,
    opset: int,
) -> onnx.ModelProto:
    require("onnxscript", "export", "ONNX export with dynamo=True")
    with torch.no_grad(), _quiet_exporter():
        program = torch.onnx.export(
            module,
            args,
            dynamo=True,
            opset_version=opset,
            input_names=input_names,
            output_names=output_names,
            dynamic_shapes=dynamic_shapes,
            verbose=False,
        )
    if program is None:  # pragma: no cover
        raise ExportError("torch.onnx.export(dynamo=True) returned no program")
    return program.model_proto


def _frame_example(cfg: GeneratorConfig, n: int, hm: int, wm: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    m = cfg.size_multiple
    x = torch.rand(n, cfg.in_channels, hm * m, wm * m, generator=g) * 2 - 1
    # a smooth gradient on top of noise, so the statistics are not those of white noise
    ramp = torch.linspace(-0.5, 0.5, wm * m)[None, None, None, :]
    return (0.5 * x + ramp).clamp(-1, 1)


def _prepare(
    model_dir: str | Path,
    direction: Direction,
    files: dict[str, str],
    overwrite: bool,
    dynamo: bool,
    tolerance: float,
):
    model_dir = Path(model_dir)
    model = load_model(model_dir)
    if direction not in ONNX_FILES:
        raise InputError(f"direction: expected 'ab' or 'ba', got {direction!r}")
    if not dynamo:
        raise InputError(
            "dynamo: the stats and tile graphs are exported with dynamo=True only "
            "(torch.export; the TorchScript exporter is deprecated)"
        )
    if not tolerance > 0:
        raise InputError(f"tolerance: must be > 0, got {tolerance}")
    cfg = model.generator if direction == "ab" else model.generator.inverse()
    if cfg.norm != "instance":
        raise InputError(
            f"frozen_onnx: model norm is {cfg.norm!r}; without InstanceNorm the plain "
            f"{ONNX_FILES[direction]} is already exact under tiling"
        )
    target = model_dir / files[direction]
    if target.exists() and not overwrite:
        raise InputError(f"output: {target} exists; pass overwrite=True to replace it")
    return model_dir, model, cfg, target


def _finish(
    proto: onnx.ModelProto,
    *,
    model,
    cfg: GeneratorConfig,
    graph: Graph,
    direction: Direction,
    opset: int,
    info: dict[str, Any],
    inputs: list[str],
    outputs: list[str],
) -> OnnxMetadata:
    produced = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if produced != opset:
        raise ExportError(f"asked for opset {opset}, the exporter produced {produced}")
    settings = {
        "exporter": "dynamo",
        "opset": opset,
        "direction": direction,
        "graph": graph,
        "input_name": INPUT_NAME,
        "output_name": outputs[0],
        "input_names": inputs,
        "output_names": outputs,
        "stats_name": STATS_NAME,
        "layout": "NCHW",
        "value_range": [-1.0, 1.0],
        "size_multiple": cfg.size_multiple,
        "scale": cfg.scale,
        "downscale": cfg.downscale,
        "versions": versions(),
    }
    metadata = OnnxMetadata(model=model, export=settings, precision="fp32")
    props = metadata.to_props()
    props[KEY_FROZEN_STATS] = json.dumps(info, sort_keys=True)
    onnx.helper.set_model_props(proto, props)
    proto.producer_name = "cyclesr_deploy"
    proto.producer_version = __version__
    m, n = cfg.size_multiple, info["length"]
    proto.doc_string = (
        f"cyclesr generator {direction} frozen-InstanceNorm {graph} graph, {architecture(cfg)}; "
        + (
            f"input N x C x H x W float32 in [-1, 1] (N equal crops of one frame, pooled with "
            f"weights[:N]; H, W multiples of {m}), weights ({MAX_CROPS}, {BLOCKS}, {BLOCKS}) -> "
            f"stats ({n},) "
            "[mean_0, var_0, mean_1, var_1, ...]"
            if graph == "stats"
            else f"input N x C x h x w float32 in [-1, 1] (h, w multiples of {m}), stats ({n},) "
            "from the stats graph -> output"
        )
    )
    return metadata


def _save_checked(proto: onnx.ModelProto, part: Path, graph: Graph) -> None:
    onnx.save_model(proto, part)
    try:
        onnx.checker.check_model(str(part), full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"onnx.checker rejects the {graph} graph: {exc}") from exc


def _torch_stats(
    model_dir: Path, model, direction: Direction, x: torch.Tensor, weights: np.ndarray
) -> np.ndarray:
    """frozen_norm's statistics of the batch ``x`` pooled with ``weights`` (N, B, B) (mode
    ``"pool"``; N = 1 with equal weights: exact)."""
    from cyclesr_deploy.engines.frozen_torch import _run, freeze_instance_norms, packed_statistics

    net = load_generator(model_dir, model, direction)
    layers = freeze_instance_norms(net)
    for layer in layers:
        layer.weights = torch.from_numpy(np.asarray(weights, dtype=np.float32))
    return packed_statistics(_run(net, layers, "pool", x)).numpy()


def _export_and_write(
    wrapper: torch.nn.Module,
    example: tuple[torch.Tensor, ...],
    shapes: tuple[dict | None, ...],
    *,
    graph: Graph,
    inputs: list[str],
    outputs: list[str],
    model,
    cfg,
    direction: Direction,
    opset: int,
    target: Path,
    feeds: dict[str, np.ndarray],
    expected: np.ndarray,
    relative: bool,
    tolerance: float,
    start: float,
    details: bool,
    record: bool = True,
) -> Path | FrozenOnnxExport:
    """Shared tail of both exports: export, structural checks, metadata, atomic write gated by
    an ONNX Runtime vs PyTorch comparison (``relative``: error over the largest magnitude);
    ``record``: merge the file's entry into the model folder's ``export.json``."""
    info = wrapper.info
    try:
        proto = _export(wrapper, example, inputs, outputs, shapes, opset=opset)
    except (ExportError, MissingExtraError):
        raise
    except Exception as exc:  # torch.export / onnxscript raise many types
        raise ExportError(f"{graph} graph export failed on {architecture(cfg)}: {exc}") from exc
    op_types = check_frozen_graph(proto, graph)
    if graph == "tile":
        _name_output_dims(proto, cfg)
    metadata = _finish(
        proto,
        model=model,
        cfg=cfg,
        graph=graph,
        direction=direction,
        opset=opset,
        info=info,
        inputs=inputs,
        outputs=outputs,
    )
    with atomic_path(target) as part:
        _save_checked(proto, part, graph)
        got = ort_session(part).run(None, feeds)[0]
        if got.shape != expected.shape:
            raise ExportError(f"{graph} graph output shape {got.shape}, expected {expected.shape}")
        err = float(np.abs(got - expected).max())
        if relative:
            err /= max(1.0, float(np.abs(expected).max()))
        if not err <= tolerance:
            kind = "relative, " if relative else ""
            raise ParityError(
                f"{graph} graph: ONNX Runtime differs from PyTorch by {err:.3g} ({kind}"
                f"tolerance {tolerance:g}); nothing written"
            )
    seconds = time.perf_counter() - start
    if record:
        case = compare_outputs(
            ParityInput(
                f"random {'x'.join(map(str, feeds[INPUT_NAME].shape))}", "random", feeds[INPUT_NAME]
            ),
            expected,
            got,
        )
        settings = {k: v for k, v in metadata.export.items() if k != "versions"}
        settings["frozen_stats"] = info
        entry = artifact_entry(
            target.parent,
            target,
            kind="onnx",
            precision="fp32",
            seconds=seconds,
            direction=direction,
            reference="torch (frozen_norm)",
            tolerance={"max_abs_relative" if relative else "max_abs": tolerance},
            parity=[case],
            settings=settings,
        )
        write_export_report(target.parent, ExportReport.of(entry, versions=versions()))
    _log.info("wrote %s (L=%d), max abs error %.3g", target, info["length"], err)
    if not details:
        return target
    return FrozenOnnxExport(target, graph, direction, opset, op_types, info, err, seconds, metadata)


def stats_onnx_from_checkpoint(
    model_dir: str | Path,
    *,
    direction: Direction = "ab",
    overwrite: bool = False,
    dynamo: bool = True,
    opset: int = 20,
    tolerance: float = 1e-5,
    seed: int = 0,
    details: bool = False,
    record: bool = True,
) -> Path | FrozenOnnxExport:
    """Export the statistics graph ``generator.stats.onnx`` (``generator_ba.stats.onnx`` for
    ``direction="ba"``) into the model folder; return its path (or a :class:`FrozenOnnxExport`
    with ``details=True``).

    Inputs ``input`` (N, C, H, W: one frame, or N equal crops of one frame pooled as
    ``statistics_from_crops(..., margin=0)``), N, H and W dynamic, and ``weights``
    (MAX_CROPS, BLOCKS, BLOCKS) float32 (static; the first N are the samples' sub-block
    pooling weights, ``padded_weights``: ones for one frame,
    :func:`~cyclesr_deploy.engines.frozen.calibration_weights` for crops); output ``stats``
    (L,) float32 equal to ``frozen_norm.compute_statistics(gen, frame,
    "whole")`` for one frame.
    Checked with ``onnx.checker`` and against PyTorch in ONNX Runtime (max abs error relative to
    the vector's largest magnitude <= ``tolerance``, else ParityError, nothing written). An
    existing file is replaced only with ``overwrite=True`` (else InputError). ``record``: merge
    the file's entry (size, sha256, parity) into the folder's ``export.json``.
    """
    start = time.perf_counter()
    model_dir, model, cfg, target = _prepare(
        model_dir, direction, STATS_FILES, overwrite, dynamo, tolerance
    )
    wrapper = StatsGraph(load_generator(model_dir, model, direction)).eval()
    m = cfg.size_multiple
    from torch.export import Dim

    check = _frame_example(cfg, 3, 12, 20, seed + 1)  # 3 crops: weighted pooled statistics
    check_weights = np.random.default_rng(seed).uniform(0.2, 1.0, (3, BLOCKS, BLOCKS))
    example_weights = torch.from_numpy(padded_weights(np.array([0.5, 0.5])))
    return _export_and_write(
        wrapper,
        (_frame_example(cfg, 2, 16, 24, seed), example_weights),
        ({0: Dim("batch"), 2: m * Dim("h"), 3: m * Dim("w")}, None),
        graph="stats",
        inputs=[INPUT_NAME, WEIGHTS_NAME],
        outputs=[STATS_NAME],
        model=model,
        cfg=cfg,
        direction=direction,
        opset=opset,
        target=target,
        feeds={INPUT_NAME: check.numpy(), WEIGHTS_NAME: padded_weights(check_weights)},
        expected=_torch_stats(model_dir, model, direction, check, check_weights),
        relative=True,
        tolerance=tolerance,
        start=start,
        details=details,
        record=record,
    )


def tile_onnx_from_checkpoint(
    model_dir: str | Path,
    *,
    direction: Direction = "ab",
    overwrite: bool = False,
    dynamo: bool = True,
    opset: int = 20,
    tolerance: float = 1e-4,
    seed: int = 0,
    details: bool = False,
    record: bool = True,
) -> Path | FrozenOnnxExport:
    """Export the tile graph ``generator.tile.onnx`` (``generator_ba.tile.onnx``) into the model
    folder; return its path (or a :class:`FrozenOnnxExport` with ``details=True``).

    Inputs ``input`` (N, C, h, w; N, h, w dynamic, h and w multiples of the size multiple) and
    ``stats`` (L,) from the stats graph; output ``output`` (N, C', h*s, w*s). Checked with
    ``onnx.checker``, for the absence of per-tile statistics ops, and against PyTorch
    (FrozenInstanceNorm mode ``"frozen"``) in ONNX Runtime on a batch of 2 tiles with the stats
    of another frame: max abs error <= ``tolerance`` (output units), else ParityError. An
    existing file is replaced only with ``overwrite=True`` (else InputError).
    """
    from cyclesr_deploy.engines.frozen_torch import (
        compute_statistics,
        freeze_instance_norms,
        load_packed,
        set_mode,
    )

    start = time.perf_counter()
    model_dir, model, cfg, target = _prepare(
        model_dir, direction, TILE_FILES, overwrite, dynamo, tolerance
    )
    wrapper = TileGraph(load_generator(model_dir, model, direction)).eval()
    info = wrapper.info
    m = cfg.size_multiple
    example = _frame_example(cfg, 2, 16, 24, seed)
    example_stats = torch.cat(
        [t for c in info["channels"] for t in (torch.zeros(c), torch.ones(c))]
    )
    from torch.export import Dim

    # parity: stats of one frame, applied to tiles of another
    ref_net = load_generator(model_dir, model, direction)
    packed = compute_statistics(ref_net, _frame_example(cfg, 1, 20, 16, seed + 2)[0], "whole")
    tiles = _frame_example(cfg, 2, 12, 8, seed + 3)
    layers = freeze_instance_norms(ref_net)
    load_packed(layers, packed)
    set_mode(layers, "frozen")
    with torch.inference_mode():
        expected = ref_net(tiles).numpy()
    return _export_and_write(
        wrapper,
        (example, example_stats),
        ({0: Dim("batch"), 2: m * Dim("h"), 3: m * Dim("w")}, None),
        graph="tile",
        inputs=[INPUT_NAME, STATS_NAME],
        outputs=[OUTPUT_NAME],
        model=model,
        cfg=cfg,
        direction=direction,
        opset=opset,
        target=target,
        feeds={INPUT_NAME: tiles.numpy(), STATS_NAME: packed.numpy()},
        expected=expected,
        relative=False,
        tolerance=tolerance,
        start=start,
        details=details,
        record=record,
    )
