"""Writer process for the watch tests and benchmark: simulates a microscope writing frames.

``python -m tests.integration._watch_writer PLAN.json``: the plan lists files to write, in
order; each file's bytes are written in ``chunks`` pieces with ``chunk_pause`` seconds
between them, then ``pause`` seconds before the next file. ``kind``: ``frame`` (one page,
shaped metadata announcing 1 frame), ``stack`` (pages written one by one, IFD + data,
nothing announced, ``page_pause`` between pages), ``truncated`` (a frame file of which only
the first half is ever written), ``plain`` (one page, no metadata at all, as acquisition
programs write it). ``chunk_pauses`` (a list) gives each pause between chunks instead;
``pixel_size`` (µm) writes resolution tags (pixels per cm). Frame *i* of the run holds the
value ``base + i`` so that outputs identify their input. Spawn-safe: a plain script, no fork.
"""

from __future__ import annotations

import io
import json
import sys
import time
from pathlib import Path

import numpy as np
import tifffile


def frame_value(base: int, index: int) -> int:
    return base + index


def frame(value: int, size: int) -> np.ndarray:
    f = np.full((size, size), value, np.uint16)
    f[0, 0] = 7  # not flat
    return f


def _chunks(fh, data: bytes, chunks: int, pause: float | list[float]) -> None:
    step = max(1, -(-len(data) // chunks))
    for n, i in enumerate(range(0, len(data), step)):
        fh.write(data[i : i + step])
        fh.flush()
        if i + step < len(data):
            time.sleep(pause[n % len(pause)] if isinstance(pause, list) else pause)


def main(plan_path: str) -> None:
    plan = json.loads(Path(plan_path).read_text())
    out = Path(plan["dir"])
    size = int(plan.get("size", 64))
    for spec in plan["files"]:
        path = out / spec["name"]
        kind = spec.get("kind", "frame")
        chunks = int(spec.get("chunks", 3))
        chunk_pause = spec.get("chunk_pauses") or float(spec.get("chunk_pause", 0.02))
        res: dict = {}
        if spec.get("pixel_size"):
            ppcm = 1e4 / float(spec["pixel_size"])
            res = {"resolution": (ppcm, ppcm), "resolutionunit": 3}
        if kind == "stack":
            pages = [frame(v, size) for v in spec["values"]]
            # the whole file, then written page by page (the bytes of page k end at ends[k])
            b = io.BytesIO()
            ends = []
            with tifffile.TiffWriter(b) as tw:
                for p in pages:
                    tw.write(p, photometric="minisblack", metadata=None, contiguous=False, **res)
                    ends.append(b.tell())
            data = b.getvalue()
            start = 0
            with path.open("wb") as fh:
                for end in ends:
                    _chunks(fh, data[start:end], chunks, chunk_pause)
                    start = end
                    time.sleep(float(spec.get("page_pause", 0.1)))
                fh.write(data[start:])
        else:
            b = io.BytesIO()
            meta = {"metadata": None} if kind == "plain" else {}
            tifffile.imwrite(b, frame(spec["value"], size), photometric="minisblack", **meta, **res)
            data = b.getvalue()
            if kind == "truncated":
                data = data[: len(data) // 2]
            with path.open("wb") as fh:
                _chunks(fh, data, chunks, chunk_pause)
        time.sleep(float(spec.get("pause", 0.0)))
    Path(plan["done_flag"]).write_text("done")


if __name__ == "__main__":
    main(sys.argv[1])
