"""Image quality of each method on a paired test set (``cyclesr bench quality``).

LR and HR TIFFs are paired by file name (:func:`~cyclesr_deploy.metrics.files.pair_paths`).
Rows (methods): ``input`` (the LR image; ``bicubic``: upsampled to the HR grid when the HR
images are larger), each given model (the frame runner of ``cyclesr enhance`` with its default
settings, on the LR plane as stored: the same output, in the input's dtype, and the same trust
as ``cyclesr enhance`` gives), and ``HR`` (the ground truth against itself: its reference-free
metrics, and FRC against ``hr_repeat``, a second HR acquisition, when given). Each row gets
mean and population std over the images of every
:class:`~cyclesr_deploy.metrics.QualityReport` field
(:func:`~cyclesr_deploy.metrics.files.summarize`). A model with a trust calibration
(``trust.json``) also gets each image's trust (``per_image[i]["trust"]``) and the row's mean
trust and number of images flagged untrusted (``trust``: mean, flagged, n; the table's last
column).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cyclesr_deploy.bench import SCHEMA_VERSION, fmt, machine, markdown_table, software
from cyclesr_deploy.errors import InputError

#: (QualityReport field, column title) of the table.
QUALITY_COLUMNS = [
    ("psnr", "PSNR dB"),
    ("ssim", "SSIM"),
    ("mse", "MSE"),
    ("nrmse", "NRMSE"),
    ("bgstd", "BGSTD"),
    ("cuf_ring_index", "CUF"),
    ("decorrelation_resolution_px", "decorr. res. px"),
    ("decorrelation_resolution", "decorr. res. nm"),
    ("frc_resolution_px", "FRC res. px"),
]


def _read(path: Path) -> tuple[np.ndarray, float | None]:
    """One plane as stored (uint8/uint16/float32 kept: what ``cyclesr enhance`` reads; other
    dtypes as float32) and its pixel size, um."""
    from cyclesr_deploy.images import read_image2d

    img = read_image2d(path)
    data = np.asarray(img.data)
    if data.dtype not in (np.uint8, np.uint16, np.float32):
        data = data.astype(np.float32)
    return data, img.pixel_size_um


def _plane(path: Path) -> tuple[np.ndarray, float | None]:
    data, px_um = _read(path)
    return data.astype(np.float32), px_um


def upsample(lr: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bicubic (order 3) resize of ``lr`` to ``shape``, float32."""
    from skimage.transform import resize

    return resize(lr, shape, order=3, mode="reflect", anti_aliasing=False).astype(np.float32)


def _trust_summary(items: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Mean trust and the number of images flagged untrusted, over a method's images."""
    scored = [it["trust"] for it in items if it.get("trust") is not None]
    if not scored:
        return None
    mean = float(np.mean([t["trust"] for t in scored]))
    return {"mean": mean, "flagged": sum(not t["trusted"] for t in scored), "n": len(scored)}


def run_quality(
    lr_dir: str | Path,
    hr_dir: str | Path,
    models: dict[str, str | Path] | None = None,
    *,
    hr_repeat_dir: str | Path | None = None,
    pixel_size_nm: float | None = None,
    scaling: str = "gt",
    backend: str = "auto",
    device: str = "auto",
    keep_images: bool = False,
    on_progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Evaluate every method on every LR/HR pair.

    ``models``: display name -> model folder. ``pixel_size_nm``: HR pixel size (default: the
    HR file's metadata). Returns ``{schema_version, kind: "quality", machine, software,
    settings, images, methods, rows}``; ``rows`` one per method: ``method``, ``n``, ``mean``
    and ``std`` (dicts over QualityReport fields), ``per_image`` (name, report). With
    ``keep_images`` the result also has ``"_images"`` (the first pair's planes per method,
    for :func:`~cyclesr_deploy.bench.plots.quality_figure`; not JSON).
    """
    from cyclesr_deploy.engines import open_engine
    from cyclesr_deploy.metrics import evaluate
    from cyclesr_deploy.metrics.files import pair_paths, summarize
    from cyclesr_deploy.model import load_model
    from cyclesr_deploy.runtime.runner import EnhanceConfig, FrameRunner

    say = on_progress or (lambda _msg: None)
    lr_dir, hr_dir = Path(lr_dir), Path(hr_dir)
    for name, folder in (("--lr", lr_dir), ("--hr", hr_dir)):
        if not folder.is_dir():
            raise InputError(f"{name} {folder}: not a folder")
    pairs = [(n, a, b) for n, a, b in pair_paths(lr_dir, hr_dir) if a is not None and b is not None]
    if not pairs:
        raise InputError(f"no TIFF in {lr_dir} has a partner of the same name in {hr_dir}")
    repeats: dict[str, Path] = {}
    if hr_repeat_dir is not None:
        repeats = {n: r for n, _h, r in pair_paths(hr_dir, Path(hr_repeat_dir)) if r is not None}
    models = dict(models or {})
    loaded = {name: load_model(folder) for name, folder in models.items()}
    per_method: dict[str, list[dict[str, Any]]] = {}
    images: dict[str, np.ndarray] = {}
    cutoffs: dict[str, float] = {}
    px_nm = pixel_size_nm
    first = pairs[0][0]

    def add(method: str, name: str, pred: np.ndarray, gt: np.ndarray, rep=None, trust=None) -> None:
        report = evaluate(
            pred,
            gt,
            pixel_size=px_nm,
            scaling=scaling,
            prediction_repeat=rep,  # type: ignore[arg-type]
        )
        item = {"name": name, "report": report.model_dump(mode="json")}
        if trust is not None:
            item["trust"] = trust
        per_method.setdefault(method, []).append(item)
        if name == first:
            images[method] = pred
            cutoffs[method] = report.decorrelation_kc_max

    lrs: dict[str, np.ndarray] = {}
    hrs: dict[str, np.ndarray] = {}
    input_label = "input"
    for name, lr_path, hr_path in pairs:
        raw, _ = _read(lr_path)  # as stored: what the frame runner takes
        lr = raw.astype(np.float32)
        hr, hr_px_um = _plane(hr_path)
        if px_nm is None and hr_px_um is not None:
            px_nm = 1e3 * hr_px_um
        lrs[name], hrs[name] = raw, hr
        base = lr
        if lr.shape != hr.shape:
            input_label = "bicubic"
            base = upsample(lr, hr.shape)
        say(f"{name}: {input_label}")
        add(input_label, name, base, hr)
    cfg = EnhanceConfig()  # enhance's defaults: the same output and trust as `cyclesr enhance`
    for method, folder in models.items():
        model = loaded[method]
        engine = open_engine(
            folder,
            backend,  # type: ignore[arg-type]
            device=device,  # type: ignore[arg-type]
            tiling=cfg.engine_tiling,
            stats=cfg.stats,
        )
        with engine as e:
            say(f"{method}: {e.name}")
            runner = FrameRunner(e, model, cfg)  # the one frame runner; its trust scorer
            for name, _lr_path, _hr_path in pairs:
                out, trust = runner.run(lrs[name])
                pred = out.astype(np.float32)
                if pred.shape != hrs[name].shape:
                    raise InputError(
                        f"model {method!r} makes {pred.shape} from {name} but the HR image is "
                        f"{hrs[name].shape}"
                    )
                add(method, name, pred, hrs[name], trust=trust and trust.record())
    for name, _lr_path, _hr_path in pairs:
        rep = None
        if name in repeats:
            rep, _ = _plane(repeats[name])
            if rep.shape != hrs[name].shape:
                raise InputError(f"--hr-repeat {name}: shape {rep.shape} != HR {hrs[name].shape}")
        add("HR", name, hrs[name], hrs[name], rep)
    rows = []
    for method, items in per_method.items():
        mean, std = summarize([it["report"] for it in items])
        row = {"method": method, "n": len(items), "mean": mean, "std": std, "per_image": items}
        trust = _trust_summary(items)
        if trust is not None:
            row["trust"] = trust
        rows.append(row)
    result: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "kind": "quality",
        "machine": machine(),
        "software": software(),
        "settings": {
            "lr": str(lr_dir),
            "hr": str(hr_dir),
            "hr_repeat": None if hr_repeat_dir is None else str(hr_repeat_dir),
            "models": {k: str(v) for k, v in models.items()},
            "pixel_size_nm": px_nm,
            "scaling": scaling,
            "backend": backend,
        },
        "images": [n for n, _a, _b in pairs],
        "methods": list(per_method),
        "rows": rows,
    }
    if keep_images:
        result["_images"] = {"name": first, "planes": images, "kc": cutoffs}
    return result


def _scored(result: dict[str, Any]) -> bool:
    return any("trust" in row for row in result["rows"])


def quality_header(result: dict[str, Any]) -> list[str]:
    """The table's column titles (:func:`quality_rows`' cells)."""
    header = ["method", "n"] + [t for _k, t in QUALITY_COLUMNS]
    return [*header, "trust (flagged)"] if _scored(result) else header


def quality_rows(result: dict[str, Any]) -> list[list[str]]:
    out = []
    for row in result["rows"]:
        cells = [row["method"], str(row["n"])]
        for key, _title in QUALITY_COLUMNS:
            mean, std = row["mean"].get(key), row["std"].get(key)
            if mean is None:
                cells.append("")
            elif std is None or std != std or row["n"] < 2:
                cells.append(fmt(mean, 4))
            else:
                cells.append(f"{fmt(mean, 4)} ± {fmt(std, 2)}")
        if _scored(result):  # models with a trust calibration: mean trust, images flagged
            t = row.get("trust")
            cells.append(f"{t['mean']:.3g} ({t['flagged']}/{t['n']})" if t else "")
        out.append(cells)
    return out


def quality_markdown(result: dict[str, Any]) -> str:
    s = result["settings"]
    px = s["pixel_size_nm"]
    head = (
        f"{len(result['images'])} image pair(s) from {Path(s['lr']).name}/ vs "
        f"{Path(s['hr']).name}/; mean ± std; "
        f"scaling {s['scaling']}; HR pixel size "
        f"{'unknown' if px is None else f'{px:g} nm'}; machine: {result['machine']['cpu']}.\n\n"
    )
    return head + markdown_table(quality_header(result), quality_rows(result))
