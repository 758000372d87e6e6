"""Seam-free tiling on TensorRT: the frozen-statistics graphs as two TensorRT engines.

:class:`TensorRTFrozenEngine` implements :class:`~cyclesr_deploy.engines.base.FrozenStatsEngine`
with the engines built by :func:`~cyclesr_deploy.export.tensorrt_frozen.frozen_engines_from_onnx`
(``cyclesr export tensorrt MODEL --frozen --frame H W``): ``frame_statistics`` runs the
statistics engine on the whole (padded) frame, ``infer_with_stats`` uploads the packed
statistics once per frame into the tile engine's static input and runs the tiles. Both engines
are :class:`~cyclesr_deploy.engines.tensorrt_engine.TensorRTEngine` instances (sidecar-checked,
cuda-python buffers allocated once).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cyclesr_deploy.engines.frozen_stats import STATS_NAME, WEIGHTS_NAME, padded_weights
from cyclesr_deploy.engines.tensorrt_engine import TensorRTEngine
from cyclesr_deploy.errors import InputError
from cyclesr_deploy.model import FROZEN_ONNX, load_model


def _fits(sidecar: Any, frames: Sequence[tuple[int, int]]) -> bool:
    lo, hi = sidecar.profiles[0].min, sidecar.profiles[0].max
    return all(lo[2] <= h <= hi[2] and lo[3] <= w <= hi[3] for h, w in frames)


def find_frozen_engines(
    model_dir: str | Path, frames: Sequence[tuple[int, int]] = (), *, device_id: int = 0
) -> tuple[Path, Path]:
    """(statistics engine, tile engine) paths of ``model_dir`` that fit this machine; the
    statistics engine's profile must hold every (H, W) of ``frames`` (padded to the model's size
    multiple here). InputError with the build command when there is none."""
    from cyclesr_deploy.engines.tensorrt_load import find_engine

    model_dir = Path(model_dir)
    m = load_model(model_dir).size_multiple
    padded = sorted({(-(-h // m) * m, -(-w // m) * m) for h, w in frames})
    hint = f"cyclesr export tensorrt {model_dir} --frozen --precision fp32"
    if padded:
        hint += f" --frame {max(h for h, _ in padded)} {max(w for _, w in padded)}"
    wanted = f" for {', '.join(f'{h}x{w}' for h, w in padded)} px frames" if padded else ""
    try:
        tile = find_engine(model_dir, device_id=device_id, graph=FROZEN_ONNX["tile"])
        stats = find_engine(
            model_dir,
            device_id=device_id,
            graph=FROZEN_ONNX["stats"],
            accept=lambda sidecar: _fits(sidecar, padded),
        )
    except InputError as exc:
        raise InputError(
            f"no usable TensorRT frozen-statistics engines{wanted} ({exc}); build them with: {hint}"
        ) from exc
    return stats.engine_path, tile.engine_path


class TensorRTFrozenEngine:
    """Two TensorRT engines of ``model_dir`` driving the frozen-statistics two-pass inference.

    Args:
        model_dir: model folder with ``engines/`` holding both engines.
        frames: the (H, W) sizes of the frames to come, to pick a statistics engine whose
            profile holds them all; empty: the newest.
        device_id, check: as :class:`~cyclesr_deploy.engines.TensorRTEngine`.

    ``input_spec`` is the tile engine's. ``infer`` (plain InstanceNorm) runs each sample's own
    statistics through the statistics engine, so it needs tiles its profile accepts.
    Buffer contract: as :class:`~cyclesr_deploy.engines.TensorRTEngine`.
    """

    def __init__(
        self,
        model_dir: str | Path,
        *,
        frames: Sequence[tuple[int, int]] = (),
        device_id: int = 0,
        check: bool = True,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.model = load_model(self.model_dir)
        stats_path, tile_path = find_frozen_engines(self.model_dir, frames, device_id=device_id)
        self._stats = TensorRTEngine(stats_path, device_id=device_id, check=check)
        self._tile = TensorRTEngine(tile_path, device_id=device_id, check=check)
        self.precision = self._tile.precision
        self.name = f"tensorrt[{self.precision},frozen-stats]"
        self.input_spec = self._tile.input_spec
        self._uploaded: np.ndarray | None = None

    def __enter__(self) -> TensorRTFrozenEngine:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> None:
        try:
            self._stats.open()
            self._tile.open()
            shapes = self._tile.static_inputs()
            if STATS_NAME not in shapes:
                raise InputError(
                    f"{self._tile.engine_path.name} has no {STATS_NAME!r} input (static "
                    f"inputs: {sorted(shapes)}); was it built from {FROZEN_ONNX['tile']}?"
                )
            self._length = int(np.prod(shapes[STATS_NAME]))
            stats_static = self._stats.static_inputs()
            if WEIGHTS_NAME in stats_static:
                # statistics of one whole frame: its pooling weight is 1 (the rest unused)
                shape = stats_static[WEIGHTS_NAME]
                blocks = int(shape[-1]) if len(shape) == 3 else 1
                weights = padded_weights(np.ones(1), int(shape[0]), blocks)
                self._stats.set_static_input(WEIGHTS_NAME, weights)
        except BaseException:
            self.close()
            raise
        self.input_spec = self._tile.input_spec
        self._uploaded = None

    def close(self) -> None:
        self._tile.close()
        self._stats.close()
        self._uploaded = None

    selection: Any = None

    def frame_statistics(self, frame_nchw: np.ndarray) -> np.ndarray:
        """(1, C, H, W) padded frame -> packed statistics (L,) float32 (a copy), always from
        the whole frame (the statistics engine is built for the acquisition's frame size)."""
        stats = np.array(self._stats.infer(np.ascontiguousarray(frame_nchw, np.float32)))
        return stats.reshape(-1)

    def infer_with_stats(self, batch: np.ndarray, stats: np.ndarray) -> np.ndarray:
        """Tiles with every InstanceNorm frozen at ``stats``; uploaded only when they change
        (once per frame)."""
        stats = np.asarray(stats, dtype=np.float32).reshape(-1)
        if stats.size != getattr(self, "_length", stats.size):
            raise InputError(
                f"statistics vector of {stats.size} values; the tile engine takes {self._length}"
            )
        if self._uploaded is None or not np.array_equal(stats, self._uploaded):
            self._tile.set_static_input(STATS_NAME, stats)
            self._uploaded = stats.copy()
        return self._tile.infer(batch)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Per-sample InstanceNorm (each tile normalised by its own statistics)."""
        outs = [
            self.infer_with_stats(sample[None], self.frame_statistics(sample[None])).copy()
            for sample in batch
        ]
        return np.concatenate(outs)

    def __repr__(self) -> str:
        return f"TensorRTFrozenEngine({str(self.model_dir)!r}, {self.name})"
