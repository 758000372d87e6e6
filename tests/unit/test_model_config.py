"""model.json: torch-free config of a model folder."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cyclesr_deploy.errors import InputError
from cyclesr_deploy.model import (
    MODEL_JSON,
    DiscriminatorConfig,
    GeneratorConfig,
    ModelConfig,
    NormalizationConfig,
    load_model,
    save_model_config,
)


@pytest.mark.parametrize(("n_blocks", "rf"), [(6, 121), (9, 169), (0, 25)])
def test_receptive_field_matches_the_derived_canonical_values(n_blocks, rf):
    assert GeneratorConfig(n_blocks=n_blocks).receptive_field == rf


def test_patchgan_receptive_field_is_70():
    assert DiscriminatorConfig(n_layers=3).receptive_field == 70
    assert DiscriminatorConfig(n_layers=1).receptive_field == 16


def test_check_shape():
    g = GeneratorConfig()
    g.check_shape(68, 64)
    for h, w in ((66, 64), (64, 2), (0, 64)):
        with pytest.raises(InputError, match="multiples of 4"):
            g.check_shape(h, w, name="tile")


def test_normalization_round_trip_and_range():
    n = NormalizationConfig(low_a=100, high_a=1100, low_b=50, high_b=2050)
    x = np.array([100.0, 600.0, 1100.0], np.float32)
    np.testing.assert_allclose(n.to_model(x, "a"), [-1, 0, 1], atol=1e-6)
    np.testing.assert_allclose(n.from_model(n.to_model(x, "b"), "b"), x, rtol=1e-6)
    assert n.to_model(x, "a").dtype == np.float32
    with pytest.raises(ValueError, match="high must exceed low"):
        NormalizationConfig(low_a=5, high_a=5)


def test_model_json_round_trip_with_derived_fields(tmp_path):
    cfg = ModelConfig(name="m", generator=GeneratorConfig(ngf=8, n_blocks=2))
    path = save_model_config(tmp_path, cfg)
    data = json.loads(path.read_text())
    assert data["derived"] == {"scale": 1, "size_multiple": 4, "receptive_field": 57}
    assert load_model(tmp_path) == cfg


def test_load_model_errors(tmp_path):
    with pytest.raises(InputError, match="not a folder"):
        load_model(tmp_path / "nope")
    with pytest.raises(InputError, match=r"no model\.json"):
        load_model(tmp_path)
    (tmp_path / MODEL_JSON).write_text("{broken")
    with pytest.raises(InputError, match="not valid JSON"):
        load_model(tmp_path)
    (tmp_path / MODEL_JSON).write_text(json.dumps({"generator": {"ngf": -1}}))
    with pytest.raises(InputError, match="not a valid model config"):
        load_model(tmp_path)
