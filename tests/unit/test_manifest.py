"""The output folder's manifest and lock (cyclesr_deploy.runtime.manifest), and enhance_files'
use of the lock (fake engine, numpy only)."""

from __future__ import annotations

import errno
import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tifffile

from cyclesr_deploy.errors import InputError
from cyclesr_deploy.model import GeneratorConfig, ModelConfig
from cyclesr_deploy.runtime.manifest import (
    LOCK_INFO_NAME,
    LOCK_NAME,
    MANIFEST_NAME,
    FileResult,
    Manifest,
    OutputLock,
    manifest_header,
)
from cyclesr_deploy.runtime.pipeline import EnhanceConfig, collect_inputs, enhance_files
from tests.conftest import FakeEngine

REPO = Path(__file__).resolve().parents[2]
HEADER = manifest_header("m", "fake", {"tile": 16})


def _saved(folder: Path) -> dict:
    return json.loads((folder / MANIFEST_NAME).read_text(encoding="utf-8"))


# --- Manifest ------------------------------------------------------------------------------------
def test_record_entry_and_reload(tmp_path, monkeypatch):
    m = Manifest(tmp_path, HEADER)
    m.record(FileResult(input=str(tmp_path / "in" / "a.tif"), status="done", frames=3))
    m.record(FileResult(input=str(tmp_path / "in" / "b.tif"), status="failed", error="bad"))
    m.save()
    data = _saved(tmp_path)
    assert data["model"] == "m" and data["config"] == {"tile": 16} and data["schema_version"]
    assert {Path(k).name: v["status"] for k, v in data["files"].items()} == {
        "a.tif": "done",
        "b.tif": "failed",
    }
    # the next run keeps the entries under its own header; lookup by any spelling of the path
    again = Manifest(tmp_path, manifest_header("m2", "fake", {}))
    monkeypatch.chdir(tmp_path)
    assert again.entry(Path("in") / "a.tif")["frames"] == 3
    assert again.entry(tmp_path / "in" / "c.tif") is None
    # skipped keeps the record of the run that made the output; failed replaces it
    again.record(FileResult(input="in/a.tif", status="skipped", note="output exists"))
    assert again.entry("in/a.tif")["status"] == "done"
    again.record(FileResult(input="in/a.tif", status="failed", error="x"))
    again.save()
    data = _saved(tmp_path)
    assert data["model"] == "m2" and len(data["files"]) == 2
    assert data["files"][str(tmp_path / "in" / "a.tif")]["status"] == "failed"


def test_update_merges_extra_keys(tmp_path):
    m = Manifest(tmp_path, HEADER)
    src = tmp_path / "in" / "s.tif"
    m.update(src, status="partial", frames=2, next_page=3, skipped_pages=[1])
    m.update(src, frames=4)
    m.save()
    entry = _saved(tmp_path)["files"][str(src.resolve())]
    assert entry["input"] == str(src) and entry["status"] == "partial"
    assert entry["frames"] == 4 and entry["next_page"] == 3 and entry["skipped_pages"] == [1]
    assert entry["finished"]


def test_throttled_saves_and_force(tmp_path):
    m = Manifest(tmp_path, HEADER, interval=3600)
    m.save()
    assert not (tmp_path / MANIFEST_NAME).exists()  # nothing changed yet
    m.update(tmp_path / "a.tif", status="done")
    m.save()  # first change: written
    assert len(_saved(tmp_path)["files"]) == 1
    m.update(tmp_path / "b.tif", status="done")
    m.save()  # within the interval: not written
    assert len(_saved(tmp_path)["files"]) == 1
    m.save(force=True)
    assert len(_saved(tmp_path)["files"]) == 2
    every = Manifest(tmp_path, HEADER)  # interval 0: each change is written
    every.update(tmp_path / "c.tif", status="done")
    every.save()
    assert len(_saved(tmp_path)["files"]) == 3


@pytest.mark.parametrize("text", ["{not json", '{"no_files": 1}', '{"files": [1, 2]}', "[]"])
def test_invalid_manifest_is_an_input_error_and_kept(tmp_path, text):
    (tmp_path / MANIFEST_NAME).write_text(text, encoding="utf-8")
    with pytest.raises(InputError, match=r"not a valid manifest.*move or delete it") as info:
        Manifest(tmp_path, HEADER)
    assert str(tmp_path / MANIFEST_NAME) in str(info.value)
    assert (tmp_path / MANIFEST_NAME).read_text(encoding="utf-8") == text


def test_disk_full_names_the_file_and_keeps_the_old_manifest(tmp_path, monkeypatch):
    m = Manifest(tmp_path, HEADER)
    m.update(tmp_path / "a.tif", status="done")
    m.save()
    before = (tmp_path / MANIFEST_NAME).read_text(encoding="utf-8")

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full)
    m.update(tmp_path / "b.tif", status="done")
    with pytest.raises(OSError, match="no space left on device") as info:
        m.save()
    monkeypatch.undo()
    assert info.value.errno == errno.ENOSPC
    assert str(tmp_path / MANIFEST_NAME) in str(info.value)
    assert (tmp_path / MANIFEST_NAME).read_text(encoding="utf-8") == before
    assert not list(tmp_path.glob("*.part"))


# --- OutputLock ----------------------------------------------------------------------------------
def test_lock_names_are_hidden_and_never_inputs(tmp_path):
    assert LOCK_NAME.startswith(".") and LOCK_INFO_NAME.startswith(".")
    tifffile.imwrite(tmp_path / "a.tif", np.zeros((4, 4), np.uint16))
    with OutputLock(tmp_path, command="test"):
        assert collect_inputs([tmp_path]) == [tmp_path / "a.tif"]


def test_second_lock_is_refused_naming_the_holder(tmp_path):
    out = tmp_path / "out"
    first = OutputLock(out, command="cyclesr watch")
    with first:
        assert first.held and (out / LOCK_NAME).exists()
        holder = json.loads((out / LOCK_INFO_NAME).read_text(encoding="utf-8"))
        assert holder["pid"] == os.getpid() and holder["command"] == "cyclesr watch"
        with pytest.raises(InputError) as info:
            OutputLock(out, command="cyclesr enhance").acquire()
        msg = str(info.value)
        assert f"output folder {out} is in use by cyclesr watch (pid {os.getpid()}" in msg
        assert holder["host"] in msg and holder["since"] in msg
    assert not first.held and not (out / LOCK_INFO_NAME).exists()
    with OutputLock(out, command="cyclesr enhance") as second:  # free again
        assert second.held


def test_lock_is_released_on_interrupt(tmp_path):
    with pytest.raises(KeyboardInterrupt), OutputLock(tmp_path, command="a"):
        raise KeyboardInterrupt
    with OutputLock(tmp_path, command="b"):
        pass


_HOLDER = textwrap.dedent(
    """
    import sys, time
    from cyclesr_deploy.runtime.manifest import OutputLock
    lock = OutputLock(sys.argv[1], command="cyclesr enhance")
    lock.acquire()
    print("held", flush=True)
    time.sleep(120)
    """
)


def _child(*args: str) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.Popen(
        [sys.executable, *args], stdout=subprocess.PIPE, text=True, env=env, cwd=REPO
    )


def test_lock_of_a_killed_process_is_recovered(tmp_path, caplog):
    child = _child("-c", _HOLDER, str(tmp_path))
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "held"
        with pytest.raises(InputError, match=f"cyclesr enhance \\(pid {child.pid} on "):
            OutputLock(tmp_path, command="test").acquire()
    finally:
        child.kill()  # SIGKILL / TerminateProcess: no cleanup runs in the child
        child.wait(timeout=30)
    assert json.loads((tmp_path / LOCK_INFO_NAME).read_text())["pid"] == child.pid  # stale
    with caplog.at_level(logging.WARNING), OutputLock(tmp_path, command="test") as lock:
        assert lock.held and lock.holder()["pid"] == os.getpid()
    assert f"pid {child.pid}" in caplog.text and "without releasing it" in caplog.text


# --- enhance_files holds the lock ----------------------------------------------------------------
def _model():
    return ModelConfig(generator=GeneratorConfig(ngf=4, n_blocks=0))


def _input(folder: Path, name: str = "a.tif") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    data = np.arange(3 * 16 * 16, dtype=np.uint16).reshape(3, 16, 16)
    tifffile.imwrite(folder / name, data, ome=True, metadata={"axes": "TYX"})
    return folder / name


def test_enhance_into_a_held_folder_is_refused_and_writes_nothing(tmp_path):
    src = _input(tmp_path / "in")
    out = tmp_path / "out"
    with OutputLock(out, command="cyclesr watch"):
        engine = FakeEngine()
        with pytest.raises(InputError, match="is in use by cyclesr watch"):
            enhance_files([src], out, engine, _model(), EnhanceConfig(tile=0))
        assert engine.calls == 0
        assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME, LOCK_INFO_NAME]
    summary = enhance_files([src], out, FakeEngine(), _model(), EnhanceConfig(tile=0))
    assert summary.ok and _saved(out)["files"][str(src.resolve())]["status"] == "done"


def test_enhance_holds_the_lock_while_it_runs_and_accepts_the_callers(tmp_path):
    src = _input(tmp_path / "in")
    out = tmp_path / "out"
    seen = []

    def on_progress(event):
        if event.kind == "frame" and not seen:
            with pytest.raises(InputError, match="in use by cyclesr enhance"):
                OutputLock(out, command="other").acquire()
            seen.append(event)

    enhance_files(
        [src], out, FakeEngine(), _model(), EnhanceConfig(tile=0), on_progress=on_progress
    )
    assert seen and not (out / LOCK_INFO_NAME).exists()

    with OutputLock(out, command="cyclesr enhance (cli)") as lock:
        summary = enhance_files(
            [src], out, FakeEngine(), _model(), EnhanceConfig(tile=0, overwrite=True), lock=lock
        )
        assert summary.ok and lock.held  # the caller's lock stays the caller's
    with pytest.raises(ValueError, match="not held"):
        enhance_files([src], out, FakeEngine(), _model(), lock=OutputLock(out, command="x"))


def test_watch_holds_the_same_lock(tmp_path):
    from cyclesr_deploy.runtime.watch import WatchConfig, watch_folder

    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    cfg = WatchConfig(poll=0.02, stable=0.05, use_events=False, exit_idle=0.1)
    with OutputLock(out, command="cyclesr enhance") as lock:
        with pytest.raises(InputError, match=r"in use by cyclesr enhance \(pid"):
            watch_folder(inp, out, FakeEngine(), _model(), cfg)
        assert not (out / MANIFEST_NAME).exists()
        # a lock the caller holds (the CLI takes it before the engine loads) is used as is
        assert watch_folder(inp, out, FakeEngine(), _model(), cfg, lock=lock).ok
    assert (out / MANIFEST_NAME).exists()
    with OutputLock(out, command="cyclesr watch"):  # released at the end of the watch
        pass


def test_a_folder_that_cannot_be_locked_is_refused_naming_it(tmp_path, monkeypatch):
    """filelock falls back to a lock file itself where the file system has no flock; any other
    failure to lock (e.g. ENOLCK on a network share) is refused, never run unlocked."""
    import filelock

    def no_locks(self, *args, **kwargs):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(filelock.FileLock, "acquire", no_locks)
    out = tmp_path / "out"
    with pytest.raises(InputError, match=r"cannot lock it .*No locks available") as err:
        OutputLock(out, command="x").acquire()
    assert str(out) in str(err.value)
