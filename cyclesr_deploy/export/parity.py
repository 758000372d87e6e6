"""Parity between two implementations of a generator (numpy only; no torch, no onnx).

Used by the export steps (PyTorch vs ONNX Runtime, FP32 ONNX vs FP16 ONNX) and meant for the
benchmarks (any engine vs a reference). Inputs are N x C x H x W float32 in the generator's
[-1, 1] range: random uniform tiles, which exercise every pixel position and the reflect
padding at the borders, and synthetic microscopy tiles normalized like real data.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from cyclesr_deploy.errors import InputError, require
from cyclesr_deploy.export.report import ParityCase, finite_or_inf
from cyclesr_deploy.model import ModelConfig

OUTPUT_RANGE = 2.0  # generator output in [-1, 1]
DEFAULT_PARITY_SIZES: tuple[tuple[int, int, int], ...] = ((1, 64, 64), (2, 256, 192), (1, 68, 92))
DEFAULT_SYNTHETIC_SIZES: tuple[tuple[int, int], ...] = ((128, 128), (96, 160))


class ExportError(RuntimeError):
    """An export step produced something unusable (unexpected graph, failed check)."""


class ParityError(ExportError):
    """An exported model disagrees with its reference beyond the tolerance."""


@dataclass(frozen=True)
class ParityInput:
    """One parity input: ``kind`` ``"random"`` or ``"synthetic"``, ``name``, N x C x H x W data."""

    name: str
    kind: Literal["random", "synthetic"]
    data: np.ndarray


def ort_session(path: str | Path) -> Any:
    """An ONNX Runtime CPU session for the model file ``path`` (warnings and info muted)."""
    ort = require("onnxruntime", "cpu", "Running an ONNX model with ONNX Runtime")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def round_up(value: int, multiple: int) -> int:
    """Smallest multiple of ``multiple`` that is >= ``value`` (and >= ``multiple``)."""
    return max(multiple, -(-int(value) // multiple) * multiple)


def adapt_sizes(sizes: Iterable[Sequence[int]], multiple: int) -> tuple[tuple[int, ...], ...]:
    """``sizes`` with their last two entries (H, W) rounded up to ``multiple``."""
    return tuple((*s[:-2], round_up(s[-2], multiple), round_up(s[-1], multiple)) for s in sizes)


def check_sizes(
    sizes: Iterable[Sequence[int]], length: int, check_shape: Callable[..., None], name: str
) -> tuple[tuple[int, ...], ...]:
    """Validate tile sizes: ``length`` positive ints each (``(N, H, W)`` or ``(H, W)``), H and W
    accepted by ``check_shape(h, w, name=...)`` (``GeneratorConfig.check_shape``)."""
    out = []
    for i, size in enumerate(sizes):
        values = tuple(size)
        if len(values) != length or not all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in values
        ):
            form = "(N, H, W)" if length == 3 else "(H, W)"
            raise InputError(f"{name}[{i}]: expected {form} positive integers, got {size!r}")
        check_shape(int(values[-2]), int(values[-1]), name=f"{name}[{i}]")
        out.append(tuple(int(v) for v in values))
    return tuple(out)


def random_inputs(
    sizes: Iterable[tuple[int, int, int]], channels: int, seed: int = 0
) -> list[ParityInput]:
    """Uniform [-1, 1] float32 tiles, one per ``(N, H, W)`` size, from ``seed``."""
    rng = np.random.default_rng(seed)
    inputs = []
    for n, h, w in sizes:
        data = rng.uniform(-1.0, 1.0, size=(n, channels, h, w)).astype(np.float32)
        inputs.append(ParityInput(f"random {n}x{channels}x{h}x{w}", "random", data))
    return inputs


def _in_model_units(raw: np.ndarray, model: ModelConfig, domain: Literal["a", "b"]) -> np.ndarray:
    """``raw`` rescaled so that its own pmin/pmax percentiles land on the model's low/high of
    ``domain``: the synthetic tile then looks like the data the model was trained on, whatever
    its bit depth (the simulator writes 16-bit counts)."""
    norm = model.normalization
    low, high = (norm.low_a, norm.high_a) if domain == "a" else (norm.low_b, norm.high_b)
    p_lo, p_hi = np.percentile(raw, [norm.pmin, norm.pmax])
    unit = (raw - p_lo) / (p_hi - p_lo if p_hi > p_lo else 1.0)
    return (low + unit * (high - low)).astype(np.float32)


def synthetic_inputs(
    model: ModelConfig,
    sizes: Iterable[tuple[int, int]],
    *,
    direction: Literal["ab", "ba"] = "ab",
    seed: int = 0,
) -> list[ParityInput]:
    """Synthetic confocal tiles (``simulate_pair``), normalized by ``model.normalization``.

    Direction ``"ab"`` feeds LR images (domain A; for a scale-2 model acquired on the 2x coarser
    native grid), ``"ba"`` HR images (domain B). Tile ``i`` of size ``(H, W)`` is simulated with
    seed ``seed + i`` and cropped to H x W, its percentiles (``pmin``, ``pmax``) are mapped onto
    the model's ``low``/``high`` of that domain, then ``to_model`` maps it to about [-1, 1]
    (a few bright pixels above 1, as in real data). Channels repeat the plane.
    Returns 1 x C x H x W float32 tiles.
    """
    from cyclesr_deploy.synthetic import SynthConfig, simulate_pair

    gen = model.generator if direction == "ab" else model.generator.inverse()
    inputs = []
    for i, (h, w) in enumerate(sizes):
        side = max(h, w, 16)
        if direction == "ab" and gen.scale == 2:
            cfg = SynthConfig(size=2 * side, binning=2, lr_grid="native", seed=seed + i)
        else:
            cfg = SynthConfig(size=side, seed=seed + i)
        pair = simulate_pair(cfg)
        raw = (pair.lr if direction == "ab" else pair.hr)[:h, :w].astype(np.float64)
        plane = model.normalization.to_model(
            _in_model_units(raw, model, "a" if direction == "ab" else "b"),
            "a" if direction == "ab" else "b",
        )
        data = np.repeat(plane[None, None], gen.in_channels, axis=1).astype(np.float32)
        name = f"synthetic 1x{gen.in_channels}x{h}x{w} seed {seed + i}"
        inputs.append(ParityInput(name, "synthetic", data))
    return inputs


def compare_outputs(item: ParityInput, reference: np.ndarray, candidate: np.ndarray) -> ParityCase:
    """Error figures of ``candidate`` vs ``reference`` (same shape) for the input ``item``,
    computed in float64. NaN anywhere makes the errors inf."""
    ref = np.asarray(reference, dtype=np.float64)
    cand = np.asarray(candidate, dtype=np.float64)
    if ref.shape != cand.shape:
        raise ParityError(
            f"{item.name}: output shape {cand.shape} differs from the reference {ref.shape}"
        )
    diff = np.abs(cand - ref)
    mse = float(np.mean(diff**2))
    norm = float(np.linalg.norm(ref))
    rel = float(np.linalg.norm(cand - ref)) / norm if norm > 0 else float(np.linalg.norm(diff))
    psnr = float("inf") if mse == 0 else 10.0 * np.log10(OUTPUT_RANGE**2 / mse)
    return ParityCase(
        name=item.name,
        kind=item.kind,
        input_shape=tuple(item.data.shape),
        output_shape=tuple(ref.shape),
        max_abs=finite_or_inf(diff.max()),
        mean_abs=finite_or_inf(diff.mean()),
        rel_l2=finite_or_inf(rel),
        psnr_db=float(-np.inf) if np.isnan(psnr) else float(psnr),
    )


def run_parity(
    inputs: Iterable[ParityInput],
    reference: Callable[[np.ndarray], np.ndarray],
    candidate: Callable[[np.ndarray], np.ndarray],
) -> list[ParityCase]:
    """Run both callables on every input and compare (any engine, module or lambda works)."""
    return [compare_outputs(item, reference(item.data), candidate(item.data)) for item in inputs]


def worst(cases: Sequence[ParityCase], figure: Literal["max_abs", "rel_l2"]) -> ParityCase:
    """The case with the largest ``figure``."""
    return max(cases, key=lambda c: getattr(c, figure))


def format_cases(cases: Sequence[ParityCase]) -> str:
    """One line per case: name, max abs, mean abs, relative L2, PSNR."""
    return "\n".join(
        f"  {c.name}: max abs {c.max_abs:.3g}, mean abs {c.mean_abs:.3g}, "
        f"rel L2 {c.rel_l2:.3g}, PSNR {c.psnr_db:.1f} dB"
        for c in cases
    )
