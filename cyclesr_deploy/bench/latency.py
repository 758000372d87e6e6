"""Latency and throughput of the engines, alone and end to end (``cyclesr bench latency``).

For each backend x precision x tile (x batch), and whole-frame when asked, on one synthetic
frame of ``frame_size``²: ``warmup`` untimed runs, then ``repeats`` timed runs of

* ``engine_only``: ``FrameRunner.infer`` over the tile batches of the frame (built beforehand
  by the same :class:`~cyclesr_deploy.runtime.runner.FrameRunner` that ``cyclesr enhance``
  uses: plan, tiles, the model's intensity mapping; the statistics pass of frozen tiling
  included);
* ``end_to_end``: :func:`~cyclesr_deploy.runtime.pipeline.enhance_files` on a uint16 TIFF of
  the frame (TIFF read, normalization, tiling, engine, blending, uint16, TIFF write, manifest).

Both run the same plan: a tile row tiles the frame (frozen statistics where the engine has
them, else naive tiles; never ``auto``'s whole-frame shortcut), tile 0 runs it whole. Batches
hold the tiles of one frame. That is checked, not assumed: the engine calls (method and input
shape) of one engine-only pass and of one end-to-end run are recorded and must be the same
multiset (:class:`WorkMismatch` otherwise; the row's ``work`` says what ran). FLOPs are
counted analytically (:func:`generator_flops`, 2 per multiply-add of the conv /
transposed-conv weights) on the tile sizes the engine sees, overlap included, so ``tflops``
is the work the engine really did.
"""

from __future__ import annotations

import contextlib
import math
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from cyclesr_deploy.bench import SCHEMA_VERSION, fmt, machine, markdown_table, software
from cyclesr_deploy.errors import InputError, MissingExtraError
from cyclesr_deploy.model import GeneratorConfig, ModelConfig, load_model

BACKENDS = ("onnxruntime", "openvino", "torch", "tensorrt")
PRECISIONS = ("fp32", "fp16", "bf16", "int8")


class WorkMismatch(RuntimeError):
    """The end-to-end figure of a row ran other engine work than its engine figure."""


@contextlib.contextmanager
def recorded_calls(engine: Any) -> Iterator[list[tuple[str, tuple[int, ...]]]]:
    """Record (method, input shape) of every ``infer``/``infer_with_stats``/
    ``frame_statistics`` call into ``engine`` while the block runs (instance attributes
    shadow the methods, removed afterwards)."""
    calls: list[tuple[str, tuple[int, ...]]] = []
    names = [n for n in ("infer", "infer_with_stats", "frame_statistics") if hasattr(engine, n)]

    def wrap(name: str) -> Callable[..., Any]:
        method = getattr(engine, name)

        def recorded(x: np.ndarray, *args: Any, **kwargs: Any) -> Any:
            calls.append((name, tuple(int(d) for d in x.shape)))
            return method(x, *args, **kwargs)

        return recorded

    for name in names:
        setattr(engine, name, wrap(name))
    try:
        yield calls
    finally:
        for name in names:
            with contextlib.suppress(AttributeError):
                delattr(engine, name)


def check_same_work(
    engine_calls: Sequence[tuple[str, tuple[int, ...]]],
    e2e_calls: Sequence[tuple[str, tuple[int, ...]]],
) -> dict[str, Any]:
    """The row's ``work``: engine calls per frame (by method and shape); WorkMismatch when the
    end-to-end run made other calls than the engine-only pass."""
    mine, theirs = sorted(engine_calls), sorted(e2e_calls)
    if mine != theirs:
        raise WorkMismatch(
            "bench latency: the end-to-end run did other engine work than the engine-only "
            f"figure (engine only: {_summary(mine)}; end to end: {_summary(theirs)})"
        )
    return {"engine_calls": _summary(mine), "end_to_end_same": True}


def _summary(calls: Sequence[tuple[str, tuple[int, ...]]]) -> str:
    counts: dict[str, int] = {}
    for name, shape in calls:
        key = f"{name}{'x'.join(map(str, shape))}"
        counts[key] = counts.get(key, 0) + 1
    return ", ".join(f"{n} x {k}" for k, n in sorted(counts.items())) or "none"


def generator_flops(cfg: GeneratorConfig, h: int, w: int) -> int:
    """FLOPs (2 x multiply-adds) of the conv and transposed-conv weights of one forward pass of
    the generator ``cfg`` on one h x w input (batch 1). Biases, norms, activations, padding
    and upsampling are not counted (< 1 %). A transposed conv costs in_h * in_w * C_in * C_out
    * k² (every input pixel is scattered through the whole kernel)."""
    cfg.check_shape(h, w)
    ngf = cfg.ngf
    macs = 0

    def conv(cin: int, cout: int, k: int, oh: int, ow: int) -> int:
        return cin * cout * k * k * oh * ow

    macs += conv(cfg.in_channels, ngf, 7, h, w)
    if cfg.downscale == 2:
        h, w = h // 2, w // 2
        macs += conv(ngf, ngf, 3, h, w)
    for mult in (1, 2):
        h, w = h // 2, w // 2
        macs += conv(ngf * mult, ngf * mult * 2, 3, h, w)
    macs += cfg.n_blocks * 2 * conv(ngf * 4, ngf * 4, 3, h, w)
    for mult in (4, 2):
        if cfg.upsample == "transpose":
            macs += conv(ngf * mult, ngf * mult // 2, 3, h, w)  # per input pixel
            h, w = 2 * h, 2 * w
        else:
            h, w = 2 * h, 2 * w
            macs += conv(ngf * mult, ngf * mult // 2, 3, h, w)
    if cfg.scale == 2:
        if cfg.head == "pixel_shuffle":
            macs += conv(ngf, 4 * ngf, 3, h, w)
            h, w = 2 * h, 2 * w
        else:
            h, w = 2 * h, 2 * w
            macs += conv(ngf, ngf, 3, h, w)
    macs += conv(ngf, cfg.out_channels, 7, h, w)
    return 2 * macs


def host_peak_rss_bytes() -> int | None:
    """Peak resident memory of this process so far (bytes): ``resource.getrusage`` on POSIX
    (KiB on Linux, bytes on macOS), else psutil's peak working set / RSS, else None. It is a
    process-lifetime peak, so it only grows from one configuration to the next."""
    try:
        import resource
    except ImportError:
        resource = None  # type: ignore[assignment]
    if resource is not None:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak) if sys.platform == "darwin" else int(peak) * 1024
    try:
        import psutil
    except ImportError:
        return None
    info = psutil.Process().memory_info()
    return int(getattr(info, "peak_wset", 0) or info.rss)


class LatencySettings(BaseModel):
    """What ``run_latency`` measures. ``tiles``: tile sides in input px; ``whole_frame`` adds
    tile 0 (the whole frame as one tile); ``end_to_end``: also time ``enhance_files``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backends: tuple[str, ...] = ("onnxruntime",)
    precisions: tuple[str, ...] = ("fp32",)
    tiles: tuple[int, ...] = (256, 512)
    batches: tuple[int, ...] = (1,)
    whole_frame: bool = False
    frame_size: int = Field(default=1024, ge=8, le=65536)
    repeats: int = Field(default=10, ge=1, le=100000)
    warmup: int = Field(default=2, ge=0, le=1000)
    end_to_end: bool = True
    threads: int | None = Field(default=None, ge=1)
    device: str = "auto"
    seed: int = 0


def synthetic_frame(model: ModelConfig, size: int, seed: int = 0) -> np.ndarray:
    """A uint16 synthetic LR frame, size x size (on the LR grid of a scale-2 model)."""
    from cyclesr_deploy.synthetic import SynthConfig, simulate_pair

    if model.scale == 2:
        cfg = SynthConfig(size=2 * size, binning=2, lr_grid="native", seed=seed)
    else:
        cfg = SynthConfig(size=size, seed=seed)
    lr = simulate_pair(cfg).lr[:size, :size]
    return np.clip(np.asarray(lr, dtype=np.float64), 0, 65535).astype(np.uint16)


def _stats(samples_s: Sequence[float], frames: int, px: int, flops: float) -> dict[str, Any]:
    per_frame = np.asarray(samples_s, dtype=np.float64) / frames
    p50 = float(np.percentile(per_frame, 50))
    return {
        "p50_ms": 1e3 * p50,
        "p95_ms": 1e3 * float(np.percentile(per_frame, 95)),
        "p99_ms": 1e3 * float(np.percentile(per_frame, 99)),
        "mean_ms": 1e3 * float(per_frame.mean()),
        "frames_per_s": 1.0 / p50 if p50 > 0 else math.inf,
        "mpx_per_s": px / p50 / 1e6 if p50 > 0 else math.inf,
        "tflops": flops / p50 / 1e12 if p50 > 0 else math.inf,
        "samples_ms": [round(1e3 * t, 4) for t in per_frame.tolist()],
    }


def engine_batches(runner: Any, frame: np.ndarray) -> list[tuple[Any, Any]]:
    """The (work, batch) pairs that ``runner`` (:class:`~cyclesr_deploy.runtime.runner.FrameRunner`)
    hands its engine for ``frame``: ``runner.infer`` over them is the engine alone, statistics
    pass of frozen tiling included."""
    work = runner.start(frame)
    return [(work, batch) for batch in work.batches()]


def end_to_end(src: Path, dst: Path, engine: Any, model: ModelConfig, cfg: Any) -> list[Path]:
    """``enhance_files`` of ``src`` into ``dst`` (the benchmark's end-to-end path, that of
    ``cyclesr enhance``); raises when a file failed. Returns the outputs."""
    from cyclesr_deploy.runtime.pipeline import enhance_files

    summary = enhance_files([src], dst, engine, model, cfg)
    if not summary.ok:
        errors = [r.error for r in summary.files if r.error]
        raise RuntimeError(f"enhance failed during the benchmark: {errors}")
    return [Path(r.output) for r in summary.files if r.output]


def _time(fn: Callable[[], Any], warmup: int, repeats: int) -> list[float]:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return samples


def _uses_torch_cuda(engine: Any) -> bool:
    return str(getattr(engine, "name", "")).startswith("torch[cuda")


def _gpu_reset(engine: Any) -> None:
    if _uses_torch_cuda(engine):
        import torch

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def _gpu_peak(engine: Any) -> int | None:
    if not _uses_torch_cuda(engine):
        return None
    import torch

    torch.cuda.synchronize()
    return int(torch.cuda.max_memory_allocated())


def _measure(
    engine: Any,
    model: ModelConfig,
    frame: np.ndarray,
    tile: int,
    batch: int,
    s: LatencySettings,
    work: Path,
) -> dict[str, Any]:
    from cyclesr_deploy.images import write_tiff
    from cyclesr_deploy.runtime.runner import EnhanceConfig, FrameRunner

    # a tile row tiles every frame (never the whole-frame shortcut of ``auto``): frozen
    # statistics where the engine has them, else naive; tile 0 runs the frame whole
    cfg = EnhanceConfig(tile=tile, batch=batch, overwrite=True, whole_max_px=0)
    runner = FrameRunner(engine, model, cfg)
    cfg = runner.cfg
    plan = runner.plan(frame.shape)
    per_frame = len(plan.tiles.tiles)
    batches = engine_batches(runner, frame)
    th, tw = plan.tiles.tile_shape
    flops = per_frame * generator_flops(model.generator, th, tw)
    px = int(frame.shape[0] * frame.shape[1])

    def engine_only() -> None:
        for work, b in batches:
            runner.infer(work, b)
        if _uses_torch_cuda(engine):
            import torch

            torch.cuda.synchronize()

    with recorded_calls(engine) as engine_calls:
        engine_only()  # the work of the engine figure, recorded once (a warm-up run too)
    _gpu_reset(engine)
    row: dict[str, Any] = {
        "tile": tile,
        "tile_shape": [th, tw],
        "overlap": plan.tiles.config.overlap,
        "batch": plan.batch,
        "tiles_per_frame": per_frame,
        "tiling": plan.mode,
        "flops_per_frame": flops,
        "engine_only": _stats(_time(engine_only, s.warmup, s.repeats), 1, px, flops),
        "end_to_end": None,
    }
    if s.end_to_end:
        src = work / f"in_{tile}_{batch}.tif"
        write_tiff(src, frame)
        dst = work / f"out_{tile}_{batch}"
        with recorded_calls(engine) as e2e_calls:
            end_to_end(src, dst, engine, model, cfg)
        row["work"] = check_same_work(engine_calls, e2e_calls)
        row["end_to_end"] = _stats(
            _time(lambda: end_to_end(src, dst, engine, model, cfg), 0, s.repeats),
            1,
            px,
            flops,
        )
    row["host_peak_rss_mb"] = _mb(host_peak_rss_bytes())
    row["gpu_peak_mb"] = _mb(_gpu_peak(engine))
    return row


def _mb(value: int | None) -> float | None:
    return None if value is None else round(value / 2**20, 1)


def run_latency(
    model_dir: str | Path,
    settings: LatencySettings | None = None,
    *,
    on_progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Measure every configuration of ``settings`` on the model in ``model_dir``.

    Returns ``{schema_version, kind: "latency", machine, software, settings, model, rows,
    skipped}``: one row per measured backend x precision x tile x batch (see the module
    docstring; fields in ``latency_markdown``), ``skipped`` the (backend, precision) pairs that
    could not be opened, with the reason. InputError when nothing could be measured.
    """
    from cyclesr_deploy.engines import open_engine

    s = settings or LatencySettings()
    say = on_progress or (lambda _msg: None)
    model_dir = Path(model_dir)
    model = load_model(model_dir)
    m = model.size_multiple
    tiles = [int(t) for t in s.tiles]
    for t in tiles:
        if t <= 0 or t % m:
            raise InputError(f"--tile {t}: must be a positive multiple of {m}")
    if s.whole_frame:
        tiles.append(0)
    if not tiles:
        raise InputError("no tile size: give --tile and/or --whole-frame")
    frame = synthetic_frame(model, s.frame_size, s.seed)
    rows: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    with tempfile.TemporaryDirectory(prefix="cyclesr-bench-") as tmp:
        work = Path(tmp)
        for backend in s.backends:
            for precision in s.precisions:
                try:
                    engine = open_engine(
                        model_dir,
                        backend,  # type: ignore[arg-type]
                        precision=precision,  # type: ignore[arg-type]
                        device=s.device,  # type: ignore[arg-type]
                        threads=s.threads,
                        tiling="auto" if any(tiles) else "none",  # frozen engines for tiles
                        frames=[frame.shape],
                    )
                    ctx = engine.__enter__()
                except (InputError, MissingExtraError, RuntimeError, OSError) as exc:
                    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                    skipped.append({"backend": backend, "precision": precision, "reason": reason})
                    say(f"skipped {backend}/{precision}: {reason}")
                    continue
                try:
                    for tile in tiles:
                        for batch in s.batches:
                            label = "whole frame" if tile == 0 else f"tile {tile}"
                            say(f"{ctx.name} {precision}: {label}, batch {batch}")
                            try:
                                row = _measure(ctx, model, frame, tile, batch, s, work)
                            except InputError as exc:
                                skipped.append(
                                    {
                                        "backend": backend,
                                        "precision": precision,
                                        "tile": str(tile),
                                        "batch": str(batch),
                                        "reason": str(exc),
                                    }
                                )
                                say(f"skipped: {exc}")
                                continue
                            selection = getattr(ctx, "selection", None)
                            rows.append(
                                {
                                    "backend": backend,
                                    "precision": precision,
                                    "engine": ctx.name,
                                    "selection": None if selection is None else str(selection),
                                    **row,
                                }
                            )
                finally:
                    with contextlib.suppress(Exception):
                        ctx.__exit__(None, None, None)
    if not rows:
        reasons = "; ".join(f"{k['backend']}/{k['precision']}: {k['reason']}" for k in skipped)
        raise InputError(f"no configuration could be measured ({reasons})")
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": "latency",
        "machine": machine(),
        "software": software(),
        "settings": {**s.model_dump(mode="json"), "model_dir": str(model_dir)},
        "model": {
            "name": model.name,
            "scale": model.scale,
            "generator": model.generator.model_dump(mode="json"),
            "flops_per_frame_whole": generator_flops(
                model.generator, *(-(-s.frame_size // m) * m for _ in range(2))
            ),
        },
        "frame_shape": list(frame.shape),
        "rows": rows,
        "skipped": skipped,
    }


LATENCY_COLUMNS = [
    "engine",
    "prec",
    "tile",
    "batch",
    "p50 ms",
    "p95 ms",
    "p99 ms",
    "frames/s",
    "Mpx/s",
    "TFLOP/s",
    "e2e p50 ms",
    "e2e frames/s",
    "e2e/engine",
    "host peak MB",
    "GPU peak MB",
]


def latency_rows(result: dict[str, Any]) -> list[list[str]]:
    """Table cells, one list per row of ``result["rows"]``, in ``LATENCY_COLUMNS`` order."""
    out = []
    for r in result["rows"]:
        e, t = r["engine_only"], r["end_to_end"]
        ratio = t["p50_ms"] / e["p50_ms"] if t and e["p50_ms"] > 0 else None
        out.append(
            [
                r["engine"],
                r["precision"],
                "whole" if r["tile"] == 0 else str(r["tile"]),
                str(r["batch"]),
                fmt(e["p50_ms"], 4),
                fmt(e["p95_ms"], 4),
                fmt(e["p99_ms"], 4),
                fmt(e["frames_per_s"]),
                fmt(e["mpx_per_s"]),
                fmt(e["tflops"]),
                fmt(t["p50_ms"], 4) if t else "",
                fmt(t["frames_per_s"]) if t else "",
                fmt(ratio) if ratio else "",
                fmt(r["host_peak_rss_mb"], 5),
                fmt(r["gpu_peak_mb"], 5),
            ]
        )
    return out


def latency_markdown(result: dict[str, Any]) -> str:
    """A markdown table of ``result`` with a line naming the machine and the frame."""
    mach = result["machine"]
    h, w = result["frame_shape"]
    head = (
        f"Frame {h}x{w} px, {result['settings']['repeats']} timed runs after "
        f"{result['settings']['warmup']} warm-up; machine: {mach['cpu']} "
        f"({mach['cores']} cores){', GPU ' + mach['gpu'] if mach.get('gpu') else ''}, "
        f"{mach['os']}.\n\n"
    )
    table = markdown_table(LATENCY_COLUMNS, latency_rows(result))
    skipped = "".join(
        f"\nSkipped {k['backend']}/{k['precision']}: {k['reason']}" for k in result["skipped"]
    )
    return head + table + (skipped + "\n" if skipped else "")
