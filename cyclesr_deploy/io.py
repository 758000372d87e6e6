"""Whole-image TIFF / OME-TIFF reading and writing (thin wrappers of the TIFF layer,
:mod:`cyclesr_deploy.frames`), atomic file replacement, pixel-size metadata helpers.

Pixel sizes are in micrometres throughout the package. Writers never overwrite an input in place:
they write ``<name>.part`` next to the target and rename it over the target only when complete,
so a crash leaves either the old file or no file, never half of one.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from cyclesr_deploy.errors import InputError

_UNIT_TO_UM = {
    "nm": 1e-3,
    "µm": 1.0,  # MICRO SIGN U+00B5
    "μm": 1.0,  # GREEK SMALL LETTER MU U+03BC
    "um": 1.0,
    "micron": 1.0,
    "\\u00B5m": 1.0,
    "mm": 1e3,
    "cm": 1e4,
    "m": 1e6,
}


@dataclass
class Image:
    """An image or stack read from disk: data, axes (e.g. ``"YX"``, ``"TYX"``), pixel size (µm)."""

    data: np.ndarray
    axes: str
    pixel_size_um: float | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary ``.part`` path beside ``target``; rename it onto ``target`` on success.

    On any exception the partial file is removed and the target is left untouched.
    ``os.replace`` is atomic on POSIX and on Windows (same volume).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    try:
        yield part
        part.replace(target)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            part.unlink()
        full = disk_full(exc, target) if isinstance(exc, OSError) else exc
        if full is exc:
            raise
        raise full from exc


def disk_full(exc: OSError, target: Path) -> OSError:
    """``exc`` as an ENOSPC error that says "no space left on device" and names ``target``
    when it is one (errno ENOSPC/EDQUOT, or numpy's and tifffile's short-write message
    "N requested and M written"); else ``exc`` itself."""
    short_write = re.search(r"\d+ requested and \d+ written", str(exc)) is not None
    if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)) or short_write:
        return OSError(
            errno.ENOSPC, f"no space left on device (or quota exceeded) writing {target}"
        )
    return exc


def deterministic_uuid(*parts: object) -> str:
    """A UUID derived from ``parts`` (uuid5), so that seeded outputs are byte-identical."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "cyclesr-deploy:" + "/".join(map(str, parts))))


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
    :func:`cyclesr_deploy.frames.write_frames`.

    ``axes`` defaults to ``YX``/``TYX``/``TZYX`` by ndim. ``pixel_size_um`` goes into the OME
    PhysicalSizeX/Y (µm) and the TIFF resolution tags. ``description`` entries become OME
    ``MapAnnotation``-free plain key/values in the Image ``Description`` (kept short: provenance).
    ``uid`` fixes the OME UUID (tifffile draws a random one otherwise), for reproducible files.
    """
    from cyclesr_deploy.frames import StackInfo, write_frames

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


def _ome_pixel_size(ome_xml: str) -> float | None:
    try:
        root = ET.fromstring(ome_xml)
    except ET.ParseError:
        return None
    for el in root.iter():
        if el.tag.endswith("Pixels") and "PhysicalSizeX" in el.attrib:
            unit = el.attrib.get("PhysicalSizeXUnit", "µm")
            scale = _UNIT_TO_UM.get(unit)
            return float(el.attrib["PhysicalSizeX"]) * scale if scale else None
    return None


def _tag_pixel_size(page: tifffile.TiffPage, imagej: Mapping[str, Any] | None) -> float | None:
    tag = page.tags.get("XResolution")
    if tag is None:
        return None
    num, den = tag.value
    if num == 0:
        return None
    px_per_unit = num / den
    unit_tag = page.tags.get("ResolutionUnit")
    unit = int(unit_tag.value) if unit_tag is not None else 2
    if imagej and imagej.get("unit"):
        scale = _UNIT_TO_UM.get(str(imagej["unit"]).strip())
        return (1.0 / px_per_unit) * scale if scale else None
    if unit == 3:  # centimetre
        return 1e4 / px_per_unit
    if unit == 2 and px_per_unit not in (72.0, 96.0, 300.0, 1.0):  # inch; skip screen-DPI defaults
        return 25400.0 / px_per_unit
    return None


def read_tiff(path: str | os.PathLike[str]) -> Image:
    """Read a whole TIFF/OME-TIFF (first series) with its axes and pixel size in µm (or None),
    through :func:`cyclesr_deploy.frames.read_stack`: the shared TIFF layer's opening, error
    messages and memory check (any dtype and channel layout: metrics read RGB files too)."""
    from cyclesr_deploy.frames import read_stack

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
