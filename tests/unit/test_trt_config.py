"""TensorRT build settings, profiles, build plan, cache key and sidecar checks (no TensorRT)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from pydantic import ValidationError

from cyclesr_deploy.engines.trt_config import (
    EngineMismatchError,
    EngineSidecar,
    GpuFacts,
    Profile,
    TensorRTBuildConfig,
    TensorRTVersionError,
    build_plan,
    cache_key,
    check_sidecar,
    default_timing_cache_dir,
    engine_paths,
    list_engines,
    profiles,
    read_sidecar,
    rebuild_command,
    sha256_file,
    sidecar_differences,
    sidecar_path,
    slug,
    timing_cache_file,
    trt_major,
    write_sidecar,
)
from cyclesr_deploy.errors import InputError
from cyclesr_deploy.model import ENGINES_DIR, ONNX_BY_PRECISION

A4000 = GpuFacts(
    name="NVIDIA RTX A4000",
    compute_capability="8.6",
    driver_version="580.65.06",
    cuda_driver_version="13.0",
    cuda_runtime_version="13.0",
    trt_version="10.13.0.35",
    os="Linux",
)
ONNX_SHA = "ab" * 32


def cfg(**kw) -> TensorRTBuildConfig:
    return TensorRTBuildConfig(timing_cache_dir=None, **kw)


def make_sidecar(facts: GpuFacts = A4000, build: TensorRTBuildConfig | None = None, **kw):
    build = build or cfg()
    data = dict(
        cache_key=cache_key(ONNX_SHA, build, facts),
        engine_file="x.engine",
        engine_sha256="cd" * 32,
        onnx_file=ONNX_BY_PRECISION["fp16"],
        onnx_sha256=ONNX_SHA,
        precision=build.precision,
        trt_version=facts.trt_version,
        gpu_name=facts.name,
        compute_capability=facts.compute_capability,
        driver_version=facts.driver_version,
        os=facts.os,
        profiles=profiles(build, 4, 1),
        build=build.engine_settings(),
        builder_optimization_level=build.opt_level,
        hardware_compat=build.hardware_compat,
        strongly_typed=True,
        created="2026-11-26T12:00:00+00:00",
        cyclesr_version="0.1.0.dev0",
    )
    data.update(kw)
    return EngineSidecar(**data)


# --- config -------------------------------------------------------------------------------


def test_config_defaults_and_validation():
    c = TensorRTBuildConfig()
    assert (c.tile, c.batch, c.dynamic, c.precision) == (512, 4, False, "fp16")
    assert (c.workspace_gib, c.opt_level, c.hardware_compat) == (4.0, 3, False)
    assert c.workspace_bytes == 4 << 30
    assert c.timing_cache_dir == default_timing_cache_dir()
    with pytest.raises(ValidationError):
        TensorRTBuildConfig(opt_level=6)
    with pytest.raises(ValidationError):
        TensorRTBuildConfig(precision="int8")
    with pytest.raises(ValidationError):
        TensorRTBuildConfig(tile=512, nonsense=1)
    with pytest.raises(ValidationError, match="min_tile"):
        TensorRTBuildConfig(dynamic=True, tile=256, min_tile=512)
    with pytest.raises(ValidationError, match="max_tile"):
        TensorRTBuildConfig(dynamic=True, tile=256, max_tile=128)
    with pytest.raises(ValidationError):  # frozen
        c.tile = 256  # type: ignore[misc]


def test_default_timing_cache_dir_per_platform(tmp_path):
    home = tmp_path / "home"
    win = default_timing_cache_dir(
        platform="win32", env={"LOCALAPPDATA": "C:/Users/u/AppData/Local"}
    )
    assert win == Path("C:/Users/u/AppData/Local") / "cyclesr-deploy" / "trt"
    assert default_timing_cache_dir(platform="win32", env={}, home=home) == (
        home / "AppData" / "Local" / "cyclesr-deploy" / "trt"
    )
    assert default_timing_cache_dir(platform="linux", env={}, home=home) == (
        home / ".cache" / "cyclesr-deploy" / "trt"
    )
    xdg = default_timing_cache_dir(platform="linux", env={"XDG_CACHE_HOME": str(tmp_path / "x")})
    assert xdg == tmp_path / "x" / "cyclesr-deploy" / "trt"


def test_engine_settings_exclude_timing_cache_and_unused_tiles(tmp_path):
    a = TensorRTBuildConfig(timing_cache_dir=tmp_path, min_tile=64).engine_settings()
    assert "timing_cache_dir" not in a
    assert a["min_tile"] is None and a["max_tile"] is None  # static: unused
    d = cfg(dynamic=True, min_tile=64).engine_settings()
    assert d["min_tile"] == 64


# --- profiles -----------------------------------------------------------------------------


def test_static_profile():
    (p,) = profiles(cfg(tile=512, batch=4), size_multiple=4, scale=2, channels=1)
    assert p.input_name == "input"
    assert p.min == p.opt == p.max == (4, 1, 512, 512)
    assert p.static and p.scale == 2 and p.output_hw(512, 256) == (1024, 512)


def test_dynamic_profile_defaults_and_explicit():
    (p,) = profiles(cfg(dynamic=True, tile=512, batch=8), 4, 1, channels=3)
    assert p.min == (1, 3, 128, 128)
    assert p.opt == (8, 3, 512, 512)
    assert p.max == (8, 3, 512, 512)
    assert not p.static
    (q,) = profiles(cfg(dynamic=True, tile=512, min_tile=256, max_tile=1024), 8, 1)
    assert (q.min, q.opt, q.max) == ((1, 1, 256, 256), (4, 1, 512, 512), (4, 1, 1024, 1024))
    # tile // 4 rounded down to the size multiple, never below it
    (r,) = profiles(cfg(dynamic=True, tile=8), 8, 1)
    assert r.min == (1, 1, 8, 8)


@pytest.mark.parametrize(
    ("kwargs", "multiple", "what", "suggestion"),
    [
        ({"tile": 510}, 4, "tile 510", "508 or 512"),
        ({"tile": 516}, 8, "tile 516", "512 or 520"),
        ({"tile": 2}, 4, "tile 2", "use 4"),
        ({"tile": 512, "dynamic": True, "min_tile": 100}, 8, "min_tile 100", "96 or 104"),
        ({"tile": 512, "dynamic": True, "max_tile": 1030}, 4, "max_tile 1030", "1028 or 1032"),
    ],
)
def test_profile_sizes_must_respect_size_multiple(kwargs, multiple, what, suggestion):
    with pytest.raises(InputError) as info:
        profiles(cfg(**kwargs), multiple, 1)
    msg = str(info.value)
    assert what in msg and f"multiple of {multiple}" in msg and suggestion in msg


def test_profiles_reject_nonsense_model_figures():
    with pytest.raises(InputError):
        profiles(cfg(), 0, 1)


# --- versions and build plan ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "major"), [("10.13.0.35", 10), ("11.0.0", 11), ("10", 10), ("9.3.0", 9)]
)
def test_trt_major(version, major):
    assert trt_major(version) == major


@pytest.mark.parametrize("bad", ["", "abc", "v10"])
def test_trt_major_rejects_garbage(bad):
    with pytest.raises(ValueError):
        trt_major(bad)


@pytest.mark.parametrize(
    ("version", "precision", "onnx", "strong", "net_flags"),
    [
        ("10.0.1.6", "fp16", ONNX_BY_PRECISION["fp16"], True, ("STRONGLY_TYPED",)),
        ("10.13.0.35", "fp16", ONNX_BY_PRECISION["fp16"], True, ("STRONGLY_TYPED",)),
        ("11.0.0", "fp16", ONNX_BY_PRECISION["fp16"], True, ()),
        ("11.4.1", "fp16", ONNX_BY_PRECISION["fp16"], True, ()),
        ("10.13.0.35", "fp32", ONNX_BY_PRECISION["fp32"], False, ()),
        ("11.0.0", "fp32", ONNX_BY_PRECISION["fp32"], True, ()),
    ],
)
def test_build_plan(version, precision, onnx, strong, net_flags):
    plan = build_plan(version, precision)
    assert plan.onnx_name == onnx
    assert plan.strongly_typed is strong
    assert plan.network_flags == net_flags
    assert plan.builder_flags == ()  # never BuilderFlag.FP16 (weak typing, removed in 11)
    assert "EXPLICIT_BATCH" not in plan.network_flags


def test_build_plan_rejects_old_tensorrt_and_bad_precision():
    with pytest.raises(TensorRTVersionError, match=">= 10"):
        build_plan("8.6.1", "fp16")
    with pytest.raises(InputError):
        build_plan("10.13.0", "int8")  # type: ignore[arg-type]


# --- cache key ------------------------------------------------------------------------------


def test_cache_key_is_stable_across_processes():
    key = cache_key(ONNX_SHA, cfg(), A4000)
    assert key == cache_key(ONNX_SHA, cfg(), A4000)
    assert len(key) == 64 and int(key, 16) >= 0
    code = textwrap.dedent(
        f"""
        from cyclesr_deploy.engines.trt_config import GpuFacts, TensorRTBuildConfig, cache_key
        facts = GpuFacts.model_validate_json({A4000.model_dump_json()!r})
        print(cache_key({ONNX_SHA!r}, TensorRTBuildConfig(timing_cache_dir=None), facts))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == key


def _facts(**kw) -> GpuFacts:
    return A4000.model_copy(update=kw)


@pytest.mark.parametrize(
    ("onnx_sha", "build", "facts"),
    [
        pytest.param("cd" * 32, cfg(), A4000, id="onnx"),
        pytest.param(ONNX_SHA, cfg(precision="fp32"), A4000, id="precision"),
        pytest.param(ONNX_SHA, cfg(tile=256), A4000, id="tile"),
        pytest.param(ONNX_SHA, cfg(batch=8), A4000, id="batch"),
        pytest.param(ONNX_SHA, cfg(dynamic=True), A4000, id="dynamic"),
        pytest.param(ONNX_SHA, cfg(opt_level=5), A4000, id="opt_level"),
        pytest.param(ONNX_SHA, cfg(workspace_gib=2), A4000, id="workspace"),
        pytest.param(ONNX_SHA, cfg(hardware_compat=True), A4000, id="hardware_compat"),
        pytest.param(ONNX_SHA, cfg(), _facts(trt_version="10.13.2.6"), id="trt_version"),
        pytest.param(ONNX_SHA, cfg(), _facts(trt_version="11.0.0"), id="trt_major"),
        pytest.param(ONNX_SHA, cfg(), _facts(name="NVIDIA GeForce RTX 3080"), id="gpu_name"),
        pytest.param(ONNX_SHA, cfg(), _facts(compute_capability="8.9"), id="compute_cap"),
        pytest.param(ONNX_SHA, cfg(), _facts(driver_version="570.1"), id="driver_major"),
        pytest.param(ONNX_SHA, cfg(), _facts(os="Windows"), id="os"),
    ],
)
def test_cache_key_changes_with_every_input_that_matters(onnx_sha, build, facts):
    assert cache_key(onnx_sha, build, facts) != cache_key(ONNX_SHA, cfg(), A4000)


def test_cache_key_changes_with_dynamic_tile_range():
    base = cfg(dynamic=True)
    assert cache_key(ONNX_SHA, cfg(dynamic=True, min_tile=64), A4000) != cache_key(
        ONNX_SHA, base, A4000
    )
    assert cache_key(ONNX_SHA, cfg(dynamic=True, max_tile=1024), A4000) != cache_key(
        ONNX_SHA, base, A4000
    )


@pytest.mark.parametrize(
    ("build", "facts"),
    [
        pytest.param(TensorRTBuildConfig(timing_cache_dir=Path("/elsewhere")), A4000, id="cache"),
        pytest.param(cfg(min_tile=64, max_tile=1024), A4000, id="unused-static-range"),
        pytest.param(cfg(), _facts(driver_version="580.95.05"), id="driver-minor"),
        pytest.param(cfg(), _facts(cuda_runtime_version="12.9"), id="cuda-runtime"),
    ],
)
def test_cache_key_ignores_what_does_not_change_the_engine(build, facts):
    assert cache_key(ONNX_SHA, build, facts) == cache_key(ONNX_SHA, cfg(), A4000)


def test_cache_key_ignores_sha_case():
    assert cache_key(ONNX_SHA.upper(), cfg(), A4000) == cache_key(ONNX_SHA, cfg(), A4000)


def test_driver_major_falls_back_to_cuda_driver_version():
    assert A4000.driver_major == "580"
    assert _facts(driver_version="unknown").driver_major == "cuda13.0"
    assert _facts(driver_version="unknown", cuda_driver_version="").driver_major == "unknown"


# --- paths ------------------------------------------------------------------------------------


def test_engine_paths_and_names(tmp_path):
    key = cache_key(ONNX_SHA, cfg(), A4000)
    engine, side = engine_paths(tmp_path, key, A4000)
    assert engine.parent == tmp_path / ENGINES_DIR
    assert engine.name == f"nvidia-rtx-a4000-trt10.13.0-{key[:12]}.engine"
    assert side == engine.with_name(engine.name.replace(".engine", ".json"))
    assert sidecar_path(engine) == side
    assert slug("NVIDIA GeForce RTX 4090 (PCIe)") == "nvidia-geforce-rtx-4090-pcie"
    assert slug("???") == "gpu"


def test_timing_cache_file_per_gpu_and_version(tmp_path):
    path = timing_cache_file(tmp_path, A4000)
    assert path == tmp_path / "nvidia-rtx-a4000-sm86-trt10.13.0.35.timing-cache"
    assert timing_cache_file(tmp_path, _facts(trt_version="11.0.0")) != path


# --- sidecar ----------------------------------------------------------------------------------


def test_sidecar_roundtrip_and_build_config(tmp_path):
    build = cfg(dynamic=True, tile=256, batch=2, precision="fp32")
    sc = make_sidecar(build=build)
    path = write_sidecar(tmp_path / "e.json", sc)
    assert not list(tmp_path.glob("*.part"))
    back = read_sidecar(path)
    assert back == sc
    assert back.profiles[0] == Profile(
        min=(1, 1, 64, 64), opt=(2, 1, 256, 256), max=(2, 1, 256, 256)
    )
    assert back.build_config().engine_settings() == build.engine_settings()


def test_read_sidecar_missing_or_broken(tmp_path):
    with pytest.raises(EngineMismatchError, match="sidecar missing"):
        read_sidecar(tmp_path / "none.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(EngineMismatchError, match="not a valid engine sidecar"):
        read_sidecar(bad)


def test_check_sidecar_accepts_the_same_machine():
    check_sidecar(make_sidecar(), A4000, ONNX_SHA)
    check_sidecar(make_sidecar(), A4000, None)  # no ONNX at hand: skip that comparison
    # driver updates do not invalidate an existing plan (they change the cache key only)
    check_sidecar(make_sidecar(), _facts(driver_version="590.1.2"), ONNX_SHA)


def test_check_sidecar_other_gpu_names_both_and_says_how_to_rebuild(tmp_path):
    build = cfg(tile=256, batch=8)
    h200 = _facts(name="NVIDIA H200", compute_capability="9.0")
    with pytest.raises(EngineMismatchError) as info:
        check_sidecar(make_sidecar(build=build), h200, ONNX_SHA, model_dir=tmp_path / "my model")
    msg = str(info.value)
    assert "built for NVIDIA RTX A4000 (sm 8.6) with TensorRT 10.13.0.35" in msg
    assert "this machine has NVIDIA H200 (sm 9.0) with TensorRT 10.13.0.35" in msg
    assert f'cyclesr export tensorrt "{tmp_path / "my model"}" --tile 256 --batch 8' in msg
    assert info.value.differences and info.value.differences[0].startswith("GPU")
    assert isinstance(info.value, InputError)


def test_check_sidecar_same_architecture_other_model_is_refused():
    diffs = sidecar_differences(make_sidecar(), _facts(name="NVIDIA GeForce RTX 3080"))
    assert len(diffs) == 1 and "RTX 3080" in diffs[0]


def test_check_sidecar_other_tensorrt_version():
    with pytest.raises(EngineMismatchError) as info:
        check_sidecar(make_sidecar(), _facts(trt_version="11.0.0"), ONNX_SHA)
    msg = str(info.value)
    assert "TensorRT version: engine 10.13.0.35, installed 11.0.0" in msg
    assert "with TensorRT 11.0.0" in msg and "cyclesr export tensorrt MODEL_DIR" in msg


def test_check_sidecar_other_onnx_and_os_listed_together():
    with pytest.raises(EngineMismatchError) as info:
        check_sidecar(make_sidecar(), _facts(os="Windows"), "ef" * 32)
    diffs = info.value.differences
    assert len(diffs) == 2
    assert diffs[0].startswith("operating system") and diffs[1].startswith("ONNX")
    assert "changed since the build" in str(info.value)


def test_hardware_compatible_engines_run_on_other_ampere_plus_gpus():
    sc = make_sidecar(build=cfg(hardware_compat=True), hardware_compat=True)
    check_sidecar(sc, _facts(name="NVIDIA H200", compute_capability="9.0"), ONNX_SHA)
    with pytest.raises(EngineMismatchError, match="Ampere"):
        check_sidecar(sc, _facts(name="Tesla T4", compute_capability="7.5"), ONNX_SHA)


def test_rebuild_command_spells_out_non_default_settings():
    settings = cfg(
        dynamic=True,
        tile=512,
        min_tile=128,
        max_tile=1024,
        opt_level=5,
        workspace_gib=2.5,
        hardware_compat=True,
        precision="fp32",
    ).engine_settings()
    assert rebuild_command(Path("m"), settings) == (
        "cyclesr export tensorrt m --tile 512 --batch 4 --precision fp32 --dynamic "
        "--min-tile 128 --max-tile 1024 --opt-level 5 --workspace-gib 2.5 --hardware-compat"
    )
    assert rebuild_command(None, cfg().engine_settings()) == (
        "cyclesr export tensorrt MODEL_DIR --tile 512 --batch 4 --precision fp16"
    )


def test_list_engines_skips_broken_entries(tmp_path):
    folder = tmp_path / ENGINES_DIR
    folder.mkdir()
    old = make_sidecar(engine_file="old.engine", created="2026-01-01T00:00:00+00:00")
    new = make_sidecar(engine_file="new.engine", created="2026-06-01T00:00:00+00:00")
    write_sidecar(folder / "old.json", old)
    write_sidecar(folder / "new.json", new)
    write_sidecar(folder / "orphan.json", make_sidecar(engine_file="orphan.engine"))
    (folder / "junk.json").write_text("[]", encoding="utf-8")
    (folder / "old.engine").write_bytes(b"x")
    (folder / "new.engine").write_bytes(b"y")
    found = list_engines(tmp_path)
    assert [p.name for p, _ in found] == ["new.engine", "old.engine"]
    assert list_engines(tmp_path / "nothing") == []


def test_sha256_file(tmp_path):
    path = tmp_path / "f.bin"
    data = bytes(range(256)) * 5000
    path.write_bytes(data)
    assert sha256_file(path, chunk=4096) == hashlib.sha256(data).hexdigest()


def test_sidecar_json_is_plain(tmp_path):
    path = write_sidecar(tmp_path / "e.json", make_sidecar())
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["profiles"][0]["opt"] == [4, 1, 512, 512]
    assert data["created"].endswith("+00:00")


def test_trt_modules_import_without_heavy_dependencies():
    code = textwrap.dedent(
        """
        import sys
        import cyclesr_deploy.engines.trt_config
        import cyclesr_deploy.export.tensorrt_build
        import cyclesr_deploy.cuda_runtime
        heavy = ("tensorrt", "torch", "cuda", "onnx", "onnxruntime")
        print(sorted(m for m in sys.modules if m.split(".")[0] in heavy))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"
