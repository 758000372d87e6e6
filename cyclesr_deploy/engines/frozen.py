"""Engines with frozen frame-level InstanceNorm statistics (seam-free tiling).

Both implement :class:`~cyclesr_deploy.engines.base.FrozenStatsEngine`: the pipeline computes
the statistics of each whole (normalized, size-multiple padded) frame once with
``frame_statistics`` and runs every tile batch of that frame with ``infer_with_stats``. With a
halo >= the receptive-field half-width the tiled output then equals whole-frame inference up to
float rounding (:mod:`cyclesr_deploy.engines.frozen_torch`).

* :class:`OnnxFrozenEngine`: two ONNX Runtime sessions, ``generator.stats.onnx`` (frame ->
  stats) and ``generator.tile.onnx`` (tiles, stats -> output), written by
  :mod:`cyclesr_deploy.export.frozen_onnx`; FP32.
* :class:`OpenVINOFrozenEngine`: the same two graphs (and the same code) on OpenVINO, FP32.
* :class:`TorchFrozenEngine`: :class:`~cyclesr_deploy.engines.torch_engine.TorchEngine` with its
  InstanceNorms swapped for :class:`~cyclesr_deploy.engines.frozen_torch.FrozenInstanceNorm`.

``infer`` (no statistics given) is plain InstanceNorm inference, sample by sample, so both are
complete engines for whole-frame runs too. :func:`open_frozen_engine` picks one for a backend.

Statistics estimates, crops and the model's check: :mod:`cyclesr_deploy.engines.frozen_stats`.
ONNX Runtime pools crops with a stats graph exported with pooling (metadata
``pooled``) and weights them when it has the ``weights`` input (``weighted``); an older stats
graph pools them equally, or gets the whole frame (logged once).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from cyclesr_deploy.engines.base import TensorSpec
from cyclesr_deploy.engines.frozen_stats import (
    KEY_FROZEN_STATS,
    STATS_NAME,
    WEIGHTS_NAME,
    EstimateChoice,
    StatsEstimate,
    _check_estimate,
    _check_stats,
    crop_batch,
    estimate_for_model,
    frozen_graphs_missing,
    padded_weights,
)
from cyclesr_deploy.engines.onnxruntime_engine import CPU_EP, resolve_providers
from cyclesr_deploy.engines.openvino_engine import (
    OvSession,
    compile_config,
    compile_graph,
    import_openvino,
)
from cyclesr_deploy.engines.precision import ONNX_BY_CPU_PRECISION
from cyclesr_deploy.engines.torch_engine import TorchEngine
from cyclesr_deploy.errors import InputError, require
from cyclesr_deploy.model import FROZEN_ONNX, ONNX_FILES, WEIGHTS, ModelFolder, load_model

__all__ = [
    "OnnxFrozenEngine",
    "OpenVINOFrozenEngine",
    "TorchFrozenEngine",
    "estimate_for_model",
    "frozen_graphs_missing",
    "open_frozen_engine",
]

log = logging.getLogger(__name__)


def _resolve(engine: Any, stats: str | None) -> str:
    """The estimate an engine uses for ``stats`` (default ``engine.stats``): ``"auto"``
    resolved once per engine by :func:`estimate_for_model` (logged)."""
    stats = _check_estimate(stats or engine.stats)
    if stats != "auto":
        return stats
    if engine._auto is None:
        engine._auto = estimate_for_model(engine.model_dir)
        engine._auto.log(f"frozen statistics ({engine.model_dir})")
    return engine._auto.estimate


class OnnxFrozenEngine:
    """ONNX Runtime on ``generator.stats.onnx`` + ``generator.tile.onnx`` of ``model_dir``.

    Args:
        model_dir: model folder with the two graphs (see :func:`frozen_graphs_missing`).
        providers: as :class:`~cyclesr_deploy.engines.OnnxRuntimeEngine` (default ``"cpu"``).
        threads: intra-op threads per session (None: ONNX Runtime's default).

    Buffer contract: every call returns a new array.
    """

    selection: Any = None

    def __init__(
        self,
        model_dir: str | Path,
        *,
        providers: str | Sequence[str] = "cpu",
        threads: int | None = None,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.model = load_model(self.model_dir)
        missing = frozen_graphs_missing(self.model_dir)
        if missing:
            raise InputError(missing)
        if threads is not None and threads < 1:
            raise InputError(f"threads must be >= 1, got {threads}")
        self.threads = threads
        self._init_backend(providers)
        self.input_spec = TensorSpec(
            name="input",
            shape=(None, self.model.generator.in_channels, None, None),
            dtype=np.dtype(np.float32),
            size_multiple=self.model.size_multiple,
            scale=self.model.scale,
        )
        self.name = self._label(self.requested[0])
        self.length: int | None = None
        self.stats: StatsEstimate = "auto"
        self._auto: EstimateChoice | None = None
        self.pooled = False
        self._warned = False
        self._weights_shape: tuple[int, ...] | None = None
        self._stats: Any = None
        self._tile: Any = None
        self._plain: Any = None

    def _init_backend(self, providers: str | Sequence[str]) -> None:
        """Import the backend and resolve where it runs (``self.requested``)."""
        self.ort = require("onnxruntime", "cpu", "ONNX Runtime inference (or the 'gpu' extra)")
        self.requested = resolve_providers(providers, list(self.ort.get_available_providers()))

    def _label(self, device: str) -> str:
        return f"onnxruntime[{device},frozen-stats]"

    def __enter__(self) -> OnnxFrozenEngine:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _session(self, path: Path) -> Any:
        ort = self.ort
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.inter_op_num_threads = 1
        if self.threads is not None:
            so.intra_op_num_threads = self.threads
        so.log_severity_level = 3
        ModelFolder(self.model_dir).verify(path)  # refuses a graph export.json does not know
        try:
            return ort.InferenceSession(str(path), sess_options=so, providers=self.requested)
        except Exception as exc:  # onnxruntime's own exception types
            raise InputError(f"onnx: ONNX Runtime cannot load {path} ({exc})") from exc

    def open(self) -> None:
        """Create both sessions (idempotent) and check that their statistics layouts agree."""
        if self._tile is not None:
            return
        plain = self._whole_graph()
        if plain.is_file():  # infer() opens it on first use: refuse a changed one before any work
            ModelFolder(self.model_dir).verify(plain)
        stats = self._session(self.model_dir / FROZEN_ONNX["stats"])
        tile = self._session(self.model_dir / FROZEN_ONNX["tile"])
        infos = []
        for path, sess in ((FROZEN_ONNX["stats"], stats), (FROZEN_ONNX["tile"], tile)):
            props = dict(sess.get_modelmeta().custom_metadata_map)
            if KEY_FROZEN_STATS not in props:
                raise InputError(f"onnx: {self.model_dir / path} has no {KEY_FROZEN_STATS}")
            infos.append(json.loads(props[KEY_FROZEN_STATS]))
        if infos[0].get("length") != infos[1].get("length"):
            raise InputError(
                f"{self.model_dir}: {FROZEN_ONNX['stats']} and {FROZEN_ONNX['tile']} disagree on "
                f"the statistics length ({infos[0].get('length')} vs "
                f"{infos[1].get('length')}); re-export both"
            )
        self.length = int(infos[0]["length"])
        self.pooled = bool(infos[0].get("pooled", False))
        stats_inputs = {i.name: i for i in stats.get_inputs()}
        self._stats_in = next(n for n in stats_inputs if n != WEIGHTS_NAME)
        weights = stats_inputs.get(WEIGHTS_NAME)
        self._weights_shape = tuple(int(d) for d in weights.shape) if weights is not None else None
        names = [i.name for i in tile.get_inputs()]
        self._tile_in = next(n for n in names if n != STATS_NAME)
        self._stats, self._tile = stats, tile
        self.name = self._label(tile.get_providers()[0])
        log.info("%s: frozen-stats sessions for %s", self.name, self.model_dir)

    def close(self) -> None:
        self._stats = self._tile = self._plain = None

    def _require_open(self) -> None:
        if self._tile is None:
            raise RuntimeError(f"{self.name} is closed; use it inside a with block")

    def frame_statistics(self, frame_nchw: np.ndarray, stats: str | None = None) -> np.ndarray:
        """Statistics of a padded (1, C, H, W) frame, estimated as ``stats`` (default
        ``self.stats``) says."""
        self._require_open()
        x = np.ascontiguousarray(frame_nchw, dtype=np.float32)
        weights = np.ones(1, dtype=np.float32)  # one frame
        if _resolve(self, stats) == "crops":
            if self.pooled:
                x, weights = crop_batch(x, self.model.size_multiple)
            if self._weights_shape is None and not self._warned:
                self._warned = True
                log.warning(
                    "%s predates %s: frozen statistics from %s (re-export it with "
                    "`cyclesr export onnx --overwrite` for the calibrated crops estimate)",
                    self.model_dir / FROZEN_ONNX["stats"],
                    "calibrated crop weights" if self.pooled else "pooled statistics",
                    "uniformly pooled crops" if self.pooled else "the whole frame",
                )
        feeds = {self._stats_in: x}
        if self._weights_shape is not None:
            crops, blocks = self._weights_shape[0], self._weights_shape[-1]
            feeds[WEIGHTS_NAME] = padded_weights(weights, crops, blocks)
        return self._stats.run(None, feeds)[0]

    def infer_with_stats(self, batch: np.ndarray, stats: np.ndarray) -> np.ndarray:
        self._require_open()
        assert self.length is not None
        feeds = {self._tile_in: batch, STATS_NAME: _check_stats(stats, self.length)}
        return self._tile.run(None, feeds)[0]

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Plain InstanceNorm inference (each sample normalised with its own statistics), e.g.
        for frames that run whole: one pass of ``generator.onnx`` when the folder has it (the
        same network; no statistics pass), else the two graphs per sample."""
        self._require_open()
        plain = self._whole_graph()
        if self._plain is None and plain.is_file():
            self._plain = self._whole_session(plain)
            self._plain_in = self._plain.get_inputs()[0].name
        if self._plain is not None:
            return self._plain.run(None, {self._plain_in: np.ascontiguousarray(batch)})[0]
        return np.concatenate(
            [
                self.infer_with_stats(
                    batch[i : i + 1], self.frame_statistics(batch[i : i + 1], "whole")
                )
                for i in range(batch.shape[0])
            ]
        )

    def _whole_graph(self) -> Path:
        """The graph of frames that run whole (:meth:`infer`)."""
        return self.model_dir / ONNX_FILES["ab"]

    def _whole_session(self, path: Path) -> Any:
        return self._session(path)

    def __repr__(self) -> str:
        state = "open" if self._tile is not None else "closed"
        return f"{type(self).__name__}({str(self.model_dir)!r}, {self.name}, {state})"


class OpenVINOFrozenEngine(OnnxFrozenEngine):
    """:class:`~cyclesr_deploy.engines.frozen.OnnxFrozenEngine` (same arguments, statistics
    estimates and buffer contract) on OpenVINO, FP32: ``generator.stats.onnx`` +
    ``generator.tile.onnx``; frames that run whole at ``whole_precision`` (``fp32``, or the
    precision gate's ``bf16``/``int8``: ``generator.onnx`` with the bf16 hint or
    ``generator.int8.onnx``; the gate measures those whole-frame graphs, not the frozen pair)."""

    def __init__(
        self, model_dir: str | Path, *, whole_precision: str = "fp32", **kwargs: Any
    ) -> None:
        if whole_precision not in ONNX_BY_CPU_PRECISION:
            raise InputError(
                f"whole_precision must be one of {', '.join(ONNX_BY_CPU_PRECISION)}, "
                f"not {whole_precision!r}"
            )
        self.whole_precision = whole_precision
        super().__init__(model_dir, **kwargs)

    def _init_backend(self, providers: str | Sequence[str]) -> None:
        import_openvino()
        self.device = "CPU" if providers in ("cpu", "auto") else str(providers).upper()
        self.requested = [self.device]

    def _label(self, device: str) -> str:
        whole = "" if self.whole_precision == "fp32" else f",whole {self.whole_precision}"
        return f"openvino[{device},frozen-stats{whole}]"

    def _whole_graph(self) -> Path:
        return self.model_dir / ONNX_BY_CPU_PRECISION[self.whole_precision]

    def _whole_session(self, path: Path) -> Any:
        config = compile_config(self.whole_precision, self.threads, "CPU")
        return OvSession(compile_graph(path, self.model_dir, self.device, config), self.device)

    def _session(self, path: Path) -> Any:
        compiled = compile_graph(
            path, self.model_dir, self.device, compile_config("fp32", self.threads, "CPU")
        )
        return OvSession(compiled, self.device)


class TorchFrozenEngine(TorchEngine):
    """:class:`~cyclesr_deploy.engines.TorchEngine` (same arguments and buffer contract) whose
    InstanceNorms are :class:`~cyclesr_deploy.engines.frozen_torch.FrozenInstanceNorm`:
    ``infer`` runs them in mode ``"instance"``, ``infer_with_stats`` in mode ``"frozen"``."""

    def __init__(self, model_dir: str | Path, **kwargs: Any) -> None:
        super().__init__(model_dir, **kwargs)
        self.name = self.name[:-1] + ",frozen-stats]"
        self.stats: StatsEstimate = "auto"
        self._auto: EstimateChoice | None = None
        self._layers: list[Any] = []

    def _load_network(self) -> Any:
        from cyclesr_deploy.engines.frozen_torch import freeze_instance_norms

        net = super()._load_network()
        self._layers = freeze_instance_norms(net)
        if not self._layers:
            raise InputError(
                f"{self.model_dir}: the generator has no InstanceNorm layers; frozen statistics "
                "do not apply (tile it with --tiling naive: it is already exact)"
            )
        return net

    def frame_statistics(self, frame_nchw: np.ndarray, stats: str | None = None) -> np.ndarray:
        """Statistics of a padded (1, C, H, W) frame, estimated as ``stats`` (default
        ``self.stats``) says."""
        from cyclesr_deploy.engines.frozen_torch import compute_statistics

        if self._module is None:
            raise RuntimeError(f"{self.name} is closed; use it inside a with block")
        x = self._t.from_numpy(np.ascontiguousarray(frame_nchw, dtype=np.float32))
        # the frame is already padded to the size multiple: nothing more is padded
        m = self.model.size_multiple
        packed = compute_statistics(self._net, x, _resolve(self, stats), size_multiple=m)
        return packed.cpu().numpy()

    def infer_with_stats(self, batch: np.ndarray, stats: np.ndarray) -> np.ndarray:
        from cyclesr_deploy.engines.frozen_torch import load_packed, packed_length, set_mode

        load_packed(self._layers, _check_stats(stats, packed_length(self._layers)))
        set_mode(self._layers, "frozen")
        try:
            return self.infer(batch)
        finally:
            set_mode(self._layers, "instance")


def _openvino_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("openvino") is not None


def open_frozen_engine(
    model_dir: str | Path,
    backend: Literal["auto", "onnxruntime", "openvino", "torch", "tensorrt"] | str = "auto",
    *,
    precision: str = "auto",
    threads: int | None = None,
    stats: StatsEstimate = "auto",
    frames: Sequence[tuple[int, int]] = (),
    whole_precision: str = "fp32",
) -> Any:
    """A frozen-statistics engine for ``model_dir`` (not entered): ``tensorrt`` needs the two
    TensorRT engines (:mod:`cyclesr_deploy.engines.tensorrt_frozen`; statistics always from the
    whole frame), ``onnxruntime`` and ``openvino`` the two graphs (:func:`frozen_graphs_missing`),
    ``torch`` the weights; ``auto`` prefers OpenVINO (when installed), then ONNX Runtime, on the
    CPU when the graphs exist, else torch.
    ``frames``: the (H, W) sizes to come, which the TensorRT statistics engine must hold.
    ``whole_precision`` (OpenVINO): the precision of frames that run whole (the gate's choice);
    the frozen pair runs FP32.
    InputError when neither can run (the message says how to export the graphs); ONNX Runtime
    and TensorRT run FP32 only."""
    model_dir = Path(model_dir)
    missing = frozen_graphs_missing(model_dir)
    has_weights = (model_dir / WEIGHTS["ab"]).is_file()
    if backend == "tensorrt":
        from cyclesr_deploy.engines.tensorrt_frozen import TensorRTFrozenEngine

        if precision not in ("auto", "fp32"):
            raise InputError("frozen statistics with TensorRT run fp32 only")
        trt_engine = TensorRTFrozenEngine(model_dir, frames=frames)
        trt_engine.selection = "frozen InstanceNorm statistics: TensorRT stats + tile engines"
        return trt_engine
    if backend not in ("auto", "onnxruntime", "openvino", "torch"):
        raise InputError(
            f"--tiling frozen: backend {backend!r} has no frozen-statistics engine; use "
            "tensorrt, onnxruntime, openvino or torch (or --tiling naive)"
        )
    if backend == "auto":
        if missing is None and precision in ("auto", "fp32"):
            backend = "openvino" if _openvino_installed() else "onnxruntime"
        elif has_weights:
            backend = "torch"
        else:
            raise InputError(missing or f"{model_dir}: no frozen-statistics engine for fp16")
    if backend in ("onnxruntime", "openvino"):
        if precision not in ("auto", "fp32"):
            raise InputError(f"frozen statistics with {backend} run fp32 only")
        if backend == "openvino":
            engine: OnnxFrozenEngine | TorchFrozenEngine = OpenVINOFrozenEngine(
                model_dir, providers="cpu", threads=threads, whole_precision=whole_precision
            )
        else:
            engine = OnnxFrozenEngine(model_dir, providers=[CPU_EP], threads=threads)
        engine.selection = (
            f"frozen InstanceNorm statistics: generator.stats/tile.onnx on {engine.name}"
        )
        engine.stats = _check_estimate(stats)  # type: ignore[assignment]
        return engine
    kwargs: dict[str, Any] = {"threads": threads}
    if precision != "auto":
        kwargs["precision"] = precision
    engine = TorchFrozenEngine(model_dir, **kwargs)
    engine.selection = "frozen InstanceNorm statistics: PyTorch generator"
    engine.stats = _check_estimate(stats)  # type: ignore[assignment]
    return engine
