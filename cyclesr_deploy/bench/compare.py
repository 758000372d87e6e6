"""Backend parity on the same model and frames (``cyclesr bench compare``).

Every available backend x precision (ONNX Runtime, PyTorch, TensorRT; FP32 and FP16) runs the
generator on the same whole frames (model units, ``[-1, 1]``); for every pair of engines that
opened, per frame :func:`~cyclesr_deploy.export.parity.compare_outputs` gives max / mean abs
error and PSNR (data range 2), and the share of output pixels whose abs difference exceeds
``tolerance`` is counted. Pairs report the worst frame (max of max abs, min of PSNR) and the
share over all pixels.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cyclesr_deploy.bench import SCHEMA_VERSION, fmt, machine, markdown_table, software
from cyclesr_deploy.errors import InputError, MissingExtraError
from cyclesr_deploy.model import ModelConfig, load_model

BACKENDS = ("onnxruntime", "torch", "tensorrt")
PRECISIONS = ("fp32", "fp16")


def frames_from_dir(folder: str | Path, model: ModelConfig, limit: int | None = None) -> list[Any]:
    """2-D planes of the TIFFs in ``folder`` as ParityInputs (1 x C x H x W, model units via
    the model's intensity mapping), cropped to the model's size multiple."""
    from cyclesr_deploy.export.parity import ParityInput
    from cyclesr_deploy.images import read_tiff
    from cyclesr_deploy.normalization import IntensityMapping

    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"--frames {folder}: not a folder")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".tif", ".tiff"))
    if not files:
        raise InputError(f"--frames {folder}: no .tif/.tiff files")
    mapping = IntensityMapping.from_config(model.normalization)
    m, c = model.size_multiple, model.generator.in_channels
    out = []
    for path in files:
        data = np.asarray(read_tiff(path).data)
        planes = data.reshape(-1, *data.shape[-2:])
        for k, plane in enumerate(planes):
            h, w = plane.shape[0] // m * m, plane.shape[1] // m * m
            if h < m or w < m:
                raise InputError(f"--frames {path}: {plane.shape} is smaller than {m} px")
            x = mapping.before(plane[:h, :w].astype(np.float32))
            data4 = np.repeat(x[None, None], c, axis=1).astype(np.float32)
            name = path.name if len(planes) == 1 else f"{path.name}[{k}]"
            out.append(ParityInput(name, "synthetic", data4))
            if limit is not None and len(out) >= limit:
                return out
    return out


def run_compare(
    model_dir: str | Path,
    *,
    frames_dir: str | Path | None = None,
    synthetic: int = 2,
    size: int = 256,
    tolerance: float = 1e-2,
    backends: tuple[str, ...] = BACKENDS,
    precisions: tuple[str, ...] = PRECISIONS,
    device: str = "auto",
    on_progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run every backend x precision on the same frames and compare every pair.

    Returns ``{schema_version, kind: "compare", machine, software, settings, frames, engines,
    pairs}``: ``engines`` one entry per backend x precision (``status`` ``"ok"`` with the
    engine's ``name``, or ``"unavailable"`` with the ``reason``); ``pairs`` one entry per pair
    of engines that ran (``a``, ``b``, ``max_abs``, ``mean_abs``, ``psnr_db``,
    ``share_beyond_tolerance``, ``tolerance``, ``frames``).
    """
    from cyclesr_deploy.engines import open_engine
    from cyclesr_deploy.export.parity import compare_outputs, synthetic_inputs

    say = on_progress or (lambda _msg: None)
    if not tolerance > 0:
        raise InputError(f"--tolerance must be > 0, got {tolerance}")
    model_dir = Path(model_dir)
    model = load_model(model_dir)
    if frames_dir is not None:
        inputs = frames_from_dir(frames_dir, model)
        source = str(frames_dir)
    else:
        if synthetic < 1:
            raise InputError(f"--synthetic must be >= 1, got {synthetic}")
        m = model.size_multiple
        side = max(m, -(-size // m) * m)
        inputs = synthetic_inputs(model, [(side, side)] * synthetic)
        source = f"synthetic {synthetic} x {side}x{side}"
    engines: list[dict[str, Any]] = []
    outputs: dict[str, list[np.ndarray]] = {}
    for backend in backends:
        for precision in precisions:
            key = f"{backend}/{precision}"
            try:
                engine = open_engine(
                    model_dir,
                    backend,  # type: ignore[arg-type]
                    precision=precision,  # type: ignore[arg-type]
                    device=device,  # type: ignore[arg-type]
                )
                ctx = engine.__enter__()
            except (InputError, MissingExtraError, RuntimeError, OSError) as exc:
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                engines.append(
                    {"key": key, "backend": backend, "precision": precision,
                     "status": "unavailable", "reason": reason}
                )  # fmt: skip
                say(f"{key}: unavailable ({reason})")
                continue
            try:
                say(f"{key}: {ctx.name}")
                outputs[key] = [np.array(ctx.infer(item.data), copy=True) for item in inputs]
                engines.append(
                    {"key": key, "backend": backend, "precision": precision,
                     "status": "ok", "engine": ctx.name}
                )  # fmt: skip
            finally:
                with contextlib.suppress(Exception):
                    ctx.__exit__(None, None, None)
    pairs = []
    for a, b in itertools.combinations(outputs, 2):
        cases = [
            compare_outputs(item, ra, rb)
            for item, ra, rb in zip(inputs, outputs[a], outputs[b], strict=True)
        ]
        beyond = sum(
            int(np.count_nonzero(np.abs(ra.astype(np.float64) - rb) > tolerance))
            for ra, rb in zip(outputs[a], outputs[b], strict=True)
        )
        total = sum(int(r.size) for r in outputs[a])
        pairs.append(
            {
                "a": a,
                "b": b,
                "max_abs": max(c.max_abs for c in cases),
                "mean_abs": float(np.mean([c.mean_abs for c in cases])),
                "psnr_db": min(c.psnr_db for c in cases),
                "share_beyond_tolerance": beyond / total if total else 0.0,
                "tolerance": tolerance,
                "frames": len(cases),
            }
        )
    if not outputs:
        raise InputError("no backend could be opened: " + "; ".join(
            f"{e['key']}: {e['reason']}" for e in engines))  # fmt: skip
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": "compare",
        "machine": machine(),
        "software": software(),
        "settings": {
            "model_dir": str(model_dir),
            "frames": source,
            "tolerance": tolerance,
            "device": device,
            "backends": list(backends),
            "precisions": list(precisions),
        },
        "frames": [{"name": i.name, "shape": list(i.data.shape)} for i in inputs],
        "engines": engines,
        "pairs": pairs,
    }


COMPARE_COLUMNS = ["a", "b", "max abs", "mean abs", "PSNR dB (worst)", "share > tol"]


def compare_rows(result: dict[str, Any]) -> list[list[str]]:
    return [
        [
            p["a"],
            p["b"],
            fmt(p["max_abs"]),
            fmt(p["mean_abs"]),
            fmt(p["psnr_db"], 4),
            f"{100 * p['share_beyond_tolerance']:.3g} %",
        ]
        for p in result["pairs"]
    ]


def compare_markdown(result: dict[str, Any]) -> str:
    s = result["settings"]
    head = (
        f"Frames: {s['frames']}; tolerance {s['tolerance']:g} (output units, range [-1, 1]); "
        f"machine: {result['machine']['cpu']}.\n\n"
    )
    engines = "".join(
        f"\n- {e['key']}: {e.get('engine') or 'unavailable: ' + e['reason']}"
        for e in result["engines"]
    )
    body = (
        markdown_table(COMPARE_COLUMNS, compare_rows(result))
        if result["pairs"]
        else ("Only one engine ran: no pair to compare.\n")
    )
    return head + body + "\nEngines:" + engines + "\n"
