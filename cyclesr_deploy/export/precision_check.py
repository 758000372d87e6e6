"""``cyclesr export precision``: write and check the reduced CPU precisions of a model folder.

* ``int8``: post-training quantization of ``generator.onnx`` with NNCF (``nncf.quantize``, QDQ
  ONNX) on a calibration set of synthetic LR tiles from the project's generator (seeds apart
  from the test frames), written to ``generator.int8.onnx`` and recorded in ``export.json``;
* ``bf16``: no file, OpenVINO's inference-precision hint on ``generator.onnx`` (measured only on
  a CPU with avx512_bf16/AMX; elsewhere skipped with the reason).

Each precision is then run by the OpenVINO engine next to FP32 on the synthetic test set (LR
frames and their HR acquisitions, in the model's units): PSNR and max-abs error of its output
against FP32's, PSNR and SSIM of both against the HR ground truth (output range [-1, 1]), and
the median time of a whole ``time_size``^2 frame (FP32 and the precision in interleaved rounds).
The figures go into ``export.json`` -> ``precisions`` (a
:class:`~cyclesr_deploy.engines.precision.PrecisionRecord` each), which ``precision="auto"``
reads at run time (:func:`~cyclesr_deploy.engines.precision.choose_precision`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cyclesr_deploy.engines.precision import (
    ONNX_BY_CPU_PRECISION,
    REDUCED,
    PrecisionRecord,
    cpu_cannot_run,
    record_key,
)
from cyclesr_deploy.errors import InputError, require
from cyclesr_deploy.export.parity import _in_model_units
from cyclesr_deploy.export.report import ExportReport, artifact_entry, utc_now, write_export_report
from cyclesr_deploy.model import ONNX_FILES, ModelConfig, ModelFolder, load_model

log = logging.getLogger(__name__)

CALIBRATION_SEED = 10_000  # calibration tiles: seeds from here (test frames: 0, 1, ...)


@dataclass(frozen=True)
class TestFrame:
    """One synthetic test frame: ``x`` (1, 1, H, W) LR in the model's range, ``gt`` the HR
    acquisition (H*s, W*s) in the output's range."""

    x: np.ndarray
    gt: np.ndarray


def test_frames(model: ModelConfig, n: int, size: int, seed: int = 0) -> list[TestFrame]:
    """``n`` synthetic LR/HR pairs of ``size``^2 LR px (seeds ``seed``..)."""
    from cyclesr_deploy.synthetic import SynthConfig, simulate_pair

    s = model.scale
    frames = []
    for i in range(n):
        if s == 2:
            cfg = SynthConfig(size=2 * size, binning=2, lr_grid="native", seed=seed + i)
        else:
            cfg = SynthConfig(size=size, seed=seed + i)
        pair = simulate_pair(cfg)
        lr = _in_model_units(pair.lr[:size, :size].astype(np.float64), model, "a")
        hr = _in_model_units(pair.hr[: s * size, : s * size].astype(np.float64), model, "b")
        x = model.normalization.to_model(lr, "a")[None, None]
        gt = model.normalization.to_model(hr, "b")
        frames.append(TestFrame(np.ascontiguousarray(x, np.float32), np.clip(gt, -1, 1)))
    return frames


def quantize_int8(
    model_dir: Path, calibration: int = 16, size: int = 256, subset: int | None = None
) -> Path:
    """``generator.int8.onnx``: NNCF post-training quantization of ``generator.onnx`` on
    ``calibration`` synthetic LR tiles of ``size``^2; written atomically, recorded in
    export.json. Returns its path."""
    from cyclesr_deploy.io import atomic_path

    nncf = require("nncf", "export", "int8 quantization (cyclesr export precision)")
    onnx = require("onnx", "export", "int8 quantization (cyclesr export precision)")
    model = load_model(model_dir)
    folder = ModelFolder(model_dir)
    src = folder.onnx("fp32")
    folder.verify(src)
    t0 = time.perf_counter()
    tiles = [f.x for f in test_frames(model, calibration, size, CALIBRATION_SEED)]
    graph = onnx.load(str(src))
    name = graph.graph.input[0].name
    quantized = nncf.quantize(
        graph,
        nncf.Dataset(tiles, lambda x: {name: x}),
        subset_size=subset or len(tiles),
    )
    out = folder.int8_onnx
    with atomic_path(out) as part:
        onnx.save(quantized, str(part))
    entry = artifact_entry(
        model_dir,
        out,
        kind="onnx",
        precision="int8",
        seconds=time.perf_counter() - t0,
        reference=ONNX_FILES["ab"],
        settings={
            "quantizer": f"nncf {nncf.__version__}",
            "calibration": f"{len(tiles)} synthetic LR tiles {size}x{size}, seeds "
            f"{CALIBRATION_SEED}..",
        },
    )
    write_export_report(model_dir, ExportReport.of(entry))
    return out


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    from cyclesr_deploy.metrics.pixel import psnr

    return float(psnr(np.clip(a, -1, 1), b, data_range=2.0))


def _ssim(a: np.ndarray, b: np.ndarray) -> float:
    from cyclesr_deploy.metrics.pixel import ssim

    return float(ssim(np.clip(a, -1, 1), b, data_range=2.0))


def _cpu_name() -> str:
    from cyclesr_deploy.bench import machine

    return str(machine().get("cpu", ""))


def check_precisions(
    model_dir: str | Path,
    precisions: Sequence[str] = REDUCED,
    *,
    frames: int = 4,
    size: int = 512,
    time_size: int = 1024,
    rounds: int = 5,
    threads: int | None = None,
    calibration: int = 16,
    on_progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Write ``int8`` (when asked), measure every precision of ``precisions`` against FP32 and
    record them in export.json. Returns ``{"records": {key: record}, "skipped": {precision:
    why}}``. InputError for an unknown precision or a folder without ``generator.onnx``."""
    from cyclesr_deploy.engines.openvino_engine import OpenVINOEngine, capabilities

    say = on_progress or (lambda _m: None)
    model_dir = Path(model_dir)
    model = load_model(model_dir)
    unknown = [p for p in precisions if p not in REDUCED]
    if unknown:
        raise InputError(f"precision: {', '.join(unknown)} not one of {', '.join(REDUCED)}")
    if not ModelFolder(model_dir).onnx("fp32").is_file():
        raise InputError(f"{model_dir}: no {ONNX_FILES['ab']} (run: cyclesr export onnx first)")
    caps = capabilities("CPU")
    skipped: dict[str, str] = {}
    todo = []
    for p in precisions:
        why = cpu_cannot_run(p, caps)
        if why:
            skipped[p] = why
            say(f"skipped {p}: {why}")
        else:
            todo.append(p)
    if "int8" in todo:
        say(f"int8: quantizing with NNCF on {calibration} synthetic tiles")
        quantize_int8(model_dir, calibration)
    checks = test_frames(model, frames, size)
    timed = np.ascontiguousarray(test_frames(model, 1, time_size, seed=frames)[0].x)
    engines = {  # int8: the graph just quantized, recorded below
        p: OpenVINOEngine(model_dir, precision=p, threads=threads, check_int8_record=False)
        for p in ["fp32", *todo]
    }
    outputs: dict[str, list[np.ndarray]] = {}
    times: dict[str, list[float]] = {p: [] for p in engines}
    try:
        for e in engines.values():
            e.open()
        for p, e in engines.items():
            outputs[p] = [np.array(e.infer(f.x)[0, 0], copy=True) for f in checks]
            e.infer(timed)  # warm-up at the timed shape
        say(f"timing {', '.join(engines)} on a {time_size}^2 frame, {rounds} interleaved rounds")
        for _ in range(rounds):
            for p, e in engines.items():
                t0 = time.perf_counter()
                e.infer(timed)
                times[p].append(time.perf_counter() - t0)
    finally:
        for e in engines.values():
            e.close()
    ref = outputs["fp32"]
    source_sha = ModelFolder(model_dir).digest(ONNX_FILES["ab"])
    fp32_ms = 1e3 * float(np.median(times["fp32"]))
    psnr_fp32 = float(np.mean([_psnr(y, f.gt) for y, f in zip(ref, checks, strict=True)]))
    ssim_fp32 = float(np.mean([_ssim(y, f.gt) for y, f in zip(ref, checks, strict=True)]))
    records: dict[str, PrecisionRecord] = {}
    for p in todo:
        ys = outputs[p]
        pairs = list(zip(ys, ref, strict=True))
        rec = PrecisionRecord(
            precision=p,
            artifact=ONNX_BY_CPU_PRECISION[p],
            source_sha256=source_sha,
            cpu=_cpu_name(),
            frame_size=size,
            time_frame_size=time_size,
            frames=frames,
            ms=round(1e3 * float(np.median(times[p])), 3),
            fp32_ms=round(fp32_ms, 3),
            psnr_vs_fp32_db=float(min(_psnr(y, r) for y, r in pairs)),
            max_abs_vs_fp32=float(max(np.abs(y - r).max() for y, r in pairs)),
            psnr_gt_fp32_db=psnr_fp32,
            psnr_gt_db=float(np.mean([_psnr(y, f.gt) for y, f in zip(ys, checks, strict=True)])),
            ssim_gt_fp32=ssim_fp32,
            ssim_gt=float(np.mean([_ssim(y, f.gt) for y, f in zip(ys, checks, strict=True)])),
            created=utc_now(),
        )
        records[record_key("openvino", p)] = rec
        fails = rec.failures()
        say(f"{rec.describe()}: {'refused (' + '; '.join(fails) + ')' if fails else 'passes'}")
    write_export_report(model_dir, ExportReport(precisions=records))
    return {"records": records, "skipped": skipped}
