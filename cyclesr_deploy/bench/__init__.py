"""Benchmarks behind ``cyclesr bench``: latency, quality and backend parity.

    from cyclesr_deploy.bench.latency import LatencySettings, run_latency, generator_flops
    from cyclesr_deploy.bench.quality import run_quality
    from cyclesr_deploy.bench.compare import run_compare
    from cyclesr_deploy.bench import plots          # PNGs; needs the `bench` extra (matplotlib)

Each ``run_*`` returns a JSON-ready dict (``machine``, ``software``, ``settings`` and the
results) and each module has a ``*_markdown`` function for its table. Nothing here imports a
backend or matplotlib at import time.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1


def machine() -> dict[str, Any]:
    """CPU model, core count, OS, Python; the GPU name when torch sees CUDA."""
    cpu = platform.processor() or platform.machine()
    try:
        with Path("/proc/cpuinfo").open(encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    out: dict[str, Any] = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "gpu": None,
    }
    try:
        import torch

        if torch.cuda.is_available():
            out["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return out


def software() -> dict[str, str | None]:
    """Versions of this package and of the packages a benchmark may use (None: not installed)."""
    from importlib import metadata

    from cyclesr_deploy import __version__

    out: dict[str, str | None] = {"cyclesr-deploy": __version__}
    for name in ("numpy", "torch", "onnxruntime", "onnxruntime-gpu", "tensorrt", "scikit-image"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def fmt(value: float | None, digits: int = 3) -> str:
    """A number for a markdown table: blank for None, ``inf``/``nan`` spelled out."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if value != value:
        return "nan"
    if value in (float("inf"), float("-inf")):
        return "inf" if value > 0 else "-inf"
    return f"{value:.{digits}g}"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"
