"""PNG figures of the benchmarks; matplotlib (the ``bench`` extra) is imported on first use,
with the non-interactive Agg backend."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cyclesr_deploy.errors import require


def _pyplot() -> Any:
    matplotlib = require("matplotlib", "bench", "Benchmark plots")
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _series(row: dict[str, Any]) -> str:
    return f"{row['engine']} {row['precision']} b{row['batch']}"


def throughput_vs_tile(result: dict[str, Any], path: str | Path) -> Path:
    """Engine-only (solid) and end-to-end (dashed) Mpx/s against the tile side, one line per
    engine x precision x batch; whole-frame runs are drawn at the frame's side, marked *."""
    plt = _pyplot()
    frame_side = max(result["frame_shape"])
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in result["rows"]:
        groups.setdefault(_series(row), []).append(row)
    for label, rows in groups.items():
        rows = sorted(rows, key=lambda r: r["tile"] or frame_side)
        x = [r["tile"] or frame_side for r in rows]
        (line,) = ax.plot(x, [r["engine_only"]["mpx_per_s"] for r in rows], "o-", label=label)
        e2e = [
            (xi, r["end_to_end"]["mpx_per_s"])
            for xi, r in zip(x, rows, strict=True)
            if r["end_to_end"]
        ]
        if e2e:
            ax.plot(
                [a for a, _ in e2e],
                [b for _, b in e2e],
                "s--",
                color=line.get_color(),
                label=f"{label} (end to end)",
            )
        for xi, r in zip(x, rows, strict=True):
            if r["tile"] == 0:
                ax.plot([xi], [r["engine_only"]["mpx_per_s"]], "*", ms=14, color=line.get_color())
    ax.set_xscale("log", base=2)
    ax.set_xlabel("tile side, input px (* = whole frame)")
    ax.set_ylabel("throughput, Mpx/s (input)")
    h, w = result["frame_shape"]
    ax.set_title(f"Throughput vs tile size, {h}x{w} frame")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def latency_distribution(result: dict[str, Any], path: str | Path) -> Path:
    """Box plots of the per-frame latency samples (engine only and end to end) per row."""
    plt = _pyplot()
    data, labels = [], []
    for row in result["rows"]:
        tile = "whole" if row["tile"] == 0 else str(row["tile"])
        base = f"{row['engine']}\n{row['precision']} t{tile} b{row['batch']}"
        data.append(row["engine_only"]["samples_ms"])
        labels.append(base + "\nengine")
        if row["end_to_end"]:
            data.append(row["end_to_end"]["samples_ms"])
            labels.append(base + "\ne2e")
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(data)), 4.5), dpi=100)
    ax.boxplot(data, whis=(1, 99))
    ax.set_xticks(range(1, len(labels) + 1), labels, fontsize=6)
    ax.set_ylabel("latency per frame, ms")
    ax.set_title("Latency distribution (whiskers: p1..p99)")
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def _profile_line(ref: np.ndarray) -> tuple[int, int, int]:
    """(row, col0, col1): a horizontal segment through the brightest pixel of the smoothed
    reference (borders excluded), a quarter of the width long."""
    from scipy.ndimage import gaussian_filter

    smooth = gaussian_filter(ref.astype(np.float64), 2)
    mh, mw = ref.shape[0] // 6, ref.shape[1] // 6  # away from the borders
    inner = smooth[mh : ref.shape[0] - mh, mw : ref.shape[1] - mw]
    r, c = np.unravel_index(int(np.argmax(inner)), inner.shape)
    r, c = r + mh, c + mw
    half = max(4, ref.shape[1] // 8)
    c0, c1 = max(0, c - half), min(ref.shape[1], c + half)
    return int(r), int(c0), int(c1)


def quality_figure(images: dict[str, Any], path: str | Path) -> Path:
    """Fig. 1-like panel: per method (columns) the image with the crop box and profile line,
    the zoomed crop, the log Fourier spectrum with the decorrelation cut-off (kc, circle); and
    the line profiles of all methods (bottom). ``images`` is ``run_quality(...,
    keep_images=True)["_images"]``."""
    plt = _pyplot()
    planes: dict[str, np.ndarray] = images["planes"]
    kcs: dict[str, float] = images.get("kc", {})
    names = list(planes)
    ref = planes.get("HR", planes[names[-1]])
    h, w = ref.shape
    row, c0, c1 = _profile_line(ref)
    side = max(8, min(h, w) // 4)
    y0 = int(np.clip(row - side // 2, 0, h - side))
    x0 = int(np.clip((c0 + c1) // 2 - side // 2, 0, w - side))
    n = len(names)
    fig = plt.figure(figsize=(2.4 * n, 9.5), dpi=100)
    grid = fig.add_gridspec(4, n, height_ratios=[1, 1, 1, 0.9])
    for j, name in enumerate(names):
        img = planes[name].astype(np.float64)
        lo, hi = np.percentile(img, [0.5, 99.8])
        ax = fig.add_subplot(grid[0, j])
        ax.imshow(img, cmap="gray", vmin=lo, vmax=hi)
        ax.add_patch(plt.Rectangle((x0, y0), side, side, fill=False, ec="yellow", lw=1))
        ax.plot([c0, c1], [row, row], color="cyan", lw=1)
        ax.set_title(name, fontsize=9)
        ax.axis("off")
        ax = fig.add_subplot(grid[1, j])
        ax.imshow(img[y0 : y0 + side, x0 : x0 + side], cmap="gray", vmin=lo, vmax=hi)
        ax.set_title("zoom", fontsize=8)
        ax.axis("off")
        ax = fig.add_subplot(grid[2, j])
        spec = np.log1p(np.abs(np.fft.fftshift(np.fft.fft2(img - img.mean()))))
        ax.imshow(spec, cmap="magma")
        kc = kcs.get(name)
        if kc is not None and np.isfinite(kc) and kc > 0:
            radius = kc * min(h, w) / 2  # kc: 1 = Nyquist
            ax.add_patch(plt.Circle((w / 2, h / 2), radius, fill=False, ec="cyan", lw=1, ls="--"))
            ax.set_title(f"spectrum, kc={kc:.2f}", fontsize=8)
        else:
            ax.set_title("spectrum", fontsize=8)
        ax.axis("off")
    ax = fig.add_subplot(grid[3, :])
    for name in names:
        prof = planes[name][row, c0:c1].astype(np.float64)
        span = prof.max() - prof.min()
        ax.plot(np.arange(c0, c1), (prof - prof.min()) / (span if span > 0 else 1), label=name)
    ax.set_xlabel(f"x (px), row {row}")
    ax.set_ylabel("normalized intensity")
    ax.set_title("line profile", fontsize=9)
    ax.legend(fontsize=7)
    fig.suptitle(f"{images.get('name', '')}", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
