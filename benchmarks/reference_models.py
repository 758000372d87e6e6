"""Reproduce the built-in reference models (``cyclesr_deploy/models/``) and their quality report.

Every stage calls the project's own CLI (``python -m cyclesr_deploy ...``, i.e. ``cyclesr ...``),
and prints each command before running it::

    python benchmarks/reference_models.py data    --root WORK     # synthetic data sets
    python benchmarks/reference_models.py train   --root WORK --which cyclegan --steps N
    python benchmarks/reference_models.py train   --root WORK --which supervised --steps N
    python benchmarks/reference_models.py package --root WORK     # export + copy into the package
    python benchmarks/reference_models.py trust   --root WORK     # trust.json (fresh recipe frames)
    python benchmarks/reference_models.py quality --root WORK     # cyclesr bench quality, targets
    python benchmarks/reference_models.py all     --root WORK --steps N --device cpu

Data (all ``cyclesr synth``, 16-bit): the CycleGAN trains on 384 LR + 384 HR unpaired images of
the *varied* recipe (``reference/varied.json``: every image draws its own structure mix, LR NA,
pinhole, photons and background; HR optics fixed, HR dose 200-400 photons as averaged training
acquisitions), validated on 8 further varied pairs; the supervised model on 256 LR/HR pairs of
the default recipe (validated on 8 default pairs). Quality reports: 16 held-out 512^2 pairs of
the default recipe (seed 104, the earlier table's) and 16 of the varied recipe (seed 204).
The CycleGAN shipped now was trained on 2 CPU cores (see its ``reference.json``); the
supervised model on a GPU.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from cyclesr_deploy.model import MODEL_JSON, WEIGHTS

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CONFIGS = HERE / "reference"
PACKAGE_MODELS = REPO / "cyclesr_deploy" / "models"
RESULTS = HERE / "results"
NAMES = {"cyclegan": "reference-cyclegan", "supervised": "reference-supervised"}
# what ships: the deployed generator and everything needed to run and audit it
SHIPPED = (MODEL_JSON, WEIGHTS["ab"], "train_config.yaml", "train_log.csv")

VARIED = ["--config", str((CONFIGS / "varied.json").relative_to(REPO).as_posix())]
DATA = {  # name: cyclesr synth options (run from the repository root)
    "unpaired": ["--n-train", "384", "--n-test", "0", "--size", "256", "--seed", "201", *VARIED],
    "val": ["--n-train", "0", "--n-test", "8", "--size", "256", "--seed", "203", *VARIED],
    "paired": ["--n-train", "0", "--n-test", "256", "--size", "256", "--seed", "102"],
    "val_default": ["--n-train", "0", "--n-test", "8", "--size", "256", "--seed", "103"],
    "test": ["--n-train", "0", "--n-test", "16", "--size", "512", "--seed", "104"],
    "test_varied": ["--n-train", "0", "--n-test", "16", "--size", "512", "--seed", "204", *VARIED],
}
#: validation set of each model (the supervised model keeps its default-recipe validation)
VAL = {"cyclegan": "val", "supervised": "val_default"}

# quality targets of the reference CycleGAN (issue 17: a reference CycleGAN that generalizes)
TARGETS = {
    "psnr_gain_db": 3.0,
    "ssim_gain": 0.15,
    "psnr_gap_to_supervised_db": 2.0,
    "decorr_relative_to_hr": 0.10,
}


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "cyclesr_deploy", *args]


def run(cmd: list[str]) -> None:
    shown = " ".join(["cyclesr", *cmd[3:]] if cmd[1:3] == ["-m", "cyclesr_deploy"] else cmd)
    print(f"$ {shown}", file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True)


def data(root: Path) -> None:
    procs = []
    for name, opts in DATA.items():
        out = root / "data" / name
        if (out / "dataset.json").is_file():
            continue
        cmd = cli("synth", str(out), *opts)
        print(f"$ cyclesr synth {out} {' '.join(opts)}", file=sys.stderr, flush=True)
        procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, cwd=REPO))
    if any(p.wait() for p in procs):
        raise SystemExit("synth failed")


def train_args(
    root: Path, which: str, steps: int, device: str, extra: tuple[str, ...] = (), out: str = ""
) -> list[str]:
    d = root / "data"
    if which == "cyclegan":
        train_a, train_b = d / "unpaired" / "trainA", d / "unpaired" / "trainB"
    else:
        train_a, train_b = d / "paired" / "testA", d / "paired" / "testB"
    return [
        "train",
        "--config",
        str(CONFIGS / f"{which}.yaml"),
        "--train-a",
        str(train_a),
        "--train-b",
        str(train_b),
        "--val-a",
        str(d / VAL[which] / "testA"),
        "--val-b",
        str(d / VAL[which] / "testB"),
        "--out",
        str(root / (out or which)),
        "--steps",
        str(steps),
        "--device",
        device,
        *extra,
    ]


def train(
    root: Path, which: str, steps: int, device: str, extra: tuple[str, ...] = (), out: str = ""
) -> None:
    t0 = time.perf_counter()
    run(cli(*train_args(root, which, steps, device, extra, out)))
    shown = train_args(Path("WORK"), which, steps, device, extra, out)
    shown[2] = str(Path(shown[2]).relative_to(REPO).as_posix())
    import torch

    record = {
        "command": "cyclesr " + " ".join(shown),
        "steps": steps,
        "device": device,
        "gpu": torch.cuda.get_device_name() if device == "cuda" else None,
        "torch": torch.__version__,
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    (root / (out or which) / "reference_run.json").write_text(
        json.dumps(record, indent=2) + "\n", encoding="utf-8"
    )


def package(root: Path, only: tuple[str, ...] = tuple(NAMES)) -> None:
    for which, name in NAMES.items():
        if which not in only:
            continue
        src, dst = root / which, PACKAGE_MODELS / name
        if dst.exists():
            shutil.rmtree(dst)
        dst.mkdir(parents=True)
        for f in SHIPPED:
            shutil.copy2(src / f, dst / f)
        # the CycleGAN gets the seam-free tiling graphs (the demo's); the supervised model stays
        # small (20 MB budget for both): `cyclesr export onnx` adds them to a copy when wanted
        frozen = "--frozen" if which == "cyclegan" else "--no-frozen"
        run(cli("export", "onnx", str(dst), "--fp16", frozen))
        info = json.loads((src / "reference_run.json").read_text(encoding="utf-8"))
        info["data"] = {
            k: "cyclesr synth WORK/data/" + k + " " + " ".join(v) for k, v in DATA.items()
        }
        (dst / "reference.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        size = sum(p.stat().st_size for p in dst.iterdir())
        print(f"{dst}: {size / 1e6:.1f} MB", file=sys.stderr)


#: the training recipe of each shipped model (a SynthConfig mapping), for its trust calibration
RECIPES = {"cyclegan": CONFIGS / "varied.json", "supervised": None}
# seeds disjoint from the benchmarks (ood_cases.SEED_BASE 72 000+, trust.calibrate 71 000+)
TRUST_FRAMES = {"n": 64, "sizes": (256, 512, 1024), "seed": 60_000}


def trust(only: tuple[str, ...] = tuple(NAMES)) -> None:
    """Calibrate the shipped models' trust scores (``trust.json``) on fresh frames of their
    training recipes (seeds never used for training, validation or tests)."""
    from cyclesr_deploy.trust.calibrate import calibrate, synthetic_frames

    for which, name in NAMES.items():
        if which not in only:
            continue
        path = RECIPES[which]
        recipe = json.loads(path.read_text(encoding="utf-8")) if path else {}
        shown = path.relative_to(REPO).as_posix() if path else "cyclesr synth defaults"
        t = TRUST_FRAMES
        data = (
            f"{t['n']} synthetic LR frames of {shown}, sides {t['sizes']}, seeds from "
            f"{t['seed']} (benchmarks/reference_models.py trust)"
        )
        frames = synthetic_frames(recipe, t["n"], t["sizes"], t["seed"])
        cal = calibrate(PACKAGE_MODELS / name, frames, data=data)
        print(
            f"{name}: trust threshold {cal.threshold:.3g} on {cal.n_frames} frames", file=sys.stderr
        )


def bench_quality(lr: Path, hr: Path, out: Path, *extra: str) -> dict:
    """``cyclesr bench quality`` of both reference models on ``lr`` vs ``hr``; the targets."""
    models = [f"{k}={PACKAGE_MODELS / name}" for k, name in NAMES.items()]
    args = ["bench", "quality", "--lr", str(lr), "--hr", str(hr), "--out", str(out)]
    for spec in models:
        args += ["--model", spec]
    run(cli(*args, "--backend", "onnxruntime", *extra))
    return check_targets(out / "quality.json")


def quality(root: Path) -> dict:
    out = {}
    sets = (("test", "reference_quality"), ("test_varied", "reference_quality_varied"))
    for name, results in sets:
        test = root / "data" / name
        out[name] = bench_quality(test / "testA", test / "testB", RESULTS / results)
    return out


def clean_reference(root: Path) -> dict:
    """The quality table again against the *noise-free* HR (the expected HR counts of each test
    sample, recomputed from its seed without Poisson/read noise or rounding): a model that
    reproduces HR-like noise (CycleGAN) is charged for it against the noisy HR, one that
    averages it away (L1-supervised) is not."""
    import numpy as np

    from cyclesr_deploy.images import write_tiff
    from cyclesr_deploy.synthetic import SynthConfig
    from cyclesr_deploy.synthetic.acquire import expected_photons
    from cyclesr_deploy.synthetic.simulate import _signal, render_ground_truth

    test = root / "data" / "test"
    manifest = json.loads((test / "dataset.json").read_text(encoding="utf-8"))
    cfg = SynthConfig.model_validate(manifest["config"])
    clean = test / "testB_clean"
    clean.mkdir(exist_ok=True)
    for path in sorted((test / "testB").glob("*.tif")):
        i = int(path.stem)
        ss = np.random.SeedSequence(cfg.seed, spawn_key=(2, i))
        signal, _ = _signal(cfg, render_ground_truth(cfg, ss), "hr")
        expected = expected_photons(signal, cfg.hr) * cfg.gain("hr")
        write_tiff(
            clean / path.name, expected.astype(np.float32), pixel_size_um=cfg.hr_pixel_nm / 1e3
        )
    out = RESULTS / "reference_quality_clean"
    return bench_quality(test / "testA", clean, out, "--no-figure")


def _mean(report: dict, method: str, metric: str) -> float:
    for row in report["rows"]:
        if row["method"] == method:
            return float(row["mean"][metric])
    raise KeyError(method)


def check_targets(quality_json: Path) -> dict:
    report = json.loads(quality_json.read_text(encoding="utf-8"))
    psnr = {m: _mean(report, m, "psnr") for m in ("input", "cyclegan", "supervised")}
    ssim = {m: _mean(report, m, "ssim") for m in ("input", "cyclegan", "supervised")}
    res = {
        m: _mean(report, m, "decorrelation_resolution_px")
        for m in ("input", "cyclegan", "supervised", "HR")
    }
    checks = {
        "psnr_gain_db": psnr["cyclegan"] - psnr["input"],
        "ssim_gain": ssim["cyclegan"] - ssim["input"],
        "psnr_gap_to_supervised_db": psnr["supervised"] - psnr["cyclegan"],
        "decorr_distance_to_hr_px": {
            "input": abs(res["input"] - res["HR"]),
            "cyclegan": abs(res["cyclegan"] - res["HR"]),
        },
        "decorr_relative_to_hr": abs(res["cyclegan"] - res["HR"]) / res["HR"],
    }
    passed = {
        "psnr_gain_db": checks["psnr_gain_db"] >= TARGETS["psnr_gain_db"],
        "ssim_gain": checks["ssim_gain"] >= TARGETS["ssim_gain"],
        "psnr_gap_to_supervised_db": checks["psnr_gap_to_supervised_db"]
        <= TARGETS["psnr_gap_to_supervised_db"],
        "decorrelation_closer_to_hr": checks["decorr_distance_to_hr_px"]["cyclegan"]
        < checks["decorr_distance_to_hr_px"]["input"],
        "decorr_relative_to_hr": checks["decorr_relative_to_hr"]
        <= TARGETS["decorr_relative_to_hr"],
    }
    n = min(row["n"] for row in report["rows"])
    summary = {"targets": TARGETS, "measured": checks, "passed": passed, "n_images": n}
    (quality_json.parent / "targets.json").write_text(
        json.dumps(summary, indent=2) + "\n", encoding="utf-8"
    )
    print(json.dumps(summary, indent=2))
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    stages = ["data", "train", "package", "trust", "quality", "clean", "all"]
    ap.add_argument("stage", choices=stages)
    ap.add_argument("--root", type=Path, required=True, help="work folder (data, runs)")
    ap.add_argument("--which", choices=list(NAMES), default="cyclegan")
    ap.add_argument("--steps", type=int, default=6000)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default="", help="run folder name under --root (default: --which)")
    ap.add_argument("--only", action="store_true", help="package: only the --which model")
    a, extra = ap.parse_known_args()  # the rest goes to `cyclesr train` (e.g. --crop 256)
    if a.stage in ("data", "all"):
        data(a.root)
    if a.stage == "train":
        train(a.root, a.which, a.steps, a.device, tuple(extra), a.out)
    if a.stage == "all":
        for which in NAMES:
            train(a.root, which, a.steps, a.device)
    if a.stage == "package":
        package(a.root, (a.which,) if a.only else tuple(NAMES))
    if a.stage == "all":
        package(a.root)
    if a.stage in ("trust", "all"):
        trust((a.which,) if a.only else tuple(NAMES))
    if a.stage in ("quality", "all"):
        quality(a.root)
    if a.stage in ("clean", "all"):
        clean_reference(a.root)


if __name__ == "__main__":
    main()
