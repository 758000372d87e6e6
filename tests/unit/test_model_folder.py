"""The model folder's owner (``ModelFolder``): artifact names, and the integrity check of
artifacts against ``export.json`` (sha256, cached by size and mtime)."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

from cyclesr_deploy import integrity
from cyclesr_deploy.builtin import BUILTIN_MODELS, builtin_model
from cyclesr_deploy.errors import InputError
from cyclesr_deploy.model import (
    DIGEST_CACHE,
    EXPORT_JSON,
    FROZEN_ONNX,
    ONNX_FILES,
    WEIGHTS,
    ModelFolder,
)

pytest.importorskip("onnxruntime")


@pytest.fixture(autouse=True)
def _fresh_process_state(monkeypatch, tmp_path):
    """Each test sees a new process: no digests in memory, no folder warned about; the user
    cache folder is private to the test."""
    monkeypatch.setattr(integrity, "_MEMORY", {})
    monkeypatch.setattr(integrity, "_WARNED", set())
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user-cache"))
    monkeypatch.setenv("LOCALAPPDATA", str(tmp_path / "user-cache"))


def _copy(name: str, tmp_path, target: str = "model"):
    # without the digest cache that earlier tests (any engine opening the built-in model in a
    # writable checkout) leave in the built-in folder
    skip = shutil.ignore_patterns(DIGEST_CACHE)
    return shutil.copytree(builtin_model(name), tmp_path / target, ignore=skip)


def _recorded(folder) -> list[str]:
    return list(json.loads((folder / EXPORT_JSON).read_text(encoding="utf-8"))["artifacts"])


@pytest.mark.parametrize("name", BUILTIN_MODELS)
def test_builtin_models_pass_the_check_and_record_their_weights(name, tmp_path, caplog):
    folder = _copy(name, tmp_path)
    recorded = _recorded(folder)
    assert WEIGHTS["ab"] in recorded and ONNX_FILES["ab"] in recorded
    with caplog.at_level(logging.WARNING, logger="cyclesr_deploy.integrity"):
        ModelFolder(folder).verify(*recorded)
    assert not caplog.records  # everything recorded, nothing to warn about


def test_swapped_onnx_is_refused_before_any_output(tmp_path):
    """generator.onnx replaced by another network (the other built-in model's): the engine
    refuses to open it, naming the file and the command that re-exports it, and `enhance`
    writes nothing."""
    from cyclesr_deploy.cli import app
    from cyclesr_deploy.engines import open_engine

    folder = _copy("reference-cyclegan", tmp_path)
    other = builtin_model("reference-supervised") / ONNX_FILES["ab"]
    shutil.copyfile(other, folder / ONNX_FILES["ab"])
    engine = open_engine(folder, backend="onnxruntime", precision="fp32")
    with pytest.raises(InputError) as err, engine:
        pass
    message = str(err.value)
    assert str(folder / ONNX_FILES["ab"]) in message
    assert f"cyclesr export onnx {folder} --overwrite" in message

    frame = tmp_path / "in" / "frame.tif"
    frame.parent.mkdir()
    tifffile.imwrite(frame, np.full((400, 400), 1000, np.uint16))
    # whole frames, the default settings (a frozen-statistics engine that would open the plain
    # graph only at its first whole frame), and frozen tiles of every frame
    for i, extra in enumerate(([], ["--tile", "0"], ["--tile", "160", "--whole-max-px", "0"])):
        out = tmp_path / f"out{i}"
        args = ["enhance", str(frame), "-o", str(out), "--model", str(folder), *extra]
        res = CliRunner().invoke(app, [*args, "--backend", "onnxruntime", "--precision", "fp32"])
        assert res.exit_code == 2, (extra, res.output)
        assert f"{folder.name}/{ONNX_FILES['ab']}" in "".join(res.output.split())  # rich wraps
        assert not out.exists() or not list(out.glob("*.tif*"))


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_a_flipped_byte_is_refused_through_a_relative_folder(tmp_path, monkeypatch, backend):
    """`-m ./m`: the check finds the records of a relative folder too (it once joined the folder
    twice, saw an unrecorded file and ran with a warning)."""
    from cyclesr_deploy.engines import open_engine

    if backend == "openvino":
        pytest.importorskip("openvino")
    folder = _copy("reference-cyclegan", tmp_path, "m")
    onnx = folder / ONNX_FILES["ab"]
    data = bytearray(onnx.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one byte flipped
    onnx.write_bytes(bytes(data))
    monkeypatch.chdir(tmp_path)
    for path in ("m", "./m", Path("m")):
        engine = open_engine(path, backend=backend, precision="fp32")
        with pytest.raises(InputError, match="sha256 differs"), engine:
            pass
    assert ModelFolder("m").file(Path("m") / ONNX_FILES["ab"]) == Path("m") / ONNX_FILES["ab"]
    assert ModelFolder("m").file(ONNX_FILES["ab"]) == Path("m") / ONNX_FILES["ab"]


def test_every_graph_the_engine_opens_is_checked(tmp_path):
    """A folder that would run one network whole (generator.onnx) and another tiled
    (generator.tile.onnx): the frozen engine refuses the tile graph."""
    from cyclesr_deploy.engines.frozen import open_frozen_engine

    folder = _copy("reference-cyclegan", tmp_path)
    tile = folder / FROZEN_ONNX["tile"]
    tile.write_bytes(tile.read_bytes() + b"\0")  # modified after export (size changes)
    engine = open_frozen_engine(folder, "onnxruntime")
    with pytest.raises(InputError, match=re.escape(FROZEN_ONNX["tile"])) as err, engine:
        pass
    assert "sha256 differs" in str(err.value)


def test_swapped_weights_are_refused(tmp_path):
    pytest.importorskip("torch")
    from cyclesr_deploy.engines.torch_engine import TorchEngine

    folder = _copy("reference-cyclegan", tmp_path)
    shutil.copyfile(builtin_model("reference-supervised") / WEIGHTS["ab"], folder / WEIGHTS["ab"])
    engine = TorchEngine(folder, device="cpu")
    with pytest.raises(InputError, match=re.escape(WEIGHTS["ab"])), engine:
        pass


def test_hand_made_folder_runs_with_one_warning_per_folder(tmp_path, caplog):
    from cyclesr_deploy.engines import open_engine

    folder = _copy("reference-supervised", tmp_path)
    (folder / EXPORT_JSON).unlink()
    x = np.zeros((1, 1, 32, 32), np.float32)
    with caplog.at_level(logging.WARNING, logger="cyclesr_deploy.integrity"):
        for _ in range(2):
            with open_engine(folder, backend="onnxruntime", precision="fp32") as engine:
                assert engine.infer(x).shape == (1, 1, 32, 32)
    warnings = [r for r in caplog.records if "not checked" in r.getMessage()]
    assert len(warnings) == 1
    assert "no export.json" in warnings[0].getMessage()
    assert ONNX_FILES["ab"] in warnings[0].getMessage()


def test_unrecorded_artifact_is_warned_about_not_refused(tmp_path, caplog):
    folder = _copy("reference-supervised", tmp_path)
    extra = folder / ONNX_FILES["ba"]
    extra.write_bytes(b"not recorded")
    with caplog.at_level(logging.WARNING, logger="cyclesr_deploy.integrity"):
        ModelFolder(folder).verify(ONNX_FILES["ab"], ONNX_FILES["ba"])
    (record,) = caplog.records
    assert ONNX_FILES["ba"] in record.getMessage() and "no record" in record.getMessage()


def _count_hashes(monkeypatch) -> list[str]:
    calls: list[str] = []
    real = integrity.file_digest

    def counting(path, *args):
        calls.append(Path(path).name)
        return real(path, *args)

    monkeypatch.setattr(integrity, "file_digest", counting)
    return calls


def test_digests_are_cached_by_size_and_mtime_across_processes(tmp_path, monkeypatch):
    folder = _copy("reference-supervised", tmp_path)
    calls = _count_hashes(monkeypatch)
    ModelFolder(folder).verify(ONNX_FILES["ab"])
    ModelFolder(folder).verify(ONNX_FILES["ab"])
    assert calls == [ONNX_FILES["ab"]]  # once per process
    cache = json.loads((folder / DIGEST_CACHE).read_text(encoding="utf-8"))
    assert ONNX_FILES["ab"] in cache

    monkeypatch.setattr(integrity, "_MEMORY", {})  # a new process: the file's cache answers
    ModelFolder(folder).verify(ONNX_FILES["ab"])
    assert calls == [ONNX_FILES["ab"]]

    path = folder / ONNX_FILES["ab"]
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # the file changed
    ModelFolder(folder).verify(ONNX_FILES["ab"])
    assert calls == [ONNX_FILES["ab"]] * 2


def test_a_same_size_replacement_is_caught_through_its_mtime(tmp_path):
    folder = _copy("reference-supervised", tmp_path)
    ModelFolder(folder).verify(ONNX_FILES["ab"])  # digest cached
    path = folder / ONNX_FILES["ab"]
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # same size, other bytes
    st = path.stat()
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    with pytest.raises(InputError, match="sha256 differs"):
        ModelFolder(folder).verify(ONNX_FILES["ab"])


def test_read_only_folder_caches_in_the_user_cache_dir(tmp_path, monkeypatch):
    folder = _copy("reference-supervised", tmp_path)
    real_access = os.access
    monkeypatch.setattr(
        integrity.os,
        "access",
        lambda p, m: False if str(p).startswith(str(folder)) else real_access(p, m),
    )
    ModelFolder(folder).verify(ONNX_FILES["ab"])
    assert not (folder / DIGEST_CACHE).exists()
    cached = list((tmp_path / "user-cache" / "cyclesr-deploy" / "digests").glob("*.json"))
    assert len(cached) == 1


def test_an_unwritable_cache_never_fails_the_run(tmp_path, monkeypatch):
    folder = _copy("reference-supervised", tmp_path)
    (folder / DIGEST_CACHE).mkdir()  # neither readable nor writable as a file
    ModelFolder(folder).verify(ONNX_FILES["ab"])
    (folder / DIGEST_CACHE).rmdir()
    (folder / DIGEST_CACHE).write_text("{not json", encoding="utf-8")  # corrupt: ignored
    monkeypatch.setattr(integrity, "_MEMORY", {})
    ModelFolder(folder).verify(ONNX_FILES["ab"])


def test_unreadable_export_json_is_refused(tmp_path):
    folder = _copy("reference-supervised", tmp_path)
    (folder / EXPORT_JSON).write_text("{", encoding="utf-8")
    with pytest.raises(InputError, match=r"export\.json is unreadable"):
        ModelFolder(folder).verify(ONNX_FILES["ab"])


def test_paths_and_reexport_commands(tmp_path):
    folder = ModelFolder(tmp_path)
    assert folder.onnx("fp16").name == "generator.fp16.onnx"
    assert folder.frozen_onnx("tile").name == FROZEN_ONNX["tile"]
    assert folder.ort_trt_cache.relative_to(tmp_path).as_posix() == "engines/onnxruntime-trt"
    assert folder.reexport_command(ONNX_FILES["ba"]).endswith("--direction ba --overwrite")
    assert folder.reexport_command("x.engine").startswith("cyclesr export tensorrt")


def test_a_failed_write_in_the_folder_falls_back_to_the_user_cache(tmp_path, monkeypatch):
    """Read-only media that os.access calls writable (Windows): the digest lands in the user
    cache and is found there by the next process."""
    folder = _copy("reference-supervised", tmp_path)
    (folder / DIGEST_CACHE).mkdir()  # the folder's cache file cannot be written
    calls = _count_hashes(monkeypatch)
    ModelFolder(folder).verify(ONNX_FILES["ab"])
    monkeypatch.setattr(integrity, "_MEMORY", {})  # a new process
    ModelFolder(folder).verify(ONNX_FILES["ab"])
    assert calls == [ONNX_FILES["ab"]]
    assert list((tmp_path / "user-cache" / "cyclesr-deploy" / "digests").glob("*.json"))
