"""Enhance frames from Python: one frame at a time, a stream of them, or inside acquisition.

    from cyclesr_deploy.runtime.enhancer import Enhancer
    with Enhancer("models/my-model", backend="auto") as enhancer:
        hr = enhancer(lr)                        # (H, W) -> (H*s, W*s), same dtype
        for hr in enhancer.stream(frames):       # any iterable of frames, lazily
            ...

pycro-manager (``Acquisition(..., image_process_fn=enhancer.image_process_fn)``): the
function receives ``(image, metadata)`` and returns the enhanced ``(image, metadata)``. It
runs in pycro-manager's processing thread, so the engine must tolerate being called from
another thread than the one that created it (ONNX Runtime and PyTorch do; for TensorRT create
the Enhancer in that thread). It enhances in the acquisition thread: if enhancement is slower
than the camera, the acquisition waits. To keep the camera free, use
:class:`~cyclesr_deploy.runtime.acquisition.AcquisitionHook` (a bounded queue served by a
worker thread, enhanced stacks written to disk) or ``cyclesr watch`` on the saved files.

napari: ``enhancer`` is a plain ``ndarray -> ndarray`` function (2-D frame, or a stack whose
last two axes are Y and X), so it can be used directly as a magicgui/napari function
``def sr(image: ImageData) -> ImageData: return enhancer(image)``.

Frames go through :class:`~cyclesr_deploy.runtime.runner.FrameRunner`, the one frame runner of
``cyclesr enhance`` and ``cyclesr watch``: the same settings give bit-identical output.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from cyclesr_deploy.engines.base import Engine
from cyclesr_deploy.errors import InputError
from cyclesr_deploy.model import ModelConfig
from cyclesr_deploy.runtime.runner import WHOLE_MAX_PX, EnhanceConfig, FrameRunner

if TYPE_CHECKING:
    from cyclesr_deploy.trust import FrameTrust

__all__ = ["Enhancer", "open_model"]


def open_model(
    model_dir: str | Path | None,
    backend: str,
    cfg: EnhanceConfig,
    *,
    precision: str = "default",
    device: str = "auto",
    engine: Engine | None = None,
) -> tuple[Engine, ModelConfig]:
    """The engine (not entered yet; ``engine`` when given) and config of ``model_dir`` (a
    model folder, a built-in name, None: the default model) for frames enhanced with ``cfg``,
    as every in-memory door opens them (:class:`Enhancer`, the acquisition hook, napari). A
    bad tile/overlap fails before the engine loads."""
    from cyclesr_deploy.builtin import resolve_model
    from cyclesr_deploy.model import load_model

    folder = resolve_model(model_dir)
    model = load_model(folder)
    if cfg.tile:
        cfg.tiling(model)
    if engine is None:
        from cyclesr_deploy.engines import open_engine

        engine = open_engine(
            folder,
            backend,  # type: ignore[arg-type]
            precision=precision,  # type: ignore[arg-type]
            device=device,  # type: ignore[arg-type]
            tiling=cfg.engine_tiling,
            stats=cfg.stats,
        )
    return engine, model


class Enhancer:
    """A model folder opened for enhancing frames in memory.

    ``Enhancer(model_dir, backend="auto", precision="default", device="auto", tile="auto",
    overlap=None, batch=4, normalize="model", tiling="auto", stats="auto",
    whole_max_px=2048*2048)``: ``model_dir`` is a model folder or a built-in model name (None:
    the default built-in model), the other settings are those of ``cyclesr enhance``; the
    engine is opened (and entered) at once; ``close()`` (or ``with``) releases it.
    ``engine=``/``model=`` inject an already created engine (not yet entered) and
    config, e.g. for tests. ``trust``: score frames against the model's trust calibration;
    :meth:`run` returns a call's output with its trust (per frame for a stack);
    :attr:`last_trusts` (per frame of the last call), :attr:`last_trust` (its last frame) and
    :attr:`trusted` (all of them trusted) tell about the last call.

    ``enhancer(frame)``: (H, W) -> (H*s, W*s); a stack (..., H, W) is enhanced frame by
    frame. ``enhancer.stream(frames)``: a generator over any iterable of frames.
    ``enhancer.image_process_fn(image, metadata)``: for pycro-manager. Calls are serialized
    by a lock, so one Enhancer may be shared between threads.
    """

    def __init__(
        self,
        model_dir: str | Path | None = None,
        backend: str = "auto",
        *,
        precision: Literal["default", "auto", "fp32", "fp16", "bf16", "int8"] = "default",
        device: Literal["auto", "cpu", "cuda"] = "auto",
        tile: int | Literal["auto"] = "auto",
        overlap: int | None = None,
        batch: int = 4,
        normalize: Literal["model", "frame"] = "model",
        tiling: Literal["auto", "frozen", "naive"] = "auto",
        stats: Literal["auto", "crops", "whole"] = "auto",
        whole_max_px: int = WHOLE_MAX_PX,
        trust: bool = True,
        engine: Engine | None = None,
        model: ModelConfig | None = None,
    ) -> None:
        cfg = EnhanceConfig(
            tile=tile,
            overlap=overlap,
            batch=batch,
            normalize=normalize,
            tiling_mode=tiling,
            stats=stats,
            whole_max_px=whole_max_px,
            trust=trust,
        )
        if model is None or engine is None:
            engine, loaded = open_model(
                model_dir, backend, cfg, precision=precision, device=device, engine=engine
            )
            model = model or loaded
        self.model = model
        self._engine_cm = engine
        self.engine: Engine = engine.__enter__()
        try:
            self.runner = FrameRunner(self.engine, model, cfg)
        except BaseException:
            engine.__exit__(None, None, None)
            raise
        self._lock = threading.Lock()
        self._closed = False
        self.last_trusts: list[FrameTrust | None] = []  # per frame, of the last call

    @property
    def last_trust(self) -> FrameTrust | None:
        """The trust of the last frame enhanced (of a stack: its last frame)."""
        return self.last_trusts[-1] if self.last_trusts else None

    @property
    def trusted(self) -> bool | None:
        """Whether every frame of the last call is trusted (None: no score, the model has no
        trust calibration or ``trust=False``); per frame: :attr:`last_trusts`."""
        scored = [t for t in self.last_trusts if t is not None]
        return all(t.trusted for t in scored) if scored else None

    @property
    def backend(self) -> str:
        """What runs, e.g. ``onnxruntime[CPUExecutionProvider]``."""
        return self.engine.name

    @property
    def scale(self) -> int:
        return self.model.scale

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        return self.run(frame)[0]

    def run(self, frame: np.ndarray) -> tuple[np.ndarray, Any]:
        """``(enhanced, trust)`` of one call, both taken under the lock (safe where one
        Enhancer is shared between threads, unlike reading :attr:`last_trust` afterwards):
        ``trust`` is the frame's :class:`~cyclesr_deploy.trust.FrameTrust` (or None), for a
        stack a list with one per frame (C order)."""
        frame = np.asarray(frame)
        if frame.ndim < 2:
            raise InputError(f"expected a frame (H, W) or a stack (..., H, W), got {frame.shape}")
        if frame.dtype.kind == "f" and not np.isfinite(frame).all():
            raise InputError("the frame contains NaN or infinite values")
        with self._lock:
            if self._closed:
                raise RuntimeError("Enhancer is closed")
            if frame.ndim == 2:
                y, trust = self.runner.run(frame)
                self.last_trusts = [trust]
                return y, trust
            flat = frame.reshape(-1, *frame.shape[-2:])
            s = self.scale
            out = np.empty((flat.shape[0], flat.shape[1] * s, flat.shape[2] * s), frame.dtype)
            trusts: list[FrameTrust | None] = []
            for i, f in enumerate(flat):
                out[i], t = self.runner.run(f, i)
                trusts.append(t)
            self.last_trusts = trusts
            return out.reshape(*frame.shape[:-2], *out.shape[-2:]), list(trusts)

    def stream(self, frames: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """Enhance ``frames`` lazily, in order (one frame in memory at a time)."""
        for frame in frames:
            yield self(frame)

    def image_process_fn(self, image: np.ndarray, metadata: dict[str, Any]) -> Any:
        """pycro-manager image processor: ``(image, metadata) -> (image, metadata)``; the
        metadata gets the new size (``Width``/``Height`` when present) and ``CycleSR``."""
        out, trust = self.run(image)
        meta = dict(metadata)
        if "Width" in meta:
            meta["Width"] = int(out.shape[-1])
        if "Height" in meta:
            meta["Height"] = int(out.shape[-2])
        meta["CycleSR"] = f"{self.backend} x{self.scale}"
        if isinstance(trust, list):  # a stack: one record per frame
            meta["CycleSRTrust"] = [t.record() if t is not None else None for t in trust]
        elif trust is not None:
            meta["CycleSRTrust"] = trust.record()
        return out, meta

    def close(self) -> None:
        with self._lock:  # never while another thread is in a call
            if not self._closed:
                self._closed = True
                self._engine_cm.__exit__(None, None, None)

    def __enter__(self) -> Enhancer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
