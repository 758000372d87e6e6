"""TrainConfig: validated once, with readable errors, before any training step."""

from __future__ import annotations

import pytest

pytest.importorskip("yaml")

from cyclesr_deploy.errors import InputError
from cyclesr_deploy.training.config import OptimConfig, load_train_config

BASE = {"out": "m", "data.train_a": "a", "data.train_b": "b"}


def test_defaults_and_partial_sections(tmp_path):
    (tmp_path / "t.yaml").write_text("generator:\n  ngf: 16\ndata:\n  crop: 64\n")
    cfg = load_train_config(tmp_path / "t.yaml", {**BASE, "data.batch_size": 2})
    assert cfg.generator.ngf == 16 and cfg.generator.n_blocks == 6  # the run's default kept
    assert cfg.data.crop == 64 and cfg.data.batch_size == 2
    assert cfg.preset == "canonical"
    assert load_train_config(None, {**BASE, "mode": "supervised"}).preset == "supervised"


def test_cli_overrides_beat_the_file_and_none_is_ignored(tmp_path):
    (tmp_path / "t.yaml").write_text("seed: 3\noptim:\n  steps: 10\n")
    cfg = load_train_config(tmp_path / "t.yaml", {**BASE, "seed": 7, "optim.steps": None})
    assert cfg.seed == 7 and cfg.optim.steps == 10


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"data.crop": 66}, "multiples of 4"),
        ({"generator.scale": 2}, "identity: 0"),
        ({"mode": "supervised", "loss_preset": "paper"}, "does not fit mode"),
        ({"data.val_a": "x"}, "both val_a and val_b"),
        ({"generator.in_channels": 3}, "single-channel"),
        ({"optim.lr": -1}, "optim.lr"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_invalid_combinations_are_named(overrides, message):
    with pytest.raises(InputError, match=message):
        load_train_config(None, {**BASE, **overrides})


def test_unreadable_or_malformed_file(tmp_path):
    with pytest.raises(InputError, match="cannot read"):
        load_train_config(tmp_path / "missing.yaml", BASE)
    (tmp_path / "bad.yaml").write_text("- a list\n")
    with pytest.raises(InputError, match="mapping"):
        load_train_config(tmp_path / "bad.yaml", BASE)


def test_linear_decay_schedule_matches_the_canonical_policy():
    o = OptimConfig(steps=200, decay_start=100)
    assert o.lr_factor(0) == 1.0 and o.lr_factor(100) == 1.0
    assert o.lr_factor(150) == pytest.approx(1 - 50 / 101)
    assert o.lr_factor(200) == pytest.approx(1 / 101)
    assert OptimConfig(steps=10).decay_from == 5
