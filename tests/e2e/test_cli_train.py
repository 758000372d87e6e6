"""``cyclesr train`` through the CLI: YAML config + overrides, model folder, clear errors."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

pytest.importorskip("torch")
pytest.importorskip("yaml")

from cyclesr_deploy.cli import app
from cyclesr_deploy.model import load_model
from cyclesr_deploy.synthetic import SynthConfig, generate_dataset

runner = CliRunner()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-train")
    generate_dataset(root, SynthConfig(size=64, seed=9), n_train=4, n_test=2)
    return root


def test_train_from_yaml_with_overrides(data, tmp_path):
    cfg = tmp_path / "train.yaml"
    cfg.write_text(
        "generator: {ngf: 4, n_blocks: 1}\n"
        "discriminator: {ndf: 4}\n"
        "data: {crop: 32, batch_size: 2}\n"
        "optim: {steps: 50}\n"
    )
    args = ["train", "--config", str(cfg), "--train-a", str(data / "trainA")]
    args += ["--train-b", str(data / "trainB"), "--val-a", str(data / "testA")]
    args += ["--val-b", str(data / "testB"), "--out", str(tmp_path / "m"), "--steps", "3"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "model folder" in res.output and "psnr" in res.output
    model = load_model(tmp_path / "m")
    assert model.provenance.steps == 3 and model.generator.ngf == 4
    assert (tmp_path / "m" / "train_config.yaml").read_text().count("steps: 3") == 1


def test_train_invalid_combination_is_reported_before_training(data, tmp_path):
    args = ["train", "--train-a", str(data / "trainA"), "--train-b", str(data / "trainB")]
    args += ["--out", str(tmp_path / "m"), "--crop", "30"]
    res = runner.invoke(app, args)
    assert res.exit_code == 2
    assert "crop" in res.output
    assert not (tmp_path / "m").exists()


def test_train_missing_folder_names_the_option(tmp_path):
    res = runner.invoke(
        app,
        [
            "train",
            "--train-a",
            str(tmp_path / "nope"),
            "--train-b",
            str(tmp_path),
            "--out",
            str(tmp_path / "m"),
        ],
    )
    assert res.exit_code == 2
    assert "--train-a" in res.output
