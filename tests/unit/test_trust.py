"""The per-frame trust score (issue 17): calibration on in-domain frames of a copy of the
built-in reference-cyclegan, a far out-of-domain frame flagged and in-domain frames of several
sizes not, stale/missing/corrupt calibrations, the AUC helper, the hurt label."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from cyclesr_deploy.builtin import resolve_model
from cyclesr_deploy.errors import InputError
from cyclesr_deploy.model import MODEL_JSON, ONNX_FILES, TRUST_JSON, WEIGHTS
from cyclesr_deploy.runtime.enhancer import Enhancer
from cyclesr_deploy.trust import TrustScorer
from cyclesr_deploy.trust.calibrate import (
    FALSE_ALARM,
    MIN_FRAMES,
    calibrate,
    conformal_threshold,
    synthetic_frames,
)
from cyclesr_deploy.trust.calibration import FEATURE_VERSION, read_calibration
from cyclesr_deploy.trust.evaluate import degrade, label, quality_gain, roc_auc
from cyclesr_deploy.trust.features import (
    CROP,
    MAX_GRID,
    crop_corners,
    input_stats,
    output_stats,
)

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


def _trust(folder: Path, frames: list[np.ndarray], edit=None):
    """Each frame's FrameTrust; ``edit(output)``: what to score instead of the output."""
    with Enhancer(folder, backend="onnxruntime") as enhancer:
        scorer = TrustScorer.for_model(folder, enhancer.scale)
        assert scorer is not None
        m = enhancer.runner.mapping
        out = []
        for f in frames:
            stats = scorer.begin(f, m.low_in, m.high_in)
            y = enhancer(f)
            y = y if edit is None else edit(y)
            out.append(scorer.finish(stats, y, m.low_out, m.high_out))
        return out


def _degraded_photo() -> np.ndarray:
    """scikit-image's camera photograph degraded like the benchmark's real kinds (blur,
    background, Poisson noise, 16 bit): large smooth objects the model paints texture over (it
    hurts such frames: benchmarks/results/ood_trust.json, kind ``camera``)."""
    from skimage import data

    lr, _ = degrade(
        data.camera()[96:416, 96:416], np.random.default_rng(5), photons=60.0, background=0.3
    )
    return lr


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


def test_input_statistics_do_not_depend_on_the_frame_size(rng: np.random.Generator):
    """The same content at 300^2 and 2048x1536: equal statistics (noise aside); the crop count
    grows with the area up to MAX_GRID^2."""
    texture = gaussian_filter(rng.random((2048, 1536)), 3.0)
    texture = (2000 + 20000 * (texture - texture.min()) / np.ptp(texture)).astype(np.uint16)
    small = input_stats(texture[:300, :300], 0.0, 30000.0)
    big = input_stats(texture, 0.0, 30000.0)
    assert len(big.smoothed) == MAX_GRID**2 and big.smoothed[0].shape == (CROP, CROP)
    assert len(small.smoothed) == 4 and small.smoothed[0].shape == (CROP, CROP)
    assert small.level == pytest.approx(big.level, abs=0.05) and 0.2 < big.level < 0.6
    assert small.saturated < 0.01 and big.saturated < 0.001 and big.outside == 0.0
    counts = [len(crop_corners((n, n), CROP)) for n in (256, 512, 1024, 4096)]
    assert counts == [1, 4, 16, MAX_GRID**2]


def test_texture_above_the_input_band_raises_transfer_high(rng: np.random.Generator):
    """``transfer_high`` (0.07-0.15 cycles/px) sees fine texture painted over a smooth input;
    an output equal to the input has every transfer ratio 0."""
    frame = gaussian_filter(rng.random((256, 256)), 4.0).astype(np.float32)
    frame = (frame - frame.min()) / np.ptp(frame)
    stats = input_stats(frame, 0.0, 1.0)
    same = output_stats(stats, frame, 0.0, 1.0, 1.0)
    assert same["transfer_high"] == pytest.approx(0.0, abs=1e-6)
    painted = frame + gaussian_filter(rng.standard_normal(frame.shape), 1.5).astype(np.float32)
    assert output_stats(stats, painted, 0.0, 1.0, 1.0)["transfer_high"] > 1.0


def test_frames_too_small_are_not_scored(calibrated: Path):
    scorer = TrustScorer.for_model(calibrated)
    assert scorer is not None
    for shape in ((17, 17), (3, 300), (1, 64), (64,)):
        frame = np.full(shape, 1000, np.uint16)
        t = scorer.finish(scorer.begin(frame, 0.0, 1.0), frame, 0.0, 1.0)
        assert not t.scored and t.trusted and t.score == 1.0
        rec = t.record()
        assert rec["scored"] is False and rec["worst"] == "not scored"


def test_invented_structure_is_flagged(calibrated: Path, rng: np.random.Generator):
    """An output carrying texture unrelated to its input (a hallucination) is untrusted, though
    its input is in-domain: the output's variance the input does not explain is scored."""
    frame = next(synthetic_frames(None, 1, sizes=(384,), seed=62_100))
    noise = gaussian_filter(rng.standard_normal(frame.shape), 1.5)

    def hallucinate(y: np.ndarray) -> np.ndarray:
        return (y + 3 * y.std() * noise / noise.std()).astype(y.dtype)

    (honest,) = _trust(calibrated, [frame])
    (invented,) = _trust(calibrated, [frame], edit=hallucinate)
    assert honest.trusted, honest.record()
    assert not invented.trusted, invented.record()
    assert invented.worst in ("gain", "consistency", "invented"), invented.record()


def test_saturated_and_offset_frames_are_flagged(calibrated: Path):
    frame = next(synthetic_frames(None, 1, sizes=(256,), seed=62_200)).astype(np.float32)
    saturated = np.full((256, 256), 65535, np.uint16)
    offset = frame + np.float32(1e8)
    results = _trust(calibrated, [saturated, offset])
    for r in results:
        assert not r.trusted, r.record()
        json.dumps(r.record(), allow_nan=False)  # finite numbers only


def test_stale_calibration_names_the_renewal(calibrated: Path, tmp_path: Path):
    folder = tmp_path / "m"
    shutil.copytree(calibrated, folder)
    assert read_calibration(folder) is not None
    onnx = folder / ONNX_FILES["ab"]
    raw = bytearray(onnx.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # one byte of the weights changed
    onnx.write_bytes(bytes(raw))
    # not recorded by an export: a damaged or swapped graph, refused as such (re-export)
    with pytest.raises(InputError, match=r"sha256 differs.*cyclesr export onnx"):
        read_calibration(folder)
    # recorded by an export (new weights): the calibration of the old ones is stale
    export = folder / "export.json"
    record = json.loads(export.read_text(encoding="utf-8"))
    record["artifacts"][ONNX_FILES["ab"]]["sha256"] = hashlib.sha256(bytes(raw)).hexdigest()
    export.write_text(json.dumps(record), encoding="utf-8")
    with pytest.raises(InputError, match=r"stale: generator\.onnx changed.*cyclesr export trust"):
        read_calibration(folder)
    with pytest.raises(InputError, match="cyclesr export trust"):
        TrustScorer.for_model(folder)


def test_calibration_is_tied_to_model_json_and_survives_a_pruned_deploy_folder(
    calibrated: Path, tmp_path: Path
):
    cal = read_calibration(calibrated)
    assert cal is not None and cal.backend.startswith("onnxruntime")
    assert {MODEL_JSON, ONNX_FILES["ab"], WEIGHTS["ab"]} <= set(cal.weights_sha256)
    assert len(cal.recorded["gain"]) == cal.n_frames
    deploy = tmp_path / "deploy"
    shutil.copytree(calibrated, deploy)
    (deploy / WEIGHTS["ab"]).unlink()  # a deploy folder: ONNX only, still the same model
    assert read_calibration(deploy) is not None
    meta = json.loads((deploy / MODEL_JSON).read_text(encoding="utf-8"))
    meta["normalization"]["high_a"] = meta["normalization"]["high_a"] * 2
    (deploy / MODEL_JSON).write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(InputError, match=r"stale: model\.json changed"):
        read_calibration(deploy)


def test_calibrate_refuses_a_folder_with_nothing_to_tie_to(calibrated: Path, tmp_path: Path):
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(calibrated / MODEL_JSON, bare / MODEL_JSON)
    frames = synthetic_frames(None, MIN_FRAMES, sizes=(128,), seed=63_000)
    with pytest.raises(InputError, match="no weights to tie"):
        calibrate(bare, frames, data="nothing", backend="onnxruntime")


def test_built_in_names_are_resolved(calibrated: Path, monkeypatch):
    from cyclesr_deploy.trust import calibration

    monkeypatch.setattr(
        calibration, "resolve_model", lambda v: calibrated if v == "my-model" else Path(v)
    )
    assert read_calibration("my-model") is not None
    assert TrustScorer.for_model("my-model") is not None


def test_conformal_threshold():
    scores = np.linspace(0.001, 1.0, 24)
    threshold, bound = conformal_threshold(scores)
    assert threshold < scores.min() and bound == pytest.approx(1 / 25)
    assert conformal_threshold(np.ones(24))[0] == 0.01  # capped at ALPHA
    many = np.linspace(1e-4, 1e-3, 99)
    k = max(1, int(np.floor(100 * FALSE_ALARM)))
    threshold, bound = conformal_threshold(many)
    assert bound == pytest.approx(k / 100) and many[k - 2] < threshold < many[k - 1]  # k-th lowest


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


def test_labels_have_margins():
    assert label(0.011, -0.0003) == "neutral" and label(-0.2, 0.05) == "hurt"
    assert label(0.5, -0.02) == "hurt" and label(0.2, 0.02) == "helped"
    assert label(0.2, 0.005) == "neutral"


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
    shipped = resolve_model("reference-cyclegan") / TRUST_JSON
    before = shipped.read_bytes() if shipped.exists() else None
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
    assert report["n"] == 2 + 20
    assert report["kinds"]["8-bit"]["hurt"] == 1 and report["kinds"]["8-bit"]["flagged"] == 1.0
    assert "held_out_kinds" in report and result["calibration"]["recorded"]["gain"]
    rules = subprocess.run(
        [
            sys.executable,
            str(root / "benchmarks" / "ood_rules.py"),
            str(out),
            "--out",
            str(tmp_path / "rules.json"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=root,
    )
    assert rules.returncode == 0, rules.stderr[-2000:]
    chosen = json.loads((tmp_path / "rules.json").read_text(encoding="utf-8"))["chosen"]
    assert chosen in json.loads((tmp_path / "rules.json").read_text(encoding="utf-8"))["rules"]
    assert set(result["cost"]) == {"256x256"} and result["cost"]["256x256"]["overhead"] > 0
    after = shipped.read_bytes() if shipped.exists() else None
    assert after == before  # the benchmark never writes into the model folder
