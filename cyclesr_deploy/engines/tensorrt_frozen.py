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

from pathlib import Path
from typing import Any

import numpy as np

from cyclesr_deploy.engines.tensorrt_engine import TensorRTEngine
from cyclesr_deploy.errors import InputError
from cyclesr_deploy.model import FROZEN_ONNX, load_model

STATS_INPUT = "stats"  # the tile graph's statistics input (export/frozen_onnx.py)


def _fits(sidecar: Any, frame: tuple[int, int]) -> bool:
    lo, hi = sidecar.profiles[0].min, sidecar.profiles[0].max
    return all(a <= d <= b for a, d, b in zip(lo[2:], frame, hi[2:], strict=True))


def find_frozen_engines(
    model_dir: str | Path, frame: tuple[int, int] | None = None, *, device_id: int = 0
) -> tuple[Path, Path]:
    """(statistics engine, tile engine) paths of ``model_dir`` that fit this machine; the
    statistics engine's profile must hold ``frame`` (padded H, W) when given. InputError with
    the build command when there is none."""
    from cyclesr_deploy.engines.select import find_engine, generator_engines

    model_dir = Path(model_dir)
    hint = f"cyclesr export tensorrt {model_dir} --frozen --precision fp32"
    if frame is not None:
        hint += f" --frame {frame[0]} {frame[1]}"
    try:
        tile = find_engine(model_dir, device_id=device_id, graph=FROZEN_ONNX["tile"]).engine_path
        stats_all = generator_engines(model_dir, FROZEN_ONNX["stats"])
    except InputError as exc:
        raise InputError(f"{exc}; for seam-free tiling build them with: {hint}") from exc
    fitting = [p for p, s in stats_all if frame is None or _fits(s, frame)]
    if not fitting:
        raise InputError(
            f"no TensorRT statistics engine in {model_dir} for {frame} px frames; build it "
            f"with: {hint}"
        )
    stats = find_engine_path_among(model_dir, fitting, device_id)
    return stats, tile


def find_engine_path_among(model_dir: Path, paths: list[Path], device_id: int) -> Path:
    """The newest of ``paths`` whose sidecar fits this machine (EngineMismatchError if none)."""
    from cyclesr_deploy.engines.select import machine_facts
    from cyclesr_deploy.export.trt_config import (
        EngineMismatchError,
        read_sidecar,
        sha256_file,
        sidecar_differences,
        sidecar_path,
    )

    facts = machine_facts(device_id)
    problems = []
    for path in paths:
        sidecar = read_sidecar(sidecar_path(path))
        onnx = model_dir / sidecar.onnx_file
        diffs = sidecar_differences(sidecar, facts, sha256_file(onnx) if onnx.is_file() else None)
        if not diffs:
            return path
        problems.append(f"{path.name}: {'; '.join(diffs)}")
    raise EngineMismatchError(
        "no TensorRT statistics engine fits this machine:\n  - " + "\n  - ".join(problems),
        problems,
    )


class TensorRTFrozenEngine:
    """Two TensorRT engines of ``model_dir`` driving the frozen-statistics two-pass inference.

    Args:
        model_dir: model folder with ``engines/`` holding both engines.
        frame: (H, W) of the frames to come (padded to the size multiple), to pick a
            statistics engine whose profile holds it; None takes the newest.
        device_id, check: as :class:`~cyclesr_deploy.engines.TensorRTEngine`.

    ``input_spec`` is the tile engine's. ``infer`` (plain InstanceNorm) runs each sample's own
    statistics through the statistics engine, so it needs tiles its profile accepts.
    Buffer contract: as :class:`~cyclesr_deploy.engines.TensorRTEngine`.
    """

    def __init__(
        self,
        model_dir: str | Path,
        *,
        frame: tuple[int, int] | None = None,
        device_id: int = 0,
        check: bool = True,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.model = load_model(self.model_dir)
        stats_path, tile_path = find_frozen_engines(self.model_dir, frame, device_id=device_id)
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
            if STATS_INPUT not in shapes:
                raise InputError(
                    f"{self._tile.engine_path.name} has no {STATS_INPUT!r} input (static "
                    f"inputs: {sorted(shapes)}); was it built from {FROZEN_ONNX['tile']}?"
                )
            self._length = int(np.prod(shapes[STATS_INPUT]))
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
            self._tile.set_static_input(STATS_INPUT, stats)
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
