"""Which file layer a path belongs to: TIFF (:mod:`~cyclesr_deploy.runtime.tiff`) or OME-Zarr
(:mod:`~cyclesr_deploy.runtime.omezarr`, which imports zarr only when a ``*.zarr`` path is met).

The pipeline and the cluster path open inputs with :func:`open_frames` and write outputs with
:func:`write_frames`, so neither cares about the format. ``output_format``: ``same`` (TIFF in ->
TIFF out, Zarr in -> Zarr out), ``tiff`` or ``zarr``; :func:`output_path` names the output.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np

from cyclesr_deploy.errors import require
from cyclesr_deploy.runtime.omezarr import (
    ZARR_SUFFIX,
    ZarrFrameReader,
    is_zarr,
    ngff_axes,
    write_zarr,
    zarr_purpose,
)
from cyclesr_deploy.runtime.tiff import TIFF_SUFFIXES, StackInfo
from cyclesr_deploy.runtime.tiff import open_frames as open_tiff
from cyclesr_deploy.runtime.tiff import read_annotations as read_tiff_annotations
from cyclesr_deploy.runtime.tiff import write_frames as write_tiff

__all__ = [
    "OUTPUT_FORMATS",
    "ZARR_SUFFIX",
    "OutputFormat",
    "check_extras",
    "check_output",
    "input_stat",
    "is_input",
    "is_zarr",
    "open_frames",
    "output_path",
    "read_annotations",
    "write_frames",
]

OutputFormat = Literal["same", "tiff", "zarr"]
OUTPUT_FORMATS: tuple[str, ...] = ("same", "tiff", "zarr")


def is_input(path: Path) -> bool:
    """A file or folder a folder input contributes: a TIFF file or an OME-Zarr folder."""
    if path.name.startswith("."):
        return False
    return (path.is_file() and path.suffix.lower() in TIFF_SUFFIXES) or is_zarr(path)


def check_extras(inputs: Iterable[Path], output_format: str = "same") -> None:
    """Raise MissingExtraError (naming the ``zarr`` extra) before any work when an input or
    the output is OME-Zarr and zarr or ome-zarr-models is missing."""
    if output_format == "zarr" or any(is_zarr(p) for p in inputs):
        for module in ("zarr", "ome_zarr_models"):
            require(module, "zarr", zarr_purpose())


def open_frames(path: str | Path) -> Any:
    """A frame reader (``info``, ``read(i)``, context manager) for a TIFF or an OME-Zarr."""
    if is_zarr(path):
        return ZarrFrameReader(path)
    return open_tiff(path)


def _stem(name: str) -> str:
    """``name`` without its image suffixes (``.ome.tif``, ``.tiff``, ``.ome.zarr``, ``.zarr``)."""
    low = name.lower()
    for suffix in (".ome.tiff", ".ome.tif", ".ome.zarr", *TIFF_SUFFIXES, ZARR_SUFFIX):
        if low.endswith(suffix):
            return name[: -len(suffix)]
    return name


def output_path(input_path: str | Path, out_dir: str | Path, fmt: str = "same") -> Path:
    """Where ``input_path``'s result goes in ``out_dir``: the same name for the same format,
    else ``<stem>.ome.zarr`` (Zarr output) or ``<stem>.ome.tif`` (TIFF output)."""
    name = Path(input_path).name
    zarr_in = Path(input_path).suffix.lower() == ZARR_SUFFIX
    if fmt == "same" or (fmt == "zarr") == zarr_in:
        return Path(out_dir) / name
    if fmt == "zarr":
        return Path(out_dir) / f"{_stem(name)}.ome{ZARR_SUFFIX}"
    return Path(out_dir) / f"{_stem(name)}.ome.tif"


def check_output(target: str | Path, info: StackInfo) -> None:
    """InputError, before any frame is computed, when the output ``info`` describes cannot be
    written at ``target`` (an OME-Zarr output: axes NGFF cannot express)."""
    if Path(target).suffix.lower() == ZARR_SUFFIX:
        ngff_axes(info)


def input_stat(path: str | Path) -> tuple[int, int]:
    """(size, mtime_ns) identifying the content of an input, for resuming and caching: a
    file's stat; for an OME-Zarr folder (whose own stat does not change when chunks are
    rewritten in place) the total size and the newest mtime of its metadata files and of
    every file and folder under its full-resolution level (a removed chunk changes its
    folder's mtime). OSError when it cannot be read."""
    p = Path(path)
    if not is_zarr(p):
        st = p.stat()
        return st.st_size, st.st_mtime_ns
    size, newest = 0, p.stat().st_mtime_ns
    for meta in ("zarr.json", ".zattrs", ".zgroup"):
        if (p / meta).is_file():
            st = (p / meta).stat()
            size, newest = size + st.st_size, max(newest, st.st_mtime_ns)
    level0 = p / _level0_path(p)
    for root, _dirs, files in os.walk(level0):
        newest = max(newest, Path(root).stat().st_mtime_ns)
        for name in files:
            st = (Path(root) / name).stat()
            size, newest = size + st.st_size, max(newest, st.st_mtime_ns)
    return size, newest


def _level0_path(zarr_dir: Path) -> str:
    """The first dataset's path of an OME-Zarr's multiscales (NGFF 0.5 ``zarr.json`` or 0.4
    ``.zattrs``), read as JSON (no zarr needed); "0" when not found. Hand-written: two keys."""
    for meta, keys in (("zarr.json", ("attributes", "ome")), (".zattrs", ())):
        with contextlib.suppress(OSError, ValueError, KeyError, IndexError, TypeError):
            attrs = json.loads((zarr_dir / meta).read_text(encoding="utf-8"))
            for key in keys:
                attrs = attrs[key]
            return str(attrs["multiscales"][0]["datasets"][0]["path"])
    return "0"


def write_frames(
    target: str | Path,
    info: StackInfo,
    frames: Iterable[np.ndarray],
    *,
    overwrite: bool = False,
    bigtiff: bool | None = None,
    pyramid: int = 0,
    annotations: Callable[[], Mapping[str, str] | None] | None = None,
) -> Path:
    """Write ``frames`` to ``target`` in the format its name says (``*.zarr``: OME-Zarr with
    ``pyramid`` extra levels; else TIFF), atomically (see the two layers); ``annotations``
    (called after the last frame): key -> text for the output's metadata."""
    if Path(target).suffix.lower() == ZARR_SUFFIX:
        return write_zarr(
            target, info, frames, overwrite=overwrite, pyramid=pyramid, annotations=annotations
        )
    return write_tiff(
        target, info, frames, overwrite=overwrite, bigtiff=bigtiff, annotations=annotations
    )


def read_annotations(path: str | Path) -> dict[str, str] | None:
    """What ``write_frames(..., annotations=)`` recorded in the output ``path`` (None: nothing),
    e.g. the untrusted frames of ``--untrusted mark``."""
    if is_zarr(Path(path)):
        from cyclesr_deploy.runtime.omezarr import read_annotations as read_zarr

        return read_zarr(path)
    return read_tiff_annotations(path)
