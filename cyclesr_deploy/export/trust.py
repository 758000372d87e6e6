"""``cyclesr export trust``: calibrate a model folder's per-frame trust score on frames of its
training domain, and say what state a folder's calibration is in (``cyclesr export check``).

Frames are read through the runtime's one file layer (``runtime.formats.open_frames``: TIFF,
OME-TIFF, OME-Zarr) and handed to :func:`cyclesr_deploy.trust.calibrate.calibrate`, which runs
them through the one frame runner and writes ``trust.json`` (tied to the weights' sha256).
``--data`` defaults to the LR folder the model was trained on (``model.json`` provenance
``train_a``) when it still exists.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np

from cyclesr_deploy.errors import InputError
from cyclesr_deploy.model import ModelFolder, load_model

__all__ = ["MAX_FRAMES", "calibrate_model", "calibration_state", "default_data", "frames_of"]

log = logging.getLogger(__name__)

MAX_FRAMES = 64  # calibration frames by default, spread evenly over the data's frames

State = Literal["ok", "stale", "missing"]


def default_data(model_dir: str | Path) -> Path:
    """The model's recorded training LR folder (provenance ``train_a``); InputError naming
    ``--data`` when none is recorded or it no longer exists."""
    train_a = load_model(model_dir).provenance.train_a
    if train_a and Path(train_a).exists():
        return Path(train_a)
    where = f" ({train_a} no longer exists)" if train_a else ""
    raise InputError(
        f"{model_dir}: no training LR folder to calibrate trust on{where}; give in-domain LR "
        "frames with --data FOLDER_OR_STACK"
    )


def frames_of(data: str | Path, max_frames: int = MAX_FRAMES) -> Iterator[np.ndarray]:
    """Up to ``max_frames`` 2-D frames of ``data`` (a TIFF/OME-Zarr file or stack, or a folder
    of them), spread evenly over all their frames, read one at a time."""
    from cyclesr_deploy.runtime.formats import open_frames
    from cyclesr_deploy.runtime.pipeline import collect_inputs

    if max_frames < 1:
        raise InputError(f"--max-frames must be at least 1, got {max_frames}")
    paths = collect_inputs([data])
    counts = []
    for p in paths:
        with open_frames(p) as reader:
            counts.append(reader.info.n_frames)
    total = sum(counts)
    if not total:
        raise InputError(f"--data {data}: no frames")
    picks = np.unique(np.linspace(0, total - 1, min(max_frames, total)).round().astype(int))
    starts = np.cumsum([0, *counts])
    for i, p in enumerate(paths):
        mine = picks[(picks >= starts[i]) & (picks < starts[i + 1])] - starts[i]
        if len(mine):
            with open_frames(p) as reader:
                for k in mine:
                    yield reader.read(int(k))


def calibrate_model(
    model_dir: str | Path,
    data: str | Path | None = None,
    *,
    backend: str = "auto",
    precision: str = "default",
    max_frames: int = MAX_FRAMES,
):
    """Calibrate ``model_dir``'s trust score on ``data`` (None: :func:`default_data`); writes
    ``trust.json`` and returns the :class:`~cyclesr_deploy.trust.calibration.TrustCalibration`."""
    from cyclesr_deploy.builtin import resolve_model
    from cyclesr_deploy.trust.calibrate import calibrate

    model_dir = resolve_model(model_dir)
    source = Path(data) if data is not None else default_data(model_dir)
    frames = frames_of(source, max_frames)
    return calibrate(model_dir, frames, data=str(source), backend=backend, precision=precision)


def calibration_state(model_dir: str | Path) -> tuple[State, str]:
    """(``ok`` | ``stale`` | ``missing``, one line saying why and what to run)."""
    from cyclesr_deploy.trust.calibration import RENEW_HINT, read_calibration

    folder = ModelFolder(model_dir)
    hint = RENEW_HINT.format(d=folder.path)
    try:
        cal = read_calibration(folder.path)
    except InputError as exc:
        return "stale", str(exc)
    if cal is None:
        return "missing", f"no {folder.trust_json.name}: frames are not scored; run '{hint}'"
    return "ok", (
        f"{cal.n_frames} frames of {cal.data}, threshold {cal.threshold:.3g}, "
        f"false alarms {cal.false_alarm_rate:.1%} on them ({cal.created or 'undated'})"
    )
