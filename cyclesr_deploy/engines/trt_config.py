"""TensorRT engine build settings, cache key, sidecar and version logic, without TensorRT.

Everything here is pure (pydantic + hashlib + pathlib) so that the CLI, the runtime and the tests
can reason about engines on machines without TensorRT or a GPU. ``tensorrt_build`` does the
building; ``cuda_runtime`` the device side.

Engines live in the model folder::

    my-model/engines/<gpu-slug>-trt<major.minor.patch>-<key[:12]>.engine   serialized plan
    my-model/engines/<gpu-slug>-trt<major.minor.patch>-<key[:12]>.json     EngineSidecar

A plan runs only on the OS, TensorRT version and GPU model it was built for (without
``hardware_compat``, not even on another GPU of the same architecture; TensorRT support matrix,
"engine compatibility"), so the sidecar records those facts and :func:`check_sidecar` refuses a
plan built elsewhere with the command that rebuilds it.

Precision recipe (deploy research notes §2.1/§2.2): TensorRT 11 removed weak typing
(``BuilderFlag.FP16`` is gone and every network is strongly typed), so FP16 always means a
*strongly typed* network parsed from the FP16 ONNX (``generator.fp16.onnx``: FP16 convs,
InstanceNorm kept FP32 by explicit Casts, FP32 graph I/O). The TensorRT major version is read
from ``tensorrt.__version__``, never guessed with ``hasattr(trt.BuilderFlag, "FP16")``
(roboflow/rf-detr#1453: that probe silently built FP32 engines on TensorRT 11).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from cyclesr_deploy.errors import InputError
from cyclesr_deploy.integrity import file_digest, user_cache_dir
from cyclesr_deploy.model import ENGINES_DIR, ONNX_BY_PRECISION

Precision = Literal["fp16", "fp32"]

#: Name of the generator's input / output tensors in the exported ONNX.
INPUT_NAME = "input"
OUTPUT_NAME = "output"
#: Bump when the build recipe changes in a way that changes engines for the same inputs.
KEY_VERSION = 1
SIDECAR_SCHEMA: Literal["1"] = "1"
MIN_TRT_MAJOR = 10

Shape4 = tuple[int, int, int, int]


class EngineMismatchError(InputError):
    """A serialized engine does not fit this machine or model; the message says how to rebuild."""

    def __init__(self, message: str, differences: list[str] | None = None) -> None:
        super().__init__(message)
        self.differences = list(differences or [])


class OnnxParseError(InputError):
    """TensorRT's ONNX parser rejected the model; the message names the file and the nodes."""


class EngineBuildError(RuntimeError):
    """TensorRT could not build (or deserialize) an engine; the message carries its log."""


class TensorRTVersionError(RuntimeError):
    """The installed TensorRT is older than this package supports (10.0)."""


def default_timing_cache_dir(
    *, platform: str | None = None, env: Mapping[str, str] | None = None, home: Path | None = None
) -> Path:
    """Per-user cache folder for TensorRT timing caches:
    :func:`~cyclesr_deploy.integrity.user_cache_dir` ``/ "trt"`` (the arguments are its)."""
    return user_cache_dir(platform=platform, env=env, home=home) / "trt"


class TensorRTBuildConfig(BaseModel):
    """How to build one TensorRT engine for a model (``cyclesr export tensorrt``).

    ``tile`` is the *input* tile edge in pixels (the engine's H = W); the output is ``scale``
    times larger. Static (default): one profile with min = opt = max = (batch, C, tile, tile),
    the fastest plan (TensorRT#1166, #3231); the runtime pads the last batch. ``dynamic``: batch
    1..``batch`` and tile ``min_tile``..``max_tile`` with opt at (batch, tile), for callers that
    need other tile sizes. ``precision`` ``fp16`` builds a strongly typed network from the FP16
    ONNX; ``fp32`` from the FP32 ONNX (TF32 stays allowed, TensorRT's default).
    ``timing_cache_dir`` holds one timing cache per (GPU, TensorRT version); None disables it.
    It does not change the engine and is not part of the cache key.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    tile: int = Field(default=512, ge=1, le=16384, description="input tile edge (px)")
    batch: int = Field(default=4, ge=1, le=1024, description="tiles per inference call")
    dynamic: bool = Field(default=False, description="dynamic batch/tile profile")
    min_tile: int | None = Field(
        default=None, ge=1, le=16384, description="dynamic only; default tile // 4"
    )
    max_tile: int | None = Field(
        default=None, ge=1, le=16384, description="dynamic only; default tile"
    )
    workspace_gib: float = Field(default=4.0, gt=0, le=1024, description="WORKSPACE pool limit")
    opt_level: int = Field(default=3, ge=0, le=5, description="builder_optimization_level")
    precision: Precision = "fp16"
    timing_cache_dir: Path | None = Field(default_factory=default_timing_cache_dir)
    hardware_compat: bool = Field(
        default=False,
        description="HardwareCompatibilityLevel.AMPERE_PLUS: runs on any Ampere+ GPU, slower",
    )

    @model_validator(mode="after")
    def _tile_range(self) -> TensorRTBuildConfig:
        if not self.dynamic:
            return self
        if self.min_tile is not None and self.min_tile > self.tile:
            raise ValueError(f"min_tile ({self.min_tile}) must be <= tile ({self.tile})")
        if self.max_tile is not None and self.max_tile < self.tile:
            raise ValueError(f"max_tile ({self.max_tile}) must be >= tile ({self.tile})")
        return self

    @property
    def workspace_bytes(self) -> int:
        return int(self.workspace_gib * (1 << 30))

    def engine_settings(self) -> dict[str, Any]:
        """The settings that change the engine (JSON-ready): everything but the timing cache.

        ``min_tile``/``max_tile`` are dropped (None) for static builds, where they are unused.
        """
        data = self.model_dump(mode="json", exclude={"timing_cache_dir"})
        if not self.dynamic:
            data["min_tile"] = data["max_tile"] = None
        return data


class Profile(BaseModel):
    """One optimization profile (``IOptimizationProfile.set_shape(name, min, opt, max)``).

    Shapes are (N, C, H, W) of the input tensor; the output is (N, C_out, H*scale, W*scale).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    input_name: str = INPUT_NAME
    min: Shape4
    opt: Shape4
    max: Shape4
    scale: int = 1

    @property
    def static(self) -> bool:
        return self.min == self.opt == self.max

    def output_hw(self, height: int, width: int) -> tuple[int, int]:
        return height * self.scale, width * self.scale


def _round_suggestions(value: int, multiple: int) -> str:
    down = max(multiple, value // multiple * multiple)
    up = -(-value // multiple) * multiple
    return str(up) if down == up else f"{down} or {up}"


def _check_edge(name: str, value: int, multiple: int) -> None:
    if value < multiple or value % multiple:
        raise InputError(
            f"TensorRT {name} {value} px is not a positive multiple of {multiple} (the model's "
            f"size multiple, set by its stride-2 stages); use "
            f"{_round_suggestions(value, multiple)}"
        )


def profiles(
    cfg: TensorRTBuildConfig, size_multiple: int, scale: int, channels: int = 1
) -> list[Profile]:
    """The optimization profile(s) for ``cfg``: one static profile, or one dynamic profile with
    min = (1, C, min_tile, min_tile), opt = (batch, C, tile, tile), max = (batch, C, max_tile,
    max_tile). Every tile edge must be a multiple of ``size_multiple`` (InputError with the
    nearest valid sizes otherwise)."""
    if size_multiple < 1 or scale < 1 or channels < 1:
        raise InputError(
            f"size_multiple ({size_multiple}), scale ({scale}) and channels ({channels}) "
            "must be positive"
        )
    _check_edge("tile", cfg.tile, size_multiple)
    opt = (cfg.batch, channels, cfg.tile, cfg.tile)
    if not cfg.dynamic:
        return [Profile(min=opt, opt=opt, max=opt, scale=scale)]
    min_tile = cfg.min_tile
    if min_tile is None:
        min_tile = max(size_multiple, cfg.tile // 4 // size_multiple * size_multiple)
    max_tile = cfg.tile if cfg.max_tile is None else cfg.max_tile
    _check_edge("min_tile", min_tile, size_multiple)
    _check_edge("max_tile", max_tile, size_multiple)
    return [
        Profile(
            min=(1, channels, min_tile, min_tile),
            opt=opt,
            max=(cfg.batch, channels, max_tile, max_tile),
            scale=scale,
        )
    ]


class GpuFacts(BaseModel):
    """What an engine depends on, about the machine: GPU model and architecture, driver,
    CUDA runtime, TensorRT version, OS (``platform.system()``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="cudaDeviceProp.name, e.g. 'NVIDIA RTX A4000'")
    compute_capability: str = Field(description="'major.minor', e.g. '8.6'")
    driver_version: str = Field(
        default="unknown", description="NVIDIA display driver (NVML), e.g. '580.65.06'"
    )
    cuda_driver_version: str = Field(
        default="", description="newest CUDA the driver supports (cudaDriverGetVersion), '13.0'"
    )
    cuda_runtime_version: str = Field(default="", description="cudaRuntimeGetVersion, '12.9'")
    trt_version: str = Field(description="tensorrt.__version__, e.g. '10.13.0.35'")
    os: str = Field(description="platform.system(): 'Linux' or 'Windows'")

    @property
    def driver_major(self) -> str:
        """'580' from '580.65.06'; the CUDA driver version when NVML was unavailable."""
        if self.driver_version and self.driver_version != "unknown":
            return self.driver_version.split(".")[0]
        return f"cuda{self.cuda_driver_version}" if self.cuda_driver_version else "unknown"

    @property
    def sm(self) -> str:
        """'sm 8.6' (as printed in messages)."""
        return f"sm {self.compute_capability}"

    def describe(self) -> str:
        return f"{self.name} ({self.sm}) with TensorRT {self.trt_version} on {self.os}"


def trt_major(version: str) -> int:
    """Major version from ``tensorrt.__version__`` ('10.13.0.35' -> 10, '11.0.0' -> 11)."""
    m = re.match(r"\s*(\d+)(?:\.|$)", str(version))
    if not m:
        raise ValueError(f"cannot read a TensorRT version from {version!r}")
    return int(m.group(1))


class BuildPlan(BaseModel):
    """Which ONNX to parse and which TensorRT flags to set, for a (TensorRT version, precision).

    ``network_flags`` are ``NetworkDefinitionCreationFlag`` member names OR-ed into
    ``Builder.create_network(1 << int(flag) | ...)``; ``builder_flags`` are ``BuilderFlag``
    member names for ``IBuilderConfig.set_flag``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    trt_major: int
    precision: Precision
    onnx_name: str
    strongly_typed: bool
    network_flags: tuple[str, ...] = ()
    builder_flags: tuple[str, ...] = ()


def build_plan(version: str, precision: Precision) -> BuildPlan:
    """The build recipe, a pure function of (``tensorrt.__version__``, precision).

    * fp16, any version: strongly typed network from ``generator.fp16.onnx``; FP16 comes from
      the graph's own types, never from ``BuilderFlag.FP16`` (removed in 11).
      TensorRT 10 needs ``NetworkDefinitionCreationFlag.STRONGLY_TYPED``; on 11 every network is
      strongly typed and that flag is deprecated and ignored, so it is not passed.
    * fp32 on TensorRT 10: plain (weakly typed, FP32 + TF32) network from ``generator.onnx``.
    * fp32 on TensorRT 11: the same ONNX; the network is strongly typed by TensorRT itself.
    * ``EXPLICIT_BATCH`` is never passed (deprecated and ignored since 10.0).
    """
    major = trt_major(version)
    if major < MIN_TRT_MAJOR:
        raise TensorRTVersionError(
            f"TensorRT {version} is too old: cyclesr-deploy needs TensorRT >= {MIN_TRT_MAJOR} "
            "(pip install 'cyclesr-deploy[tensorrt]')"
        )
    if precision == "fp16":
        return BuildPlan(
            trt_major=major,
            precision=precision,
            onnx_name=ONNX_BY_PRECISION["fp16"],
            strongly_typed=True,
            network_flags=("STRONGLY_TYPED",) if major == 10 else (),
        )
    if precision == "fp32":
        return BuildPlan(
            trt_major=major,
            precision=precision,
            onnx_name=ONNX_BY_PRECISION["fp32"],
            strongly_typed=major >= 11,
        )
    raise InputError(f"precision must be 'fp16' or 'fp32', not {precision!r}")


def _canonical_json(data: Any) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode("utf-8")


def cache_key(onnx_sha256: str, build_cfg: TensorRTBuildConfig, gpu_facts: GpuFacts) -> str:
    """sha256 (hex) of everything that changes the engine: the ONNX bytes (hash), the build
    settings (precision, tile/batch/profile settings, workspace, opt level, hardware compat),
    TensorRT version, GPU name and compute capability, driver major version, OS, and
    :data:`KEY_VERSION`. Not the timing cache location, not any timestamp."""
    payload = {
        "key_version": KEY_VERSION,
        "onnx_sha256": onnx_sha256.lower(),
        "settings": build_cfg.engine_settings(),
        "trt_version": gpu_facts.trt_version,
        "gpu_name": gpu_facts.name,
        "compute_capability": gpu_facts.compute_capability,
        "driver_major": gpu_facts.driver_major,
        "os": gpu_facts.os,
    }
    return hashlib.sha256(_canonical_json(payload)).hexdigest()


def slug(text: str) -> str:
    """'NVIDIA GeForce RTX 4090' -> 'nvidia-geforce-rtx-4090' (file-name safe everywhere)."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "gpu"


def _short_trt_version(version: str) -> str:
    parts = re.findall(r"\d+", version)[:3]
    return ".".join(parts) if parts else "unknown"


def engine_paths(model_dir: str | Path, key: str, gpu_facts: GpuFacts) -> tuple[Path, Path]:
    """(engine, sidecar) paths: ``model_dir/engines/<gpu>-trt<ver>-<key[:12]>.engine`` and
    the same name with ``.json``."""
    stem = f"{slug(gpu_facts.name)}-trt{_short_trt_version(gpu_facts.trt_version)}-{key[:12]}"
    folder = Path(model_dir) / ENGINES_DIR
    return folder / f"{stem}.engine", folder / f"{stem}.json"


def timing_cache_file(cache_dir: str | Path, gpu_facts: GpuFacts) -> Path:
    """One timing cache per (GPU, compute capability, TensorRT version), shared by all models:
    ``<dir>/<gpu>-sm86-trt10.13.0.35.timing-cache``. TensorRT checks the cache header and
    rejects another device's or version's cache (``set_timing_cache(c, ignore_mismatch=False)``).
    """
    cc = gpu_facts.compute_capability.replace(".", "")
    version = ".".join(re.findall(r"\d+", gpu_facts.trt_version)) or "unknown"
    name = f"{slug(gpu_facts.name)}-sm{cc}-trt{version}"
    return Path(cache_dir) / f"{name}.timing-cache"


def sidecar_path(engine_path: str | Path) -> Path:
    """The sidecar beside an engine file (``x.engine`` -> ``x.json``)."""
    return Path(engine_path).with_suffix(".json")


class EngineSidecar(BaseModel):
    """The JSON written beside each engine: what it was built from, where and how."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    schema_version: Literal["1"] = SIDECAR_SCHEMA
    cache_key: str
    engine_file: str
    engine_sha256: str
    onnx_file: str
    onnx_sha256: str
    precision: Precision
    trt_version: str
    gpu_name: str
    compute_capability: str
    driver_version: str = "unknown"
    cuda_driver_version: str = ""
    cuda_runtime_version: str = ""
    os: str
    profiles: list[Profile]
    input_name: str = INPUT_NAME
    output_name: str = OUTPUT_NAME
    build: dict[str, Any] = Field(description="TensorRTBuildConfig.engine_settings()")
    builder_optimization_level: int
    hardware_compat: bool
    strongly_typed: bool
    network_flags: list[str] = Field(default_factory=list)
    builder_flags: list[str] = Field(default_factory=list)
    created: str = Field(description="ISO 8601 UTC build time")
    cyclesr_version: str
    build_seconds: float | None = None

    def build_config(self) -> TensorRTBuildConfig:
        """The settings this engine was built with (timing cache at its default)."""
        return TensorRTBuildConfig.model_validate(self.build)

    def describe(self) -> str:
        return (
            f"{self.gpu_name} (sm {self.compute_capability}) with TensorRT {self.trt_version} "
            f"on {self.os}"
        )


def read_sidecar(path: str | Path) -> EngineSidecar:
    """Read and validate a sidecar JSON; EngineMismatchError when absent or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise EngineMismatchError(
            f"{path}: engine sidecar missing; the engine's origin is unknown, rebuild it "
            "(cyclesr export tensorrt MODEL_DIR)",
            ["sidecar"],
        )
    try:
        return EngineSidecar.model_validate_json(path.read_bytes())
    except (ValidationError, ValueError) as exc:
        raise EngineMismatchError(
            f"{path}: not a valid engine sidecar ({exc}); rebuild the engine "
            "(cyclesr export tensorrt MODEL_DIR)",
            ["sidecar"],
        ) from exc


def write_sidecar(path: str | Path, sidecar: EngineSidecar) -> Path:
    """Write ``sidecar`` atomically (``.part`` + rename)."""
    from cyclesr_deploy.io import atomic_path

    path = Path(path)
    with atomic_path(path) as part:
        part.write_text(sidecar.model_dump_json(indent=2) + "\n", encoding="utf-8")
    return path


def _quote(text: str) -> str:
    return f'"{text}"' if any(c.isspace() for c in text) else text


def rebuild_command(model_dir: str | Path | None, settings: Mapping[str, Any]) -> str:
    """The ``cyclesr export tensorrt`` command that rebuilds an engine with ``settings``
    (``TensorRTBuildConfig.engine_settings()``); defaults are left out."""
    defaults = TensorRTBuildConfig(timing_cache_dir=None)
    target = _quote(str(model_dir)) if model_dir is not None else "MODEL_DIR"
    get = settings.get
    parts = ["cyclesr export tensorrt", target]
    parts += [f"--tile {get('tile', defaults.tile)}", f"--batch {get('batch', defaults.batch)}"]
    parts.append(f"--precision {get('precision', defaults.precision)}")
    if get("dynamic"):
        parts.append("--dynamic")
        if get("min_tile") is not None:
            parts.append(f"--min-tile {get('min_tile')}")
        if get("max_tile") is not None:
            parts.append(f"--max-tile {get('max_tile')}")
    if get("opt_level", defaults.opt_level) != defaults.opt_level:
        parts.append(f"--opt-level {get('opt_level')}")
    if get("workspace_gib", defaults.workspace_gib) != defaults.workspace_gib:
        parts.append(f"--workspace-gib {get('workspace_gib'):g}")
    if get("hardware_compat"):
        parts.append("--hardware-compat")
    return " ".join(parts)


def _cc_tuple(cc: str) -> tuple[int, int]:
    try:
        major, _, minor = cc.partition(".")
        return int(major), int(minor or 0)
    except ValueError:
        return (0, 0)


def sidecar_differences(
    sidecar: EngineSidecar, gpu_facts: GpuFacts, onnx_sha256: str | None = None
) -> list[str]:
    """What keeps the engine described by ``sidecar`` from running here (empty: it fits).

    Refused: another OS; another TensorRT version (plans are not portable across versions
    without VERSION_COMPATIBLE, which we do not build); another GPU model or compute capability
    (TensorRT rejects other architectures and warns that other models "may cause errors"), or
    for ``hardware_compat`` engines a GPU older than Ampere (sm 8.0); another ONNX. The driver
    version is not checked here: it is in the cache key, so a driver upgrade rebuilds on the
    next ``engine_from_onnx``, but an existing plan stays loadable.
    """
    diffs: list[str] = []
    if sidecar.os != gpu_facts.os:
        diffs.append(f"operating system: engine {sidecar.os}, this machine {gpu_facts.os}")
    if sidecar.trt_version != gpu_facts.trt_version:
        diffs.append(
            f"TensorRT version: engine {sidecar.trt_version}, installed {gpu_facts.trt_version}"
        )
    here = f"{gpu_facts.name} ({gpu_facts.sm})"
    there = f"{sidecar.gpu_name} (sm {sidecar.compute_capability})"
    if sidecar.hardware_compat:
        if _cc_tuple(gpu_facts.compute_capability) < (8, 0):
            diffs.append(f"GPU: hardware-compatible engines need Ampere (sm 8.0) or newer: {here}")
    elif (
        sidecar.gpu_name != gpu_facts.name
        or sidecar.compute_capability != gpu_facts.compute_capability
    ):
        diffs.append(f"GPU: engine built on {there}, this machine has {here}")
    if onnx_sha256 is not None and sidecar.onnx_sha256.lower() != onnx_sha256.lower():
        diffs.append(
            f"ONNX: {sidecar.onnx_file} changed since the build (sha256 "
            f"{sidecar.onnx_sha256[:12]}... at build, {onnx_sha256[:12]}... now)"
        )
    return diffs


def check_sidecar(
    sidecar: EngineSidecar,
    gpu_facts: GpuFacts,
    onnx_sha256: str | None,
    *,
    model_dir: str | Path | None = None,
) -> None:
    """Raise :class:`EngineMismatchError` unless the engine fits this machine and ONNX.

    The message names what differs (e.g. "built for NVIDIA RTX A4000 (sm 8.6) with TensorRT
    10.13.0 on Linux, this machine has NVIDIA H200 (sm 9.0) with TensorRT 11.0.0 on Linux")
    and gives the ``cyclesr export tensorrt`` command that rebuilds it here. ``onnx_sha256``
    None skips the ONNX comparison.
    """
    diffs = sidecar_differences(sidecar, gpu_facts, onnx_sha256)
    if not diffs:
        return
    raise EngineMismatchError(
        f"TensorRT engine {sidecar.engine_file} cannot be used here: built for "
        f"{sidecar.describe()}, this machine has {gpu_facts.describe()}.\n  - "
        + "\n  - ".join(diffs)
        + f"\nRebuild it on this machine with: {rebuild_command(model_dir, sidecar.build)}",
        diffs,
    )


def list_engines(model_dir: str | Path) -> list[tuple[Path, EngineSidecar]]:
    """(engine path, sidecar) for every engine in ``model_dir/engines`` whose sidecar reads
    and whose engine file exists, newest first. Unreadable sidecars are skipped."""
    folder = Path(model_dir) / ENGINES_DIR
    found: list[tuple[Path, EngineSidecar]] = []
    if not folder.is_dir():
        return found
    for json_path in folder.glob("*.json"):
        try:
            sidecar = read_sidecar(json_path)
        except EngineMismatchError:
            continue
        engine = json_path.with_name(sidecar.engine_file)
        if engine.is_file():
            found.append((engine, sidecar))
    found.sort(key=lambda item: item[1].created, reverse=True)
    return found


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file (:func:`~cyclesr_deploy.integrity.file_digest`)."""
    return file_digest(path, chunk)[1]
