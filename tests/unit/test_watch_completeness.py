"""Watch mode: the completeness check and the ``latest`` policy's bookkeeping."""

from __future__ import annotations

import io
import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

import cyclesr_deploy.runtime.watch as watch_mod
from cyclesr_deploy.model import GeneratorConfig, ModelConfig, NormalizationConfig
from cyclesr_deploy.runtime.pipeline import MANIFEST_NAME, EnhanceConfig, enhance_files
from cyclesr_deploy.runtime.watch import WatchConfig, probe_pages, watch_folder
from tests.conftest import FakeEngine, fail_first_stack_append


def _model():
    return ModelConfig(
        generator=GeneratorConfig(ngf=4, n_blocks=0, scale=1),
        normalization=NormalizationConfig(low_a=0, high_a=2, low_b=0, high_b=2),
    )


def _frame_bytes(value: int = 5, **kwargs) -> bytes:
    b = io.BytesIO()
    tifffile.imwrite(b, np.full((32, 32), value, np.uint16), photometric="minisblack", **kwargs)
    return b.getvalue()


def _stack_bytes(n: int) -> tuple[bytes, list[int]]:
    b, ends = io.BytesIO(), []
    with tifffile.TiffWriter(b) as tw:
        for i in range(n):
            tw.write(np.full((32, 32), i, np.uint16), photometric="minisblack", metadata=None)
            ends.append(b.tell())
    return b.getvalue(), ends


def test_frame_file_is_complete_only_when_all_bytes_are_there(tmp_path):
    data = _frame_bytes()
    path = tmp_path / "f.tif"
    for cut in (0, 8, 200, len(data) // 2, len(data) - 1):
        path.write_bytes(data[:cut])
        probe = probe_pages(path)
        assert probe.complete == 0, cut
        assert probe.size == cut
    path.write_bytes(data)
    probe = probe_pages(path)
    assert (probe.complete, probe.expected, probe.more, probe.shape) == (1, 1, False, (32, 32))


def test_growing_stack_pages_complete_one_by_one(tmp_path):
    data, ends = _stack_bytes(3)
    path = tmp_path / "s.tif"
    path.write_bytes(data[: ends[0] - 10])
    assert probe_pages(path).complete == 0
    path.write_bytes(data[: ends[0]])
    p = probe_pages(path)
    assert p.complete == 1 and p.expected is None
    path.write_bytes(data[: ends[0] + 300])  # page 1's IFD is there, its data are not
    p = probe_pages(path)
    assert p.complete == 1 and p.more  # so page 0 is final without waiting
    path.write_bytes(data)
    assert probe_pages(path).complete == 3


def test_unreadable_file_is_not_ready_never_an_error(tmp_path, monkeypatch):
    path = tmp_path / "f.tif"
    path.write_bytes(_frame_bytes())

    def locked(*a, **k):
        raise PermissionError(13, "being written by another process")  # as on Windows

    monkeypatch.setattr(tifffile, "TiffFile", locked)
    p = probe_pages(path)
    assert p.complete == 0 and "PermissionError" in p.error
    monkeypatch.undo()
    (tmp_path / "junk.tif").write_bytes(b"not a tiff at all")
    assert probe_pages(tmp_path / "junk.tif").error is not None
    assert probe_pages(tmp_path / "missing.tif").size == -1


def test_size_must_be_stable_before_the_last_page_counts(tmp_path):
    (tmp_path / "in").mkdir()
    path = tmp_path / "in" / "f.tif"
    # complete, just written, announcing nothing: a frame or the first page of a stack?
    path.write_bytes(_frame_bytes(9, metadata=None))
    written: list[float] = []
    stop = threading.Event()
    t0 = time.perf_counter()

    def on_frame(_p, _page, _lat):
        written.append(time.perf_counter() - t0)
        stop.set()

    threading.Timer(5, stop.set).start()
    watch_folder(
        tmp_path / "in",
        tmp_path / "out",
        FakeEngine("identity"),
        _model(),
        WatchConfig(poll=0.02, stable=0.4, use_events=False),
        EnhanceConfig(tile=0),
        stop=stop,
        on_frame=on_frame,
    )
    assert written and written[0] >= 0.4


def _files(folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True)
    base = time.time() - 100
    paths = []
    for i in range(n):
        p = folder / f"a{i:02d}.tif"
        tifffile.imwrite(p, np.full((32, 32), 10 + i, np.uint16), photometric="minisblack")
        os.utime(p, (base + i, base + i))  # arrival order = mtime order
        paths.append(p)
    return paths


def _run(tmp_path: Path, policy: str, seen: list[str]) -> watch_mod.WatchStatus:
    return watch_folder(
        tmp_path / "in",
        tmp_path / "out",
        FakeEngine("plus1", delay=0.05),
        _model(),
        WatchConfig(poll=0.02, stable=0.05, when_behind=policy, use_events=False, exit_idle=0.3),
        EnhanceConfig(tile=0),
        on_frame=lambda p, _page, _lat: seen.append(p.name),
    )


def test_latest_takes_the_newest_and_marks_the_others_skipped(tmp_path):
    paths = _files(tmp_path / "in", 6)
    seen: list[str] = []
    final = _run(tmp_path, "latest", seen)
    assert seen == ["a05.tif"]  # all six arrived together: only the newest is processed
    assert (final.done, final.skipped, final.seen) == (1, 5, 6)
    files = json.loads((tmp_path / "out" / MANIFEST_NAME).read_text())["files"]
    status = {Path(k).name: v for k, v in files.items()}
    assert status["a05.tif"]["status"] == "done"
    for i in range(5):
        entry = status[f"a{i:02d}.tif"]
        assert entry["status"] == "skipped" and "cyclesr enhance" in entry["note"]
        assert not (tmp_path / "out" / f"a{i:02d}.tif").exists()
    # a restart neither re-processes nor forgets them
    again: list[str] = []
    final = _run(tmp_path, "latest", again)
    assert again == [] and final.done == 0
    files = json.loads((tmp_path / "out" / MANIFEST_NAME).read_text())["files"]
    skipped = [Path(k) for k, v in files.items() if v["status"] == "skipped"]
    assert len(skipped) == 5
    # the later enhance pass picks them up: their outputs do not exist yet
    summary = enhance_files(
        skipped, tmp_path / "out", FakeEngine("plus1"), _model(), EnhanceConfig(tile=0)
    )
    assert summary.count("done") == 5
    for p in paths:
        assert int(tifffile.imread(tmp_path / "out" / p.name).max()) == int(
            tifffile.imread(p).max() + 1
        )


@pytest.mark.parametrize("policy", ["queue"])
def test_queue_processes_everything_in_arrival_order(tmp_path, policy):
    _files(tmp_path / "in", 6)
    seen: list[str] = []
    final = _run(tmp_path, policy, seen)
    assert seen == [f"a{i:02d}.tif" for i in range(6)]
    assert (final.done, final.skipped) == (6, 0)


def test_one_page_in_pieces_is_never_a_stack_nor_read_early(tmp_path):
    b = io.BytesIO()
    tifffile.imwrite(b, np.full((32, 32), 5, np.uint16), photometric="minisblack", metadata=None)
    data = b.getvalue()
    path = tmp_path / "f.tif"
    for cut in (len(data) // 3, 2 * len(data) // 3, len(data) - 1):
        path.write_bytes(data[:cut])
        probe = probe_pages(path)
        assert probe.complete == 0 and probe.ifds <= 1, cut  # one IFD: a frame, not a stack
        assert probe.expected is None
    path.write_bytes(data)
    assert (probe_pages(path).complete, probe_pages(path).ifds) == (1, 1)


def test_partial_two_channel_ome_is_refused_from_its_announcement(tmp_path):
    b = io.BytesIO()
    tifffile.imwrite(b, np.zeros((2, 2, 32, 32), np.uint16), ome=True, metadata={"axes": "TCYX"})
    path = tmp_path / "c.ome.tif"
    path.write_bytes(b.getvalue())
    whole = probe_pages(path).refused
    assert whole is not None and "2 channels" in whole


def _old_stack(tmp_path: Path, n: int) -> Path:
    """``tmp_path/in/s.tif``: an n-page stack last written 30 s ago; the folder."""
    inp = tmp_path / "in"
    inp.mkdir()
    with tifffile.TiffWriter(inp / "s.tif") as tw:
        for i in range(n):
            tw.write(np.full((16, 16), i, np.uint16), metadata=None)
    past = time.time() - 30
    os.utime(inp / "s.tif", (past, past))
    return inp


def test_disk_full_on_a_stack_output_is_a_named_failure(tmp_path, monkeypatch):
    inp = _old_stack(tmp_path, 2)

    real_write = tifffile.TiffWriter.write

    def full(self, *a, **k):
        real_write(self, *a, **k)
        raise OSError("262144 requested and 214512 written")

    monkeypatch.setattr(tifffile.TiffWriter, "write", full)
    cfg = WatchConfig(poll=0.02, stable=0.05, idle=0.5, use_events=False, exit_idle=0.3)
    final = watch_folder(inp, tmp_path / "out", FakeEngine("plus1"), _model(), cfg,
                         EnhanceConfig(tile=0))  # fmt: skip
    assert final.failed >= 2 and final.done == 0 and not final.ok  # pages may be retried
    entry = json.loads((tmp_path / "out" / MANIFEST_NAME).read_text())["files"]
    error = entry[str((inp / "s.tif").resolve())]["error"]
    assert "no space left on device" in error and str(tmp_path / "out" / "s.tif") in error
    assert not (tmp_path / "out" / "s.tif").exists()
    assert not list((tmp_path / "out").glob("*.part"))


def test_a_stack_that_cannot_be_closed_is_a_named_failure_and_the_watch_goes_on(
    tmp_path, monkeypatch
):
    from cyclesr_deploy.runtime.tiff import StackAppender

    inp = tmp_path / "in"
    inp.mkdir()
    with tifffile.TiffWriter(inp / "s.tif") as tw:  # a stack: closed after idle
        for i in range(2):
            tw.write(np.full((16, 16), i, np.uint16), metadata=None)
    past = time.time() - 30
    os.utime(inp / "s.tif", (past, past))
    closes = []

    def full(self):
        self.abort()
        if not closes:  # a frame arrives after the failure: the watch must go on with it
            frame = np.full((16, 16), 7, np.uint16)
            tifffile.imwrite(tmp_path / "f.tif", frame, photometric="minisblack")
            (tmp_path / "f.tif").replace(inp / "f.tif")
        closes.append(self.target.name)
        raise OSError(28, "no space left on device (or quota exceeded) writing s.tif")

    monkeypatch.setattr(StackAppender, "close", full)
    cfg = WatchConfig(poll=0.02, stable=0.05, idle=0.2, use_events=False, exit_idle=0.8)
    final = watch_folder(inp, tmp_path / "out", FakeEngine("plus1"), _model(), cfg,
                         EnhanceConfig(tile=0))  # fmt: skip
    assert not final.ok
    assert closes == ["s.tif"]  # not retried while the input does not change
    files = json.loads((tmp_path / "out" / MANIFEST_NAME).read_text())["files"]
    stack = files[str((inp / "s.tif").resolve())]
    assert stack["status"] == "failed" and "no space left" in stack["error"]
    assert stack["frames"] == 0 and stack["output"] is None  # nothing was renamed
    assert stack["next_page"] == 0  # a restart redoes every page: nothing is left out
    assert files[str((inp / "f.tif").resolve())]["status"] == "done"  # the watch went on
    assert (tmp_path / "out" / "f.tif").exists() and not (tmp_path / "out" / "s.tif").exists()
    assert not list((tmp_path / "out").glob("*.part"))


def test_announced_tzyx_stack_keeps_its_axes_and_ome_metadata(tmp_path):
    from cyclesr_deploy.runtime.tiff import open_frames

    inp = tmp_path / "in"
    inp.mkdir()
    meta = {"axes": "TZYX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5}
    tifffile.imwrite(inp / "s.ome.tif", np.ones((2, 3, 16, 16), np.uint16), ome=True, metadata=meta)
    past = time.time() - 30
    os.utime(inp / "s.ome.tif", (past, past))
    model = ModelConfig(
        generator=GeneratorConfig(ngf=4, n_blocks=0, scale=2),
        normalization=NormalizationConfig(low_a=0, high_a=2, low_b=0, high_b=2),
    )
    cfg = WatchConfig(poll=0.02, stable=0.05, use_events=False, exit_idle=0.3)
    final = watch_folder(inp, tmp_path / "out", FakeEngine("nearest2"), model, cfg,
                         EnhanceConfig(tile=0))  # fmt: skip
    assert final.done == 6 and final.ok
    with open_frames(tmp_path / "out" / "s.ome.tif") as reader:
        assert (reader.info.axes, reader.info.shape) == ("TZYX", (2, 3, 32, 32))
        assert reader.info.kind == "ome" and reader.info.pixel_size_um == pytest.approx(0.25)


def test_a_failed_append_closes_the_writer_and_the_pages_are_redone(tmp_path, monkeypatch):
    """The shared stack writer: an append that raises before writing (a frame of another
    shape) still closes the TiffWriter (Windows could not remove its .part else); watch pages
    are read again, so the stack comes out whole, recorded failed (never "done") with why."""
    inp = _old_stack(tmp_path, 3)
    made = fail_first_stack_append(monkeypatch, at=1)
    cfg = WatchConfig(poll=0.02, stable=0.05, idle=0.2, use_events=False, exit_idle=0.5)
    final = watch_folder(inp, tmp_path / "out", FakeEngine("plus1"), _model(), cfg,
                         EnhanceConfig(tile=0))  # fmt: skip
    assert made[0]._tw is None  # closed by abort()
    assert final.failed == 1 and not final.ok
    out = tifffile.imread(tmp_path / "out" / "s.tif")
    assert [int(f.max()) for f in out] == [1, 2, 3]  # pages 0-1 read again: nothing lost
    entry = json.loads((tmp_path / "out" / MANIFEST_NAME).read_text())["files"]
    stack = entry[str((inp / "s.tif").resolve())]
    assert stack["status"] == "failed" and "expected another shape" in stack["error"]
