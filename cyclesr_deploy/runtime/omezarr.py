"""The OME-Zarr layer: reading and writing NGFF images (0.5 on Zarr v3; 0.4 is read too).

The counterpart of :mod:`~cyclesr_deploy.runtime.tiff` behind the same interface: a
:class:`ZarrFrameReader` has the ``info`` (:class:`~cyclesr_deploy.runtime.tiff.StackInfo`) and
``read(i)`` of a ``FrameReader``, and :func:`write_zarr` takes the frames that
``tiff.write_frames`` takes, so the runner and the pipeline do not care which format a file has
(:mod:`~cyclesr_deploy.runtime.formats` picks). zarr and ome-zarr-models are imported lazily
(the ``zarr`` extra); the metadata is built and validated by ome-zarr-models, never written as
hand-made JSON.

Layout of an output: the group ``<name>.zarr`` holds level ``0`` (full resolution; chunks of one
frame along every frame axis, so any block of whole frames is chunk-aligned and workers never
share a chunk) and optional levels ``1..n``, each half the previous one in Y and X (2 x 2 mean),
computed from the stored level 0 after it is complete, never by re-running the model. The
axes keep their names, types and units; the Y and X ``scale`` (pixel size) is divided by the
model's scale. While it is written the group is ``<name>.zarr.part`` and it is renamed when
complete, as TIFF outputs are.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import sys
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from cyclesr_deploy.errors import InputError, require
from cyclesr_deploy.io import part_path
from cyclesr_deploy.runtime.tiff import (
    ANNOTATION_NS,
    UNIT_TO_UM,
    StackInfo,
    check_layout,
    check_memory,
)

__all__ = [
    "ZARR_SUFFIX",
    "NgffAxes",
    "ZarrFrameReader",
    "ZarrOutput",
    "is_zarr",
    "ngff_axes",
    "write_zarr",
    "zarr_purpose",
]

ZARR_SUFFIX = ".zarr"


def zarr_purpose() -> str:
    """What the ``zarr`` extra is for, in a missing-extra error: on Python 3.10 it cannot be
    installed (zarr-python 3 and ome-zarr-models need 3.11), which the error says."""
    if sys.version_info < (3, 11):
        return "OME-Zarr input and output (needs Python 3.11 or newer; this is Python 3.10)"
    return "OME-Zarr input and output"


# NGFF (UDUNITS) spatial units -> micrometres, for the pixel size the runtime reports
_NGFF_UM = {"nanometer": 1e-3, "micrometer": 1.0, "millimeter": 1e3, "centimeter": 1e4}
_NGFF_UM["meter"] = 1e6
_OME_TO_NGFF = {"nm": "nanometer", "mm": "millimeter", "cm": "centimeter", "m": "meter"}
_TIME_UNITS = {"s": "second", "ms": "millisecond", "µs": "microsecond", "min": "minute"}
_TIME_UNITS["h"] = "hour"
_CHUNK_YX = 1024  # Y/X chunk side of the outputs (workers write whole frames: always aligned)


def _zarr() -> Any:
    return require("zarr", "zarr", zarr_purpose())


def is_zarr(path: str | Path) -> bool:
    """True for a folder named ``*.zarr`` (OME-Zarr images are folders)."""
    p = Path(path)
    return p.suffix.lower() == ZARR_SUFFIX and p.is_dir() and not p.name.startswith(".")


@dataclass(frozen=True)
class NgffAxes:
    """The NGFF axes of a stored image, all of them (singletons included): ``names``,
    ``types`` (``time``/``space``/``channel`` or None), ``units`` (UDUNITS names or None), the
    level-0 ``scale`` and ``translation`` (or None) and the stored ``shape``."""

    names: tuple[str, ...]
    types: tuple[str | None, ...]
    units: tuple[str | None, ...]
    scale: tuple[float, ...]
    translation: tuple[float, ...] | None
    shape: tuple[int, ...]

    def scaled(self, factor: float) -> NgffAxes:
        """The axes of an output ``factor`` times larger in Y and X (pixel size / factor),
        registered on the input's pixel centres (see :meth:`resampled`)."""
        shape = (*self.shape[:-2], int(self.shape[-2] * factor), int(self.shape[-1] * factor))
        return replace(self.resampled(1.0 / factor), shape=shape)

    def resampled(self, step: float) -> NgffAxes:
        """The Y/X pixel size times ``step`` (a pyramid level: 2**k; an upscaled output:
        1 / scale), the translation moved so that the new grid covers the same area: its first
        pixel centre lies at ``origin - old/2 + new/2`` on Y and X (pixel-centre convention)."""
        if step == 1:
            return self
        old = self.scale[-2:]
        new = tuple(v * step for v in old)
        t = self.translation or (0.0,) * len(self.scale)
        moved = tuple(o + (n - v) / 2 for o, v, n in zip(t[-2:], old, new, strict=True))
        return replace(self, scale=(*self.scale[:-2], *new), translation=(*t[:-2], *moved))

    def index(self, frame: int) -> tuple[int, ...]:
        """The stored-array index of frame ``frame`` (C order over the non-YX axes)."""
        return (
            tuple(int(i) for i in np.unravel_index(frame, self.shape[:-2]))
            if self.shape[:-2]
            else ()
        )


def _letter(name: str, kind: str | None) -> str:
    """The TIFF-style axis letter of an NGFF axis (``Q`` for one with no OME letter)."""
    up = name.upper()
    if up in ("T", "C", "Z", "Y", "X"):
        return up
    return {"time": "T", "channel": "C"}.get(kind or "", "Q")


def _ome_value(ome_xml: str | None, attr: str) -> tuple[float, str | None] | None:
    """``attr`` of the first ``Pixels`` of an OME-XML and its unit attribute, or None."""
    if not ome_xml:
        return None
    with contextlib.suppress(ET.ParseError, ValueError):
        for el in ET.fromstring(ome_xml).iter():
            if el.tag.endswith("Pixels") and attr in el.attrib:
                return float(el.attrib[attr]), el.attrib.get(f"{attr}Unit")
    return None


def ngff_axes(info: StackInfo) -> NgffAxes:
    """The NGFF axes of the stack ``info`` describes (an output: pixel size already divided by
    the scale ``info.upscale``): the carried axes of an OME-Zarr input, else from its TIFF axes
    (``T`` time, ``Z`` space, one other axis as a custom axis) with micrometre units where the
    pixel size (and OME ``PhysicalSizeZ``/``TimeIncrement``) is known; an uncalibrated Y/X
    pixel is 1 / scale (the input's pixel being 1). InputError where NGFF 0.5 cannot express
    the axes (checked by ome-zarr-models before any work: T first, space axes last, ...)."""
    carried = info.ngff
    if isinstance(carried, NgffAxes):
        return _checked(carried, info.axes)
    names: list[str] = []
    types: list[str | None] = []
    units: list[str | None] = []
    scale: list[float] = []
    px = info.pixel_size_um
    for letter in info.axes:
        unit, value = None, 1.0
        if letter in "YX":
            kind = "space"
            value = 1.0 / info.upscale
            if px:
                unit, value = "micrometer", float(px)
        elif letter == "Z":
            kind = "space"
            z = _ome_value(info.ome_xml, "PhysicalSizeZ")
            if z:
                factor = UNIT_TO_UM.get(z[1] or "µm")
                if factor:
                    unit, value = "micrometer", z[0] * factor
        elif letter == "T":
            kind = "time"
            t = _ome_value(info.ome_xml, "TimeIncrement")
            if t and (t[1] or "s") in _TIME_UNITS:
                unit, value = _TIME_UNITS[t[1] or "s"], t[0]
        else:
            kind = None
        names.append(letter.lower())
        types.append(kind)
        units.append(unit)
        scale.append(value)
    axes = NgffAxes(tuple(names), tuple(types), tuple(units), tuple(scale), None, info.shape)
    if info.upscale > 1:  # registered on the input's pixel centres (input origin 0)
        shift = tuple((v - v * info.upscale) / 2 for v in scale[-2:])
        axes = replace(axes, translation=(*(0.0,) * (len(scale) - 2), *shift))
    return _checked(axes, info.axes)


def _checked(axes: NgffAxes, letters: str) -> NgffAxes:
    """``axes`` once ome-zarr-models accepts them as an NGFF 0.5 multiscale (InputError
    otherwise): called when an output is planned, before any frame is computed."""
    require("ome_zarr_models", "zarr", zarr_purpose())
    from ome_zarr_models.v05.multiscales import Multiscale

    transforms: list[dict[str, Any]] = [{"type": "scale", "scale": list(axes.scale)}]
    if axes.translation:
        transforms.append({"type": "translation", "translation": list(axes.translation)})
    try:
        Multiscale.model_validate(
            {
                "axes": [
                    {"name": n, "type": t, "unit": u}
                    for n, t, u in zip(axes.names, axes.types, axes.units, strict=True)
                ],
                "datasets": [{"path": "0", "coordinateTransformations": transforms}],
            }
        )
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        why = "; ".join(str(e.get("msg", e)) for e in getattr(exc, "errors", lambda: [])())
        raise InputError(
            f"axes {letters} ({', '.join(axes.names)}) cannot be written as OME-Zarr 0.5 "
            f"({why or exc}); write TIFF instead (--output-format tiff)"
        ) from None
    return axes


class ZarrFrameReader:
    """Frames of an OME-Zarr image's full-resolution level, read lazily (the interface of
    :class:`~cyclesr_deploy.runtime.tiff.FrameReader`: ``info``, ``read(i)``, ``len``, a
    context manager). NGFF 0.5 (Zarr v3) and 0.4 (Zarr v2); the metadata is validated by
    ome-zarr-models. The input rules are the TIFF layer's (one grey channel, uint8/uint16/
    float32, a 2-D plane); singleton axes are dropped from ``info.axes`` as for TIFF and the
    whole NGFF description is carried in ``info.ngff`` (so a Zarr output keeps it)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._array: Any = None
        self.info = self._open()

    def _open(self) -> StackInfo:
        zarr = _zarr()
        models = require("ome_zarr_models", "zarr", zarr_purpose())
        path = self.path
        if not path.is_dir():
            raise InputError(f"{path}: no such OME-Zarr folder")
        try:
            group = zarr.open_group(str(path), mode="r")
            image = models.open_ome_zarr(group)
            multiscale = image.ome_attributes.multiscales[0]
        except Exception as exc:
            raise InputError(f"{path}: not a readable OME-Zarr image ({exc})") from exc
        version = "0.5" if type(image).__module__.startswith("ome_zarr_models.v05") else "0.4"
        dataset = multiscale.datasets[0]
        self._array = group[dataset.path]
        shape = tuple(int(n) for n in self._array.shape)
        dtype = np.dtype(self._array.dtype)
        axes = multiscale.axes
        scale = [1.0] * len(shape)
        translation = None
        for t in dataset.coordinateTransformations:
            if t.type == "scale":
                scale = [float(v) for v in t.scale]
            elif t.type == "translation":
                translation = tuple(float(v) for v in t.translation)
        # the global transformations apply after the level's: folded into one scale and
        # translation (the same coordinates), which a Zarr output then carries
        for t in multiscale.coordinateTransformations or ():
            if t.type == "scale":
                g = [float(b) for b in t.scale]
                scale = [a * b for a, b in zip(scale, g, strict=True)]
                if translation is not None:
                    translation = tuple(a * b for a, b in zip(translation, g, strict=True))
            elif t.type == "translation":
                base = translation or (0.0,) * len(shape)
                translation = tuple(a + float(b) for a, b in zip(base, t.translation, strict=True))
        ngff = NgffAxes(
            names=tuple(str(a.name) for a in axes),
            types=tuple(a.type for a in axes),
            units=tuple(a.unit if isinstance(a.unit, str) else None for a in axes),
            scale=tuple(scale),
            translation=translation,
            shape=shape,
        )
        letters = "".join(_letter(n, k) for n, k in zip(ngff.names, ngff.types, strict=True))
        if not letters.endswith("YX"):
            raise InputError(f"{path}: the last two axes are {ngff.names[-2:]}, not y and x")
        kept = [i for i, n in enumerate(shape) if n != 1 or i >= len(shape) - 2]
        info_axes = "".join(letters[i] for i in kept)
        info_shape = tuple(shape[i] for i in kept)
        check_layout(path, info_axes, info_shape, dtype)
        check_memory(path, shape[-2:], dtype)
        px = None
        factor = _NGFF_UM.get(ngff.units[-1] or "")
        if factor:
            px = ngff.scale[-1] * factor
        return StackInfo(
            path=path,
            axes=info_axes,
            shape=info_shape,
            dtype=dtype,
            kind="tiff",  # written as TIFF: an OME-TIFF with the axes and pixel size
            pixel_size_um=px,
            notes=(f"OME-Zarr {version}, level {dataset.path}",),
            ngff=ngff,
        )

    @property
    def chunk_frames(self) -> int:
        """Frames per input chunk along the frame axes (a block of frames should be a multiple)."""
        chunks = getattr(self._array, "chunks", None) or ()
        return max(1, math.prod(int(c) for c in chunks[:-2]))

    def __len__(self) -> int:
        return self.info.n_frames

    def read(self, index: int) -> np.ndarray:
        """Frame ``index`` as a new (H, W) array in native byte order; NaN/inf refused."""
        info = self.info
        if not 0 <= index < info.n_frames:
            raise IndexError(f"frame {index} out of range (0..{info.n_frames - 1})")
        ngff = info.ngff
        try:
            data = np.asarray(self._array[ngff.index(index)]).reshape(info.frame_shape)
        except Exception as exc:
            raise InputError(f"{self.path}: frame {index} cannot be read ({exc})") from exc
        if not data.dtype.isnative:
            data = data.astype(data.dtype.newbyteorder("="))
        if data.dtype.kind == "f" and not np.isfinite(data).all():
            bad = "NaN" if np.isnan(data).any() else "infinite"
            raise InputError(f"{self.path}: frame {index} contains {bad} values")
        return data

    def close(self) -> None:
        self._array = None

    def __enter__(self) -> ZarrFrameReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_OPEN: dict[tuple[str, tuple[int, ...], str], Any] = {}  # the level 0 this process writes


class ZarrOutput:
    """An OME-Zarr output being written: ``create`` makes ``<target>.part`` with its level 0,
    ``write(i, frame)`` stores frame ``i`` (any process may write any frames: chunks hold one
    frame), ``finish`` builds the pyramid from the stored level 0, writes and validates the
    NGFF metadata and renames the folder onto ``target``. Picklable (paths and metadata only),
    so cluster workers write their own frames."""

    def __init__(self, target: str | Path, info: StackInfo, pyramid: int = 0) -> None:
        self.target = Path(target)
        self.part = part_path(self.target)
        self.axes = ngff_axes(info)
        self.dtype = np.dtype(info.dtype)
        self.pyramid = int(pyramid)
        self.n_frames = info.n_frames
        self.frame_shape = info.frame_shape
        self._level0: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_level0": None}

    def create(self) -> None:
        """A new, empty ``<target>.part`` (a previous one is removed)."""
        zarr = _zarr()
        for _ in range(20):  # a task of an interrupted run may still be writing a chunk in it
            if not self.part.exists():
                break
            shutil.rmtree(self.part, ignore_errors=True)
            time.sleep(0.05)
        if self.part.exists():
            shutil.rmtree(self.part)  # still there: its error
        _OPEN.clear()
        group = zarr.open_group(str(self.part), mode="w", zarr_format=3)
        shape = self.axes.shape
        chunks = (*(1,) * (len(shape) - 2), *(min(n, _CHUNK_YX) for n in shape[-2:]))
        group.create_array(
            "0",
            shape=shape,
            chunks=chunks,
            dtype=self.dtype,
            fill_value=0,
            dimension_names=self.axes.names,
        )

    def _array(self) -> Any:
        """Level 0, opened once per process (a cluster worker writes many blocks of it)."""
        if self._level0 is None:
            key = (str(self.part), self.axes.shape, self.dtype.str)
            self._level0 = _OPEN.get(key)
            if self._level0 is None:
                self._level0 = _zarr().open_array(str(self.part / "0"), mode="r+")
                _OPEN.clear()  # the output being written now; earlier ones are finished
                _OPEN[key] = self._level0
        return self._level0

    def write(self, index: int, frame: np.ndarray) -> None:
        arr = np.asarray(frame)
        if arr.shape != self.frame_shape or arr.dtype != self.dtype:
            raise ValueError(
                f"frame {index}: got {arr.dtype} {arr.shape}, expected {self.dtype} "
                f"{self.frame_shape}"
            )
        shape = self.axes.shape
        self._array()[self.axes.index(index)] = arr.reshape(shape[-2:])

    def _levels(self) -> list[tuple[str, NgffAxes]]:
        """(path, axes: scale and translation) of every level; builds levels 1..n from the
        stored level 0."""
        zarr = _zarr()
        group = zarr.open_group(str(self.part), mode="r+")
        levels = [("0", self.axes)]
        src = group["0"]
        for level in range(1, self.pyramid + 1):
            shape = (*src.shape[:-2], max(1, src.shape[-2] // 2), max(1, src.shape[-1] // 2))
            if min(src.shape[-2:]) < 2:
                break
            dst = group.create_array(
                str(level),
                shape=shape,
                chunks=(*(1,) * (len(shape) - 2), *(min(n, _CHUNK_YX) for n in shape[-2:])),
                dtype=self.dtype,
                fill_value=0,
                dimension_names=self.axes.names,
                overwrite=True,
            )
            for i in range(math.prod(shape[:-2])):
                index = self.axes.index(i) if shape[:-2] else ()
                dst[index] = _halve(np.asarray(src[index]), self.dtype)
            levels.append((str(level), self.axes.resampled(2.0**level)))
            src = dst
        return levels

    def finish(self, overwrite: bool = False, annotations: Mapping[str, str] | None = None) -> Path:
        """Pyramid, metadata (validated), then ``<target>.part`` renamed onto ``target``.
        Retry-safe: run again after the rename (a worker lost before it reported), with no
        ``.part`` left and ``target`` a valid image of this output's shape, it is done."""
        zarr = _zarr()
        if not self.part.exists() and self._finished():
            return self.target
        if self.target.exists() and not overwrite:
            raise FileExistsError(f"{self.target} exists; refusing to overwrite (use overwrite)")
        levels = self._levels()
        group = zarr.open_group(str(self.part), mode="r+")
        group.attrs.update({"ome": _image_attrs(self.axes, levels, group, self.target.name)})
        if annotations:  # e.g. untrusted frames (runtime.trust_policy)
            group.attrs.update({ANNOTATION_NS: dict(annotations)})
        _validate(self.part)
        _replace_dir(self.part, self.target)
        return self.target

    def _finished(self) -> bool:
        """``target`` is a valid NGFF 0.5 image whose level 0 has this output's shape/dtype."""
        try:
            _validate(self.target)
            level0 = _zarr().open_array(str(self.target / "0"), mode="r")
        except Exception:
            return False
        return tuple(level0.shape) == self.axes.shape and np.dtype(level0.dtype) == self.dtype

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            shutil.rmtree(self.part)


def read_annotations(path: str | Path) -> dict[str, str] | None:
    """The ``cyclesr-deploy`` attribute of the OME-Zarr group ``path`` (None: none)."""
    values = _zarr().open_group(str(path), mode="r").attrs.get(ANNOTATION_NS)
    return dict(values) if values else None


def _halve(frame: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """2 x 2 mean of ``frame`` (odd edges dropped), in ``dtype`` (rounded for integers).
    Hand-written: one line of numpy, where scikit-image's ``downscale_local_mean`` pads."""
    h, w = frame.shape[-2] // 2 * 2, frame.shape[-1] // 2 * 2
    f = frame[..., :h, :w].astype(np.float64)
    mean = (f[..., 0::2, 0::2] + f[..., 1::2, 0::2] + f[..., 0::2, 1::2] + f[..., 1::2, 1::2]) / 4
    return (np.rint(mean) if dtype.kind in "ui" else mean).astype(dtype)


def _image_attrs(
    axes: NgffAxes, levels: Sequence[tuple[str, NgffAxes]], group: Any, name: str
) -> dict[str, Any]:
    """The ``ome`` attributes of the image, built by ome-zarr-models (NGFF 0.5)."""
    require("ome_zarr_models", "zarr", zarr_purpose())
    from ome_zarr_models.v05.axes import Axis
    from ome_zarr_models.v05.image import Image
    from pydantic_zarr.v3 import ArraySpec

    image = Image.new(
        array_specs=[ArraySpec.from_zarr(group[path]) for path, _ in levels],
        paths=[path for path, _ in levels],
        axes=[
            Axis(name=n, type=t, unit=u)
            for n, t, u in zip(axes.names, axes.types, axes.units, strict=True)
        ],
        scales=[list(level.scale) for _, level in levels],
        translations=[list(t.translation) if t.translation else None for _, t in levels],
        name=name.removesuffix(ZARR_SUFFIX).removesuffix(".ome"),
        multiscale_type="2x2 mean" if len(levels) > 1 else None,
        metadata={"creator": "cyclesr-deploy"},
    )
    return image.ome_attributes.model_dump(mode="json", exclude_none=True, by_alias=True)


def _validate(path: Path) -> None:
    """ome-zarr-models' validation of the written image (raises when it is not NGFF 0.5)."""
    from ome_zarr_models.v05.image import Image

    Image.from_zarr(_zarr().open_group(str(path), mode="r"))


def _replace_dir(part: Path, target: Path) -> None:
    """Rename the folder ``part`` onto ``target``; an existing ``target`` (overwrite) is moved
    aside first and removed after (a folder cannot be replaced in one rename)."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
        target.replace(old)
    part.replace(target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_zarr(
    target: str | Path,
    info: StackInfo,
    frames: Iterable[np.ndarray],
    *,
    overwrite: bool = False,
    pyramid: int = 0,
    annotations: Callable[[], Mapping[str, str] | None] | None = None,
) -> Path:
    """Write ``frames`` (C order over ``info``'s frame axes; ``info`` describes the output, see
    ``tiff.output_info``) as an OME-Zarr image at ``target``: ``<target>.part`` until every frame
    is written and the metadata validated, removed on any error. ``annotations``: called once
    every frame is written; what it returns goes into the group's ``cyclesr-deploy`` attribute."""
    target = Path(target)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} exists; refusing to overwrite (use overwrite)")
    out = ZarrOutput(target, info, pyramid)
    try:
        out.create()
        for n, frame in enumerate(_counted(frames, info.n_frames)):
            out.write(n, frame)
        values = annotations() if annotations is not None else None
        return out.finish(overwrite=overwrite, annotations=values)
    except BaseException:
        out.abort()
        raise


def _counted(frames: Iterable[np.ndarray], n_frames: int) -> Iterator[np.ndarray]:
    n = 0
    for frame in frames:
        n += 1
        if n > n_frames:
            raise ValueError(f"more frames than the {n_frames} announced")
        yield frame
    if n != n_frames:
        raise ValueError(f"only {n} of {n_frames} frames were produced")
