"""Two ``cyclesr enhance`` processes into one output folder (the built-in model on ONNX
Runtime): the second is refused with exit code 2 naming the first, which completes untouched.

Deterministic, no timing race: the first run is paused right after it took the folder's lock
(a wrapper around the real CLI) until the second has been refused.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from cyclesr_deploy.runtime.manifest import LOCK_INFO_NAME, LOCK_NAME, MANIFEST_NAME

REPO = Path(__file__).resolve().parents[2]

# The real CLI, paused after taking the output lock until the file argv[1] exists.
_PAUSED_CLI = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from cyclesr_deploy.runtime import manifest

    go = Path(sys.argv.pop(1))
    acquire = manifest.OutputLock.acquire

    def paused(self):
        acquire(self)
        deadline = time.monotonic() + 120
        while not go.exists() and time.monotonic() < deadline:
            time.sleep(0.02)

    manifest.OutputLock.acquire = paused
    sys.argv[0] = "cyclesr"
    from cyclesr_deploy.cli import main
    main()
    """
)


def _env() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "COLUMNS": "200"}


def _enhance(args: list[str], *, paused_until: Path | None = None) -> subprocess.Popen[str]:
    head = ["-c", _PAUSED_CLI, str(paused_until)] if paused_until else ["-m", "cyclesr_deploy"]
    return subprocess.Popen(
        [sys.executable, *head, "enhance", *args, "--backend", "onnxruntime"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        cwd=REPO,
    )


def _wait_for(path: Path, proc: subprocess.Popen[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            pytest.fail(f"the first run ended early: {proc.communicate()}")
        if time.monotonic() > deadline:
            pytest.fail(f"{path} did not appear")
        time.sleep(0.05)


def test_second_enhance_into_a_busy_folder_is_refused_and_the_first_completes(tmp_path):
    pytest.importorskip("onnxruntime")
    rng = np.random.default_rng(5)
    (tmp_path / "in").mkdir()
    stacks = {}
    for name in ("a.tif", "b.tif"):
        stacks[name] = rng.integers(0, 60000, (4, 48, 40)).astype(np.uint16)
        tifffile.imwrite(tmp_path / "in" / name, stacks[name], ome=True, metadata={"axes": "TYX"})
    out, ref, go = tmp_path / "out", tmp_path / "ref", tmp_path / "go"
    first_args = [str(tmp_path / "in"), "-o", str(out), "--tile", "0"]

    first = _enhance(first_args, paused_until=go)
    try:
        _wait_for(out / LOCK_INFO_NAME, first)
        holder = json.loads((out / LOCK_INFO_NAME).read_text(encoding="utf-8"))
        assert holder["pid"] == first.pid and holder["command"] == "cyclesr enhance"
        # other settings, same folder: refused before writing anything
        second = _enhance([str(tmp_path / "in"), "-o", str(out), "--normalize", "frame"])
        _, err2 = second.communicate(timeout=120)
        assert second.returncode == 2, err2
        message = " ".join(err2.split())
        assert f"output folder {out} is in use by cyclesr enhance (pid {first.pid} on" in message
        assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME, LOCK_INFO_NAME]
    finally:
        go.touch()
        _, err1 = first.communicate(timeout=300)
    assert first.returncode == 0, err1

    # the first run's outputs are complete, done, and exactly what it makes alone
    solo = _enhance([str(tmp_path / "in"), "-o", str(ref), "--tile", "0"])
    _, err = solo.communicate(timeout=300)
    assert solo.returncode == 0, err
    manifest = json.loads((out / MANIFEST_NAME).read_text(encoding="utf-8"))
    assert manifest["config"]["tile"] == 0
    assert {Path(k).name: v["status"] for k, v in manifest["files"].items()} == {
        "a.tif": "done",
        "b.tif": "done",
    }
    for name, data in stacks.items():
        got = tifffile.imread(out / name)
        assert got.shape == data.shape
        np.testing.assert_array_equal(got, tifffile.imread(ref / name))
    left = sorted(p.name for p in out.iterdir() if p.name != LOCK_NAME)  # kept on POSIX only
    assert left == ["a.tif", "b.tif", MANIFEST_NAME]  # released: no LOCK_INFO_NAME
