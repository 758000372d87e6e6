"""Evaluate predictions stored on disk: one file, one TYX/ZYX stack (plane by plane) or two folders
paired by file name. Bad items are reported and skipped; the others are still evaluated.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict

from cyclesr_deploy.errors import InputError
from cyclesr_deploy.images import read_tiff, squeeze_axes
from cyclesr_deploy.io import PART_SUFFIX
from cyclesr_deploy.runtime.tiff import TIFF_SUFFIXES


class ItemResult(BaseModel):
    model_config = ConfigDict(ser_json_inf_nan="strings")

    name: str
    report: dict[str, Any] | None = None
    error: str | None = None


class FilesEvaluation(BaseModel):
    """Per-item reports plus mean and population std of every numeric metric over the good items."""

    model_config = ConfigDict(ser_json_inf_nan="strings")

    prediction: str
    ground_truth: str
    scaling: str
    items: list[ItemResult]
    mean: dict[str, float]
    std: dict[str, float]

    @property
    def n_ok(self) -> int:
        return sum(it.error is None for it in self.items)

    @property
    def n_failed(self) -> int:
        return sum(it.error is not None for it in self.items)


def _tiffs(folder: Path) -> dict[str, Path]:
    return {
        p.name: p
        for p in sorted(folder.iterdir())
        if p.is_file() and p.suffix.lower() in TIFF_SUFFIXES and not p.name.endswith(PART_SUFFIX)
    }


def pair_paths(prediction: Path, ground_truth: Path) -> list[tuple[str, Path | None, Path | None]]:
    """Pair two files, or the TIFFs of two folders by name; a name on one side only is kept
    with ``None`` on the other so it can be reported."""
    prediction, ground_truth = Path(prediction), Path(ground_truth)
    for p, arg in ((prediction, "PRED"), (ground_truth, "GT")):
        if not p.exists():
            raise InputError(f"{arg}: {p} does not exist")
    if prediction.is_dir() != ground_truth.is_dir():
        raise InputError("PRED and GT must both be files or both be folders")
    if prediction.is_file():
        return [(prediction.name, prediction, ground_truth)]
    preds, gts = _tiffs(prediction), _tiffs(ground_truth)
    if not preds:
        raise InputError(f"PRED: no .tif/.tiff files in {prediction}")
    names = sorted(set(preds) | set(gts))
    return [(n, preds.get(n), gts.get(n)) for n in names]


def _planes(data: np.ndarray, axes: str, name: str) -> list[tuple[str, np.ndarray]]:
    """Split a stack into 2-D planes named ``name[T=3]`` (``name[C=1]`` per channel).

    Singleton axes are dropped first; channel/sample axes (``C``, ``S``, e.g. RGB ``YXS``) are
    moved in front of Y and X so that each channel is evaluated as its own plane.
    """
    data, axes = squeeze_axes(data, axes)
    if data.ndim == 2:
        return [(name, data)]
    spatial = [i for i, a in enumerate(axes) if a in "YX"]
    if len(spatial) == 2 and spatial != [data.ndim - 2, data.ndim - 1]:
        lead = [i for i in range(data.ndim) if i not in spatial]
        data = np.transpose(data, [*lead, *spatial])
        axes = "".join(axes[i] for i in [*lead, *spatial])
    return [
        (f"{name}[{','.join(f'{axes[k]}={i}' for k, i in enumerate(idx))}]", data[idx])
        for idx in np.ndindex(*data.shape[:-2])
    ]


def evaluate_files(
    prediction: str | Path,
    ground_truth: str | Path,
    *,
    pixel_size: float | None = None,
    scaling: str = "gt",
    prediction_repeat: str | Path | None = None,
    on_item: Callable[[ItemResult], None] | None = None,
) -> FilesEvaluation:
    """Evaluate prediction file(s) against ground truth; see module docstring.

    ``pixel_size`` (µm) defaults to the ground truth file's metadata. ``prediction_repeat`` (a
    second, independently acquired and processed prediction, single-file mode only) adds FRC.
    """
    from cyclesr_deploy.metrics import evaluate

    pairs = pair_paths(Path(prediction), Path(ground_truth))
    if prediction_repeat is not None and len(pairs) != 1:
        raise InputError("--repeat is only supported when PRED and GT are single files")
    items: list[ItemResult] = []

    def emit(item: ItemResult) -> None:
        items.append(item)
        if on_item is not None:
            on_item(item)

    for name, p_path, g_path in pairs:
        if p_path is None or g_path is None:
            side = "GT" if g_path is None else "PRED"
            emit(ItemResult(name=name, error=f"no matching file in {side}"))
            continue
        try:
            pred, gt = read_tiff(p_path), read_tiff(g_path)
            rep = read_tiff(prediction_repeat) if prediction_repeat is not None else None
            if pred.data.shape != gt.data.shape:
                raise InputError(
                    f"PRED {p_path.name} has shape {pred.data.shape} but GT has {gt.data.shape}"
                )
            if rep is not None and rep.data.shape != pred.data.shape:
                raise InputError(
                    f"--repeat has shape {rep.data.shape} but PRED has {pred.data.shape}"
                )
            px = pixel_size if pixel_size is not None else gt.pixel_size_um
            p_planes = _planes(pred.data, pred.axes, name)
            g_planes = _planes(gt.data, gt.axes, name)
            r_planes = _planes(rep.data, rep.axes, name) if rep is not None else None
        except InputError as exc:
            emit(ItemResult(name=name, error=str(exc)))
            continue
        for k, ((label, p), (_, g)) in enumerate(zip(p_planes, g_planes, strict=True)):
            try:
                r = r_planes[k][1] if r_planes is not None else None
                report = evaluate(p, g, pixel_size=px, scaling=scaling, prediction_repeat=r)
                emit(ItemResult(name=label, report=report.model_dump(mode="python")))
            except InputError as exc:
                emit(ItemResult(name=label, error=str(exc)))
    mean, std = summarize([it.report for it in items if it.report is not None])
    return FilesEvaluation(
        prediction=str(prediction),
        ground_truth=str(ground_truth),
        scaling=scaling,
        items=items,
        mean=mean,
        std=std,
    )


def summarize(reports: list[dict[str, Any]]) -> tuple[dict[str, float], dict[str, float]]:
    """Mean and population std of every numeric, finite-or-inf field present in all reports."""
    if not reports:
        return {}, {}
    mean: dict[str, float] = {}
    std: dict[str, float] = {}
    for key, value in reports[0].items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        vals = [r.get(key) for r in reports]
        if any(v is None or isinstance(v, bool) for v in vals):
            continue
        arr = np.asarray(vals, dtype=float)
        if np.isinf(arr).any():
            mean[key], std[key] = float(arr.mean()), math.nan
        else:
            mean[key], std[key] = float(arr.mean()), float(arr.std())
    return mean, std
