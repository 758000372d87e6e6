"""``--stats auto``: the estimate a model folder's ``frozen_stats.json`` chose (torch-free)."""

from __future__ import annotations

import hashlib
import json
import logging
from types import SimpleNamespace

import pytest

from cyclesr_deploy.engines.frozen import _resolve
from cyclesr_deploy.engines.frozen_stats import (
    CHECK_MIN_PSNR_DB,
    _check_estimate,
    estimate_for_model,
)
from cyclesr_deploy.errors import InputError
from cyclesr_deploy.model import FROZEN_CHECK, FROZEN_ONNX, WEIGHTS


def _folder(tmp_path, psnr=40.0, weights=b"weights", sha=None, graph=None):
    """A folder with weights (and optionally a stats graph) and a check record of ``psnr``."""
    (tmp_path / WEIGHTS["ab"]).write_bytes(weights)
    files = {WEIGHTS["ab"]: sha or hashlib.sha256(weights).hexdigest()}
    if graph is not None:
        (tmp_path / FROZEN_ONNX["stats"]).write_bytes(graph)
        files[FROZEN_ONNX["stats"]] = hashlib.sha256(graph).hexdigest()
    record = {
        "schema_version": "1",
        "choice": "crops",  # informative only: the runtime re-applies its threshold
        "psnr_db": psnr,
        "min_psnr_db": 47.0,
        "files": files,
    }
    (tmp_path / FROZEN_CHECK).write_text(json.dumps(record), encoding="utf-8")
    return tmp_path


@pytest.mark.parametrize(
    ("psnr", "choice"),
    [(40.0, "whole"), (46.9, "whole"), (CHECK_MIN_PSNR_DB, "crops"), (50.3, "crops")],
)
def test_auto_applies_the_threshold_to_the_checked_psnr(tmp_path, psnr, choice):
    got = estimate_for_model(_folder(tmp_path, psnr), "auto")
    assert (got.estimate, got.warn) == (choice, False)
    assert f"{psnr:.1f} dB" in got.reason and FROZEN_CHECK in got.reason


@pytest.mark.parametrize("stats", ["whole", "crops"])
def test_explicit_estimates_ignore_the_record(tmp_path, stats):
    psnr = 50.0 if stats == "whole" else 40.0  # the record would say the other one
    assert estimate_for_model(_folder(tmp_path, psnr), stats).estimate == stats


def test_no_record_means_crops_and_says_how_to_check(tmp_path):
    got = estimate_for_model(tmp_path)
    assert (got.estimate, got.warn) == ("crops", False)
    assert "unchecked" in got.reason and "cyclesr export check" in got.reason


def test_a_record_for_other_weights_is_ignored_with_a_warning(tmp_path):
    folder = _folder(tmp_path, 40.0, sha="0" * 64)
    got = estimate_for_model(folder)
    assert (got.estimate, got.warn) == ("crops", True)
    assert "other files (generator_ab.pt)" in got.reason


def test_every_file_present_is_compared(tmp_path):
    folder = _folder(tmp_path, 40.0, graph=b"graph")
    assert estimate_for_model(folder).estimate == "whole"
    (folder / FROZEN_ONNX["stats"]).write_bytes(b"re-exported graph")
    got = estimate_for_model(folder)
    assert (got.estimate, got.warn) == ("crops", True)
    assert FROZEN_ONNX["stats"] in got.reason
    (folder / FROZEN_ONNX["stats"]).unlink()  # an ONNX-less folder: the weights still match
    assert estimate_for_model(folder).estimate == "whole"
    (folder / WEIGHTS["ab"]).unlink()  # nothing left to compare: not trusted
    got = estimate_for_model(folder)
    assert (got.estimate, got.warn) == ("crops", True)
    assert "none of its files" in got.reason


@pytest.mark.parametrize(
    "text",
    [
        "{not json",
        '{"schema_version": "1", "files": {}}',
        '{"schema_version": "1", "psnr_db": "many", "files": {}}',
        '{"schema_version": "2", "psnr_db": 40, "files": {"generator_ab.pt": "x"}}',
        "[1, 2]",
    ],
)
def test_an_unreadable_record_falls_back_to_crops_with_a_warning(tmp_path, text):
    (tmp_path / FROZEN_CHECK).write_text(text, encoding="utf-8")
    got = estimate_for_model(tmp_path)
    assert (got.estimate, got.warn) == ("crops", True)
    assert "unreadable" in got.reason


def test_unknown_estimates_are_rejected(tmp_path):
    with pytest.raises(InputError, match="'auto', 'whole' or 'crops'"):
        _check_estimate("thumbnail")
    with pytest.raises(InputError):
        estimate_for_model(tmp_path, "tile")


def test_engines_resolve_auto_once_and_log_it(tmp_path, caplog):
    folder = _folder(tmp_path, 40.0)
    engine = SimpleNamespace(model_dir=folder, stats="auto", _auto=None)
    with caplog.at_level(logging.INFO, logger="cyclesr_deploy.engines.frozen"):
        assert _resolve(engine, None) == "whole"
        (folder / FROZEN_CHECK).unlink()  # resolved once per engine: not read again
        assert _resolve(engine, None) == "whole"
        assert _resolve(engine, "crops") == "crops"  # an explicit estimate wins
    assert caplog.text.count("-> whole") == 1
    stale_dir = _folder(tmp_path, 40.0, sha="1" * 64)
    stale = SimpleNamespace(model_dir=stale_dir, stats="auto", _auto=None)
    with caplog.at_level(logging.WARNING, logger="cyclesr_deploy.engines.frozen"):
        assert _resolve(stale, None) == "crops"
    assert any(r.levelno == logging.WARNING for r in caplog.records)


def test_the_built_in_reference_model_is_checked_for_its_own_files():
    from cyclesr_deploy.builtin import builtin_model

    got = estimate_for_model(builtin_model("reference-cyclegan"))
    assert (got.estimate, got.warn) == ("crops", False), got.reason
