"""``cyclesr watch``: which rule judges a file complete (issue 20).

A frame counts as complete the moment it provably is (renamed into place, or the announced
page count lies wholly inside the file); the ``stable`` wait is left for files that announce
nothing and were written in place. Each test sets ``stable`` far above what it waits, so a
file processed at all was judged by content, or it sets it short and checks that nothing was
read early. Writers are threads here (the watch runs in the test's thread).
"""

from __future__ import annotations

import io
import json
import struct
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

import cyclesr_deploy.runtime.watch_output as watch_output
from cyclesr_deploy.runtime.pipeline import MANIFEST_NAME, EnhanceConfig
from cyclesr_deploy.runtime.watch import WatchConfig, WatchStatus, watch_folder
from cyclesr_deploy.runtime.watch_output import PHASES
from tests.conftest import FakeEngine
from tests.integration.test_watch import _model, _stop_when, _values

WHOLE = EnhanceConfig(tile=0)


def _plain(value: int) -> bytes:
    """One page, no metadata at all: announces nothing (as many acquisition programs write)."""
    b = io.BytesIO()
    frame = np.full((32, 32), value, np.uint16)
    tifffile.imwrite(b, frame, photometric="minisblack", metadata=None)
    return b.getvalue()


def _plain_ifd_last(value: int) -> bytes:
    """The same page as libtiff lays it out: header, pixel data, then the IFD (written last)."""
    data = np.full((32, 32), value, "<u2").tobytes()
    tags = [(256, 3, 32), (257, 3, 32), (258, 3, 16), (259, 3, 1), (262, 3, 1),
            (273, 4, 8), (277, 3, 1), (278, 3, 32), (279, 4, len(data))]  # fmt: skip
    ifd = struct.pack("<H", len(tags))
    for tag, typ, val in tags:
        ifd += (
            struct.pack("<HHII", tag, typ, 1, val)
            if typ == 4
            else struct.pack("<HHIHH", tag, typ, 1, val, 0)
        )
    return b"II*\x00" + struct.pack("<I", 8 + len(data)) + data + ifd + b"\x00\x00\x00\x00"


def _run(inp: Path, out: Path, cfg: WatchConfig, stop: threading.Event, on_status=None):
    return watch_folder(
        inp, out, FakeEngine("plus1"), _model(), cfg, WHOLE, stop=stop,
        on_status=on_status, status_every=0.02,
    )  # fmt: skip


def _entry(out: Path, name: str) -> dict:
    files = json.loads((out / MANIFEST_NAME).read_text())["files"]
    return next(v for k, v in files.items() if Path(k).name == name)


def _when_running(action) -> tuple[threading.Event, callable]:
    """(event, on_status): ``action`` runs in a thread once the watch reports its first status."""
    started = threading.Event()

    def on_status(_status: WatchStatus) -> None:
        if not started.is_set():
            started.set()
            threading.Thread(target=action, daemon=True).start()

    return started, on_status


def test_a_renamed_file_is_processed_without_the_stable_wait(tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()

    def write() -> None:  # the atomic write: a temporary name, then a rename
        (inp / "f.tif.tmp").write_bytes(_plain(41))  # nothing announced: only the rename tells
        (inp / "f.tif.tmp").replace(inp / "f.tif")

    _started, on_status = _when_running(write)
    stop = threading.Event()
    _stop_when(stop, lambda: (out / "f.tif").exists(), timeout=15)
    cfg = WatchConfig(poll=0.05, stable=60.0, use_events=True)
    final = _run(inp, out, cfg, stop, on_status)
    assert final.done == 1 and final.ok  # the 60 s stable wait would have stopped it at 15 s
    assert dict(final.rules) == {"renamed": 1}
    assert _values(out / "f.tif") == [42]
    entry = _entry(out, "f.tif")
    assert entry["status"] == "done" and entry["complete_by"] == "renamed"
    assert set(entry["latency_s"]) == set(PHASES)
    assert [k for k, _ in final.split] == list(PHASES)


def test_a_frame_announcing_its_page_count_needs_no_wait_even_when_polled(tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()

    def write() -> None:  # in place, no rename; tifffile's shaped metadata announce one frame
        tifffile.imwrite(inp / "f.tif", np.full((32, 32), 7, np.uint16), photometric="minisblack")

    _started, on_status = _when_running(write)
    stop = threading.Event()
    _stop_when(stop, lambda: (out / "f.tif").exists(), timeout=15)
    cfg = WatchConfig(poll=0.05, stable=60.0, use_events=False)
    final = _run(inp, out, cfg, stop, on_status)
    assert final.done == 1 and dict(final.rules) == {"announced": 1}
    assert _entry(out, "f.tif")["complete_by"] == "announced"


def _ome_stack(n: int, announced: int) -> tuple[bytes, list[int]]:
    """An OME-TIFF whose first page's OME-XML announces ``announced`` pages, written page by
    page (IFD + data each); the bytes and where each page ends."""
    ome = tifffile.OmeXml()
    ome.addimage(np.uint16, (announced, 32, 32), (announced, 1, 1, 32, 32, 1), axes="ZYX")
    b, ends = io.BytesIO(), []
    with tifffile.TiffWriter(b) as tw:
        for i in range(n):
            xml = ome.tostring() if i == 0 else None
            tw.write(np.full((32, 32), 10 + i, np.uint16), photometric="minisblack",
                     metadata=None, contiguous=False, description=xml)  # fmt: skip
            ends.append(b.tell())
    return b.getvalue(), ends


def test_an_ome_stack_announcing_5_pages_with_3_written_is_not_closed_early(tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    data, ends = _ome_stack(5, 5)
    seen: list[tuple[bool, int]] = []
    stop = threading.Event()
    path, target = inp / "s.ome.tif", out / "s.ome.tif"

    def write() -> None:
        with path.open("wb") as fh:
            fh.write(data[: ends[2]])  # 3 of the 5 announced pages
            fh.flush()
            end = time.monotonic() + 10
            while time.monotonic() < end and not (seen and seen[-1][1] >= 3):
                time.sleep(0.02)
            time.sleep(0.5)  # well past stable: the stack must still be open
            seen.append((target.exists(), -1))
            fh.write(data[ends[2] :])
        _stop_when(stop, target.exists, timeout=10)

    _started, on_status = _when_running(write)

    def status(st: WatchStatus) -> None:
        seen.append((target.exists(), st.done))
        on_status(st)

    cfg = WatchConfig(poll=0.05, stable=0.2, idle=60.0, use_events=True)
    final = _run(inp, out, cfg, stop, status)
    early = [exists for exists, done in seen if done < 5]
    assert early and not any(early)  # no output renamed before page 5 was in
    assert (False, -1) in seen  # the pause with 3 pages was observed, output absent
    assert final.done == 5 and final.ok
    assert _values(target) == [11, 12, 13, 14, 15]
    entry = _entry(out, "s.ome.tif")
    assert entry["status"] == "done" and entry["frames"] == 5
    assert entry["complete_by"] == "announced"  # the last page: the count was reached


@pytest.mark.parametrize("layout", ["ifd-first", "ifd-last"])
def test_a_plain_tiff_in_chunks_is_never_read_before_its_last_chunk(tmp_path, monkeypatch, layout):
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    data = _plain(20) if layout == "ifd-first" else _plain_ifd_last(20)
    path = inp / "p.tif"
    sizes: list[int] = []
    real_open, real_page = watch_output.open_frames, watch_output.read_page

    def open_frames(p, *a, **k):  # every read of the input by the watch records the size
        if Path(p).parent == inp:
            sizes.append(Path(p).stat().st_size)
        return real_open(p, *a, **k)

    def read_page(p, *a, **k):
        sizes.append(Path(p).stat().st_size)
        return real_page(p, *a, **k)

    monkeypatch.setattr(watch_output, "open_frames", open_frames)
    monkeypatch.setattr(watch_output, "read_page", read_page)

    def write() -> None:  # 8 chunks, pauses shorter than stable: the data are inside early
        step = -(-len(data) // 8)
        with path.open("wb") as fh:
            for i in range(0, len(data), step):
                fh.write(data[i : i + step])
                fh.flush()
                time.sleep(0.12)

    _started, on_status = _when_running(write)
    stop = threading.Event()
    _stop_when(stop, lambda: (out / "p.tif").exists(), timeout=15)
    cfg = WatchConfig(poll=0.05, stable=0.3, use_events=True)
    final = _run(inp, out, cfg, stop, on_status)
    assert final.done == 1 and final.ok
    assert sizes and set(sizes) == {len(data)}  # never opened before the last chunk
    assert _values(out / "p.tif") == [21]
    assert _entry(out, "p.tif")["complete_by"] == "stable"  # nothing else could tell
