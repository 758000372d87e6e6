"""TensorRT engines of the two frozen-statistics graphs (seam-free tiling on TensorRT).

``generator.tile.onnx`` (tiles + packed statistics -> output) is built like the generator's own
engine (the same tile/batch profile; the statistics vector is an input of static shape), and
``generator.stats.onnx`` (one whole frame -> statistics) with a batch-1 profile covering the
acquisition's frame size, since it always sees whole frames. Both use
:func:`~cyclesr_deploy.export.tensorrt_build.engine_from_onnx` (sidecar, cache key, timing
cache, lock, reuse). FP32 only: the graphs are exported in FP32, and a strongly typed TensorRT
network keeps the ONNX's types.
"""

from __future__ import annotations

from pathlib import Path

from cyclesr_deploy.engines.trt_config import TensorRTBuildConfig
from cyclesr_deploy.errors import InputError
from cyclesr_deploy.export.tensorrt_build import EngineBuild, ProgressCallback, engine_from_onnx
from cyclesr_deploy.model import FROZEN_ONNX, load_model


def stats_build_config(
    cfg: TensorRTBuildConfig, frame: tuple[int, int], size_multiple: int
) -> TensorRTBuildConfig:
    """The statistics engine's config: batch 1, a profile whose H and W span the frame's
    padded sides (``frame`` rounded up to ``size_multiple``); static when the frame is square."""
    if len(frame) != 2 or min(int(d) for d in frame) < 1:
        raise InputError(f"frame {tuple(frame)}: give (height, width) in px, both >= 1")
    h, w = (-(-int(d) // size_multiple) * size_multiple for d in frame)
    lo, hi = min(h, w), max(h, w)
    return TensorRTBuildConfig.model_validate(
        {
            **cfg.model_dump(),
            "tile": hi,
            "batch": 1,
            "dynamic": lo != hi,
            "min_tile": lo if lo != hi else None,
            "max_tile": hi if lo != hi else None,
        }
    )


def frozen_engines_from_onnx(
    model_dir: str | Path,
    frame: tuple[int, int],
    build_cfg: TensorRTBuildConfig | None = None,
    *,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
    device: int = 0,
) -> tuple[EngineBuild, EngineBuild]:
    """Build (or find) the statistics engine for ``frame`` = (H, W) input px and the tile
    engine for ``build_cfg``'s tile and batch; returns (stats, tile) builds. InputError when
    the graphs are missing (with the command that exports them) or FP16 is asked for."""
    model_dir = Path(model_dir)
    cfg = build_cfg or TensorRTBuildConfig(precision="fp32")
    if cfg.precision != "fp32":
        raise InputError(
            "frozen-statistics TensorRT engines are FP32 (the statistics and tile graphs are "
            "exported in FP32); use --precision fp32"
        )
    missing = [f for f in FROZEN_ONNX.values() if not (model_dir / f).is_file()]
    if missing:
        raise InputError(
            f"{model_dir}: {', '.join(missing)} missing; export them first "
            f"(cyclesr export onnx {model_dir} --overwrite)"
        )
    model = load_model(model_dir)
    stats_cfg = stats_build_config(cfg, frame, model.size_multiple)
    kw = {"overwrite": overwrite, "progress": progress, "device": device}
    stats = engine_from_onnx(model_dir, stats_cfg, onnx_path=model_dir / FROZEN_ONNX["stats"], **kw)
    tile = engine_from_onnx(model_dir, cfg, onnx_path=model_dir / FROZEN_ONNX["tile"], **kw)
    return stats, tile
