"""Training data: lazily indexed image sources, dataset percentiles, random crop samplers.

Pure numpy + tifffile (no torch): the trainer turns the float32 batches into tensors.

An :class:`ImageSource` is one of

* a folder of ``.tif``/``.tiff`` files (sorted by name, not recursive; ``*.part`` files and
  hidden files such as macOS ``._x.tif`` are ignored; other extensions are ignored);
* a single multi-page TIFF stack (``TYX``, ``ZYX``, ...): each plane is one image;
* a single 2-D TIFF.

A file inside a folder may itself hold several planes; each plane is then one image, named
``<file>[<plane>]``. Opening a source reads TIFF headers only (shape, dtype, pixel size), never
pixel data, so folders of any size can be indexed; :meth:`ImageSource.read` decodes one image on
demand. Every error a user can fix is raised by :meth:`ImageSource.open` as an
:class:`~cyclesr_deploy.errors.InputError` naming the argument (e.g. ``--train-a``), before any
training step.

Randomness: every random draw comes from a ``numpy.random.Generator`` passed in by the caller
(the trainer owns it and saves ``rng.bit_generator.state`` for an exact resume). The number and
order of draws per batch is fixed and does not depend on the image cache, so the same generator
state gives the same batch.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import tifffile

from cyclesr_deploy.errors import InputError
from cyclesr_deploy.runtime.tiff import TIFF_SUFFIXES, ome_pixel_size, tag_pixel_size

logger = logging.getLogger("cyclesr_deploy")

_MAX_OPEN_FILES = 4  # TIFF file handles kept open per source (multi-page stacks re-parse slowly)
_MAX_LISTED = 5  # file names quoted in one error or warning
_RGB_HINT = (
    "convert to one grayscale channel first (Fiji: Image > Type > 8-bit or 16-bit; Python: "
    "skimage.color.rgb2gray), or, if the planes are separate grayscale images, rewrite the file "
    "with tifffile.imwrite(..., photometric='minisblack')"
)
_CHANNEL_HINT = (
    "split the channels and pass one (Fiji: Image > Color > Split Channels; Python: "
    "tifffile.imwrite(out, data[:, c]) for channel c); if the planes are really time points or "
    "z-slices, re-save them as such (Fiji: Image > Hyperstacks > Re-order Hyperstack; Python: "
    "tifffile.imwrite(out, data, imagej=True, metadata={'axes': 'TYX'}))"
)


def _listing(items: Sequence[str], n: int = _MAX_LISTED) -> str:
    shown = ", ".join(items[:n])
    return shown + (f", ... ({len(items) - n} more)" if len(items) > n else "")


def _strip_suffix(name: str) -> str:
    """Pairing key of an image name: ``a.ome.tif``, ``a.tiff`` and ``a.TIF`` all give ``a``."""
    lower = name.lower()
    for suffix in (".ome.tiff", ".ome.tif", ".tiff", ".tif"):
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name


class _Unreadable(Exception):
    """A file that cannot be used as a TIFF (skipped in folders, an error for a single file)."""


@contextlib.contextmanager
def _tifffile_warnings() -> Iterator[list[str]]:
    """Collect (and withhold) tifffile's log warnings emitted by this thread, e.g. IFD or value
    offsets past the end of a truncated file, which otherwise reach the root logger without a
    file name. Other threads' records pass through untouched."""
    records: list[str] = []
    thread = threading.get_ident()

    def collect(record: logging.LogRecord) -> bool:
        if record.thread != thread:
            return True
        if record.levelno >= logging.WARNING:
            records.append(record.getMessage())
        return False

    tlog = logging.getLogger("tifffile")
    tlog.addFilter(collect)
    try:
        yield records
    finally:
        tlog.removeFilter(collect)


@dataclass(frozen=True)
class _FileInfo:
    """Header facts about one TIFF file (first series, level 0)."""

    path: Path
    axes: str
    series_shape: tuple[int, ...]
    height: int
    width: int
    n_planes: int
    dtype: np.dtype
    pixel_size_um: float | None
    paged: bool  # plane t is page t of the series (read one page) vs. read the whole series


def _plane_geometry(
    axes: str, shape: tuple[int, ...], path: Path, name: str
) -> tuple[int, int, int]:
    """(height, width, n_planes) of a series; InputError for colour/multichannel data."""
    for letter, what, hint in (("S", "RGB", _RGB_HINT), ("C", "channels", _CHANNEL_HINT)):
        if letter in axes and shape[axes.index(letter)] > 1:
            n = shape[axes.index(letter)]
            got = (
                "RGB"
                if letter == "S" and n in (3, 4)
                else f"{n} {'samples' if letter == 'S' else what}"
            )
            raise InputError(
                f"{name}: {path.name}: expected single-channel grayscale; got {got} "
                f"(axes {axes}, shape {shape}); {hint}"
            )
    if len(shape) < 2:
        raise _Unreadable(f"not an image (shape {shape}, axes {axes})")
    if 0 in shape:
        raise _Unreadable(f"empty image (shape {shape})")
    if "Y" in axes and "X" in axes:
        iy, ix = axes.index("Y"), axes.index("X")
    else:  # generic axes: the last two dimensions are the image plane
        iy, ix = len(shape) - 2, len(shape) - 1
    others = [i for i, n in enumerate(shape) if n > 1 and i not in (iy, ix)]
    if iy > ix or any(i > iy for i in others):
        raise InputError(
            f"{name}: {path.name}: axes {axes} (shape {shape}) are not supported; the image "
            "plane (Y, X) must be the last two non-singleton axes"
        )
    height, width = shape[iy], shape[ix]
    return height, width, int(np.prod(shape)) // (height * width)


def _index_file(path: Path, name: str) -> _FileInfo:
    """Read the header of ``path``; raise _Unreadable (skip) or InputError (user must fix)."""
    try:
        size = path.stat().st_size
        with _tifffile_warnings() as warned, tifffile.TiffFile(path) as tif:
            if not tif.series:
                raise _Unreadable("no image series in the file")
            series = tif.series[0]
            axes, shape, dtype = series.axes, tuple(int(n) for n in series.shape), series.dtype
            pages = series.pages
            first, last = pages[0], pages[len(pages) - 1]
            if first is None or last is None:
                raise _Unreadable("pages missing from the file")
            for page in (first, last):
                end = max(
                    (o + n for o, n in zip(page.dataoffsets, page.databytecounts, strict=False)),
                    default=0,
                )
                if end > size:
                    raise _Unreadable(
                        f"truncated: image data ends at byte {end} but the file has {size} bytes"
                    )
            keysize = int(np.prod(series.keyframe.shape))
            px = ome_pixel_size(tif.ome_metadata) if tif.is_ome and tif.ome_metadata else None
            if px is None:
                px = tag_pixel_size(tif.pages[0], tif.imagej_metadata)
    except (_Unreadable, InputError):
        raise
    except Exception as exc:  # tifffile raises many types on garbage input
        raise _Unreadable(f"not a readable TIFF ({type(exc).__name__}: {exc})") from exc
    bad = [w for w in warned if "offset" in w or "corrupt" in w or "truncat" in w]
    if bad:
        raise _Unreadable(f"truncated or corrupted ({bad[0]})")
    if dtype.kind not in "uif":
        raise InputError(
            f"{name}: {path.name}: dtype {dtype} is not an intensity image "
            "(expected 8/16-bit integer or float)"
        )
    height, width, n_planes = _plane_geometry(axes, shape, path, name)
    return _FileInfo(
        path=path,
        axes=axes,
        series_shape=shape,
        height=height,
        width=width,
        n_planes=n_planes,
        dtype=np.dtype(dtype),
        pixel_size_um=px,
        paged=len(pages) == n_planes and keysize == height * width,
    )


class ImageSource:
    """A lazily read collection of 2-D grayscale images (see the module docstring).

    Build with :meth:`open`. ``read(i)`` returns image ``i`` as float32 raw intensities.
    Up to 4 TIFF file handles stay open between reads (multi-page stacks are expensive to
    re-parse); :meth:`close` or a ``with`` block releases them. Thread-safe reads; picklable
    (handles are reopened in the copy).
    """

    def __init__(
        self,
        path: Path,
        name: str,
        kind: Literal["folder", "stack", "image"],
        files: list[_FileInfo],
        skipped: list[tuple[str, str]],
    ) -> None:
        self.path = path
        self.name = name
        self.kind = kind
        self.skipped = skipped
        self._files = files
        self._items: list[tuple[int, int]] = []  # (file index, plane)
        self._names: list[str] = []
        for fi, info in enumerate(files):
            for t in range(info.n_planes):
                self._items.append((fi, t))
                single = info.n_planes == 1
                self._names.append(info.path.name if single else f"{info.path.name}[{t}]")
        self._handles: OrderedDict[int, tifffile.TiffFile] = OrderedDict()
        self._lock = threading.Lock()

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | Path, name: str, *, min_size: int) -> ImageSource:
        """Index the images at ``path`` (folder, stack or single image) without reading pixels.

        ``name`` is the user-facing argument (e.g. ``"--train-a"``) quoted in errors.
        ``min_size`` (px) is the smallest allowed image height/width (the crop size).
        Unreadable files in a folder are skipped with a warning and listed in ``skipped``;
        everything else that is wrong raises InputError.
        """
        path = Path(path)
        if isinstance(min_size, bool) or not isinstance(min_size, (int, np.integer)):
            raise InputError(f"min_size: expected an integer, got {min_size!r}")
        if not path.exists():
            raise InputError(f"{name}: {path} does not exist")
        skipped: list[tuple[str, str]] = []
        if path.is_dir():
            candidates = sorted(
                p
                for p in path.iterdir()
                if p.is_file() and p.suffix.lower() in TIFF_SUFFIXES and not p.name.startswith(".")
            )
            if not candidates:
                subdirs = sorted(p.name for p in path.iterdir() if p.is_dir())
                others = sorted(p.name for p in path.iterdir() if p.is_file())
                hint = ""
                if subdirs:
                    hint += "; folders are not searched recursively (subfolders: "
                    hint += f"{_listing(subdirs)})"
                if others:
                    hint += f"; other files found: {_listing(others)}"
                raise InputError(f"{name}: folder {path} contains no .tif/.tiff files{hint}")
            files: list[_FileInfo] = []
            for p in candidates:
                try:
                    files.append(_index_file(p, name))
                except _Unreadable as exc:
                    skipped.append((p.name, str(exc)))
                    if len(skipped) <= _MAX_LISTED:
                        logger.warning("%s: skipping %s: %s", name, p, exc)
            if len(skipped) > _MAX_LISTED:
                logger.warning(
                    "%s: skipped %d unreadable file(s) in %s (first %d listed above)",
                    name,
                    len(skipped),
                    path,
                    _MAX_LISTED,
                )
            if not files:
                raise InputError(
                    f"{name}: none of the {len(candidates)} TIFF file(s) in {path} is readable "
                    f"(e.g. {skipped[0][0]}: {skipped[0][1]})"
                )
            kind: Literal["folder", "stack", "image"] = "folder"
        else:
            try:
                info = _index_file(path, name)
            except _Unreadable as exc:
                raise InputError(f"{name}: {path}: {exc}") from exc
            files = [info]
            kind = "stack" if info.n_planes > 1 else "image"
        source = cls(path, name, kind, files, skipped)
        source._check_min_size(int(min_size))
        source._report_mixed()
        return source

    def _check_min_size(self, min_size: int) -> None:
        small = [
            f"{n} ({h}x{w} px, shape {(h, w)})"
            for n, (h, w) in zip(self._names, self.shapes, strict=True)
            if h < min_size or w < min_size
        ]
        if small:
            raise InputError(
                f"{self.name}: {len(small)} image(s) smaller than {min_size} px (the crop size) "
                f"in height or width: {_listing(small)}; use a smaller crop or remove them"
            )

    def _report_mixed(self) -> None:
        dtypes = self.dtypes
        if len(dtypes) > 1:
            logger.warning(
                "%s: mixed pixel types %s; one percentile normalization is used for all, so "
                "check that their intensity ranges are comparable",
                self.name,
                ", ".join(f"{k} ({v} images)" for k, v in sorted(dtypes.items())),
            )
        sizes = {round(f.pixel_size_um, 6) for f in self._files if f.pixel_size_um}
        if len(sizes) > 1:
            logger.warning(
                "%s: files have different pixel sizes (%s µm); using %s µm of the first",
                self.name,
                ", ".join(f"{s:g}" for s in sorted(sizes)),
                f"{self.pixel_size_um:g}",
            )

    # -- properties ---------------------------------------------------------------------------

    @property
    def n_images(self) -> int:
        return len(self._items)

    def __len__(self) -> int:
        return len(self._items)

    @property
    def names(self) -> list[str]:
        """Image names: the file name, or ``<file>[<plane>]`` for planes of a multi-page file."""
        return list(self._names)

    @property
    def shapes(self) -> list[tuple[int, int]]:
        """(height, width) in px of every image."""
        return [(self._files[f].height, self._files[f].width) for f, _ in self._items]

    @property
    def files(self) -> list[Path]:
        """The file each image comes from."""
        return [self._files[f].path for f, _ in self._items]

    @property
    def dtypes(self) -> dict[str, int]:
        """Number of images per stored pixel type, e.g. ``{"uint16": 40}``."""
        counts: Counter[str] = Counter()
        for f in self._files:
            counts[f.dtype.name] += f.n_planes
        return dict(counts)

    @property
    def dtype(self) -> str:
        """The stored pixel type (``"uint16"``), or ``"mixed(uint16,uint8)"`` when they differ."""
        names = sorted(self.dtypes)
        return names[0] if len(names) == 1 else f"mixed({','.join(names)})"

    @property
    def pixel_size_um(self) -> float | None:
        """Pixel size (µm) of the first readable file, None if it has none."""
        return self._files[0].pixel_size_um

    def __repr__(self) -> str:
        return (
            f"ImageSource({str(self.path)!r}, {self.name!r}, kind={self.kind!r}, "
            f"n_images={self.n_images}, dtype={self.dtype!r}, skipped={len(self.skipped)})"
        )

    # -- reading ------------------------------------------------------------------------------

    def _handle(self, fi: int) -> tifffile.TiffFile:
        tif = self._handles.get(fi)
        if tif is not None:
            self._handles.move_to_end(fi)
            return tif
        tif = tifffile.TiffFile(self._files[fi].path)
        self._handles[fi] = tif
        while len(self._handles) > _MAX_OPEN_FILES:
            _, old = self._handles.popitem(last=False)
            old.close()
        return tif

    def read_native(self, i: int) -> np.ndarray:
        """Image ``i`` as a 2-D array in its stored dtype (for caches: smaller than float32)."""
        if not 0 <= i < len(self._items):
            raise IndexError(f"{self.name}: image index {i} out of range 0..{len(self) - 1}")
        fi, t = self._items[i]
        info = self._files[fi]
        try:
            with self._lock, _tifffile_warnings() as warned:
                tif = self._handle(fi)
                if info.paged:
                    data = tif.asarray(key=t, series=0)
                else:
                    data = tif.series[0].asarray().reshape(info.n_planes, -1)[t]
                data = np.asarray(data).reshape(info.height, info.width)
            for w in warned:
                logger.debug("%s: tifffile: %s (%s)", self.name, w, info.path)
        except Exception as exc:
            with self._lock:
                old = self._handles.pop(fi, None)
                if old is not None:
                    old.close()
            raise InputError(
                f"{self.name}: cannot read {self._names[i]} from {info.path} "
                f"({type(exc).__name__}: {exc}); was the file changed or removed?"
            ) from exc
        if data.dtype.kind == "f" and not np.isfinite(data).all():
            n = int((~np.isfinite(data)).sum())
            raise InputError(
                f"{self.name}: {self._names[i]} contains {n} non-finite value(s) (NaN or inf)"
            )
        return data

    def read(self, i: int) -> np.ndarray:
        """Image ``i`` as a 2-D float32 array of raw intensities."""
        return self.read_native(i).astype(np.float32, copy=False)

    def close(self) -> None:
        """Close the open file handles (reading again reopens them)."""
        with self._lock:
            while self._handles:
                self._handles.popitem()[1].close()

    def __enter__(self) -> ImageSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handles"] = OrderedDict()
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()


def describe(source: ImageSource) -> dict[str, Any]:
    """Small JSON-able description of ``source`` for provenance."""
    shapes = np.array(source.shapes)
    return {
        "path": str(source.path),
        "kind": source.kind,
        "n_images": source.n_images,
        "dtype": source.dtype,
        "dtypes": source.dtypes,
        "pixel_size_um": source.pixel_size_um,
        "shape_min": [int(v) for v in shapes.min(axis=0)],
        "shape_max": [int(v) for v in shapes.max(axis=0)],
        "n_skipped": len(source.skipped),
    }


# -- percentiles ----------------------------------------------------------------------------


def estimate_percentiles(
    source: ImageSource,
    pmin: float,
    pmax: float,
    *,
    max_pixels: int = 2_000_000,
    max_images: int = 256,
    rng: np.random.Generator,
) -> tuple[float, float]:
    """Dataset-level ``pmin``/``pmax`` percentiles (in %, 0..100) of raw intensities.

    Computed once per domain, on a sample that treats every pixel of the data set alike:
    ``max_images`` images are drawn at random without replacement (all of them in a smaller
    data set), each read once, and from each a random subset of its pixels proportional to its
    area, ``max_pixels`` in all. If the drawn images hold at most ``max_pixels`` pixels, all of
    them are used (then the result equals ``np.percentile`` over those pixels, linear
    interpolation). Raises InputError when the data are constant (high <= low).
    """
    if not (0 <= pmin < pmax <= 100):
        raise InputError(f"percentiles: need 0 <= pmin < pmax <= 100, got {pmin}, {pmax}")
    if max_pixels < 1 or max_images < 1:
        raise InputError("max_pixels and max_images must be >= 1")
    n = source.n_images
    chosen = np.arange(n)
    if n > max_images:
        chosen = np.sort(rng.choice(n, size=max_images, replace=False))
    areas = np.array([h * w for h, w in source.shapes], dtype=np.int64)[chosen]
    total = int(areas.sum())
    take = (
        areas
        if total <= max_pixels
        else np.maximum(1, (areas * (max_pixels / total)).astype(np.int64))
    )
    parts = []
    for i, area, k in zip(chosen, areas, take, strict=True):
        flat = source.read_native(int(i)).reshape(-1)
        if k < area:
            flat = flat[np.sort(rng.choice(int(area), size=int(k), replace=False))]
        parts.append(flat.astype(np.float64))
    values = np.concatenate(parts)
    low, high = (float(v) for v in np.percentile(values, [pmin, pmax]))
    logger.info(
        "%s: percentiles %g%% = %g, %g%% = %g from %d pixels of %d/%d images",
        source.name,
        pmin,
        low,
        pmax,
        high,
        values.size,
        len(chosen),
        n,
    )
    if not high > low:
        raise InputError(
            f"{source.name}: the {pmin}th and {pmax}th intensity percentiles are both {low:g} "
            f"({values.size} sampled pixels): the images are (nearly) constant, so they cannot "
            "be normalized; check the data or widen the percentiles"
        )
    return low, high


# -- augmentation and caching ---------------------------------------------------------------


def dihedral(x: np.ndarray, k: int) -> np.ndarray:
    """One of the 8 symmetries of the square on the last two axes: ``rot90`` by ``k % 4``
    quarter turns, then for ``k >= 4`` a left-right flip. ``k = 0`` is the identity."""
    y = np.rot90(x, k % 4, axes=(-2, -1))
    if k >= 4:
        y = y[..., ::-1]
    return y


class ImageCache:
    """LRU cache of decoded images (stored dtype), at most ``maxsize`` of them (0: no cache).

    Memory is bounded by ``maxsize`` times the largest image. ``hits``/``misses`` count lookups.
    """

    def __init__(self, source: ImageSource, maxsize: int) -> None:
        if isinstance(maxsize, bool) or not isinstance(maxsize, (int, np.integer)) or maxsize < 0:
            raise InputError(f"cache_images: expected an integer >= 0, got {maxsize!r}")
        self.source = source
        self.maxsize = int(maxsize)
        self.hits = 0
        self.misses = 0
        self._data: OrderedDict[int, np.ndarray] = OrderedDict()

    def __len__(self) -> int:
        return len(self._data)

    def get(self, i: int) -> np.ndarray:
        img = self._data.get(i)
        if img is not None:
            self.hits += 1
            self._data.move_to_end(i)
            return img
        self.misses += 1
        img = self.source.read_native(i)
        if self.maxsize:
            self._data[i] = img
            while len(self._data) > self.maxsize:
                self._data.popitem(last=False)
        return img


def _positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InputError(f"{name}: expected an integer >= 1, got {value!r}")
    return int(value)


def _draw(
    rng: np.random.Generator, batch: int, n_images: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-item image index, crop position in [0, 1)^2 and dihedral index: 3 draws per batch,
    whatever the cache or the augmentation setting, so a generator state fixes the batch."""
    idx = rng.integers(0, n_images, size=batch)
    pos = rng.random((batch, 2))
    ks = rng.integers(0, 8, size=batch)
    return idx, pos, ks


def _offset(u: float, size: int, crop: int) -> int:
    return min(int(u * (size - crop + 1)), size - crop)


def _normalized(
    crop: np.ndarray, normalize: Callable[[np.ndarray], np.ndarray], name: str
) -> np.ndarray:
    out = np.asarray(normalize(crop.astype(np.float32)), dtype=np.float32)
    if out.shape != crop.shape:
        raise ValueError(f"{name}: normalize changed the crop shape {crop.shape} to {out.shape}")
    return out


def _check_crop(source: ImageSource, crop: int, what: str) -> None:
    small = [
        f"{n} ({h}x{w} px)"
        for n, (h, w) in zip(source.names, source.shapes, strict=True)
        if min(h, w) < crop
    ]
    if small:
        raise InputError(
            f"{source.name}: {len(small)} image(s) smaller than the {crop} px {what}: "
            f"{_listing(small)}"
        )


class CropSampler:
    """Random ``crop`` x ``crop`` patches from one source, for unpaired (CycleGAN) training.

    Each batch item: an image drawn uniformly, a uniformly placed crop, and (``augment``) one
    of the 8 dihedral transforms drawn uniformly; then ``normalize`` (raw -> model range, e.g.
    ``lambda x: norm.to_model(x, "a")``) is applied to the float32 crop. Decoded images are kept
    in an LRU cache of ``cache_images`` entries.
    """

    def __init__(
        self,
        source: ImageSource,
        normalize: Callable[[np.ndarray], np.ndarray],
        crop: int,
        *,
        augment: bool = True,
        cache_images: int = 64,
    ) -> None:
        self.source = source
        self.normalize = normalize
        self.crop = _positive_int(crop, "crop")
        self.augment = augment
        self.cache = ImageCache(source, cache_images)
        _check_crop(source, self.crop, "crop")

    def sample(self, batch: int, rng: np.random.Generator) -> np.ndarray:
        """A batch of shape (batch, 1, crop, crop), float32, normalized."""
        batch = _positive_int(batch, "batch")
        c = self.crop
        out = np.empty((batch, 1, c, c), dtype=np.float32)
        idx, pos, ks = _draw(rng, batch, self.source.n_images)
        for b in range(batch):
            img = self.cache.get(int(idx[b]))
            y = _offset(pos[b, 0], img.shape[0], c)
            x = _offset(pos[b, 1], img.shape[1], c)
            patch = img[y : y + c, x : x + c]
            if self.augment:
                patch = dihedral(patch, int(ks[b]))
            out[b, 0] = _normalized(patch, self.normalize, self.source.name)
        return out


def _pair_indices(a: ImageSource, b: ImageSource) -> list[tuple[int, int, str]]:
    """(index in a, index in b, name): by name (without extension) for two folders, else by
    index. InputError on unmatched names or different counts."""
    if a.kind == "folder" and b.kind == "folder":
        keys = []
        for src in (a, b):
            k = [_strip_suffix(nm) for nm in src.names]
            dup = sorted(nm for nm, c in Counter(k).items() if c > 1)
            if dup:
                raise InputError(
                    f"{src.name}: several files share the name(s) {_listing(dup)} "
                    "(e.g. x.tif and x.tiff); names must be unique for pairing"
                )
            keys.append(k)
        kb = {k: j for j, k in enumerate(keys[1])}
        missing_b = [k for k in keys[0] if k not in kb]
        missing_a = sorted(set(keys[1]) - set(keys[0]))
        if missing_b or missing_a:
            msg = f"{a.name} and {b.name} must hold the same image names to be paired;"
            if missing_b:
                msg += f" missing from {b.name}: {_listing(missing_b)};"
            if missing_a:
                msg += f" missing from {a.name}: {_listing(missing_a)};"
            raise InputError(msg.rstrip(";"))
        return [(i, kb[k], k) for i, k in enumerate(keys[0])]
    if a.n_images != b.n_images:
        raise InputError(
            f"{a.name} has {a.n_images} image(s) but {b.name} has {b.n_images}; paired data "
            "(stacks paired by plane index) need the same count"
        )
    return [(i, i, _strip_suffix(nm)) for i, nm in enumerate(a.names)]


def _check_pair_shapes(
    a: ImageSource, b: ImageSource, pairs: list[tuple[int, int, str]], scale: int
) -> None:
    sa, sb = a.shapes, b.shapes
    for i, j, _ in pairs:
        want = (sa[i][0] * scale, sa[i][1] * scale)
        if sb[j] != want:
            rule = "the same shape" if scale == 1 else f"exactly {scale}x the {a.name} image"
            raise InputError(
                f"{b.name}: {b.names[j]} is {sb[j][0]}x{sb[j][1]} px but its pair "
                f"{a.names[i]} in {a.name} is {sa[i][0]}x{sa[i][1]} px; for scale {scale} the "
                f"{b.name} image must be {rule} ({want[0]}x{want[1]} px)"
            )


class PairedCropSampler:
    """Aligned random crops from paired sources, for supervised training.

    Pairs are matched by file name (two folders) or by index (stacks). A crop of ``crop`` px at
    (y, x) in A goes with the crop of ``crop * scale`` px at (scale y, scale x) in B, and both get
    the same dihedral transform. ``sample`` returns ``(a, b)`` of shapes (batch, 1, crop, crop)
    and (batch, 1, crop * scale, crop * scale), float32, normalized.
    """

    def __init__(
        self,
        source_a: ImageSource,
        source_b: ImageSource,
        normalize_a: Callable[[np.ndarray], np.ndarray],
        normalize_b: Callable[[np.ndarray], np.ndarray],
        crop: int,
        *,
        augment: bool = True,
        scale: int = 1,
        cache_images: int = 64,
    ) -> None:
        self.source_a, self.source_b = source_a, source_b
        self.normalize_a, self.normalize_b = normalize_a, normalize_b
        self.crop = _positive_int(crop, "crop")
        self.scale = _positive_int(scale, "scale")
        self.augment = augment
        self.pairs = _pair_indices(source_a, source_b)
        _check_pair_shapes(source_a, source_b, self.pairs, self.scale)
        _check_crop(source_a, self.crop, "crop")
        self.cache_a = ImageCache(source_a, cache_images)
        self.cache_b = ImageCache(source_b, cache_images)

    def sample(self, batch: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(a, b) batches; see the class docstring."""
        batch = _positive_int(batch, "batch")
        c, s = self.crop, self.scale
        out_a = np.empty((batch, 1, c, c), dtype=np.float32)
        out_b = np.empty((batch, 1, c * s, c * s), dtype=np.float32)
        idx, pos, ks = _draw(rng, batch, len(self.pairs))
        for n in range(batch):
            i, j, _ = self.pairs[int(idx[n])]
            img_a, img_b = self.cache_a.get(i), self.cache_b.get(j)
            y = _offset(pos[n, 0], img_a.shape[0], c)
            x = _offset(pos[n, 1], img_a.shape[1], c)
            pa = img_a[y : y + c, x : x + c]
            pb = img_b[y * s : (y + c) * s, x * s : (x + c) * s]
            if self.augment:
                pa, pb = dihedral(pa, int(ks[n])), dihedral(pb, int(ks[n]))
            out_a[n, 0] = _normalized(pa, self.normalize_a, self.source_a.name)
            out_b[n, 0] = _normalized(pb, self.normalize_b, self.source_b.name)
        return out_a, out_b


# -- validation pairs -----------------------------------------------------------------------


@dataclass(frozen=True)
class ValidationPair:
    """One paired validation sample: raw float32 intensities, B on a ``scale``-times finer
    grid than A."""

    name: str
    a: np.ndarray
    b: np.ndarray


def load_validation_pairs(
    path_a: str | Path,
    path_b: str | Path,
    *,
    max_images: int | None = None,
    scale: int | None = None,
    name_a: str = "path_a",
    name_b: str = "path_b",
) -> list[ValidationPair]:
    """Read paired validation images (A = LR, B = HR), matched by file name (two folders) or by
    index (stacks), in name order; the first ``max_images`` pairs if given.

    Every B image must be exactly ``scale`` times its A image per axis; ``scale=None`` takes the
    factor of the first pair and requires it of all. ``name_a``/``name_b`` are quoted in errors.
    """
    src_a = ImageSource.open(path_a, name_a, min_size=1)
    src_b = ImageSource.open(path_b, name_b, min_size=1)
    try:
        pairs = _pair_indices(src_a, src_b)
        if scale is None:
            ha, hb = src_a.shapes[pairs[0][0]][0], src_b.shapes[pairs[0][1]][0]
            scale = max(1, hb // ha)
        _check_pair_shapes(src_a, src_b, pairs, _positive_int(scale, "scale"))
        if max_images is not None:
            pairs = pairs[: _positive_int(max_images, "max_images")]
        return [ValidationPair(key, src_a.read(i), src_b.read(j)) for i, j, key in pairs]
    finally:
        src_a.close()
        src_b.close()
