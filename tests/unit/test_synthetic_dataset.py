"""generate_dataset: layout, metadata, determinism, disjointness, refusal to clobber."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from cyclesr_deploy.errors import InputError
from cyclesr_deploy.images import read_tiff
from cyclesr_deploy.synthetic import SynthConfig, generate_dataset
from cyclesr_deploy.synthetic.dataset import SPLITS
from cyclesr_deploy.synthetic.simulate import child, simulate_sample

SMALL = SynthConfig(size=64, seed=3)


def _digest(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_layout_and_metadata(tmp_path):
    out = tmp_path / "ds"
    summary = generate_dataset(out, SMALL, 3, 2)
    for split, n in zip(SPLITS, (3, 3, 2, 2, 2), strict=True):
        names = sorted(p.name for p in (out / split).iterdir())
        assert names == [f"{i:04d}.tif" for i in range(n)]
    assert not list(out.rglob("*.part"))
    img = read_tiff(out / "trainA" / "0000.tif")
    assert img.data.dtype == np.uint16 and img.data.shape == (64, 64)
    assert img.pixel_size_um == pytest.approx(0.040)
    assert img.metadata["split"] == "trainA"
    gt = read_tiff(out / "testGT" / "0001.tif")
    assert gt.data.dtype == np.float32 and gt.pixel_size_um == pytest.approx(0.040)
    manifest = json.loads((out / "dataset.json").read_text(encoding="utf-8"))
    assert manifest == summary.manifest
    assert manifest["config"] == SMALL.model_dump(mode="json")
    assert manifest["counts"] == {"trainA": 3, "trainB": 3, "testA": 2, "testB": 2, "testGT": 2}
    assert manifest["psf"]["hr"]["sigma_nm"] == pytest.approx(SMALL.psf_sigma_nm("hr"), abs=1e-3)
    assert manifest["psf"]["lr"]["sigma_px_hr_grid"] == pytest.approx(
        SMALL.psf_sigma_px("lr"), abs=1e-4
    )
    assert SynthConfig.model_validate(manifest["config"]) == SMALL
    assert len(summary.files) == 3 + 3 + 2 * 3 + 1


def test_native_grid_pixel_size(tmp_path):
    cfg = SynthConfig(size=64, binning=2, lr_grid="native")
    generate_dataset(tmp_path / "ds", cfg, 1, 1)
    lr = read_tiff(tmp_path / "ds" / "testA" / "0000.tif")
    hr = read_tiff(tmp_path / "ds" / "testB" / "0000.tif")
    assert lr.data.shape == (32, 32) and lr.pixel_size_um == pytest.approx(0.080)
    assert hr.data.shape == (64, 64) and hr.pixel_size_um == pytest.approx(0.040)
    manifest = json.loads((tmp_path / "ds" / "dataset.json").read_text(encoding="utf-8"))
    assert manifest["shape"]["trainA"] == [32, 32]


def test_byte_identical_runs_and_seed_dependence(tmp_path):
    generate_dataset(tmp_path / "a", SMALL, 2, 2)
    generate_dataset(tmp_path / "b", SMALL, 2, 2)
    generate_dataset(tmp_path / "c", SMALL.model_copy(update={"seed": 4}), 2, 2)
    a, b, c = (_digest(tmp_path / x) for x in "abc")
    assert a == b
    assert a.keys() == c.keys()
    differing = {k for k in a if a[k] != c[k]}
    assert differing == set(a)  # every image (and dataset.json) changes with the seed


def test_images_are_order_independent_and_paired(tmp_path):
    out = tmp_path / "ds"
    generate_dataset(out, SMALL, 2, 2)
    root = np.random.SeedSequence(SMALL.seed)
    direct = simulate_sample(SMALL, child(root, 2, 1))  # test sample 1 generated on its own
    np.testing.assert_array_equal(read_tiff(out / "testA" / "0001.tif").data, direct["lr"])
    np.testing.assert_array_equal(read_tiff(out / "testB" / "0001.tif").data, direct["hr"])
    np.testing.assert_array_equal(read_tiff(out / "testGT" / "0001.tif").data, direct["gt"])
    lr1 = simulate_sample(SMALL, child(root, 0, 1), gt=False, hr=False)["lr"]
    np.testing.assert_array_equal(read_tiff(out / "trainA" / "0001.tif").data, lr1)


def test_train_domains_come_from_disjoint_ground_truths():
    root = np.random.SeedSequence(SMALL.seed)
    gts = {
        (k, i): simulate_sample(SMALL, child(root, k, i), lr=False, hr=False)["gt"]
        for k in (0, 1, 2)
        for i in range(4)
    }
    keys = list(gts)
    for n, a in enumerate(keys):
        for b in keys[n + 1 :]:
            assert not np.array_equal(gts[a], gts[b]), (a, b)


def test_test_pairs_share_their_ground_truth(tmp_path):
    out = tmp_path / "ds"
    generate_dataset(out, SynthConfig(size=128), 0, 3)
    lr = [read_tiff(out / "testA" / f"{i:04d}.tif").data.astype(float) for i in range(3)]
    hr = [read_tiff(out / "testB" / f"{i:04d}.tif").data.astype(float) for i in range(3)]
    corr = np.array([[np.corrcoef(a.ravel(), b.ravel())[0, 1] for b in hr] for a in lr])
    paired = np.diag(corr)
    unpaired = corr[~np.eye(3, dtype=bool)]
    assert paired.min() > 0.5
    assert paired.min() > unpaired.max() + 0.3


def test_stack_mode(tmp_path):
    out = tmp_path / "ds"
    generate_dataset(out, SMALL, 3, 2, stack=True)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{s}.tif" for s in SPLITS] + ["dataset.json"]
    )
    a = read_tiff(out / "trainA.tif")
    assert a.data.shape == (3, 64, 64) and a.axes == "TYX"
    assert a.pixel_size_um == pytest.approx(0.040)
    # same images as the per-file layout
    generate_dataset(tmp_path / "files", SMALL, 3, 2)
    np.testing.assert_array_equal(
        read_tiff(out / "testGT.tif").data[1], read_tiff(tmp_path / "files/testGT/0001.tif").data
    )


def test_refuses_non_empty_directory_and_overwrites_only_its_own_files(tmp_path):
    out = tmp_path / "ds"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not empty"):
        generate_dataset(out, SMALL, 1, 1)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    generate_dataset(out, SMALL, 3, 1, overwrite=True)
    (out / "trainA" / "keep.tif").write_bytes(b"x")
    generate_dataset(out, SMALL, 1, 1, overwrite=True)
    assert sorted(p.name for p in (out / "trainA").iterdir()) == ["0000.tif", "keep.tif"]
    assert (out / "notes.txt").read_text() == "mine"
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="not a directory"):
        generate_dataset(tmp_path / "file", SMALL, 1, 1, overwrite=True)


@pytest.mark.parametrize(("n_train", "n_test"), [(-1, 1), (1, 1.5), (True, 1)])
def test_bad_counts(tmp_path, n_train, n_test):
    with pytest.raises(InputError):
        generate_dataset(tmp_path / "ds", SMALL, n_train, n_test)


def test_default_size_dataset(tmp_path):
    """64 + 8 images of 256^2: 136 simulated acquisitions, 153 files (speed is a benchmark
    matter, not asserted here)."""
    summary = generate_dataset(tmp_path / "ds", SynthConfig(), 64, 8)
    assert len(summary.files) == 64 * 2 + 8 * 3 + 1
