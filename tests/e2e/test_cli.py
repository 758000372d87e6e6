"""The CLI end to end through typer's CliRunner: synth -> metrics, errors, exit codes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from cyclesr_deploy import images
from cyclesr_deploy.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "ds"
    res = runner.invoke(app, ["synth", str(out), "--n-train", "2", "--n-test", "3", "--size", "96"])
    assert res.exit_code == 0, res.output
    return out


def test_synth_vary_flag_records_the_ranges(tmp_path):
    out = tmp_path / "varied"
    res = runner.invoke(
        app, ["synth", str(out), "--n-train", "1", "--n-test", "0", "--size", "64", "--vary"]
    )
    assert res.exit_code == 0, res.output
    vary = json.loads((out / "dataset.json").read_text())["config"]["vary"]
    assert vary["lr_na"] == [0.7, 0.95] and vary["hr_photons"] is None


def test_help_lists_commands():
    res = runner.invoke(app, ["--help"])
    assert res.exit_code == 0
    for cmd in ("synth", "metrics", "demo"):
        assert cmd in res.output


def test_synth_writes_layout_and_reports_psf(dataset):
    for split, n in {"trainA": 2, "trainB": 2, "testA": 3, "testB": 3, "testGT": 3}.items():
        assert len(list((dataset / split).glob("*.tif"))) == n
    manifest = json.loads((dataset / "dataset.json").read_text())
    assert manifest["config"]["size"] == 96
    img = images.read_tiff(dataset / "testA" / "0000.tif")
    assert img.data.shape == (96, 96) and img.data.dtype == np.uint16
    assert img.pixel_size_um == pytest.approx(manifest["config"]["hr_pixel_nm"] / 1000)


def test_synth_refuses_non_empty_folder(dataset):
    before = sorted(p.name for p in dataset.rglob("*"))
    res = runner.invoke(app, ["synth", str(dataset), "--n-train", "1", "--n-test", "1"])
    assert res.exit_code == 2
    assert "empty" in res.output.lower() or "overwrite" in res.output.lower()
    assert sorted(p.name for p in dataset.rglob("*")) == before


def test_synth_bad_config_value_is_a_clear_error(tmp_path):
    res = runner.invoke(app, ["synth", str(tmp_path / "x"), "--bit-depth", "12"])
    assert res.exit_code == 2
    assert "bit_depth" in res.output
    assert not (tmp_path / "x").exists() or not any((tmp_path / "x").iterdir())


def test_metrics_folder_mean_and_json(dataset, tmp_path):
    out = tmp_path / "m.json"
    res = runner.invoke(
        app,
        ["metrics", str(dataset / "testA"), str(dataset / "testB"), "--json", str(out)],
    )
    assert res.exit_code == 0, res.output
    assert "3 image(s)" in res.output and "PSNR" in res.output
    data = json.loads(out.read_text())
    assert [it["name"] for it in data["items"]] == ["0000.tif", "0001.tif", "0002.tif"]
    psnrs = [it["report"]["psnr"] for it in data["items"]]
    assert data["mean"]["psnr"] == pytest.approx(np.mean(psnrs))
    assert data["items"][0]["report"]["pixel_size"] == pytest.approx(0.04)


def test_metrics_single_file_identical_gives_infinite_psnr(dataset, tmp_path):
    f = dataset / "testB" / "0000.tif"
    out = tmp_path / "same.json"
    res = runner.invoke(app, ["metrics", str(f), str(f), "--json", str(out)])
    assert res.exit_code == 0, res.output
    assert "inf" in res.output
    assert json.loads(out.read_text())["items"][0]["report"]["psnr"] == "Infinity"


def test_metrics_mismatched_shapes_fail_and_write_nothing(dataset, tmp_path):
    small = images.write_tiff(tmp_path / "small.tif", np.zeros((64, 64), np.uint16))
    out = tmp_path / "m.json"
    res = runner.invoke(
        app, ["metrics", str(small), str(dataset / "testB" / "0000.tif"), "--json", str(out)]
    )
    assert res.exit_code == 2
    assert "shape" in res.output
    assert not out.exists()


def test_metrics_keeps_going_past_a_bad_pair(dataset, tmp_path):
    pred = tmp_path / "pred"
    for i in range(3):
        src = images.read_tiff(dataset / "testA" / f"{i:04d}.tif")
        images.write_tiff(pred / f"{i:04d}.tif", src.data, pixel_size_um=src.pixel_size_um)
    (pred / "0001.tif").write_bytes(b"truncated by the microscope")
    out = tmp_path / "m.json"
    res = runner.invoke(app, ["metrics", str(pred), str(dataset / "testB"), "--json", str(out)])
    assert res.exit_code == 1
    data = json.loads(out.read_text())
    errors = {it["name"]: it["error"] for it in data["items"] if it["error"]}
    assert list(errors) == ["0001.tif"] and "TIFF" in errors["0001.tif"]
    assert sum(it["report"] is not None for it in data["items"]) == 2


def test_metrics_stack_is_evaluated_per_plane(tmp_path, rng):
    gt = rng.random((2, 64, 64)).astype(np.float32)
    pred = np.clip(gt + 0.05, 0, 1).astype(np.float32)
    g = images.write_tiff(tmp_path / "gt.tif", gt)
    p = images.write_tiff(tmp_path / "p.tif", pred)
    out = tmp_path / "m.json"
    res = runner.invoke(app, ["metrics", str(p), str(g), "--json", str(out), "--per-image"])
    assert res.exit_code == 0, res.output
    names = [it["name"] for it in json.loads(out.read_text())["items"]]
    assert names == ["p.tif[T=0]", "p.tif[T=1]"]


def test_metrics_rgb_file_is_evaluated_per_channel(tmp_path, rng):
    gt = (rng.random((64, 64, 3)) * 200).astype(np.uint8)
    pred = np.clip(gt.astype(int) + 5, 0, 255).astype(np.uint8)
    import tifffile

    tifffile.imwrite(tmp_path / "gt.tif", gt, photometric="rgb")
    tifffile.imwrite(tmp_path / "p.tif", pred, photometric="rgb")
    out = tmp_path / "m.json"
    res = runner.invoke(
        app, ["metrics", str(tmp_path / "p.tif"), str(tmp_path / "gt.tif"), "--json", str(out)]
    )
    assert res.exit_code == 0, res.output
    names = [it["name"] for it in json.loads(out.read_text())["items"]]
    assert names == ["p.tif[S=0]", "p.tif[S=1]", "p.tif[S=2]"]


def test_metrics_repeat_adds_frc_and_rejects_mismatch(dataset, tmp_path):
    a, b = dataset / "testB" / "0000.tif", dataset / "testB" / "0001.tif"
    out = tmp_path / "m.json"
    res = runner.invoke(app, ["metrics", str(a), str(a), "--repeat", str(b), "--json", str(out)])
    assert res.exit_code == 0, res.output
    report = json.loads(out.read_text())["items"][0]["report"]
    assert report["frc_cutoff"] is not None and report["frc_resolution"] is not None
    stack = images.write_tiff(tmp_path / "st.tif", np.zeros((2, 96, 96), np.uint16))
    res = runner.invoke(app, ["metrics", str(a), str(a), "--repeat", str(stack)])
    assert res.exit_code == 2
    assert "--repeat has shape" in res.output


def test_metrics_reports_unmatched_names_and_pixel_size_override(dataset, tmp_path):
    pred = tmp_path / "pred"
    src = images.read_tiff(dataset / "testA" / "0000.tif")
    images.write_tiff(pred / "0000.tif", src.data)
    images.write_tiff(pred / "extra.tif", src.data)
    out = tmp_path / "m.json"
    args = ["metrics", str(pred), str(dataset / "testB"), "--json", str(out), "--pixel-size", "0.1"]
    res = runner.invoke(app, args)
    assert res.exit_code == 1
    items = {it["name"]: it for it in json.loads(out.read_text())["items"]}
    assert items["extra.tif"]["error"] == "no matching file in GT"
    assert items["0001.tif"]["error"] == "no matching file in PRED"
    assert items["0000.tif"]["report"]["pixel_size"] == pytest.approx(0.1)
    # decorrelation resolution converted with the overriding pixel size
    r = items["0000.tif"]["report"]
    assert r["decorrelation_resolution"] == pytest.approx(0.1 * r["decorrelation_resolution_px"])
