"""``cyclesr watch`` end to end with a writer process and a fake engine (numpy only, fast).

The writer (tests/integration/_watch_writer.py, a separate process) writes frame files in
chunks, one file that stays truncated and a stack that grows page by page. Every frame value
identifies its input; the fake engine adds 1, so each output says which input it came from.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from cyclesr_deploy.model import GeneratorConfig, ModelConfig, NormalizationConfig
from cyclesr_deploy.pipeline import MANIFEST_NAME, EnhanceConfig
from cyclesr_deploy.watch import WatchConfig, watch_folder
from tests.conftest import FakeEngine

ROOT = Path(__file__).resolve().parents[2]
FAST = WatchConfig(poll=0.05, stable=0.2, idle=5.0, use_events=False)
WHOLE = EnhanceConfig(tile=0)


def _model():  # model units = raw - 1, so plus1 in model units is +1 in raw units
    return ModelConfig(
        generator=GeneratorConfig(ngf=4, n_blocks=0, scale=1),
        normalization=NormalizationConfig(low_a=0, high_a=2, low_b=0, high_b=2),
    )


def _start_writer(tmp: Path, files: list[dict], name: str = "plan") -> subprocess.Popen:
    plan = {"dir": str(tmp / "in"), "done_flag": str(tmp / f"{name}.done"), "files": files}
    (tmp / "in").mkdir(parents=True, exist_ok=True)
    (tmp / f"{name}.json").write_text(json.dumps(plan))
    return subprocess.Popen(
        [sys.executable, "-m", "tests.integration._watch_writer", str(tmp / f"{name}.json")],
        cwd=ROOT,
    )


def _stop_when(stop: threading.Event, cond, timeout: float = 20.0) -> threading.Thread:
    def run() -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end and not cond():
            time.sleep(0.02)
        stop.set()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def _values(path: Path) -> list[int]:
    data = tifffile.imread(path)
    data = data.reshape(-1, *data.shape[-2:])
    return [int(np.median(f)) for f in data]


def _no_part(folder: Path) -> bool:
    return not [p for p in folder.rglob("*") if p.name.endswith(".part")]


def test_every_complete_frame_once_in_order_truncated_reported(tmp_path):
    files = [{"name": f"a{i:02d}.tif", "value": 100 + i, "chunks": 4} for i in range(4)]
    files.insert(2, {"name": "broken.tif", "kind": "truncated", "value": 999, "chunks": 2})
    files.append({"name": "stack.tif", "kind": "stack", "values": [200, 201, 202, 203]})
    files += [{"name": f"b{i:02d}.tif", "value": 300 + i, "chunks": 3} for i in range(3)]
    writer = _start_writer(tmp_path, files)
    seen: list[tuple[str, int]] = []
    stop = threading.Event()
    expected = (
        [(f"a{i:02d}.tif", 0) for i in range(4)]
        + [("stack.tif", p) for p in range(4)]
        + [(f"b{i:02d}.tif", 0) for i in range(3)]
    )
    _stop_when(stop, lambda: writer.poll() is not None and len(seen) >= len(expected))
    engine = FakeEngine("plus1", delay=0.005)
    final = watch_folder(
        tmp_path / "in",
        tmp_path / "out",
        engine,
        _model(),
        FAST,
        WHOLE,
        stop=stop,
        on_frame=lambda p, page, _lat: seen.append((p.name, page)),
    )
    assert writer.wait(10) == 0
    assert seen == expected  # exactly once, in arrival order
    out = tmp_path / "out"
    for i in range(4):
        assert _values(out / f"a{i:02d}.tif") == [101 + i]
    assert _values(out / "stack.tif") == [201, 202, 203, 204]
    assert not (out / "broken.tif").exists()
    assert final.failed == 0 and final.done == len(expected)
    assert final.incomplete_files == ("broken.tif",)
    manifest = json.loads((out / MANIFEST_NAME).read_text())["files"]
    broken = manifest[str((tmp_path / "in" / "broken.tif").resolve())]
    assert broken["status"] == "incomplete" and "truncated" in broken["error"]
    assert manifest[str((tmp_path / "in" / "stack.tif").resolve())]["frames"] == 4
    assert _no_part(out)


def test_stop_and_restart_no_duplicates_no_gaps(tmp_path):
    files = [
        {"name": f"a{i:02d}.tif", "value": 100 + i, "chunks": 2, "pause": 0.08} for i in range(6)
    ]
    files.insert(3, {"name": "stack.tif", "kind": "stack", "values": [200 + i for i in range(6)]})
    files[3]["page_pause"] = 0.15
    writer = _start_writer(tmp_path, files)
    seen: list[tuple[str, int]] = []
    cfg = FAST.model_copy(update={"idle": 60.0})

    def run(stop_cond) -> None:
        stop = threading.Event()
        _stop_when(stop, stop_cond)
        watch_folder(
            tmp_path / "in",
            tmp_path / "out",
            FakeEngine("plus1", delay=0.01),
            _model(),
            cfg,
            WHOLE,
            stop=stop,
            on_frame=lambda p, page, _lat: seen.append((p.name, page)),
        )

    # first run: stopped while the stack is half written
    run(lambda: ("stack.tif", 1) in seen)
    first = list(seen)
    out = tmp_path / "out"
    assert _no_part(out)
    assert 1 <= len(_values(out / "stack.tif")) < 6  # closed (renamed) with the pages so far
    # second run: until the writer is done and every frame is written
    run(lambda: writer.poll() is not None and len(seen) >= 12)
    assert writer.wait(10) == 0
    assert len(seen) == len(set(seen)) == 12, seen  # no duplicates across the two runs
    assert sorted(seen) == sorted(
        [(f"a{i:02d}.tif", 0) for i in range(6)] + [("stack.tif", p) for p in range(6)]
    )
    assert len(first) < 12
    assert _values(out / "stack.tif") == [201 + i for i in range(6)]  # no gap, in order
    for i in range(6):
        assert _values(out / f"a{i:02d}.tif") == [101 + i]
    assert _no_part(out)
    # a third run finds nothing to do
    before = len(seen)
    run(lambda: True)
    assert len(seen) == before


def test_latest_policy_skips_are_recorded_never_silent(tmp_path):
    files = [{"name": f"a{i:02d}.tif", "value": 100 + i, "chunks": 1} for i in range(12)]
    writer = _start_writer(tmp_path, files)
    seen: list[str] = []
    stop = threading.Event()
    cfg = FAST.model_copy(update={"when_behind": "latest", "stable": 0.05, "poll": 0.02})
    final_box = {}

    def finished() -> bool:
        st = final_box.get("status")
        return writer.poll() is not None and st is not None and st.done + st.skipped >= 12

    _stop_when(stop, finished)
    final = watch_folder(
        tmp_path / "in",
        tmp_path / "out",
        FakeEngine("plus1", delay=0.25),  # far slower than the writer
        _model(),
        cfg,
        WHOLE,
        stop=stop,
        on_status=lambda s: final_box.__setitem__("status", s),
        status_every=0.01,
        on_frame=lambda p, _page, _lat: seen.append(p.name),
    )
    assert final.skipped > 0 and final.done + final.skipped == 12
    assert seen == sorted(seen) and len(seen) == len(set(seen))  # newest first, never back
    assert seen[-1] == "a11.tif"  # the newest frame is always processed
    manifest = json.loads((tmp_path / "out" / MANIFEST_NAME).read_text())["files"]
    statuses = {Path(k).name: v["status"] for k, v in manifest.items()}
    assert sorted(n for n, s in statuses.items() if s == "done") == seen
    skipped = sorted(n for n, s in statuses.items() if s == "skipped")
    assert len(skipped) == final.skipped and not set(skipped) & set(seen)
    for name in skipped:
        assert not (tmp_path / "out" / name).exists()


@pytest.mark.skipif(sys.platform == "win32", reason="os.kill(SIGINT) is not a console Ctrl+C")
def test_cli_sigint_finishes_and_exits_0(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import cyclesr_deploy.engines as engines
    import cyclesr_deploy.model as model_mod
    from cyclesr_deploy.cli import app

    monkeypatch.setattr(engines, "open_engine", lambda *a, **k: FakeEngine("plus1", delay=0.05))
    monkeypatch.setattr(model_mod, "load_model", lambda _d: _model())
    (tmp_path / "in").mkdir()
    for i in range(3):
        f = np.full((32, 32), 10 + i, np.uint16)
        tifffile.imwrite(tmp_path / "in" / f"x{i}.tif", f, photometric="minisblack")
    past = time.time() - 10
    for p in (tmp_path / "in").iterdir():
        os.utime(p, (past, past))

    finished = threading.Event()  # never SIGINT the test process once watch has returned

    def interrupt() -> None:
        end = time.monotonic() + 10
        while time.monotonic() < end and not (tmp_path / "out" / "x2.tif").exists():
            if finished.wait(0.02):
                return
        if not finished.is_set():
            os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt, daemon=True).start()
    (tmp_path / "m").mkdir()  # a model folder (its model.json is faked by load_model above)
    args = ["watch", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--model"]
    args += [str(tmp_path / "m"), "--tile", "0", "--poll", "0.05", "--stable", "0.1", "--polling"]
    try:
        result = CliRunner().invoke(app, args)
    finally:
        finished.set()
    assert result.exit_code == 0, result.output
    assert _values(tmp_path / "out" / "x2.tif") == [13]
    assert (tmp_path / "out" / MANIFEST_NAME).is_file()
    assert _no_part(tmp_path / "out")
