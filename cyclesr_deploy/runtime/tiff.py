"""The TIFF layer: every TIFF the package reads or writes goes through this module (tifffile).

* reading: :class:`FrameReader`/:func:`open_frames` (lazy frames, the input rules of
  :func:`check_layout`), :func:`read_stack` (a whole series, any layout: ``images.read_tiff``);
* files still being written: :func:`probe_pages` (complete pages, announced count, refusals)
  and :func:`read_page` (one complete page of a growing file);
* writing: :func:`write_frames` (a stack of known size) and :class:`StackAppender` (a stack
  that grows), both atomic (``name.part``, renamed when complete) and keeping axes, metadata
  and the pixel size divided by the scale (:func:`output_info`); ``images.write_tiff`` wraps
  :func:`write_frames`;
* resources: a frame (or a series read whole) is checked against :func:`available_memory`
  before anything is decoded; a full disk is reported as "no space left on device" with the
  file's name (``io.atomic_path``/``io.disk_full``) and the partial file removed.

Reading (:class:`FrameReader`, :func:`open_frames`) never loads a whole stack: the first series is
validated once (dtype, axes, size, completeness), then each frame is read from its own page (or
from a read-only memory map for contiguous files whose pages do not map one-to-one to frames).
Singleton axes are dropped (a ``CYX`` stack with C=1 reads as ``YX``); every axis other than
Y and X is a frame axis (``TYX``, ``ZYX``, ``TZYX``, ...).

Writing (:func:`write_frames`) takes an iterable of frames and writes them as they come, through
tifffile's iterator interface with the shape known up front, into ``<name>.part``, renamed onto the
target only once every frame is written. The format follows the input:

* OME-TIFF input -> OME-TIFF, with the input's OME-XML kept (first image only): sizes and
  ``PhysicalSizeX/Y`` updated for the scale factor, ``TiffData`` rewritten for the new file;
* ImageJ hyperstack -> ImageJ hyperstack, with unit, spacing, frame interval, labels, info and
  properties kept;
* any other TIFF -> OME-TIFF with the axes and pixel size (a shaped TIFF when its axes have no
  OME equivalent, e.g. the ``I`` of a plain multi-page file).

TIFF resolution tags are multiplied by the scale factor (pixels per unit) in every format.
BigTIFF is used when the output exceeds 2 GiB (ImageJ files excepted: tifffile writes those as
ImageJ's own contiguous large-file layout).
"""

from __future__ import annotations

import contextlib
import io as _io
import json
import logging
import math
import os
import sys
import threading
import uuid
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import tifffile

from cyclesr_deploy import __version__
from cyclesr_deploy.errors import InputError
from cyclesr_deploy.io import atomic_path, disk_full, part_path

__all__ = [
    "SUPPORTED_DTYPES",
    "TIFF_SUFFIXES",
    "UNIT_TO_UM",
    "Frame",
    "FrameReader",
    "PageProbe",
    "StackAppender",
    "StackInfo",
    "available_memory",
    "check_layout",
    "check_memory",
    "ome_pixel_size",
    "open_frames",
    "output_info",
    "probe_pages",
    "read_frames",
    "read_page",
    "read_stack",
    "tag_pixel_size",
    "write_frames",
]

SUPPORTED_DTYPES: tuple[np.dtype, ...] = (
    np.dtype(np.uint8),
    np.dtype(np.uint16),
    np.dtype(np.float32),
)
TiffKind = Literal["ome", "imagej", "tiff"]

# axes tifffile's OME writer accepts (TZCYX plus the modulo/extra dimensions it maps)
UNIT_TO_UM = {
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


TIFF_SUFFIXES = (".tif", ".tiff")  # what counts as a TIFF file name (case-insensitive)
_OME_AXES = set("TZCYXQRAPHEL")
# ImageJ metadata kept from input to output (display ranges are dropped: intensities change)
_IMAGEJ_KEYS = (
    "unit",
    "spacing",
    "finterval",
    "fps",
    "loop",
    "Info",
    "Labels",
    "Properties",
    "LUTs",
    "tunit",
    "zunit",
)
_BIGTIFF_BYTES = 2**31 - 2**25  # as images.write_tiff: above ~2 GiB
_MAX_NON_STREAMABLE = (
    2**30
)  # layouts that cannot be read frame by frame are loaded whole up to 1 GiB


@dataclass(frozen=True)
class StackInfo:
    """What is known about a file's first series before reading pixels.

    ``axes``/``shape`` are tifffile's (singleton axes dropped), the last two being Y and X;
    ``pixel_size_um`` is the XY pixel size in µm or None; ``resolution`` the raw TIFF
    resolution tags ((num, den) pixels per unit, twice) and ``resolution_unit`` their unit;
    ``ome_xml``/``imagej_metadata`` the input's metadata to carry over.
    """

    path: Path | None
    axes: str
    shape: tuple[int, ...]
    dtype: np.dtype
    kind: TiffKind = "tiff"
    pixel_size_um: float | None = None
    resolution: tuple[tuple[int, int], tuple[int, int]] | None = None
    resolution_unit: int | None = None
    ome_xml: str | None = None
    imagej_metadata: dict[str, Any] | None = field(default=None, repr=False)
    notes: tuple[str, ...] = ()
    # an OME-Zarr input's NGFF axes (runtime.omezarr.NgffAxes), carried to a Zarr output
    ngff: Any = field(default=None, repr=False)
    # an output's Y/X scale over its input's (output_info): the NGFF pixel size and origin
    upscale: int = 1

    @property
    def frame_shape(self) -> tuple[int, int]:
        return (self.shape[-2], self.shape[-1])

    @property
    def frame_axes(self) -> str:
        """Axes iterated over (all but Y and X), e.g. ``"TZ"``; empty for one 2-D image."""
        return self.axes[:-2]

    @property
    def n_frames(self) -> int:
        return math.prod(self.shape[:-2])

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    def frame_coords(self, index: int) -> dict[str, int]:
        """Frame ``index`` as named coordinates, e.g. ``{"T": 1, "Z": 4}``."""
        idx = np.unravel_index(index, self.shape[:-2]) if self.frame_axes else ()
        return {a: int(i) for a, i in zip(self.frame_axes, idx, strict=True)}


@dataclass(frozen=True)
class Frame:
    """One 2-D plane of a stack: its position in C order over the frame axes, and the pixels."""

    index: int
    data: np.ndarray


class _TiffLogCapture(logging.Handler):
    """Collects tifffile's warnings/errors logged by the current thread (tifffile logs, rather
    than raises, when it meets a damaged IFD or OME-XML and then falls back to a wrong layout)."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.thread = threading.get_ident()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread:
            self.messages.append(record.getMessage())


@contextlib.contextmanager
def _capture_tifffile_log() -> Iterator[_TiffLogCapture]:
    logger = logging.getLogger("tifffile")
    handler = _TiffLogCapture()
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


def _err(path: Path, msg: str) -> InputError:
    return InputError(f"{path}: {msg}")


def ome_pixel_size(ome_xml: str) -> float | None:
    """The pixel size in µm of the first ``Pixels`` of an OME-XML, or None."""
    try:
        root = ET.fromstring(ome_xml)
    except ET.ParseError:
        return None
    for el in root.iter():
        if el.tag.endswith("Pixels") and "PhysicalSizeX" in el.attrib:
            unit = el.attrib.get("PhysicalSizeXUnit", "µm")
            scale = UNIT_TO_UM.get(unit)
            return float(el.attrib["PhysicalSizeX"]) * scale if scale else None
    return None


def tag_pixel_size(page: tifffile.TiffPage, imagej: Mapping[str, Any] | None) -> float | None:
    """The pixel size in µm from a page's resolution tags (and ImageJ unit), or None."""
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
        scale = UNIT_TO_UM.get(str(imagej["unit"]).strip())
        return (1.0 / px_per_unit) * scale if scale else None
    if unit == 3:  # centimetre
        return 1e4 / px_per_unit
    if unit == 2 and px_per_unit not in (72.0, 96.0, 300.0, 1.0):  # inch; skip screen-DPI defaults
        return 25400.0 / px_per_unit
    return None


def check_layout(
    path: Path, axes: str, shape: tuple[int, ...], dtype: np.dtype, samples: int = 1
) -> None:
    """The input rules every entry point applies (``enhance``, ``watch``, the readers): a
    supported dtype, one grey channel (no RGB, no C > 1), a non-empty 2-D plane; an
    :class:`InputError` naming ``path`` otherwise."""
    if dtype.kind == "c":
        raise _err(path, f"complex data ({dtype}) is not supported")
    if dtype not in SUPPORTED_DTYPES:
        raise _err(path, f"dtype {dtype} is not supported; use uint8, uint16 or float32")
    if "S" in axes or samples > 1:
        raise _err(
            path,
            f"RGB or multi-sample image (axes {axes}, shape {shape}); the model takes a "
            "single grey channel: convert or split the channels first",
        )
    if "C" in axes:
        n_c = shape[axes.index("C")]
        raise _err(path, f"{n_c} channels (axes {axes}); the model takes one: split the channels")
    if len(shape) < 2 or 0 in shape or not axes.endswith("YX"):
        raise _err(path, f"not a 2-D image or stack of them (axes {axes}, shape {shape})")


def _finish(path: Path, data: np.ndarray, index: int) -> np.ndarray:
    """``data`` in native byte order; float frames checked for NaN/inf."""
    if not data.dtype.isnative:
        data = data.astype(data.dtype.newbyteorder("="))
    if data.dtype.kind == "f" and not np.isfinite(data).all():
        bad = "NaN" if np.isnan(data).any() else "infinite"
        raise _err(path, f"frame {index} contains {bad} values")
    return data


def _first_page(tif: tifffile.TiffFile) -> Any:
    return tif.pages.first if hasattr(tif.pages, "first") else tif.pages[0]


def _describe(
    path: Path | None,
    tif: tifffile.TiffFile,
    axes: str,
    shape: tuple[int, ...],
    dtype: np.dtype,
    notes: tuple[str, ...] = (),
) -> StackInfo:
    """The :class:`StackInfo` of ``tif``'s first series (metadata of its first page)."""
    ome_xml = tif.ome_metadata if tif.is_ome else None
    imagej = tif.imagej_metadata if tif.is_imagej else None
    first = _first_page(tif)
    resolution = unit = None
    x_tag, y_tag = first.tags.get("XResolution"), first.tags.get("YResolution")
    unit_tag = first.tags.get("ResolutionUnit")
    unit = int(unit_tag.value) if unit_tag is not None else 2  # TIFF default: inch
    if x_tag is not None and y_tag is not None and (unit != 1 or imagej):
        # unit 1 (none) is tifffile's placeholder (1, 1) unless ImageJ gives the unit
        resolution = (tuple(x_tag.value), tuple(y_tag.value))
    else:
        unit = None
    px = ome_pixel_size(ome_xml) if ome_xml else None
    if px is None:
        px = tag_pixel_size(first, imagej)
    kind: TiffKind = "ome" if ome_xml else "imagej" if imagej else "tiff"
    return StackInfo(
        path=path,
        axes=axes,
        shape=shape,
        dtype=dtype,
        kind=kind,
        pixel_size_um=px,
        resolution=resolution,  # type: ignore[arg-type]
        resolution_unit=unit,
        ome_xml=ome_xml,
        imagej_metadata=dict(imagej) if imagej else None,
        notes=notes,
    )


def available_memory() -> int | None:
    """Bytes of memory a new allocation can get without swapping, or None when unknown.

    Linux: ``MemAvailable`` of /proc/meminfo (free + reclaimable cache); Windows:
    ``GlobalMemoryStatusEx`` (ctypes); other POSIX: ``os.sysconf`` free pages. No psutil: these
    three cover the platforms the package runs on without a compiled dependency.
    """
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    if sys.platform == "win32":
        import ctypes

        class _Status(ctypes.Structure):
            _fields_ = [("dwLength", ctypes.c_ulong), ("dwMemoryLoad", ctypes.c_ulong)] + [
                (name, ctypes.c_ulonglong)
                for name in ("total", "avail", "pagetotal", "pageavail", "vtotal", "vavail", "x")
            ]

        status = _Status()
        status.dwLength = ctypes.sizeof(_Status)
        if ctypes.windll.kernel32.GlobalMemoryStatusEx(ctypes.byref(status)):  # type: ignore[attr-defined]
            return int(status.avail)
        return None
    with contextlib.suppress(AttributeError, ValueError, OSError):
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return None


def check_memory(path: Path, shape: tuple[int, ...], dtype: np.dtype) -> None:
    """Refuse (InputError naming the size) to decode an array of ``shape`` that does not fit in
    the memory available now; called before anything is allocated."""
    nbytes = math.prod(int(n) for n in shape) * np.dtype(dtype).itemsize
    available = available_memory()
    if available is not None and nbytes > available:
        dims = " x ".join(str(int(n)) for n in shape)
        raise _err(
            path,
            f"a {dims} {np.dtype(dtype)} image needs {nbytes / 2**30:.1f} GiB to decode but only "
            f"{available / 2**30:.1f} GiB of memory is available; crop or split it first",
        )


def _open_tiff(path: Path) -> tifffile.TiffFile:
    """``path`` opened by tifffile with its first series parsed cleanly, else an
    :class:`InputError` saying why (no such file, not a TIFF, damaged, locked)."""
    if not path.is_file():
        raise _err(path, "no such file")
    tif = None
    try:
        with _capture_tifffile_log() as log, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tif = tifffile.TiffFile(path)
            if not tif.series:
                raise _err(path, "contains no image")
            list(tif.series[0].pages)
        if log.messages:
            raise _err(
                path, "damaged or incomplete TIFF (still being written?): " + log.messages[0]
            )
        return tif
    except BaseException as exc:
        if tif is not None:
            tif.close()
        if isinstance(exc, InputError):
            raise
        if isinstance(exc, PermissionError):
            raise _err(path, f"cannot be opened ({exc}); is it still being written?") from exc
        if isinstance(exc, (tifffile.TiffFileError, ValueError, OSError, KeyError, IndexError)):
            raise _err(path, f"not a readable TIFF ({exc})") from exc
        raise


def read_stack(path: str | Path) -> tuple[np.ndarray, StackInfo]:
    """The whole first series of ``path`` and its metadata, for tools that take any TIFF
    (metrics: RGB, other dtypes): the opening, messages and memory check of
    :class:`FrameReader` without the single-grey-channel rules."""
    path = Path(path)
    with _open_tiff(path) as tif:
        series = tif.series[0]
        axes, shape, dtype = series.axes, tuple(series.shape), np.dtype(series.dtype)
        check_memory(path, shape, dtype)
        try:
            data = series.asarray().reshape(shape)
        except (ValueError, OSError, tifffile.TiffFileError) as exc:
            raise _err(path, f"cannot read the image data ({exc})") from exc
        return data, _describe(path, tif, axes, shape, dtype)


class FrameReader:
    """Frames of a TIFF's first series, read lazily; a context manager (closes the file).

    Validation happens once, on opening: supported dtype (uint8, uint16, float32), a single
    channel (no RGB, no C > 1), a non-empty 2-D plane, a complete, undamaged file. Frames are
    checked for NaN/inf when read (float inputs). Every problem is an :class:`InputError`
    naming the file; an unreadable file (e.g. still being written and locked on Windows) is one
    as well.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._tif: tifffile.TiffFile | None = None
        self._pages: list[Any] | None = None
        self._memmap: np.ndarray | None = None
        self._whole: np.ndarray | None = None
        self._file_size = 0
        try:
            self.info = self._open()
        except BaseException:
            self.close()
            raise

    def _open(self) -> StackInfo:
        path = self.path
        self._tif = tif = _open_tiff(path)
        self._file_size = path.stat().st_size
        series = tif.series[0]
        axes, shape, dtype = series.axes, tuple(series.shape), np.dtype(series.dtype)
        pages = list(series.pages)

        samples = getattr(series.keyframe, "samplesperpixel", 1)
        check_layout(path, axes, shape, dtype, samples)

        notes = []
        if len(tif.series) > 1:
            notes.append(f"only the first of {len(tif.series)} series is processed")
        n_frames = math.prod(shape[:-2])
        plane = shape[-2:]
        streamable = len(pages) == n_frames and all(
            p is not None and tuple(s for s in p.shape if s != 1) == plane for p in pages
        )
        if streamable or (n_frames > 1 and getattr(series, "dataoffset", None) is not None):
            check_memory(path, plane, dtype)
        if streamable:
            self._pages = pages
            for i, page in enumerate(pages):
                self._check_page_extent(page, i)
        elif n_frames > 1 and getattr(series, "dataoffset", None) is not None:
            end = series.dataoffset + math.prod(shape) * dtype.itemsize
            if end > self._file_size:
                raise _err(
                    path,
                    f"incomplete file: its image data end at byte {end} but the file has "
                    f"{self._file_size} (still being written?)",
                )
            self._memmap = np.memmap(
                path,
                dtype=dtype.newbyteorder(tif.byteorder),
                mode="r",
                offset=series.dataoffset,
                shape=shape,
            )
        elif math.prod(shape) * dtype.itemsize <= _MAX_NON_STREAMABLE:
            check_memory(path, shape, dtype)
            try:
                self._whole = series.asarray().reshape(shape)
            except (ValueError, OSError, tifffile.TiffFileError) as exc:
                raise _err(path, f"cannot read the image data ({exc})") from exc
            notes.append("page layout not streamable: the series was read whole")
        else:
            raise _err(
                path,
                f"cannot stream this TIFF layout ({len(pages)} pages for {n_frames} frames of "
                f"{plane[0]}x{plane[1]}) and it is too large to load at once",
            )

        return _describe(path, tif, axes, shape, dtype, tuple(notes))

    def _check_page_extent(self, page: Any, index: int) -> None:
        offsets, counts = page.dataoffsets, page.databytecounts
        if offsets and counts:
            end = max(o + c for o, c in zip(offsets, counts, strict=False))
            if end > self._file_size:
                raise _err(
                    self.path,
                    f"incomplete file: frame {index} ends at byte {end} but the file has "
                    f"{self._file_size} (still being written?)",
                )

    # --- reading -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.info.n_frames

    def read(self, index: int) -> np.ndarray:
        """Frame ``index`` (C order over the frame axes) as a new (H, W) array of the file's
        dtype, native byte order; float frames are checked for NaN/inf."""
        info = self.info
        if not 0 <= index < info.n_frames:
            raise IndexError(f"frame {index} out of range (0..{info.n_frames - 1})")
        try:
            if self._pages is not None:
                data = self._pages[index].asarray().reshape(info.frame_shape)
            elif self._memmap is not None:
                plane = self._memmap.reshape(-1, *info.frame_shape)[index]
                data = plane.astype(info.dtype, copy=True)
            else:
                assert self._whole is not None
                data = self._whole.reshape(-1, *info.frame_shape)[index].copy()
        except (ValueError, OSError, tifffile.TiffFileError, RuntimeError) as exc:
            raise _err(self.path, f"frame {index} cannot be read ({exc})") from exc
        return _finish(self.path, data, index)

    def __iter__(self) -> Iterator[Frame]:
        for i in range(self.info.n_frames):
            yield Frame(i, self.read(i))

    def close(self) -> None:
        self._pages = None
        self._memmap = None
        self._whole = None
        if self._tif is not None:
            self._tif.close()
            self._tif = None

    def __enter__(self) -> FrameReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_frames(path: str | Path) -> FrameReader:
    """Open ``path`` for frame-by-frame reading (validated once); use as a context manager."""
    return FrameReader(path)


def read_frames(path: str | Path) -> Iterator[Frame]:
    """Yield the frames of ``path`` one at a time (the file is closed when the iterator ends)."""
    with FrameReader(path) as reader:
        yield from reader


# --- completeness of files being written ---------------------------------------------------------
@dataclass(frozen=True)
class PageProbe:
    """What :func:`probe_pages` found: ``size``/``mtime_ns`` of the file, ``complete`` pages
    whose IFD parsed and whose data lie inside the file (consecutive from page 0), ``ifds``:
    page IFDs found (complete or not), ``more``: an IFD after the complete pages exists (so
    they are final), ``expected``: the page count announced by the metadata (None: not
    announced), ``error``: why nothing could be parsed (None when the file parsed; may change
    as the file grows), ``refused``: the file breaks the input rules (:func:`check_layout`,
    the message ``enhance`` gives), ``info``: the first series' metadata as far as written."""

    size: int
    mtime_ns: int
    complete: int
    more: bool
    expected: int | None
    shape: tuple[int, int] | None = None
    dtype: str | None = None
    error: str | None = None
    ifds: int = 0
    refused: str | None = None
    info: StackInfo | None = field(default=None, repr=False)


def _announced(tif: tifffile.TiffFile) -> tuple[int | None, str | None, tuple[int, ...] | None]:
    """(frames, axes, shape) announced by the first page's metadata (OME-XML, ImageJ or
    shaped), each None where not announced; axes/shape without singleton axes."""
    with contextlib.suppress(Exception):
        if tif.is_ome:
            root = ET.fromstring(tif.ome_metadata or "")
            for el in root.iter():
                if el.tag.rsplit("}", 1)[-1] == "Pixels":
                    order = el.get("DimensionOrder", "XYZCT")[::-1]
                    sizes = {a: int(el.get(f"Size{a}", "1")) for a in order}
                    channels = [c for c in el if c.tag.endswith("Channel")]
                    samples = max([int(c.get("SamplesPerPixel", "1")) for c in channels] or [1])
                    keep = [a for a in order if sizes[a] > 1 or a in "YX"]
                    axes = "".join(keep) + ("S" if samples > 1 else "")
                    shape = tuple(sizes[a] for a in keep) + ((samples,) if samples > 1 else ())
                    return math.prod(sizes[a] for a in "ZTC"), axes, shape
    with contextlib.suppress(Exception):
        if tif.is_imagej and tif.imagej_metadata:
            meta = tif.imagej_metadata
            n_c = int(meta.get("channels", 1))
            axes = "CYX" if n_c > 1 else None
            return int(meta.get("images", 1)), axes, (n_c, 1, 1) if n_c > 1 else None
    with contextlib.suppress(Exception):
        if tif.is_shaped and tif.shaped_metadata:
            meta = tif.shaped_metadata[0]
            shape = tuple(int(n) for n in meta["shape"])
            axes = meta.get("axes")
            if axes and len(axes) == len(shape):
                keep = [i for i, n in enumerate(shape) if n > 1 or axes[i] in "YXS"]
                return (
                    math.prod(shape[:-2]) if len(shape) > 2 else 1,
                    "".join(axes[i] for i in keep),
                    tuple(shape[i] for i in keep),
                )
            return (math.prod(shape[:-2]) if len(shape) > 2 else 1), None, None
    return None, None, None


def _layout_refusal(path: Path, tif: tifffile.TiffFile, page: Any) -> str | None:
    """The :func:`check_layout` message for what is known of the file so far, or None."""
    _, axes, shape = _announced(tif)
    dtype = np.dtype(page.dtype) if page.dtype is not None else np.dtype("V1")
    samples = getattr(page, "samplesperpixel", 1)
    layouts = [("YX" if samples == 1 else "YXS", tuple(page.shape))]
    if axes and shape:
        layouts.append((axes, shape))
    try:
        for ax, sh in layouts:
            check_layout(path, ax, sh, dtype, samples)
    except InputError as exc:
        return str(exc)
    return None


def probe_pages(path: str | Path, limit: int | None = None) -> PageProbe:
    """Parse ``path`` page by page (at most ``limit`` + 1 IFDs) without reading pixels; see
    :class:`PageProbe`. Never raises for a file being written: errors are in ``error``."""
    path = Path(path)
    try:
        st = path.stat()
    except OSError as exc:
        return PageProbe(-1, -1, 0, False, None, error=f"{type(exc).__name__}: {exc}")
    size, mtime = st.st_size, st.st_mtime_ns
    tl = logging.getLogger("tifffile")
    level = tl.level
    tl.setLevel(logging.CRITICAL)  # a truncated IFD chain is expected here, not an error
    try:
        with warnings.catch_warnings(), tifffile.TiffFile(path) as tif:
            warnings.simplefilter("ignore")
            expected = _announced(tif)[0]
            n, more, ifds, shape, dtype, first = 0, False, 0, None, None, None
            stop_at = limit if limit is not None else expected
            while True:
                try:
                    page = tif.pages[n]
                except Exception:  # IndexError, TiffFileError: not there yet
                    break
                if page is None:
                    break
                if stop_at is not None and n >= stop_at:
                    more = True
                    break
                ifds = n + 1
                if first is None:
                    first = page
                    refused = _layout_refusal(path, tif, page)
                    if refused is not None:
                        return PageProbe(size, mtime, 0, False, expected, ifds=1, refused=refused)
                plane = tuple(s for s in page.shape if s != 1)
                if shape is None:
                    shape, dtype = plane, str(np.dtype(page.dtype))
                elif plane != shape:
                    more = True  # a different image (thumbnail, new series): stop here
                    break
                offsets, counts = page.dataoffsets, page.databytecounts
                if not offsets or not counts:
                    break
                if max(o + c for o, c in zip(offsets, counts, strict=False)) > size:
                    break
                n += 1
            # a page IFD after the complete ones: those are final (sequential writers)
            with contextlib.suppress(Exception):
                if not more and len(tif.pages) > n:
                    more = True
            info = None
            if shape is not None and dtype is not None:
                frames = max(n, 1)
                axes, full = ("YX", shape) if frames == 1 else ("IYX", (frames, *shape))
                with contextlib.suppress(Exception):
                    series = tif.series[0]
                    if tuple(series.shape[-2:]) == shape:
                        axes, full = series.axes, tuple(series.shape)
                info = _describe(path, tif, axes, full, np.dtype(dtype))
            return PageProbe(size, mtime, n, more, expected, shape, dtype, ifds=ifds, info=info)
    except Exception as exc:  # anything: not (yet) a readable TIFF
        return PageProbe(size, mtime, 0, False, None, error=f"{type(exc).__name__}: {exc}")
    finally:
        tl.setLevel(level)


def read_page(path: str | Path, index: int) -> np.ndarray:
    """Page ``index`` of a TIFF that may still be growing, as a 2-D array (native byte order),
    read only when its data lie inside the file; the input rules and the memory check apply."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with warnings.catch_warnings(), tifffile.TiffFile(path) as tif:
            warnings.simplefilter("ignore")
            page = tif.pages[index]
            plane = tuple(int(s) for s in page.shape if s != 1)
            check_layout(path, "YX", plane, np.dtype(page.dtype), page.samplesperpixel)
            check_memory(path, plane, np.dtype(page.dtype))
            ends = [o + c for o, c in zip(page.dataoffsets, page.databytecounts, strict=False)]
            if not ends or max(ends) > size:
                raise _err(path, f"incomplete file: page {index} is not completely written")
            data = page.asarray().reshape(plane)
    except InputError:
        raise
    except PermissionError as exc:
        raise _err(path, f"cannot be opened ({exc}); is it still being written?") from exc
    except (tifffile.TiffFileError, ValueError, OSError, IndexError) as exc:
        raise _err(path, f"page {index} cannot be read ({exc})") from exc
    return _finish(path, data, index)


# --- writing -------------------------------------------------------------------------------------
def output_info(info: StackInfo, scale: int = 1, dtype: np.dtype | None = None) -> StackInfo:
    """The :class:`StackInfo` of the output for ``info``: Y and X times ``scale``, pixel size
    divided by it, resolution tags (pixels per unit) multiplied by it; metadata carried over."""
    if scale < 1:
        raise InputError(f"scale must be a positive integer, got {scale}")
    resolution = None
    if info.resolution is not None:
        resolution = tuple((int(num) * scale, int(den)) for num, den in info.resolution)
    return StackInfo(
        path=None,
        axes=info.axes,
        shape=(*info.shape[:-2], info.shape[-2] * scale, info.shape[-1] * scale),
        dtype=np.dtype(dtype) if dtype is not None else info.dtype,
        kind=info.kind,
        pixel_size_um=info.pixel_size_um / scale if info.pixel_size_um else info.pixel_size_um,
        resolution=resolution,  # type: ignore[arg-type]
        resolution_unit=info.resolution_unit,
        ome_xml=_rescale_ome(info.ome_xml, info, scale, dtype) if info.ome_xml else None,
        imagej_metadata=info.imagej_metadata,
        ngff=info.ngff.scaled(scale) if info.ngff is not None else None,
        upscale=info.upscale * scale,
    )


_OME_TYPES = {"uint8": "uint8", "uint16": "uint16", "float32": "float"}


def _register_namespaces(xml: str) -> str | None:
    """Register the document's namespace prefixes with ElementTree (so it writes them back
    unchanged); return the default (OME) namespace URI."""
    default = None
    for _event, (prefix, uri) in ET.iterparse(_io.StringIO(xml), events=("start-ns",)):
        if not prefix:
            default = uri
        with contextlib.suppress(ValueError):
            ET.register_namespace(prefix, uri)
    return default


def _rescale_ome(xml: str, info: StackInfo, scale: int, dtype: np.dtype | None) -> str:
    """The input's OME-XML adapted to the output file: first Image only, SizeX/Y times
    ``scale``, PhysicalSizeX/Y divided by it, Type, one TiffData for all planes, new UUID."""
    try:
        ns_uri = _register_namespaces(xml)
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise InputError(f"OME-XML of the input cannot be parsed ({exc})") from exc
    ns = f"{{{ns_uri}}}" if ns_uri else ""
    images = root.findall(f"{ns}Image")
    if not images:
        raise InputError("OME-XML of the input has no Image element")
    for extra in images[1:]:
        root.remove(extra)
    pixels = images[0].find(f"{ns}Pixels")
    if pixels is None:
        raise InputError("OME-XML of the input has no Pixels element")
    for axis in ("X", "Y"):
        size = pixels.get(f"Size{axis}")
        if size is not None:
            pixels.set(f"Size{axis}", str(int(size) * scale))
        phys = pixels.get(f"PhysicalSize{axis}")
        if phys is not None:
            pixels.set(f"PhysicalSize{axis}", repr(float(phys) / scale))
    if dtype is not None:
        pixels.set("Type", _OME_TYPES[np.dtype(dtype).name])
    if pixels.get("BigEndian") is not None:
        pixels.set("BigEndian", "false")
    position = None
    for i, child in enumerate(list(pixels)):
        tag = child.tag.rsplit("}", 1)[-1]
        if tag in ("TiffData", "BinData", "MetadataOnly"):
            position = i if position is None else position
            pixels.remove(child)
    if position is None:  # after the Channels, before the Planes (schema order)
        tags = [c.tag.rsplit("}", 1)[-1] for c in pixels]
        position = sum(t == "Channel" for t in tags)
    tiffdata = ET.Element(f"{ns}TiffData", {"IFD": "0", "PlaneCount": str(info.n_frames)})
    pixels.insert(position, tiffdata)
    root.set("UUID", f"urn:uuid:{uuid.uuid4()}")
    root.set("Creator", f"cyclesr-deploy {__version__} (tifffile {tifffile.__version__})")
    text = ET.tostring(root, encoding="unicode")
    return '<?xml version="1.0" encoding="UTF-8"?>' + text


def _checked(frames: Iterable[np.ndarray], info: StackInfo) -> Iterator[np.ndarray]:
    """Pass frames through, checking shape and dtype, and that there are exactly n_frames."""
    n = 0
    for frame in frames:
        arr = np.asarray(frame)
        if arr.shape != info.frame_shape or arr.dtype != info.dtype:
            raise ValueError(
                f"frame {n}: got {arr.dtype} {arr.shape}, expected {info.dtype} {info.frame_shape}"
            )
        n += 1
        if n > info.n_frames:
            raise ValueError(f"more frames than the {info.n_frames} announced")
        yield arr
    if n != info.n_frames:
        raise ValueError(f"only {n} of {info.n_frames} frames were produced")


def write_frames(
    target: str | Path,
    info: StackInfo,
    frames: Iterable[np.ndarray],
    *,
    overwrite: bool = False,
    bigtiff: bool | None = None,
    ome_extra: dict[str, Any] | None = None,
    annotations: Callable[[], Mapping[str, str] | None] | None = None,
) -> Path:
    """Write ``frames`` (2-D arrays, C order over ``info``'s frame axes) to ``target``.

    ``info`` describes the *output* (see :func:`output_info`). Frames are consumed and written
    one at a time; the file appears under ``target`` only when all ``info.n_frames`` frames are
    written (``<target>.part`` until then, removed on any error, including one raised by the
    ``frames`` iterator). ``bigtiff`` None: BigTIFF above 2 GiB. ``ome_extra``: more keys for
    tifffile's OME writer (``Description``, ``UUID``) where a new OME-XML is written.
    ``annotations``: called once every frame is written; what it returns (key -> text) is
    added to the description (:func:`annotate`) before the rename.
    """
    target = Path(target)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} exists; refusing to overwrite (use overwrite)")
    if info.dtype not in SUPPORTED_DTYPES:
        raise InputError(f"output dtype {info.dtype} is not supported")
    if bigtiff is None:
        bigtiff = info.nbytes > _BIGTIFF_BYTES
    writer_args: dict[str, Any] = {}
    kwargs = _page_kwargs(info)
    if info.kind == "ome" and info.ome_xml:
        writer_args.update(bigtiff=bigtiff, ome=False, shaped=False)
        kwargs.update(description=info.ome_xml.encode("utf-8"), metadata=None)
    elif info.kind == "imagej":
        writer_args.update(imagej=True)
        meta = {k: v for k, v in (info.imagej_metadata or {}).items() if k in _IMAGEJ_KEYS}
        kwargs["metadata"] = {**meta, "axes": info.axes}
    elif set(info.axes) <= _OME_AXES:
        writer_args.update(bigtiff=bigtiff, ome=True)
        kwargs["metadata"] = {"axes": info.axes, **_ome_sizes(info), **(ome_extra or {})}
    else:
        writer_args.update(bigtiff=bigtiff, shaped=True)
        kwargs["metadata"] = {"axes": info.axes}
    with atomic_path(target) as part:
        with tifffile.TiffWriter(part, **writer_args) as tw:
            tw.write(_checked(frames, info), shape=info.shape, dtype=info.dtype, **kwargs)
        values = annotations() if annotations is not None else None
        if values:
            annotate(part, values)
    return target


# --- annotations (per-frame trust marks, issue 17) -----------------------------------------------
ANNOTATION_NS = "cyclesr-deploy"  # OME MapAnnotation namespace; the key elsewhere
_ANNOTATION_ID = "Annotation:cyclesr-deploy:0"


def annotate(path: str | Path, values: Mapping[str, str]) -> None:
    """Add ``values`` to the first page's description of the TIFF ``path`` (in place): an
    OME-XML ``MapAnnotation`` (namespace :data:`ANNOTATION_NS`, linked from the image), an
    ``ANNOTATION_NS`` key of a JSON (shaped) description, or an ImageJ ``key=JSON`` line."""
    with tifffile.TiffFile(path) as tif:
        desc = tif.pages.first.description or ""
    if desc.lstrip().startswith("<"):
        new = _ome_annotated(desc, values)
    elif desc.startswith("ImageJ="):
        new = desc.rstrip("\n") + f"\n{ANNOTATION_NS}={json.dumps(dict(values))}\n"
    else:
        try:
            data = json.loads(desc) if desc else {}
        except ValueError:
            data = {"description": desc}
        if not isinstance(data, dict):
            data = {"description": desc}
        new = json.dumps({**data, ANNOTATION_NS: dict(values)})
    tifffile.tiffcomment(path, new.encode("utf-8"))


def _ome_annotated(xml: str, values: Mapping[str, str]) -> str:
    ns_uri = _register_namespaces(xml)
    root = ET.fromstring(xml)
    ns = f"{{{ns_uri}}}" if ns_uri else ""
    tags = [c.tag for c in root]
    sa = root.find(f"{ns}StructuredAnnotations")
    if sa is None:  # schema order: after the last Image, before ROI / BinaryOnly
        images = [i for i, t in enumerate(tags) if t == f"{ns}Image"]
        sa = ET.Element(f"{ns}StructuredAnnotations")
        root.insert(images[-1] + 1 if images else len(tags), sa)
    ann = ET.SubElement(sa, f"{ns}MapAnnotation", {"ID": _ANNOTATION_ID})
    ann.set("Namespace", ANNOTATION_NS)
    value = ET.SubElement(ann, f"{ns}Value")
    for k, v in values.items():
        ET.SubElement(value, f"{ns}M", {"K": str(k)}).text = str(v)
    image = root.find(f"{ns}Image")
    if image is not None:
        ET.SubElement(image, f"{ns}AnnotationRef", {"ID": _ANNOTATION_ID})
    return '<?xml version="1.0" encoding="UTF-8"?>' + ET.tostring(root, encoding="unicode")


def read_annotations(path: str | Path) -> dict[str, str] | None:
    """What :func:`annotate` added to the TIFF ``path`` (None: nothing)."""
    with tifffile.TiffFile(path) as tif:
        desc = tif.pages.first.description or ""
    if desc.lstrip().startswith("<"):
        root = ET.fromstring(desc)
        for ann in root.iter():
            if ann.tag.endswith("MapAnnotation") and ann.get("Namespace") == ANNOTATION_NS:
                return {m.get("K", ""): m.text or "" for m in ann.iter() if m.tag.endswith("}M")}
        return None
    if desc.startswith("ImageJ="):
        for line in desc.splitlines():
            if line.startswith(f"{ANNOTATION_NS}="):
                return json.loads(line.split("=", 1)[1])
        return None
    try:
        data = json.loads(desc) if desc else {}
    except ValueError:
        return None
    return data.get(ANNOTATION_NS) if isinstance(data, dict) else None


def _page_kwargs(info: StackInfo) -> dict[str, Any]:
    """tifffile page arguments every output gets: grey, software, resolution tags (pixels per
    unit; from the pixel size, per cm, when the input had none)."""
    kwargs: dict[str, Any] = {"photometric": "minisblack", "software": "cyclesr-deploy"}
    if info.resolution is not None:
        kwargs["resolution"] = info.resolution
        if info.resolution_unit is not None:
            kwargs["resolutionunit"] = info.resolution_unit
    elif info.pixel_size_um and info.kind != "imagej":
        px = float(info.pixel_size_um)
        kwargs.update(resolution=(1e4 / px, 1e4 / px), resolutionunit=3)
    return kwargs


def _ome_sizes(info: StackInfo) -> dict[str, Any]:
    if not info.pixel_size_um:
        return {}
    px = float(info.pixel_size_um)
    return {
        "PhysicalSizeX": px,
        "PhysicalSizeXUnit": "µm",
        "PhysicalSizeY": px,
        "PhysicalSizeYUnit": "µm",
    }


class StackAppender:
    """A stack whose length is not known up front (a growing acquisition stack), written one
    frame at a time into ``<target>.part`` and renamed onto ``target`` by :meth:`close`.

    ``info`` describes the output (:func:`output_info` of the input). :meth:`close` writes the
    OME-XML for the frames written: the input's own (rescaled) OME-XML when they are all of
    its frames, else the input's frame axis (``T`` for an unnamed one) with the pixel size, so a
    ``TYX`` input comes out ``TYX`` with its pixel size divided by the scale. Any failure
    removes the ``.part`` (a full disk says so and names the file).
    """

    def __init__(self, target: str | Path, info: StackInfo) -> None:
        self.target, self.info = Path(target), info
        self.part = part_path(self.target)
        self.part.parent.mkdir(parents=True, exist_ok=True)
        self.part.unlink(missing_ok=True)
        self.count = 0
        self.annotations: Mapping[str, str] | None = None  # for the description, on close
        self._tw: tifffile.TiffWriter | None = tifffile.TiffWriter(self.part, bigtiff=True)

    def append(self, frame: np.ndarray) -> None:
        arr = np.asarray(frame)
        if arr.shape != self.info.frame_shape or arr.dtype != self.info.dtype:
            raise ValueError(
                f"frame {self.count}: got {arr.dtype} {arr.shape}, expected "
                f"{self.info.dtype} {self.info.frame_shape}"
            )
        kwargs = _page_kwargs(self.info)
        if self.count == 0:  # replaced by the OME-XML on close
            kwargs["description"] = "cyclesr-deploy: stack being written"
        assert self._tw is not None, "appender closed"
        with self._cleanup():
            self._tw.write(arr, metadata=None, contiguous=False, **kwargs)
        self.count += 1

    def _ome_xml(self) -> str:
        info, n = self.info, self.count
        if info.kind == "ome" and info.ome_xml and n == info.n_frames:
            return info.ome_xml
        if n == info.n_frames and set(info.axes) <= _OME_AXES:
            axes, shape = info.axes, info.shape
        else:
            letter = info.frame_axes if len(info.frame_axes) == 1 else ""
            axes = (letter if letter in _OME_AXES - set("YX") else "T") + "YX"
            shape = (n, *info.frame_shape)
        ome = tifffile.OmeXml(Creator=f"cyclesr-deploy {__version__}")
        stored = (n, 1, 1, *info.frame_shape, 1)
        ome.addimage(info.dtype, shape, stored, axes=axes, **_ome_sizes(info))
        return ome.tostring(declaration=True)

    def close(self) -> Path | None:
        """Finish the file and rename it onto the target (None when no frame was written);
        :attr:`annotations`, when set, are added to its description (:func:`annotate`)."""
        if self._tw is None:
            return self.target if self.count else None
        with self._cleanup():
            self._tw.close()
            self._tw = None
            if not self.count:
                self.part.unlink(missing_ok=True)
                return None
            tifffile.tiffcomment(self.part, self._ome_xml().encode("utf-8"))
            if self.annotations:
                annotate(self.part, self.annotations)
            self.part.replace(self.target)
        return self.target

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            if self._tw is not None:
                self._tw.close()
        self._tw = None
        self.part.unlink(missing_ok=True)

    @contextlib.contextmanager
    def _cleanup(self) -> Iterator[None]:
        try:
            yield
        except BaseException as exc:
            self.abort()
            full = disk_full(exc, self.target) if isinstance(exc, OSError) else exc
            if full is exc:
                raise
            raise full from exc
