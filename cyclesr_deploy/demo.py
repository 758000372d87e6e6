"""The built-in demo: what ``make demo`` / ``cyclesr demo`` runs.

Until a reference model ships, the demo exercises the data and evaluation path: it simulates a
small paired acquisition (LR and HR confocal images of the same synthetic field), scores the LR
input against the HR reference with every metric, and scores the HR acquisition on its own
(background noise, CUF, decorrelation resolution). These are the numbers a model must improve.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cyclesr_deploy.metrics.files import FilesEvaluation, evaluate_files
from cyclesr_deploy.synthetic import DatasetSummary, SynthConfig, generate_dataset


@dataclass(frozen=True)
class DemoResult:
    out_dir: Path
    dataset: DatasetSummary
    lr_vs_hr: FilesEvaluation
    hr_vs_hr: FilesEvaluation
    report_json: Path


def run_demo(
    out_dir: str | Path = "cyclesr-demo",
    *,
    n_images: int = 4,
    size: int = 512,
    seed: int = 0,
) -> DemoResult:
    """Simulate ``n_images`` paired test images of ``size``^2 under ``out_dir`` and evaluate them.

    Writes ``out_dir/data`` (see :func:`~cyclesr_deploy.synthetic.generate_dataset`) and
    ``out_dir/metrics.json``. Re-running replaces the demo's own files only.
    """
    import json

    from cyclesr_deploy.io import atomic_path

    out = Path(out_dir)
    cfg = SynthConfig(size=size, seed=seed)
    dataset = generate_dataset(out / "data", cfg, n_train=0, n_test=n_images, overwrite=True)
    lr_vs_hr = evaluate_files(out / "data" / "testA", out / "data" / "testB")
    hr_vs_hr = evaluate_files(out / "data" / "testB", out / "data" / "testB")
    report = out / "metrics.json"
    payload = {
        "psf": dataset.psf,
        "lr_input_vs_hr": json.loads(lr_vs_hr.model_dump_json()),
        "hr_reference": json.loads(hr_vs_hr.model_dump_json()),
    }
    with atomic_path(report) as part:
        part.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return DemoResult(out, dataset, lr_vs_hr, hr_vs_hr, report)
