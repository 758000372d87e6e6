"""OpenVINO backend: the model folder's ONNX graphs on the CPU (or an Intel GPU).

``openvino`` (in the ``cpu`` extra, or the ``openvino`` extra) is imported when an engine is
created. :class:`OpenVINOEngine` runs ``generator.onnx`` at ``fp32`` (inference precision
``f32``, set explicitly: OpenVINO otherwise picks bf16 by itself on CPUs that have it) or
``bf16`` (inference precision hint), or ``generator.int8.onnx`` (``int8``: post-training
quantization by ``cyclesr export precision``). :class:`OpenVINOFrozenEngine` runs the frozen
InstanceNorm statistics graphs (``generator.stats.onnx`` + ``generator.tile.onnx``) with the
same code as :class:`~cyclesr_deploy.engines.frozen.OnnxFrozenEngine` (it lives beside it, in
:mod:`cyclesr_deploy.engines.frozen`, and runs OpenVINO through :class:`OvSession`).

Compiled models are cached (OpenVINO's ``CACHE_DIR``) so that a second run does not compile
again: in the model folder (``engines/openvino``, :attr:`ModelFolder.openvino_cache`) when it is
writable, else in the user cache folder (:func:`cache_dir`). Every graph is checked against
``export.json`` before it is compiled (:meth:`ModelFolder.verify`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cyclesr_deploy.engines.base import TensorSpec
from cyclesr_deploy.engines.frozen_stats import KEY_FROZEN_STATS, WEIGHTS_NAME
from cyclesr_deploy.engines.precision import (
    ONNX_BY_CPU_PRECISION,
    OPENVINO_PRECISIONS,
    cpu_cannot_run,
    stale_int8,
)
from cyclesr_deploy.errors import InputError, require
from cyclesr_deploy.integrity import user_cache_dir
from cyclesr_deploy.model import OPENVINO_CACHE, ModelFolder, load_model

if TYPE_CHECKING:
    from cyclesr_deploy.engines.select import Selection

log = logging.getLogger("cyclesr_deploy.engines")

EXTRA = "cpu"  # the extra that installs openvino (also: the ``openvino`` extra)
HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "f32", "fp16": "f16"}


def import_openvino() -> Any:
    return require("openvino", EXTRA, "The OpenVINO backend (or the 'openvino' extra)")


def capabilities(device: str = "CPU") -> tuple[str, ...]:
    """OpenVINO's ``OPTIMIZATION_CAPABILITIES`` of ``device`` (``BF16``, ``INT8``, ``FP32``...)."""
    core = import_openvino().Core()
    return tuple(str(c) for c in core.get_property(device, "OPTIMIZATION_CAPABILITIES"))


def cache_dir(model_dir: Path) -> Path:
    """Where compiled models of ``model_dir`` are cached: its ``engines/openvino`` when the
    folder is writable, else ``<user cache>/openvino/<hash of the folder path>``; the built-in
    models (in the installed package) always use the user cache."""
    from cyclesr_deploy.builtin import MODELS_DIR

    own = ModelFolder(model_dir).openvino_cache
    parent = own.parent if own.parent.exists() else model_dir
    builtin = model_dir.resolve().parent == MODELS_DIR  # never write into the installed package
    writable = os.access(parent, os.W_OK) and (not own.exists() or os.access(own, os.W_OK))
    if writable and not builtin:
        return own
    key = hashlib.sha256(str(model_dir.resolve()).encode("utf-8")).hexdigest()[:20]
    return user_cache_dir() / OPENVINO_CACHE / key


def compile_graph(path: Path, model_dir: Path, device: str, config: dict[str, Any]) -> Any:
    """Verify ``path`` against export.json and compile it (cached)."""
    ov = import_openvino()
    ModelFolder(model_dir).verify(path)  # refuses a graph export.json does not know
    core = ov.Core()
    cache = cache_dir(model_dir)
    try:
        cache.mkdir(parents=True, exist_ok=True)
        core.set_property({"CACHE_DIR": str(cache)})
    except OSError as exc:  # a cache that cannot be written never fails a run
        log.warning("OpenVINO model cache unavailable (%s): compiling without it", exc)
    if device not in core.available_devices and device != "CPU":
        raise InputError(
            f"OpenVINO device {device!r} not found (available: {', '.join(core.available_devices)})"
        )
    try:
        return core.compile_model(precise_norms(core.read_model(str(path))), device, config)
    except RuntimeError as exc:
        raise InputError(f"openvino: cannot compile {path} ({' '.join(str(exc).split())})") from exc


def precise_norms(model: Any) -> Any:
    """``model`` with each InstanceNorm (OpenVINO ``MVN``) of its outer resolution levels (at
    least 1/4 of the largest norm's pixels) written as explicit two-pass ops, mean first:
    ``c = x - mean(x)``, ``c * 1 / sqrt(mean(c^2) + eps)`` (``eps`` where the MVN has it), the
    same function. OpenVINO's fused MVN kernel accumulates in float32 with an error that grows
    with the pixels it reduces and with the thread count's split (the built-in model, a
    2048^2 frame: 8 uint16 levels from ONNX Runtime FP32 with 2 threads, 23 with 1; rewritten:
    2 and 2; 1024^2: 0.007 mean levels from float64 where ONNX Runtime has 0.075), and loses
    more where a channel's mean is large against its spread (a frame far darker than the
    training data). The inner levels' norms (1/16 of the pixels, 13 of the built-in model's
    17) keep the fused kernel: precise enough there, and explicit ops on all cost ~10 %."""
    from openvino import opset13 as ops

    pixels = _norm_pixels(model)
    largest = max(pixels.values(), default=0)
    for op in model.get_ordered_ops():
        if op.get_type_name() != "MVN" or 4 * pixels.get(op.get_friendly_name(), 0) < largest:
            continue
        attrs = op.get_attributes()
        data, axes = op.input_value(0), op.input_value(1)
        centred = ops.subtract(data, ops.reduce_mean(data, axes, True))
        out = centred
        if attrs["normalize_variance"]:
            var = ops.reduce_mean(ops.multiply(centred, centred), axes, True)
            eps = ops.constant(np.float32(attrs["eps"]))
            inside = str(attrs["eps_mode"]).lower() == "inside_sqrt"
            den = ops.sqrt(ops.add(var, eps)) if inside else ops.add(ops.sqrt(var), eps)
            out = ops.multiply(centred, ops.divide(ops.constant(np.float32(1)), den))
        for target in list(op.output(0).get_target_inputs()):
            target.replace_source_output(out.output(0))
    model.validate_nodes_and_infer_types()
    return model


def _norm_pixels(model: Any, probe: int = 256) -> dict[str, int]:
    """Each MVN's reduced elements (by name) with a ``probe``^2 input: where it sits in the
    resolution pyramid. {} for a graph without MVN or one that a probe shape cannot take."""
    if not any(op.get_type_name() == "MVN" for op in model.get_ordered_ops()):
        return {}  # the frozen-statistics graphs
    copy = model.clone()
    try:
        inp = copy.inputs[0]
        shape = [d.get_length() if d.is_static else 1 for d in inp.get_partial_shape()]
        copy.reshape({inp: [*shape[:-2], probe, probe]})
    except RuntimeError:
        return {}
    out = {}
    for op in copy.get_ordered_ops():
        if (
            op.get_type_name() == "MVN"
            and op.input_value(1).get_node().get_type_name() == "Constant"
        ):
            dims = op.get_output_shape(0)
            axes = op.input_value(1).get_node().get_vector()
            out[op.get_friendly_name()] = int(np.prod([dims[int(a)] for a in axes]))
    return out


def compile_config(precision: str, threads: int | None, device: str) -> dict[str, Any]:
    config: dict[str, Any] = {
        "INFERENCE_PRECISION_HINT": HINTS[precision],
        "PERFORMANCE_HINT": "LATENCY",
    }
    if threads is not None and device == "CPU":
        config["INFERENCE_NUM_THREADS"] = int(threads)
    return config


class OpenVINOEngine:
    """The generator compiled by OpenVINO.

    Args:
        model_dir: a model folder (``precision`` picks ``generator.onnx`` or
            ``generator.int8.onnx``).
        precision: ``"fp32"``, ``"bf16"`` (CPUs with avx512_bf16/AMX; refused elsewhere),
            ``"int8"`` (refused unless ``export.json`` records it as quantized from the current
            ``generator.onnx``) or ``"fp16"`` (an Intel GPU only; refused on the CPU).
        device: OpenVINO device, ``"CPU"`` (default) or ``"GPU"`` (Intel integrated/discrete;
            from Python only, untested).
        threads: CPU inference threads (None: OpenVINO's default, one per physical core).
        check_int8_record: False only for ``cyclesr export precision``, which measures the
            graph it has just quantized before recording it.

    Buffer contract: the array returned by ``infer`` is the request's output tensor,
    overwritten by the next call.
    """

    selection: Selection | None = None

    def __init__(
        self,
        model_dir: str | Path,
        *,
        precision: str = "fp32",
        device: str = "CPU",
        threads: int | None = None,
        check_int8_record: bool = True,
    ) -> None:
        self.model_dir = Path(model_dir)
        if not self.model_dir.is_dir():
            raise InputError(f"{model_dir}: the OpenVINO backend takes a model folder")
        if precision not in (*OPENVINO_PRECISIONS, "fp16"):
            raise InputError(
                f"precision must be one of {', '.join(OPENVINO_PRECISIONS)} or fp16, "
                f"not {precision!r}"
            )
        if threads is not None and threads < 1:
            raise InputError(f"threads must be >= 1, got {threads}")
        self.model = load_model(self.model_dir)
        name = ONNX_BY_CPU_PRECISION.get(precision, ONNX_BY_CPU_PRECISION["fp32"])
        self.onnx_path = self.model_dir / name
        if not self.onnx_path.is_file():
            hint = ModelFolder(self.model_dir).reexport_command(name)
            raise InputError(f"{self.onnx_path}: not found; export it first ({hint})")
        import_openvino()
        device = device.upper()
        if device == "CPU":
            if precision == "fp16":
                raise InputError(
                    "precision 'fp16' is for an Intel GPU (device='GPU'); OpenVINO's CPU plugin "
                    "runs fp32, bf16 or int8"
                )
            why = cpu_cannot_run(precision, capabilities(device))
            if why:
                raise InputError(f"precision {precision!r}: {why}; use fp32 or int8")
        if precision == "int8" and check_int8_record:
            why = stale_int8(self.model_dir)
            if why:
                raise InputError(f"precision 'int8': {why}")
        self.precision, self.device, self.threads = precision, device, threads
        g = self.model.generator
        self.input_spec = TensorSpec(
            name="input",
            shape=(None, g.in_channels, None, None),
            dtype=np.dtype(np.float32),
            size_multiple=self.model.size_multiple,
            scale=self.model.scale,
        )
        self.name = f"openvino[{device},{precision}]"
        self._compiled: Any = None
        self._request: Any = None

    def __enter__(self) -> OpenVINOEngine:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> None:
        """Compile the graph (idempotent; from the cache after the first run)."""
        if self._request is not None:
            return
        config = compile_config(self.precision, self.threads, self.device)
        compiled = compile_graph(self.onnx_path, self.model_dir, self.device, config)
        if len(compiled.inputs) != 1 or len(compiled.outputs) != 1:
            raise InputError(f"{self.onnx_path}: expected one input and one output")
        self._compiled = compiled
        self._request = compiled.create_infer_request()
        log.info("OpenVINO %s (%s) for %s", self.device, config, self.onnx_path)

    def close(self) -> None:
        self._request = self._compiled = None

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """(N, C, H, W) float32 -> (N, C', H*s, W*s) float32 (see the buffer contract)."""
        if self._request is None:
            raise RuntimeError(f"{self.name} is closed; use it inside a with block")
        x = np.ascontiguousarray(batch, dtype=np.float32)
        self._request.infer({0: x}, share_inputs=True)
        return self._request.get_output_tensor(0).data

    def __repr__(self) -> str:
        state = "open" if self._request is not None else "closed"
        return f"OpenVINOEngine({str(self.model_dir)!r}, {self.name}, {state})"


class _Input:
    def __init__(self, port: Any) -> None:
        self.name = port.get_any_name()
        self.shape = [d.get_length() if d.is_static else None for d in port.get_partial_shape()]


class _Meta:
    def __init__(self, props: dict[str, str]) -> None:
        self.custom_metadata_map = props


class OvSession:
    """A compiled OpenVINO model behind the part of ONNX Runtime's session API that
    :class:`~cyclesr_deploy.engines.frozen.OnnxFrozenEngine` uses (``run``, ``get_inputs``,
    ``get_providers``, ``get_modelmeta``), so the frozen-statistics logic exists once."""

    def __init__(self, compiled: Any, device: str) -> None:
        self._request = compiled.create_infer_request()
        self._inputs = [_Input(p) for p in compiled.inputs]
        self._device = device
        out = compiled.outputs[0].get_partial_shape()
        # OpenVINO does not keep the ONNX metadata_props: the statistics layout follows from the
        # graph itself (length: the static output of the stats graph or input of the tile graph;
        # pooled crops with weights: the stats graph's ``weights`` input)
        lengths = [i.shape[0] for i in self._inputs if i.name != "input" and len(i.shape) == 1]
        if not lengths and out.rank.get_length() == 1 and out[0].is_static:
            lengths = [out[0].get_length()]
        pooled = any(i.name == WEIGHTS_NAME for i in self._inputs)
        info = {"length": lengths[0] if lengths else None, "pooled": pooled}
        self._props = {KEY_FROZEN_STATS: json.dumps(info)} if lengths else {}

    def run(self, _names: Any, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        out = self._request.infer({k: np.ascontiguousarray(v) for k, v in feeds.items()})
        return [np.array(next(iter(out.values())), copy=True)]

    def get_inputs(self) -> list[_Input]:
        return self._inputs

    def get_providers(self) -> list[str]:
        return [self._device]

    def get_modelmeta(self) -> _Meta:
        return _Meta(self._props)
