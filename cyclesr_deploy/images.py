"""Whole images and stacks in memory, read and written through the TIFF layer
(:mod:`cyclesr_deploy.runtime.tiff`): for metrics, training data, synthetic data, the demo and
benchmarks, which want a whole array with its axes and pixel size (µm) rather than a stream of
frames.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cyclesr_deploy.errors import InputError
from cyclesr_deploy.runtime.tiff import StackInfo, read_stack, write_frames

__all__ = ["Image", "read_image2d", "read_tiff", "squeeze_axes", "write_tiff"]


@dataclass
class Image:
    """An image or stack read from disk: data, axes (e.g. ``"YX"``, ``"TYX"``), pixel size (µm)."""

    data: np.ndarray
    axes: str
    pixel_size_um: float | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None


def write_tiff(
    path: str | os.PathLike[str],
    data: np.ndarray,
    *,
    axes: str | None = None,
    pixel_size_um: float | None = None,
    description: Mapping[str, Any] | None = None,
    uid: str | None = None,
    overwrite: bool = True,
) -> Path:
    """Write ``data`` as an OME-TIFF (BigTIFF above 2 GB), atomically, through
    :func:`cyclesr_deploy.runtime.tiff.write_frames`.

    ``axes`` defaults to ``YX``/``TYX``/``TZYX`` by ndim. ``pixel_size_um`` goes into the OME
    PhysicalSizeX/Y (µm) and the TIFF resolution tags. ``description`` entries become OME
    ``MapAnnotation``-free plain key/values in the Image ``Description`` (kept short: provenance).
    ``uid`` fixes the OME UUID (tifffile draws a random one otherwise), for reproducible files.
    """
    path = Path(path)
    arr = np.asarray(data)
    if axes is None:
        axes = {2: "YX", 3: "TYX", 4: "TZYX"}.get(arr.ndim)
        if axes is None:
            raise InputError(f"data: cannot infer axes for a {arr.ndim}-D array; pass axes=")
    if len(axes) != arr.ndim:
        raise InputError(f"axes {axes!r} does not match data with shape {arr.shape}")
    extra: dict[str, Any] = {}
    if description:
        extra["Description"] = "; ".join(f"{k}={v}" for k, v in description.items())
    if uid is not None:
        extra["UUID"] = uid
    px = float(pixel_size_um) if pixel_size_um is not None else None
    info = StackInfo(None, axes, arr.shape, arr.dtype, pixel_size_um=px)
    frames = arr.reshape(-1, *arr.shape[-2:])
    return write_frames(path, info, frames, overwrite=overwrite, ome_extra=extra)


def read_tiff(path: str | os.PathLike[str]) -> Image:
    """Read a whole TIFF/OME-TIFF (first series) with its axes and pixel size in µm (or None),
    through :func:`cyclesr_deploy.runtime.tiff.read_stack`: the shared TIFF layer's opening, error
    messages and memory check (any dtype and channel layout: metrics read RGB files too)."""
    data, info = read_stack(path)
    desc = {}
    if info.ome_xml:
        m = re.search(r"<Description>(.*?)</Description>", info.ome_xml, re.S)
        if m:
            desc = dict(kv.split("=", 1) for kv in m.group(1).split("; ") if "=" in kv)
    return Image(
        data=data, axes=info.axes, pixel_size_um=info.pixel_size_um, metadata=desc, path=Path(path)
    )


def squeeze_axes(data: np.ndarray, axes: str) -> tuple[np.ndarray, str]:
    """Drop singleton axes from ``data`` and their letters from ``axes`` (a 1x1 image stays 2-D)."""
    keep = [i for i, n in enumerate(data.shape) if n != 1]
    if len(keep) < 2:
        keep = list(range(data.ndim - 2, data.ndim))
    return data.reshape([data.shape[i] for i in keep]), "".join(axes[i] for i in keep)


def read_image2d(path: str | os.PathLike[str], name: str = "image") -> Image:
    """Read a TIFF that must hold exactly one 2-D plane (singleton axes are dropped)."""
    img = read_tiff(path)
    data, axes = squeeze_axes(img.data, img.axes)
    if data.ndim != 2:
        raise InputError(
            f"{name} ({path}): expected one 2-D image, found shape {img.data.shape} "
            f"(axes {img.axes}); pass a single plane"
        )
    img.data, img.axes = data, axes
    return img
