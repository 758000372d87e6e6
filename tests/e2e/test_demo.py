"""``cyclesr demo``: simulate, enhance with the built-in CycleGAN (ONNX Runtime, tiled), score."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

from cyclesr_deploy.cli import app

pytest.importorskip("onnxruntime")
runner = CliRunner()
SMALL = ["--frames", "2", "--size", "256", "--tile", "192"]


def test_demo_enhances_a_small_acquisition(tmp_path):
    out = tmp_path / "d"
    res = runner.invoke(app, ["demo", "--out", str(out), *SMALL])
    assert res.exit_code == 0, res.output
    for name in (
        "input/acquisition.ome.tif",
        "enhanced/acquisition.ome.tif",
        "reference_hr.ome.tif",
        "comparison.png",
        "metrics.md",
        "metrics.json",
    ):
        assert (out / name).is_file(), name
    with tifffile.TiffFile(out / "enhanced" / "acquisition.ome.tif") as tif:
        series = tif.series[0]
        assert series.axes == "TYX" and series.shape == (2, 256, 256)
        assert series.dtype == np.uint16
        assert 'PhysicalSizeX="0.04"' in tif.ome_metadata
    payload = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert payload["model"] == "reference-cyclegan" and payload["tiling"] == "frozen"
    assert "onnxruntime" in payload["engine"]
    rows = ("LR input", "reference-cyclegan output", "HR reference")
    lr, sr, hr = (payload["mean"][k] for k in rows)
    assert sr["psnr"] > lr["psnr"] + 3
    assert sr["ssim"] > lr["ssim"] + 0.15
    res_hr = hr["decorrelation_resolution_nm"]
    assert abs(sr["decorrelation_resolution_nm"] - res_hr) < abs(
        lr["decorrelation_resolution_nm"] - res_hr
    )
    md = (out / "metrics.md").read_text(encoding="utf-8")
    assert "| reference-cyclegan output |" in md and "(ref)" in md
    trust = payload["trust"]  # the shipped calibration scores the demo's in-domain frames
    assert trust["count"] == 2 and trust["untrusted"] == [] and "0 of 2 frames untrusted" in md
    from PIL import Image

    with Image.open(out / "comparison.png") as im:
        assert im.size[0] > im.size[1] > 300  # three columns, two rows


def test_demo_rerun_replaces_its_own_files(tmp_path):
    out = tmp_path / "d"
    args = ["demo", "--out", str(out), "--frames", "1", "--size", "256", "--tile", "192"]
    assert runner.invoke(app, args).exit_code == 0
    first = (out / "enhanced" / "acquisition.ome.tif").read_bytes()
    res = runner.invoke(app, [*args, "--seed", "1"])
    assert res.exit_code == 0, res.output
    assert (out / "enhanced" / "acquisition.ome.tif").read_bytes() != first


def test_demo_needs_only_the_cpu_extra(tmp_path):
    """`make demo` installs `.[cpu]`: torch, onnx, matplotlib, PyYAML are absent there."""
    code = textwrap.dedent(
        f"""
        import sys, importlib.abc
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                top = name.split('.')[0]
                if top in ('torch', 'onnx', 'tensorrt', 'matplotlib', 'yaml', 'cv2', 'watchdog'):
                    raise ImportError('blocked for test: ' + name)
                return None
        sys.meta_path.insert(0, Block())
        from cyclesr_deploy.demo import run_demo
        res = run_demo({str(tmp_path / "d")!r}, n_frames=1, size=256, tile=192, score_frames=1)
        print('OK', res.engine)
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "OK onnxruntime" in proc.stdout


def test_demo_refuses_a_model_of_another_scale(tmp_path):
    from cyclesr_deploy.model import GeneratorConfig, ModelConfig, save_model_config

    folder = tmp_path / "x2"
    save_model_config(folder, ModelConfig(generator=GeneratorConfig(ngf=4, n_blocks=0, scale=2)))
    res = runner.invoke(app, ["demo", "--out", str(tmp_path / "d"), "--model", str(folder)])
    assert res.exit_code == 2 and "scale-1 model" in " ".join(res.output.split())
