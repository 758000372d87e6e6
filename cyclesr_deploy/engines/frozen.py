"""Engines with frozen frame-level InstanceNorm statistics (seam-free tiling).

Both implement :class:`~cyclesr_deploy.engines.base.FrozenStatsEngine`: the pipeline computes
the statistics of each whole (normalized, size-multiple padded) frame once with
``frame_statistics`` and runs every tile batch of that frame with ``infer_with_stats``. With a
halo >= the receptive-field half-width the tiled output then equals whole-frame inference up to
float rounding (:mod:`cyclesr_deploy.frozen_norm`).

* :class:`OnnxFrozenEngine`: two ONNX Runtime sessions, ``generator.stats.onnx`` (frame ->
  stats) and ``generator.tile.onnx`` (tiles, stats -> output), written by
  :mod:`cyclesr_deploy.export.frozen_onnx`; FP32.
* :class:`TorchFrozenEngine`: :class:`~cyclesr_deploy.engines.torch_engine.TorchEngine` with its
  InstanceNorms swapped for :class:`~cyclesr_deploy.frozen_norm.FrozenInstanceNorm`.

``infer`` (no statistics given) is plain InstanceNorm inference, sample by sample, so both are
complete engines for whole-frame runs too. :func:`open_frozen_engine` picks one for a backend.

Memory: the statistics pass runs the generator on the whole frame once (no output kept for ONNX
Runtime beyond the stats vector; PyTorch computes the full forward pass).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from cyclesr_deploy.engines.base import TensorSpec
from cyclesr_deploy.engines.onnxruntime_engine import CPU_EP, resolve_providers
from cyclesr_deploy.engines.torch_engine import TorchEngine
from cyclesr_deploy.errors import InputError, require
from cyclesr_deploy.model import WEIGHTS, load_model

__all__ = [
    "STATS_FILE",
    "TILE_FILE",
    "OnnxFrozenEngine",
    "TorchFrozenEngine",
    "frozen_graphs_missing",
    "open_frozen_engine",
]

log = logging.getLogger(__name__)

# the names of cyclesr_deploy.export.frozen_onnx (not imported: it imports torch and onnx)
STATS_FILE = "generator.stats.onnx"
TILE_FILE = "generator.tile.onnx"
_KEY_FROZEN_STATS = "cyclesr.frozen_stats"
EXPORT_HINT = (
    'python -c "from cyclesr_deploy.export.frozen_onnx import stats_onnx_from_checkpoint, '
    "tile_onnx_from_checkpoint as t; stats_onnx_from_checkpoint('{d}'); t('{d}')\""
)


def frozen_graphs_missing(model_dir: str | Path) -> str | None:
    """None when ``model_dir`` has both frozen-statistics graphs, else a message saying how to
    export them."""
    model_dir = Path(model_dir)
    missing = [f for f in (STATS_FILE, TILE_FILE) if not (model_dir / f).is_file()]
    if not missing:
        return None
    return (
        f"{model_dir} has no {' / '.join(missing)} (the frozen InstanceNorm graphs); export them "
        f"with: {EXPORT_HINT.format(d=model_dir)}"
    )


def _check_stats(stats: np.ndarray, length: int) -> np.ndarray:
    stats = np.ascontiguousarray(stats, dtype=np.float32).reshape(-1)
    if stats.shape != (length,):
        raise InputError(f"frozen stats: {stats.shape[0]} values, the generator needs {length}")
    return stats


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
        self.ort = require("onnxruntime", "cpu", "ONNX Runtime inference (or the 'gpu' extra)")
        self.requested = resolve_providers(providers, list(self.ort.get_available_providers()))
        self.threads = threads
        self.input_spec = TensorSpec(
            name="input",
            shape=(None, self.model.generator.in_channels, None, None),
            dtype=np.dtype(np.float32),
            size_multiple=self.model.size_multiple,
            scale=self.model.scale,
        )
        self.name = f"onnxruntime[{self.requested[0]},frozen-stats]"
        self.length: int | None = None
        self._stats: Any = None
        self._tile: Any = None

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
        try:
            return ort.InferenceSession(str(path), sess_options=so, providers=self.requested)
        except Exception as exc:  # onnxruntime's own exception types
            raise InputError(f"onnx: ONNX Runtime cannot load {path} ({exc})") from exc

    def open(self) -> None:
        """Create both sessions (idempotent) and check that their statistics layouts agree."""
        if self._tile is not None:
            return
        stats = self._session(self.model_dir / STATS_FILE)
        tile = self._session(self.model_dir / TILE_FILE)
        infos = []
        for path, sess in ((STATS_FILE, stats), (TILE_FILE, tile)):
            props = dict(sess.get_modelmeta().custom_metadata_map)
            if _KEY_FROZEN_STATS not in props:
                raise InputError(f"onnx: {self.model_dir / path} has no {_KEY_FROZEN_STATS}")
            infos.append(json.loads(props[_KEY_FROZEN_STATS]))
        if infos[0].get("length") != infos[1].get("length"):
            raise InputError(
                f"{self.model_dir}: {STATS_FILE} and {TILE_FILE} disagree on the statistics "
                f"length ({infos[0].get('length')} vs {infos[1].get('length')}); re-export both"
            )
        self.length = int(infos[0]["length"])
        self._stats_in = stats.get_inputs()[0].name
        names = [i.name for i in tile.get_inputs()]
        self._tile_in = next(n for n in names if n != "stats")
        self._stats, self._tile = stats, tile
        self.name = f"onnxruntime[{tile.get_providers()[0]},frozen-stats]"
        log.info("ONNX Runtime frozen-stats sessions for %s", self.model_dir)

    def close(self) -> None:
        self._stats = self._tile = None

    def _require_open(self) -> None:
        if self._tile is None:
            raise RuntimeError(f"{self.name} is closed; use it inside a with block")

    def frame_statistics(self, frame_nchw: np.ndarray) -> np.ndarray:
        self._require_open()
        x = np.ascontiguousarray(frame_nchw, dtype=np.float32)
        return self._stats.run(None, {self._stats_in: x})[0]

    def infer_with_stats(self, batch: np.ndarray, stats: np.ndarray) -> np.ndarray:
        self._require_open()
        assert self.length is not None
        feeds = {self._tile_in: batch, "stats": _check_stats(stats, self.length)}
        return self._tile.run(None, feeds)[0]

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Per-sample InstanceNorm inference (each tile normalised with its own statistics)."""
        return np.concatenate(
            [
                self.infer_with_stats(batch[i : i + 1], self.frame_statistics(batch[i : i + 1]))
                for i in range(batch.shape[0])
            ]
        )

    def __repr__(self) -> str:
        state = "open" if self._tile is not None else "closed"
        return f"OnnxFrozenEngine({str(self.model_dir)!r}, {self.name}, {state})"


class TorchFrozenEngine(TorchEngine):
    """:class:`~cyclesr_deploy.engines.TorchEngine` (same arguments and buffer contract) whose
    InstanceNorms are :class:`~cyclesr_deploy.frozen_norm.FrozenInstanceNorm`: ``infer`` runs
    them in mode ``"instance"``, ``infer_with_stats`` in mode ``"frozen"``."""

    def __init__(self, model_dir: str | Path, **kwargs: Any) -> None:
        super().__init__(model_dir, **kwargs)
        self.name = self.name[:-1] + ",frozen-stats]"
        self._layers: list[Any] = []

    def _load_network(self) -> Any:
        from cyclesr_deploy.frozen_norm import freeze_instance_norms

        net = super()._load_network()
        self._layers = freeze_instance_norms(net)
        if not self._layers:
            raise InputError(
                f"{self.model_dir}: the generator has no InstanceNorm layers; frozen statistics "
                "do not apply (tile it with --tiling naive: it is already exact)"
            )
        return net

    def frame_statistics(self, frame_nchw: np.ndarray) -> np.ndarray:
        from cyclesr_deploy.frozen_norm import compute_statistics

        if self._module is None:
            raise RuntimeError(f"{self.name} is closed; use it inside a with block")
        x = self._t.from_numpy(np.ascontiguousarray(frame_nchw, dtype=np.float32))
        # the frame is already padded; compute_statistics pads nothing more
        packed = compute_statistics(self._net, x, "whole", size_multiple=1)
        return packed.cpu().numpy()

    def infer_with_stats(self, batch: np.ndarray, stats: np.ndarray) -> np.ndarray:
        from cyclesr_deploy.frozen_norm import load_packed, packed_length, set_mode

        load_packed(self._layers, _check_stats(stats, packed_length(self._layers)))
        set_mode(self._layers, "frozen")
        try:
            return self.infer(batch)
        finally:
            set_mode(self._layers, "instance")


def open_frozen_engine(
    model_dir: str | Path,
    backend: Literal["auto", "onnxruntime", "torch"] | str = "auto",
    *,
    precision: str = "auto",
    threads: int | None = None,
) -> OnnxFrozenEngine | TorchFrozenEngine:
    """A frozen-statistics engine for ``model_dir`` (not entered): ``onnxruntime`` needs the two
    graphs (:func:`frozen_graphs_missing`), ``torch`` the weights; ``auto`` prefers ONNX Runtime
    on the CPU when the graphs exist, else torch. InputError when neither can run (the message
    says how to export the graphs); ONNX Runtime runs FP32 only."""
    model_dir = Path(model_dir)
    missing = frozen_graphs_missing(model_dir)
    has_weights = (model_dir / WEIGHTS["ab"]).is_file()
    if backend not in ("auto", "onnxruntime", "torch"):
        raise InputError(
            f"--tiling frozen: backend {backend!r} has no frozen-statistics engine; use "
            "onnxruntime or torch (or --tiling naive)"
        )
    if backend == "auto":
        if missing is None and precision in ("auto", "fp32"):
            backend = "onnxruntime"
        elif has_weights:
            backend = "torch"
        else:
            raise InputError(missing or f"{model_dir}: no frozen-statistics engine for fp16")
    if backend == "onnxruntime":
        if precision not in ("auto", "fp32"):
            raise InputError("frozen statistics with ONNX Runtime run fp32 only")
        engine: OnnxFrozenEngine | TorchFrozenEngine = OnnxFrozenEngine(
            model_dir, providers=[CPU_EP], threads=threads
        )
        engine.selection = "frozen InstanceNorm statistics: generator.stats/tile.onnx"
        return engine
    kwargs: dict[str, Any] = {"threads": threads}
    if precision != "auto":
        kwargs["precision"] = precision
    engine = TorchFrozenEngine(model_dir, **kwargs)
    engine.selection = "frozen InstanceNorm statistics: PyTorch generator"
    return engine
