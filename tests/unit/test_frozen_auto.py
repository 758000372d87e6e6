"""``--stats auto``: the estimate a model folder's ``frozen_stats.json`` chose (torch-free)."""

from __future__ import annotations

import hashlib
import json
import logging
from types import SimpleNamespace

import pytest

from cyclesr_deploy.engines.frozen import (
    CHECK_FILE,
    _check_estimate,
    _resolve,
    estimate_for_model,
)
from cyclesr_deploy.errors import InputError


def _folder(tmp_path, choice="whole", weights=b"weights", sha=None, psnr=40.0):
    (tmp_path / "generator_ab.pt").write_bytes(weights)
    record = {
        "schema_version": "1",
        "choice": choice,
        "min_psnr_db": 47.0,
        "crops": {"psnr_db": psnr},
        "weights": {
            "path": "generator_ab.pt",
            "sha256": sha or hashlib.sha256(weights).hexdigest(),
        },
    }
    (tmp_path / CHECK_FILE).write_text(json.dumps(record), encoding="utf-8")
    return tmp_path


@pytest.mark.parametrize("choice", ["whole", "crops"])
def test_auto_follows_the_recorded_choice(tmp_path, choice):
    got = estimate_for_model(_folder(tmp_path, choice), "auto")
    assert (got.estimate, got.warn) == (choice, False)
    assert "40.0 dB" in got.reason and CHECK_FILE in got.reason


@pytest.mark.parametrize("stats", ["whole", "crops"])
def test_explicit_estimates_ignore_the_record(tmp_path, stats):
    other = "crops" if stats == "whole" else "whole"
    assert estimate_for_model(_folder(tmp_path, other), stats).estimate == stats


def test_no_record_means_crops_and_says_how_to_check(tmp_path):
    got = estimate_for_model(tmp_path)
    assert (got.estimate, got.warn) == ("crops", False)
    assert "unchecked" in got.reason and "cyclesr export onnx" in got.reason


def test_a_record_for_other_weights_is_ignored_with_a_warning(tmp_path):
    folder = _folder(tmp_path, "whole", sha="0" * 64)
    got = estimate_for_model(folder)
    assert (got.estimate, got.warn) == ("crops", True)
    assert "other weights" in got.reason


@pytest.mark.parametrize(
    "text", ["{not json", '{"choice": "thumbnail", "crops": {"psnr_db": 1}}', '{"choice": "whole"}']
)
def test_an_unreadable_record_falls_back_to_crops_with_a_warning(tmp_path, text):
    (tmp_path / CHECK_FILE).write_text(text, encoding="utf-8")
    got = estimate_for_model(tmp_path)
    assert (got.estimate, got.warn) == ("crops", True)
    assert "unreadable" in got.reason


def test_unknown_estimates_are_rejected(tmp_path):
    with pytest.raises(InputError, match="'auto', 'whole' or 'crops'"):
        _check_estimate("thumbnail")
    with pytest.raises(InputError):
        estimate_for_model(tmp_path, "tile")


def test_engines_resolve_auto_once_and_log_it(tmp_path, caplog):
    folder = _folder(tmp_path, "whole")
    engine = SimpleNamespace(model_dir=folder, stats="auto", _auto=None)
    with caplog.at_level(logging.INFO, logger="cyclesr_deploy.engines.frozen"):
        assert _resolve(engine, None) == "whole"
        (folder / CHECK_FILE).unlink()  # resolved once per engine: not read again
        assert _resolve(engine, None) == "whole"
        assert _resolve(engine, "crops") == "crops"  # an explicit estimate wins
    assert caplog.text.count("-> whole") == 1
    stale_dir = _folder(tmp_path, "whole", sha="1" * 64)
    stale = SimpleNamespace(model_dir=stale_dir, stats="auto", _auto=None)
    with caplog.at_level(logging.WARNING, logger="cyclesr_deploy.engines.frozen"):
        assert _resolve(stale, None) == "crops"
    assert any(r.levelno == logging.WARNING for r in caplog.records)
