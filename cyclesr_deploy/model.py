"""The model folder and its typed config (``model.json``), readable without torch.

A model is a folder (every file name below is defined here, once, and nowhere else)::

    my-model/
      model.json          ModelConfig: architecture, normalization, scale, receptive field,
                          size multiple, training provenance, schema_version
      generator_ab.pt     LR -> HR generator weights (state dict; training and the torch backend)
      generator_ba.pt     HR -> LR generator weights (CycleGAN only)
      train_state.pt      full training state for --resume (optimizers, pool, RNG, step)
      train_config.yaml   the TrainConfig that produced the weights
      train_log.csv       losses and validation metrics
      generator.onnx      FP32 ONNX of generator_ab (model.json in metadata_props), from export
      generator.fp16.onnx FP16 ONNX derived from it (InstanceNorm FP32, FP32 I/O)
      generator.int8.onnx post-training int8 (NNCF) ONNX, QDQ (export precision; OpenVINO)
      generator_ba.onnx   FP32 ONNX of generator_ba (on request)
      generator.stats.onnx, generator.tile.onnx
                          the frozen InstanceNorm statistics graphs (seam-free tiling)
      frozen_stats.json   the per-model check of the crops statistics estimate
      export.json         what export produced: sizes, sha256, parity figures, versions
      engines/            TensorRT engines (*.engine + *.json sidecars), ONNX Runtime's
                          TensorRT cache (engines/onnxruntime-trt), OpenVINO's compiled-model
                          cache (engines/openvino)
      .cyclesr-digests.json  sha256 cache of the integrity check (see ModelFolder.verify)

:class:`ModelFolder` gives these paths and checks an artifact against ``export.json`` before an
engine opens it (:meth:`ModelFolder.verify`).

Naming follows the CycleGAN paper: ``generator_ab`` = G (A = LR -> B = HR), ``generator_ba`` = F,
``discriminator_b`` = D_Y (judges HR), ``discriminator_a`` = D_X (judges LR).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from cyclesr_deploy.errors import InputError
from cyclesr_deploy.integrity import cached_digest, verify_artifacts

SCHEMA_VERSION: Literal["1"] = "1"
# --- the model folder's file names (the only definitions; import them from here) -----------
MODEL_JSON = "model.json"
WEIGHTS = {"ab": "generator_ab.pt", "ba": "generator_ba.pt"}
TRAIN_STATE = "train_state.pt"
ONNX_FILES = {"ab": "generator.onnx", "ba": "generator_ba.onnx"}
ONNX_FP16 = "generator.fp16.onnx"  # derived from ONNX_FILES["ab"] (export/fp16.py)
ONNX_INT8 = "generator.int8.onnx"  # post-training int8 (NNCF) of ONNX_FILES["ab"] (OpenVINO)
#: the generator's ONNX per precision (the ONNX Runtime and TensorRT engines)
ONNX_BY_PRECISION = {"fp32": ONNX_FILES["ab"], "fp16": ONNX_FP16}
# the two graphs of seam-free tiling (frozen InstanceNorm statistics; export/frozen_onnx.py)
FROZEN_ONNX = {"stats": "generator.stats.onnx", "tile": "generator.tile.onnx"}
FROZEN_ONNX_BY_DIRECTION = {
    "ab": FROZEN_ONNX,
    "ba": {"stats": "generator_ba.stats.onnx", "tile": "generator_ba.tile.onnx"},
}
FROZEN_CHECK = "frozen_stats.json"  # the crops estimate's per-model check (export onnx)
TRUST_JSON = "trust.json"  # per-frame trust calibration (cyclesr_deploy.trust, export trust)
EXPORT_JSON = "export.json"
ENGINES_DIR = "engines"  # TensorRT engines and their sidecars
ORT_TRT_CACHE = "onnxruntime-trt"  # ONNX Runtime's TensorRT EP cache, under ENGINES_DIR
OPENVINO_CACHE = "openvino"  # OpenVINO's compiled-model cache (CACHE_DIR), under ENGINES_DIR
DIGEST_CACHE = ".cyclesr-digests.json"  # ModelFolder.verify's sha256 cache
#: the command that re-exports each artifact (``{d}``: the model folder)
EXPORT_ONNX_HINT = "cyclesr export onnx {d} --overwrite"
REEXPORT_HINTS = {
    ONNX_FILES["ba"]: "cyclesr export onnx {d} --direction ba --overwrite",
    WEIGHTS["ba"]: "cyclesr export onnx {d} --direction ba --overwrite",
    ONNX_INT8: "cyclesr export precision {d}",
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GeneratorConfig(_Strict):
    """ResNet generator (Johnson et al. / canonical CycleGAN ``resnet_{n}blocks``).

    c7s1-ngf, two stride-2 3x3 convs (ngf*2, ngf*4), ``n_blocks`` residual blocks at ngf*4,
    two x2 upsampling stages back to ngf, c7s1-out, tanh. ``scale=2`` adds one more x2 stage
    (``head``) so that an LR image on a 2x coarser grid maps to the HR grid; ``downscale=2``
    adds a stride-2 conv3 after the first layer, for the HR -> LR generator F of a scale-2
    CycleGAN (``inverse()`` gives F's config from G's).
    """

    ngf: int = Field(default=64, ge=1, le=512, description="filters of the first layer")
    n_blocks: int = Field(default=9, ge=0, le=64, description="residual blocks")
    in_channels: int = Field(default=1, ge=1, le=16)
    out_channels: int = Field(default=1, ge=1, le=16)
    scale: Literal[1, 2] = Field(default=1, description="output pixels per input pixel, per axis")
    upsample: Literal["transpose", "resize_conv"] = Field(
        default="transpose",
        description="decoder upsampling: ConvTranspose2d(3, s2) (canonical) or nearest x2 + "
        "conv3 (no checkerboard artefacts)",
    )
    head: Literal["pixel_shuffle", "resize_conv"] = Field(
        default="pixel_shuffle", description="extra x2 stage used when scale == 2"
    )
    downscale: Literal[1, 2] = Field(
        default=1,
        description="input pixels per output pixel, per axis: 2 for the HR -> LR generator of a "
        "scale-2 CycleGAN (one extra stride-2 conv3 stage at the input)",
    )
    norm: Literal["instance", "none"] = Field(
        default="instance", description="InstanceNorm2d(affine=False) or no normalization"
    )

    @model_validator(mode="after")
    def _scale_and_downscale_exclusive(self) -> GeneratorConfig:
        if self.scale != 1 and self.downscale != 1:
            raise ValueError("a generator either upscales (scale) or downscales, not both")
        return self

    def inverse(self) -> GeneratorConfig:
        """Config of the generator for the opposite direction (F from G): channels swapped,
        ``scale`` and ``downscale`` exchanged; other fields kept."""
        data = self.model_dump()
        data.update(
            in_channels=self.out_channels,
            out_channels=self.in_channels,
            scale=self.downscale,
            downscale=self.scale,
        )
        return GeneratorConfig.model_validate(data)

    @property
    def size_multiple(self) -> int:
        """Input H and W must be multiples of this (two stride-2 stages, three with
        ``downscale=2``)."""
        return 4 * self.downscale

    def check_shape(self, height: int, width: int, name: str = "input") -> None:
        """Raise InputError unless (height, width) is a valid input size (multiples of
        ``size_multiple``, at least one multiple). Call once per shape, not per frame."""
        m = self.size_multiple
        if height < m or width < m or height % m or width % m:
            raise InputError(
                f"{name}: {height}x{width} px is not a valid generator input; height and width "
                f"must be positive multiples of {m} (pad or crop, e.g. to "
                f"{max(m, height // m * m)}x{max(m, width // m * m)})"
            )

    @property
    def receptive_field(self) -> int:
        """Receptive field in *input* pixels per axis: the widest span of input pixels that one
        output pixel depends on, ignoring InstanceNorm (which makes every output depend on the
        whole input) and image borders.

        Exact, not the usual r += (k - 1) * jump estimate: a x2 stage makes the span depend on
        the output pixel's position, so the index interval of each output phase is traced back
        through the layers and the widest is taken (checked against gradients in
        ``tests/unit/test_nets.py``). 121 px for resnet_6blocks, 169 px for resnet_9blocks
        (scale 1); 165 px for resnet_9blocks with scale 2 (pixel_shuffle head).
        """
        widest = 0
        for phase in range(4 * self.size_multiple):  # output pixels 0..: covers every phase
            lo, hi = self._input_span(phase)
            widest = max(widest, hi - lo + 1)
        return widest

    @property
    def halo(self) -> int:
        """Output pixels per side whose input span reaches past the edge of an input tile
        (tile aligned to ``size_multiple``): the largest left and right extent, found with the
        index arithmetic of :attr:`receptive_field`, rounded up to a multiple of ``scale`` (so
        that the input-side halo is whole pixels). Not half the receptive field: spans are
        off-centre for the x2 stages (117 left vs 115 right output px for resnet_6blocks with
        scale 2). Checked by perturbing input pixels in ``tests/unit/test_nets.py``.
        """
        m, s = self.size_multiple, self.scale
        n = (self.receptive_field // m + 2) * m  # an input tile wider than any span
        left = max(o for o in range(-s * n, s * n) if self._input_span(o)[0] < 0) + 1
        right = s * n - min(o for o in range(0, 2 * s * n) if self._input_span(o)[1] >= n)
        return -(-max(left, right) // s) * s

    def _layers(self) -> list[tuple[str, int]]:
        """(kind, kernel) from input to output; kinds: conv (stride 1, "same"), down (conv3 s2
        p1), convT (k3 s2 p1 op1), x2 (nearest x2 or PixelShuffle(2))."""
        resize_conv = [("x2", 0), ("conv", 3)]
        up = [("convT", 3)] if self.upsample == "transpose" else resize_conv
        n_down = 2 if self.downscale == 1 else 3
        layers = [("conv", 7)] + [("down", 3)] * n_down + [("conv", 3)] * (2 * self.n_blocks)
        layers += up + up
        if self.scale == 2:
            layers += [("conv", 3), ("x2", 0)] if self.head == "pixel_shuffle" else resize_conv
        layers.append(("conv", 7))
        return layers

    def _input_span(self, out_index: int) -> tuple[int, int]:
        """(first, last) input index that output pixel ``out_index`` depends on (no borders)."""
        lo = hi = out_index
        for kind, kernel in reversed(self._layers()):
            if kind == "conv":
                lo, hi = lo - kernel // 2, hi + kernel // 2
            elif kind == "down":  # out o <- in 2o-1 .. 2o+1
                lo, hi = 2 * lo - 1, 2 * hi + 1
            elif kind == "convT":  # out o <- in i with 2i - 1 + k = o, k in 0..2
                lo, hi = lo // 2, (hi + 1) // 2
            else:  # out o <- in o // 2
                lo, hi = lo // 2, hi // 2
        return lo, hi


class DiscriminatorConfig(_Strict):
    """PatchGAN (``NLayerDiscriminator``); n_layers=3 is the canonical 70x70 PatchGAN."""

    ndf: int = Field(default=64, ge=1, le=512)
    n_layers: int = Field(default=3, ge=1, le=8)
    in_channels: int = Field(default=1, ge=1, le=16)
    norm: Literal["instance", "none"] = Field(
        default="instance", description="InstanceNorm2d(affine=False) or no normalization"
    )

    @property
    def receptive_field(self) -> int:
        """Receptive field in pixels: 70 for n_layers=3 (k4: s2 x n_layers, then s1, s1)."""
        rf, jump = 1, 1
        strides = [2] * self.n_layers + [1, 1]
        for s in strides:
            rf += 3 * jump
            jump *= s
        return rf


class NormalizationConfig(_Strict):
    """Input/output intensity mapping, fixed at training time and reused at inference.

    ``x_norm = (x - low) / (high - low)`` then ``2 x_norm - 1`` into the generator's [-1, 1];
    ``low``/``high`` are dataset percentiles (``pmin``/``pmax``) of each domain.
    """

    kind: Literal["percentile"] = "percentile"
    pmin: float = Field(default=0.1, ge=0, lt=100)
    pmax: float = Field(default=99.9, gt=0, le=100)
    low_a: float = 0.0
    high_a: float = 1.0
    low_b: float = 0.0
    high_b: float = 1.0

    @model_validator(mode="after")
    def _ranges_are_increasing(self) -> NormalizationConfig:
        if not self.pmin < self.pmax:
            raise ValueError(f"pmin ({self.pmin}) must be < pmax ({self.pmax})")
        if not (self.high_a > self.low_a and self.high_b > self.low_b):
            raise ValueError("high must exceed low for both domains")
        return self

    def to_model(self, x: np.ndarray, domain: Literal["a", "b"] = "a") -> np.ndarray:
        """Raw intensities of ``domain`` -> float32 in the generator's range (about [-1, 1])."""
        low, high = (self.low_a, self.high_a) if domain == "a" else (self.low_b, self.high_b)
        scale = np.float32(2.0 / (high - low))
        return np.asarray(x, dtype=np.float32) * scale - np.float32(2.0 * low / (high - low) + 1)

    def from_model(self, y: np.ndarray, domain: Literal["a", "b"] = "b") -> np.ndarray:
        """Generator output in [-1, 1] -> raw intensities of ``domain`` (float32, unclipped)."""
        low, high = (self.low_a, self.high_a) if domain == "a" else (self.low_b, self.high_b)
        return (np.asarray(y, dtype=np.float32) + np.float32(1)) * np.float32(
            (high - low) / 2
        ) + np.float32(low)


class Provenance(_Strict):
    """Where the weights came from."""

    mode: Literal["cyclegan", "supervised"] = "cyclegan"
    train_a: str = ""
    train_b: str = ""
    n_images_a: int = 0
    n_images_b: int = 0
    n_skipped_a: int = Field(default=0, description="unreadable files skipped in train_a")
    n_skipped_b: int = Field(default=0, description="unreadable files skipped in train_b")
    pixel_size_um_a: float | None = None
    pixel_size_um_b: float | None = None
    dtype: str = ""
    steps: int = 0
    seed: int = 0
    loss_preset: str = ""
    versions: dict[str, str] = Field(default_factory=dict)


class ModelConfig(_Strict):
    """``model.json``: everything a runtime needs to use the generator, without torch."""

    schema_version: Literal["1"] = SCHEMA_VERSION
    name: str = "cyclesr-model"
    generator: GeneratorConfig = GeneratorConfig()
    normalization: NormalizationConfig = NormalizationConfig()
    provenance: Provenance = Provenance()

    @property
    def scale(self) -> int:
        return self.generator.scale

    @property
    def size_multiple(self) -> int:
        return self.generator.size_multiple

    @property
    def receptive_field(self) -> int:
        return self.generator.receptive_field

    def to_json_dict(self) -> dict[str, Any]:
        """JSON content, with the derived figures (receptive field, size multiple) spelled out
        for readers that do not use this package; they are ignored when read back."""
        data = self.model_dump(mode="json")
        data["derived"] = {
            "scale": self.scale,
            "size_multiple": self.size_multiple,
            "receptive_field": self.receptive_field,
        }
        return data


def save_model_config(model_dir: str | Path, config: ModelConfig) -> Path:
    """Write ``model.json`` atomically into ``model_dir`` (created if needed)."""
    from cyclesr_deploy.io import atomic_path

    path = Path(model_dir) / MODEL_JSON
    text = json.dumps(config.to_json_dict(), indent=2, sort_keys=False) + "\n"
    with atomic_path(path) as part:
        part.write_text(text, encoding="utf-8")
    return path


def load_model(model_dir: str | Path) -> ModelConfig:
    """Read a model folder's ``model.json`` (no torch needed); clear errors for bad folders."""
    model_dir = Path(model_dir)
    path = model_dir / MODEL_JSON
    if not model_dir.is_dir():
        raise InputError(f"model: {model_dir} is not a folder")
    if not path.is_file():
        raise InputError(f"model: {model_dir} has no {MODEL_JSON}; is it a cyclesr model folder?")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise InputError(f"model: {path} is not valid JSON ({exc})") from exc
    if isinstance(data, dict):
        data.pop("derived", None)
    try:
        return ModelConfig.model_validate(data)
    except ValidationError as exc:
        raise InputError(f"model: {path} is not a valid model config:\n{exc}") from exc


class ModelFolder:
    """A model folder's artifact paths and their integrity check (torch-free).

    Paths: :attr:`model_json`, :meth:`weights`, :meth:`onnx`, :meth:`frozen_onnx`,
    :attr:`export_json`, :attr:`frozen_check`, :attr:`engines_dir`, :attr:`ort_trt_cache`.
    :meth:`verify` checks files against the sha256 that ``export.json`` records
    (:mod:`cyclesr_deploy.integrity`).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"ModelFolder({str(self.path)!r})"

    @property
    def model_json(self) -> Path:
        return self.path / MODEL_JSON

    def weights(self, direction: Literal["ab", "ba"] = "ab") -> Path:
        return self.path / WEIGHTS[direction]

    def onnx(self, precision: str = "fp32") -> Path:
        """The generator's ONNX for ``precision`` ("fp32" or "fp16"; direction ab)."""
        return self.path / ONNX_BY_PRECISION[precision]

    def frozen_onnx(self, kind: Literal["stats", "tile"]) -> Path:
        return self.path / FROZEN_ONNX[kind]

    @property
    def export_json(self) -> Path:
        return self.path / EXPORT_JSON

    @property
    def frozen_check(self) -> Path:
        return self.path / FROZEN_CHECK

    @property
    def trust_json(self) -> Path:
        return self.path / TRUST_JSON

    @property
    def digest_cache(self) -> Path:
        return self.path / DIGEST_CACHE

    @property
    def engines_dir(self) -> Path:
        return self.path / ENGINES_DIR

    @property
    def ort_trt_cache(self) -> Path:
        return self.path / ENGINES_DIR / ORT_TRT_CACHE

    @property
    def int8_onnx(self) -> Path:
        return self.path / ONNX_INT8

    @property
    def openvino_cache(self) -> Path:
        """OpenVINO's compiled-model cache in the folder (see
        :func:`cyclesr_deploy.engines.openvino_engine.cache_dir` for read-only folders)."""
        return self.path / ENGINES_DIR / OPENVINO_CACHE

    def reexport_command(self, name: str) -> str:
        """The command that re-exports (and re-records) artifact ``name``."""
        if name.endswith(".engine"):
            return f"cyclesr export tensorrt {self.path}"
        return REEXPORT_HINTS.get(name, EXPORT_ONNX_HINT).format(d=self.path)

    def digest(self, name: str | Path) -> str:
        """sha256 of file ``name`` of the folder, cached by (size, mtime_ns)."""
        return cached_digest(self, self.file(name))

    def content_digest(self) -> str:
        """What the model computes, as a short digest: the sha256 of ``model.json`` and of
        every generator artifact present (ONNX, frozen ONNX, weights; cached as
        :meth:`digest`), so a model re-exported into the same folder gets a new one."""
        names = [MODEL_JSON, *ONNX_BY_PRECISION.values(), *FROZEN_ONNX.values(), WEIGHTS["ab"]]
        h = hashlib.sha256()
        for name in dict.fromkeys(names):
            if (self.path / name).is_file():
                h.update(f"{name}:{self.digest(name)}\n".encode())
        return h.hexdigest()[:16]

    def verify(self, *files: str | Path) -> None:
        """Refuse (InputError naming the file and the re-export command) any of ``files``
        (paths, or names inside the folder) whose sha256 differs from ``export.json``'s record;
        a folder without records runs with one warning per folder and process. Digests are
        cached by (size, mtime_ns): a file is hashed once per change, not per run."""
        verify_artifacts(self, [self.file(f) for f in files])

    def file(self, name: str | Path) -> Path:
        """The path of ``name``: a name inside the folder, or a path already (absolute, or
        relative and starting with a relative folder's path, e.g. ``m/generator.onnx`` of
        ``ModelFolder("m")``: joined again it would name ``m/m/generator.onnx``)."""
        p = Path(name)
        n = len(self.path.parts)
        if p.is_absolute() or (not self.path.is_absolute() and p.parts[:n] == self.path.parts):
            return p
        return self.path / p
