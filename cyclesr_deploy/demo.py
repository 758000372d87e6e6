"""The built-in demo: what ``make demo`` / ``cyclesr demo`` runs, on any machine, CPU only.

1. Simulate a small low-resolution time-lapse acquisition (``n_frames`` x ``size``^2, 16-bit,
   drifting and bleaching; :func:`~cyclesr_deploy.synthetic.timeseries.simulate_time_series`)
   and the high-resolution acquisition of the same field, which the microscope would not give
   you (here it is the reference the result is scored against).
2. Enhance the LR stack with the built-in reference CycleGAN through ONNX Runtime on the CPU,
   tiled with frozen whole-frame InstanceNorm statistics (seam-free), exactly as
   ``cyclesr enhance`` does: an OME-TIFF stack with the input's metadata.
3. Score input and output against HR on every frame (PSNR, SSIM, background noise, CUF,
   decorrelation resolution), and draw a PNG comparison figure.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cyclesr_deploy.images import read_tiff, write_tiff
from cyclesr_deploy.io import atomic_path

# the metrics of the demo table: key of QualityReport -> (column title, format)
METRICS: dict[str, tuple[str, str]] = {
    "psnr": ("PSNR dB", "{:.2f}"),
    "ssim": ("SSIM", "{:.3f}"),
    "bgstd": ("BGSTD", "{:.2f}"),
    "cuf_ring_index": ("CUF", "{:.1f}"),
    "decorrelation_resolution_nm": ("res. nm", "{:.0f}"),
}
ROWS = ("LR input", "model output", "HR reference")  # the middle row is named after the model


@dataclass(frozen=True)
class DemoResult:
    out_dir: Path
    acquisition: Path  # the LR stack that was enhanced
    reference: Path  # the HR stack of the same field
    enhanced: Path  # the result
    figure: Path
    metrics_json: Path
    metrics_md: Path
    engine: str
    model: Path
    table: dict[str, dict[str, float]]  # row -> metric -> mean over the scored frames
    scored_frames: list[int]  # 1-based
    seconds: dict[str, float] = field(default_factory=dict)
    trust: dict[str, Any] | None = None  # the manifest's per-frame trust (None: uncalibrated)


def _say(on_progress: Callable[[str], None] | None, msg: str) -> None:
    if on_progress is not None:
        on_progress(msg)


def _hr_row(hr: np.ndarray, report: Any, px_nm: float) -> dict[str, float]:
    """The HR reference's own metrics (no PSNR/SSIM: it is the reference); CUF and resolution
    come from ``report`` (an evaluation against this HR), which measured them on the HR too."""
    from cyclesr_deploy.metrics import reference_bgstd

    return {
        "bgstd": reference_bgstd(hr),
        "cuf_ring_index": float(report.cuf_ring_index_gt),
        "decorrelation_resolution_nm": 2.0 / report.decorrelation_kc_max_gt * px_nm
        if report.decorrelation_kc_max_gt
        else float("nan"),
    }


def _row(report: Any, px_nm: float) -> dict[str, float]:
    res = report.decorrelation_resolution_px
    return {
        "psnr": float(report.psnr),
        "ssim": float(report.ssim),
        "bgstd": float(report.bgstd),
        "cuf_ring_index": float(report.cuf_ring_index),
        "decorrelation_resolution_nm": float(res) * px_nm if res else float("nan"),
    }


def _ones(frames: list[int]) -> str:
    """0-based frame indices as the 1-based numbers a user sees."""
    return ", ".join(str(i + 1) for i in frames)


def _display(img: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(img, (0.5, 99.8))
    return (np.clip((img.astype(np.float32) - lo) / max(hi - lo, 1e-6), 0, 1) * 255).astype(
        np.uint8
    )


def comparison_figure(
    panels: dict[str, np.ndarray], path: Path, *, zoom: int = 192, width: int = 360
) -> Path:
    """PNG: one column per panel (title above), the whole frame on top and the central
    ``zoom`` px square below, each panel scaled to its own 0.5-99.8 % range. Drawn with Pillow
    (a dependency of scikit-image), so the demo needs no plotting package."""
    from PIL import Image, ImageDraw, ImageFont

    try:
        font = ImageFont.load_default(size=15)
    except TypeError:  # Pillow < 10.1: fixed bitmap font
        font = ImageFont.load_default()
    pad, title_h = 8, 24
    canvas = Image.new(
        "L", (pad + len(panels) * (width + pad), title_h + 2 * (width + pad) + pad), 255
    )
    draw = ImageDraw.Draw(canvas)
    for i, (title, img) in enumerate(panels.items()):
        x = pad + i * (width + pad)
        draw.text((x, 4), title, fill=0, font=font)
        h, w = img.shape
        y0, x0 = (h - zoom) // 2, (w - zoom) // 2
        full = Image.fromarray(_display(img)).resize((width, width), Image.Resampling.BOX)
        crop = Image.fromarray(_display(img)[y0 : y0 + zoom, x0 : x0 + zoom])
        crop = crop.resize((width, width), Image.Resampling.NEAREST)
        canvas.paste(full, (x, title_h))
        canvas.paste(crop, (x, title_h + width + pad))
        s = width / w  # the zoomed square, outlined on the whole frame
        draw.rectangle(
            (x + x0 * s, title_h + y0 * s, x + (x0 + zoom) * s, title_h + (y0 + zoom) * s),
            outline=255,
        )
    with atomic_path(path) as part:
        canvas.save(part, format="PNG")
    return path


def table_cells(values: dict[str, float]) -> list[str]:
    """One row of the demo table: formatted metrics, "(ref)" where the row has none (the HR
    reference's PSNR/SSIM) or it is not finite."""
    return [
        fmt.format(values[k]) if k in values and np.isfinite(values[k]) else "(ref)"
        for k, (_t, fmt) in METRICS.items()
    ]


def markdown_table(table: dict[str, dict[str, float]], caption: str) -> str:
    head = "| | " + " | ".join(t for t, _ in METRICS.values()) + " |"
    lines = [caption, "", head, "|---" * (len(METRICS) + 1) + "|"]
    for row, values in table.items():
        lines.append(f"| {row} | " + " | ".join(table_cells(values)) + " |")
    return "\n".join(lines) + "\n"


def _trust_line(trust: dict[str, Any] | None) -> str:
    """metrics.md's line on the per-frame trust of the enhanced frames."""
    if not trust:
        return "\nTrust: not scored (the model folder has no trust calibration).\n"
    n, bad = trust["count"], len(trust["untrusted"])
    return (
        f"\nTrust (per frame, 1 = typical of the model's training domain): mean "
        f"{trust['mean']:.3g}, lowest {trust['min']:.3g}; {bad} of {n} frames untrusted.\n"
    )


def run_demo(
    out_dir: str | Path = "cyclesr-demo",
    *,
    n_frames: int = 8,
    size: int = 1024,
    seed: int = 0,
    model: str | Path | None = None,
    tile: int = 600,
    score_frames: int = 4,
    on_progress: Callable[[str], None] | None = None,
) -> DemoResult:
    """Run the demo into ``out_dir`` (its own files are replaced on a re-run). ``model``: a
    model folder or built-in name (default: the reference CycleGAN). ``score_frames`` evenly
    spaced frames are scored (all metrics of one 1024^2 frame pair take about 1 s here)."""
    from cyclesr_deploy.builtin import resolve_model
    from cyclesr_deploy.engines import FrozenStatsEngine, open_engine
    from cyclesr_deploy.errors import InputError
    from cyclesr_deploy.metrics import evaluate
    from cyclesr_deploy.model import load_model
    from cyclesr_deploy.runtime.pipeline import EnhanceConfig, enhance_files
    from cyclesr_deploy.synthetic import SynthConfig
    from cyclesr_deploy.synthetic.timeseries import simulate_time_series

    seconds: dict[str, float] = {}
    out = Path(out_dir)
    model_dir = resolve_model(model)
    model_cfg = load_model(model_dir)
    if model_cfg.scale != 1:
        raise InputError(
            f"demo: {model_dir.name} upscales x{model_cfg.scale}; the demo simulates LR and HR on "
            "one pixel grid and needs a scale-1 model"
        )
    rows = (ROWS[0], f"{model_dir.name} output", ROWS[2])
    drift, bleach = (2, 1), 0.02

    t = time.perf_counter()
    cfg = SynthConfig(size=size, seed=seed)
    px_um = cfg.hr_pixel_nm / 1e3
    _say(on_progress, f"simulating {n_frames} x {size}x{size} LR and HR frames")
    series = simulate_time_series(cfg, n_frames, drift_px=drift, bleach_per_frame=bleach)
    acquisition = out / "input" / "acquisition.ome.tif"
    reference = out / "reference_hr.ome.tif"
    acquisition.parent.mkdir(parents=True, exist_ok=True)
    desc = {"cyclesr_demo": {"seed": seed, "drift_px_per_frame": list(drift), "bleach": bleach}}
    write_tiff(acquisition, series.lr, axes="TYX", pixel_size_um=px_um, description=desc)
    write_tiff(reference, series.hr, axes="TYX", pixel_size_um=px_um, description=desc)
    seconds["simulate"] = time.perf_counter() - t

    t = time.perf_counter()
    # seam-free tiles: frozen whole-frame statistics when the model folder has the graphs (the
    # engine factory's choice); otherwise auto (frames within the memory budget run whole)
    engine_cm = open_engine(
        model_dir, backend="onnxruntime", tiling="auto" if tile else "none", stats="whole"
    )
    frozen = isinstance(engine_cm, FrozenStatsEngine)
    ecfg = EnhanceConfig(
        tile=tile, overwrite=True, tiling_mode="frozen" if frozen else "auto", stats="whole"
    )
    with engine_cm as engine:
        engine_name = engine.name
        _say(on_progress, f"enhancing with {model_dir.name} on {engine_name}, {tile} px tiles")
        summary = enhance_files([acquisition], out / "enhanced", engine, model_cfg, ecfg)
    if not summary.ok:
        problems = "; ".join(f"{f.input}: {f.error}" for f in summary.files if f.error)
        raise InputError(f"demo: enhancing {acquisition} failed: {problems or summary}")
    enhanced = out / "enhanced" / acquisition.name
    trust = summary.files[0].trust if summary.files else None
    seconds["enhance"] = time.perf_counter() - t

    t = time.perf_counter()
    scored = sorted({int(i) for i in np.linspace(0, n_frames - 1, min(score_frames, n_frames))})
    _say(on_progress, f"scoring input and output against HR on frames {_ones(scored)}")
    result = read_tiff(enhanced).data.reshape(series.lr.shape)
    px_nm = cfg.hr_pixel_nm
    per_frame: dict[str, list[dict[str, float]]] = {r: [] for r in rows}
    for i in scored:
        lr_rep = evaluate(series.lr[i], series.hr[i], pixel_size=px_um)
        out_rep = evaluate(result[i], series.hr[i], pixel_size=px_um)
        per_frame[rows[0]].append(_row(lr_rep, px_nm))
        per_frame[rows[1]].append(_row(out_rep, px_nm))
        per_frame[rows[2]].append(_hr_row(series.hr[i], lr_rep, px_nm))
    table = {
        row: {k: float(np.mean([f[k] for f in frames])) for k in frames[0]}
        for row, frames in per_frame.items()
    }
    seconds["metrics"] = time.perf_counter() - t

    figure = comparison_figure(
        {
            "LR input": series.lr[0],
            f"output ({model_dir.name})": result[0],
            "HR reference": series.hr[0],
        },
        out / "comparison.png",
    )
    caption = (
        f"Mean over frames {_ones(scored)} of {n_frames} synthetic {size}x{size} frames, "
        f"reference: the HR acquisition of the same field; model {model_dir.name}, engine "
        f"{engine_name}, {tile} px tiles."
    )
    metrics_md = out / "metrics.md"
    with atomic_path(metrics_md) as part:
        part.write_text(markdown_table(table, caption) + _trust_line(trust), encoding="utf-8")
    metrics_json = out / "metrics.json"
    payload = {
        "model": model_dir.name,
        "engine": engine_name,
        "frames": n_frames,
        "size": size,
        "seed": seed,
        "tile": tile,
        "tiling": ecfg.tiling_mode,
        "scored_frames": [i + 1 for i in scored],
        "mean": table,
        "per_frame": per_frame,
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
        "trust": trust,
    }
    with atomic_path(metrics_json) as part:
        part.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return DemoResult(
        out,
        acquisition,
        reference,
        enhanced,
        figure,
        metrics_json,
        metrics_md,
        engine_name,
        model_dir,
        table,
        [i + 1 for i in scored],
        seconds,
        trust,
    )
