"""The per-frame trust score (issue 17): calibration on in-domain frames of a copy of the
built-in reference-cyclegan, a far out-of-domain frame flagged and in-domain frames of several
sizes not, stale/missing/corrupt calibrations, the AUC helper, the hurt label."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from cyclesr_deploy.builtin import resolve_model
from cyclesr_deploy.errors import InputError
from cyclesr_deploy.model import ONNX_FILES, TRUST_JSON
from cyclesr_deploy.runtime.enhancer import Enhancer
from cyclesr_deploy.trust import TrustScorer
from cyclesr_deploy.trust.calibrate import MIN_FRAMES, calibrate, synthetic_frames
from cyclesr_deploy.trust.calibration import FEATURE_VERSION, read_calibration
from cyclesr_deploy.trust.evaluate import quality_gain, roc_auc
from cyclesr_deploy.trust.features import CROP, GRID, input_stats

CAL_FRAMES = 12  # in-domain calibration frames (sizes 256 and 384, fresh seeds)


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the built-in reference-cyclegan calibrated on a few in-domain frames."""
    folder = tmp_path_factory.mktemp("trust") / "model"
    shutil.copytree(resolve_model("reference-cyclegan"), folder)
    (folder / TRUST_JSON).unlink(missing_ok=True)
    frames = synthetic_frames(None, CAL_FRAMES, sizes=(256, 384), seed=61_000)
    calibrate(folder, frames, data="test: default recipe", backend="onnxruntime")
    return folder


def _trust(folder: Path, frames: list[np.ndarray]):
    with Enhancer(folder, backend="onnxruntime") as enhancer:
        scorer = TrustScorer.for_model(folder, enhancer.scale)
        assert scorer is not None
        m = enhancer.runner.mapping
        out = []
        for f in frames:
            stats = scorer.begin(f, m.low_in, m.high_in)
            out.append(scorer.finish(stats, enhancer(f), m.low_out, m.high_out))
        return out


def _degraded_photo() -> np.ndarray:
    """scikit-image's camera photograph blurred like an LR acquisition, with background and
    Poisson noise, in 16 bit: large smooth objects the model paints texture over (it hurts
    such frames: benchmarks/results/ood_trust.json, kind ``camera``)."""
    from skimage import data

    x = data.camera()[96:416, 96:416].astype(np.float64) / 255.0
    rng = np.random.default_rng(5)
    lam = 60.0 * (gaussian_filter(x, 2.9) + 0.3)
    return np.clip(rng.poisson(lam) * 600.0, 0, 65535).astype(np.uint16)


def _sparse_beads() -> np.ndarray:
    """A few bright beads on an empty field (the default optics): sparser than any training
    image; the model paints its HR noise texture over the empty background (SSIM falls)."""
    structures = {
        "filament_density": 0,
        "vesicle_density": 0,
        "membrane_probability": 0,
        "nucleus_probability": 0,
        "puncta_density": 0.08,
        "punctum_brightness": (0.5, 1.0),
    }
    return next(synthetic_frames({"structures": structures}, 1, sizes=(384,), seed=64_000))


def test_in_domain_frames_of_several_sizes_are_trusted(calibrated: Path):
    sizes = (256, 512, 640)
    frames = [next(synthetic_frames(None, 1, sizes=(s,), seed=62_000 + s)) for s in sizes]
    frames.append(frames[1][:384, :])  # not square
    results = _trust(calibrated, frames)
    assert all(r.trusted for r in results), [r.record() for r in results]
    assert all(r.score > 0.01 for r in results)


def test_far_out_of_domain_frames_are_flagged(calibrated: Path):
    from skimage import data

    camera8 = data.camera()  # an 8-bit photograph: another bit depth and content
    results = _trust(calibrated, [_degraded_photo(), _sparse_beads(), camera8])
    for r in results:
        assert not r.trusted, r.record()
        assert r.score < 0.01 and r.evidence > 2
        assert r.worst in r.z and r.record()["trusted"] is False


def test_begin_is_size_independent():
    small = input_stats(np.zeros((300, 300), np.uint16), 0.0, 1.0)
    big = input_stats(np.zeros((2048, 1536), np.uint16), 0.0, 1.0)
    assert len(big.smoothed) == GRID * GRID and big.smoothed[0].shape == (CROP, CROP)
    assert len(small.smoothed) == 4 and small.smoothed[0].shape == (CROP, CROP)


def test_stale_calibration_names_the_renewal(calibrated: Path, tmp_path: Path):
    folder = tmp_path / "m"
    shutil.copytree(calibrated, folder)
    assert read_calibration(folder) is not None
    onnx = folder / ONNX_FILES["ab"]
    raw = bytearray(onnx.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # one byte of the weights changed
    onnx.write_bytes(bytes(raw))
    with pytest.raises(InputError, match=r"stale: generator\.onnx changed.*cyclesr export trust"):
        read_calibration(folder)
    with pytest.raises(InputError, match="cyclesr export trust"):
        TrustScorer.for_model(folder)


def test_stale_record_and_older_statistics(calibrated: Path, tmp_path: Path):
    folder = tmp_path / "m"
    shutil.copytree(calibrated, folder)
    path = folder / TRUST_JSON
    record = json.loads(path.read_text(encoding="utf-8"))
    edited = dict(record, weights_sha256={k: "0" * 64 for k in record["weights_sha256"]})
    path.write_text(json.dumps(edited), encoding="utf-8")
    with pytest.raises(InputError, match=r"changed since the calibration.*cyclesr export trust"):
        read_calibration(folder)
    old = {"feature_version": FEATURE_VERSION - 1, "spectrum_median": [0.0]}  # an older schema
    path.write_text(json.dumps(old), encoding="utf-8")
    with pytest.raises(InputError, match=r"stale: statistics version.*cyclesr export trust"):
        read_calibration(folder)


def test_missing_and_corrupt_calibration(calibrated: Path, tmp_path: Path):
    folder = tmp_path / "m"
    shutil.copytree(calibrated, folder)
    path = folder / TRUST_JSON
    path.write_text('{"schema_version": "1", "feature', encoding="utf-8")
    with pytest.raises(InputError, match=r"(?s)unreadable.*cyclesr export trust"):
        read_calibration(folder)
    path.write_text(json.dumps({"feature_version": FEATURE_VERSION}), encoding="utf-8")
    with pytest.raises(InputError, match=r"(?s)unreadable.*cyclesr export trust"):
        read_calibration(folder)
    path.unlink()
    assert read_calibration(folder) is None
    assert TrustScorer.for_model(folder) is None


def test_calibrate_refuses_too_few_frames_and_keeps_the_old_file(calibrated: Path, tmp_path: Path):
    folder = tmp_path / "m"
    shutil.copytree(calibrated, folder)
    before = (folder / TRUST_JSON).read_bytes()
    frames = synthetic_frames(None, MIN_FRAMES - 1, sizes=(128,), seed=63_000)
    with pytest.raises(InputError, match=f"at least {MIN_FRAMES} in-domain frames, got 7"):
        calibrate(folder, frames, data="too few", backend="onnxruntime")
    assert (folder / TRUST_JSON).read_bytes() == before
    assert not list(folder.glob("*.part"))


def test_calibrate_writes_atomically(calibrated: Path, tmp_path: Path, monkeypatch):
    folder = tmp_path / "m"
    shutil.copytree(calibrated, folder)
    before = (folder / TRUST_JSON).read_bytes()

    def fail(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr("cyclesr_deploy.trust.calibrate.json.dumps", fail)
    frames = synthetic_frames(None, MIN_FRAMES, sizes=(128,), seed=63_000)
    with pytest.raises(OSError):
        calibrate(folder, frames, data="interrupted", backend="onnxruntime")
    assert (folder / TRUST_JSON).read_bytes() == before
    assert not list(folder.glob("*.part"))


def test_roc_auc_known_answers():
    assert roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)  # sklearn's doc
    assert roc_auc([1, 2, 3, 4], [0, 0, 1, 1]) == 1.0
    assert roc_auc([4, 3, 2, 1], [0, 0, 1, 1]) == 0.0
    assert roc_auc([1, 1, 1, 1], [0, 1, 0, 1]) == 0.5  # ties count half
    assert roc_auc([0.2, 0.5, 0.5, 0.9], [0, 1, 0, 1]) == pytest.approx(0.875)
    assert np.isnan(roc_auc([1, 2], [1, 1]))
    with pytest.raises(InputError):
        roc_auc([1, 2, 3], [0, 1])


def test_hurt_label(rng: np.random.Generator):
    truth = gaussian_filter(rng.random((96, 96)), 2.0).astype(np.float32)
    lr = gaussian_filter(truth, 2.0) + rng.normal(0, 0.02, truth.shape)
    better = quality_gain(lr, truth + rng.normal(0, 0.002, truth.shape), truth)
    assert better.psnr_gain > 0 and better.ssim_gain > 0 and not better.hurt
    worse = quality_gain(lr, rng.random(truth.shape), truth)
    assert worse.psnr_gain < 0 and worse.hurt


@pytest.mark.slow
def test_ood_benchmark_runs_and_reports(tmp_path: Path):
    """benchmarks/ood_trust.py end to end at its smallest: one frame per kind and split."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    out = tmp_path / "ood.json"
    args = ["--per-kind", "1", "--in-domain", "2", "--calibration-frames", "8"]
    args += ["--cost-sizes", "256", "--cost-reps", "1", "--out", str(out)]
    res = subprocess.run(
        [sys.executable, str(root / "benchmarks" / "ood_trust.py"), *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=root,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    result = json.loads(out.read_text(encoding="utf-8"))
    report = result["splits"]["report"]
    assert report["n"] == 2 + 20 and 0 <= report["auc_hurt_vs_helped"] <= 1
    assert report["kinds"]["8-bit"]["hurt"] == 1 and report["kinds"]["8-bit"]["flagged"] == 1.0
    assert set(result["cost"]) == {"256x256"} and result["cost"]["256x256"]["overhead"] > 0
    assert not (resolve_model("reference-cyclegan") / TRUST_JSON).exists()  # never written
