"""Enhance frames from Python: one frame at a time, a stream of them, or inside acquisition.

    from cyclesr_deploy.enhancer import Enhancer
    with Enhancer("models/my-model", backend="auto") as enhancer:
        hr = enhancer(lr)                        # (H, W) -> (H*s, W*s), same dtype
        for hr in enhancer.stream(frames):       # any iterable of frames, lazily
            ...

pycro-manager (``Acquisition(..., image_process_fn=enhancer.image_process_fn)``): the
function receives ``(image, metadata)`` and returns the enhanced ``(image, metadata)``. It
runs in pycro-manager's processing thread, so the engine must tolerate being called from
another thread than the one that created it (ONNX Runtime and PyTorch do; for TensorRT create
the Enhancer in that thread). Its queue is bounded: if enhancement is slower than the camera,
the acquisition waits; use ``cyclesr watch`` on the saved files instead to keep the camera
free.

napari: ``enhancer`` is a plain ``ndarray -> ndarray`` function (2-D frame, or a stack whose
last two axes are Y and X), so it can be used directly as a magicgui/napari function
``def sr(image: ImageData) -> ImageData: return enhancer(image)``.

:class:`FrameProcessor` is the per-frame core shared with ``cyclesr watch``: the same
intensity mapping, tiling and blending as :func:`cyclesr_deploy.pipeline.enhance_files`
(built from the same pieces: ``EnhanceConfig.tiling``, ``plan_tiles``, ``Blender``,
``IntensityMapping``), for one frame at a time instead of a pipelined stack.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np

from cyclesr_deploy.engines.base import Engine, check_batch_shape
from cyclesr_deploy.errors import InputError
from cyclesr_deploy.model import ModelConfig
from cyclesr_deploy.normalization import IntensityMapping
from cyclesr_deploy.pipeline import EnhanceConfig, fit_to_engine
from cyclesr_deploy.tiling import Blender, TilePlan, plan_tiles

__all__ = ["Enhancer", "FrameProcessor"]

_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.float32))


class FrameProcessor:
    """``self(frame)``: one (H, W) uint8/uint16/float32 frame -> the enhanced (H*s, W*s)
    frame of the same dtype, with ``engine`` (already entered). Tile plans and batch buffers
    are cached per frame shape. Not thread-safe: one per thread (or lock around it)."""

    def __init__(self, engine: Engine, model: ModelConfig, cfg: EnhanceConfig | None = None):
        spec = engine.input_spec
        if spec.scale != model.scale:
            raise InputError(
                f"engine {engine.name} upscales x{spec.scale} but the model config says "
                f"x{model.scale}"
            )
        if spec.channels != 1:
            raise InputError(f"the model takes {spec.channels} channels; only 1 is supported")
        self.engine, self.model = engine, model
        self.cfg = fit_to_engine(cfg or EnhanceConfig(), spec)
        self.mapping = IntensityMapping.from_config(model.normalization)
        self._plans: dict[tuple[int, int], tuple[TilePlan, int, np.ndarray, Blender]] = {}

    @property
    def scale(self) -> int:
        return self.model.scale

    def _plan(self, shape: tuple[int, int]) -> tuple[TilePlan, int, np.ndarray, Blender]:
        cached = self._plans.get(shape)
        if cached is None:
            spec = self.engine.input_spec
            plan = plan_tiles(shape, self.cfg.tiling(self.model, shape))
            batch = spec.shape[0] or min(self.cfg.batch, len(plan.tiles))
            check_batch_shape(spec, (batch, 1, *plan.tile_shape), name=f"frame {shape}")
            buf = np.empty((batch, 1, *plan.tile_shape), np.float32)
            cached = self._plans[shape] = (plan, batch, buf, Blender(plan))
        return cached

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        frame = np.asarray(frame)
        if frame.ndim != 2:
            raise InputError(f"a frame must be 2-D (H, W), got shape {frame.shape}")
        if frame.dtype not in _DTYPES:
            raise InputError(f"dtype {frame.dtype} is not supported; use uint8, uint16 or float32")
        if frame.dtype.kind == "f" and not np.isfinite(frame).all():
            raise InputError("the frame contains NaN or infinite values")
        plan, batch, buf, blender = self._plan(frame.shape)
        if self.cfg.normalize == "frame":
            norm = self.model.normalization
            mapping = IntensityMapping.from_frame(frame, norm.pmin, norm.pmax)
        else:
            mapping = self.mapping
        fixed = self.engine.input_spec.shape[0] is not None
        x = frame[None]
        n_tiles = len(plan.tiles)
        blender.start()
        for first in range(0, n_tiles, batch):
            tiles = range(first, min(first + batch, n_tiles))
            for slot, t in enumerate(tiles):
                plan.read_tile(x, t, buf[slot])
                mapping.before(buf[slot], out=buf[slot])
            n = len(tiles)
            if fixed:
                buf[n:] = 0
            y = self.engine.infer(buf if fixed else buf[:n])
            want = (buf.shape[0] if fixed else n, 1, *plan.tile_out_shape)
            if tuple(y.shape) != want:
                raise InputError(
                    f"engine {self.engine.name}: returned shape {tuple(y.shape)}, expected {want}"
                )
            for slot, t in enumerate(tiles):
                blender.add(t, y[slot])  # copied/accumulated at once (y may be reused)
        return mapping.after(blender.result()[0], frame.dtype, inplace=True)


class Enhancer:
    """A model folder opened for enhancing frames in memory.

    ``Enhancer(model_dir, backend="auto", precision="auto", device="auto", tile=512,
    overlap=None, batch=4, normalize="model")``: the engine is opened (and entered) at once;
    ``close()`` (or ``with``) releases it. ``engine=``/``model=`` inject an already created
    engine (not yet entered) and config, e.g. for tests.

    ``enhancer(frame)``: (H, W) -> (H*s, W*s); a stack (..., H, W) is enhanced frame by
    frame. ``enhancer.stream(frames)``: a generator over any iterable of frames.
    ``enhancer.image_process_fn(image, metadata)``: for pycro-manager. Calls are serialized
    by a lock, so one Enhancer may be shared between threads.
    """

    def __init__(
        self,
        model_dir: str | Path | None,
        backend: str = "auto",
        *,
        precision: Literal["auto", "fp32", "fp16"] = "auto",
        device: Literal["auto", "cpu", "cuda"] = "auto",
        tile: int = 512,
        overlap: int | None = None,
        batch: int = 4,
        normalize: Literal["model", "frame"] = "model",
        engine: Engine | None = None,
        model: ModelConfig | None = None,
    ) -> None:
        if model is None:
            if model_dir is None:
                raise InputError("Enhancer: a model folder is required")
            from cyclesr_deploy.model import load_model

            model = load_model(model_dir)
        if engine is None:
            if model_dir is None:
                raise InputError("Enhancer: a model folder is required")
            from cyclesr_deploy.engines import open_engine

            engine = open_engine(
                model_dir,
                backend,  # type: ignore[arg-type]
                precision=precision,
                device=device,
            )
        cfg = EnhanceConfig(tile=tile, overlap=overlap, batch=batch, normalize=normalize)
        if cfg.tile:
            cfg.tiling(model)  # bad tile/overlap: fail before the engine loads
        self.model = model
        self._engine_cm = engine
        self.engine: Engine = engine.__enter__()
        try:
            self._proc = FrameProcessor(self.engine, model, cfg)
        except BaseException:
            engine.__exit__(None, None, None)
            raise
        self._lock = threading.Lock()
        self._closed = False

    @property
    def backend(self) -> str:
        """What runs, e.g. ``onnxruntime[CPUExecutionProvider]``."""
        return self.engine.name

    @property
    def scale(self) -> int:
        return self.model.scale

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        if self._closed:
            raise RuntimeError("Enhancer is closed")
        frame = np.asarray(frame)
        if frame.ndim < 2:
            raise InputError(f"expected a frame (H, W) or a stack (..., H, W), got {frame.shape}")
        with self._lock:
            if frame.ndim == 2:
                return self._proc(frame)
            flat = frame.reshape(-1, *frame.shape[-2:])
            s = self.scale
            out = np.empty((flat.shape[0], flat.shape[1] * s, flat.shape[2] * s), frame.dtype)
            for i, f in enumerate(flat):
                out[i] = self._proc(f)
            return out.reshape(*frame.shape[:-2], *out.shape[-2:])

    def stream(self, frames: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """Enhance ``frames`` lazily, in order (one frame in memory at a time)."""
        for frame in frames:
            yield self(frame)

    def image_process_fn(self, image: np.ndarray, metadata: dict[str, Any]) -> Any:
        """pycro-manager image processor: ``(image, metadata) -> (image, metadata)``; the
        metadata gets the new size (``Width``/``Height`` when present) and ``CycleSR``."""
        out = self(image)
        meta = dict(metadata)
        if "Width" in meta:
            meta["Width"] = int(out.shape[-1])
        if "Height" in meta:
            meta["Height"] = int(out.shape[-2])
        meta["CycleSR"] = f"{self.backend} x{self.scale}"
        return out, meta

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._engine_cm.__exit__(None, None, None)

    def __enter__(self) -> Enhancer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
