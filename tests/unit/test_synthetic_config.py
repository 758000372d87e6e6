"""SynthConfig: defaults, derived PSF figures, validation at the edge."""

from __future__ import annotations

import pydantic
import pytest

from cyclesr_deploy.errors import InputError
from cyclesr_deploy.synthetic import SynthConfig, as_config, nyquist_pixel_nm


def test_defaults_describe_a_clear_lr_hr_difference():
    cfg = SynthConfig()
    assert cfg.size == 256 and cfg.binning == 1 and cfg.lr_grid == "hr" and cfg.bit_depth == 16
    # HR pixel at (slightly below) confocal Nyquist for the HR objective
    assert 35 <= cfg.hr_pixel_nm <= nyquist_pixel_nm(cfg.wavelength_ex_nm, cfg.hr.na)
    assert cfg.psf_sigma_nm("hr") == pytest.approx(60.18, abs=0.05)
    assert cfg.psf_sigma_nm("lr") == pytest.approx(116.63, abs=0.05)
    assert cfg.psf_sigma_px("hr") == pytest.approx(1.505, abs=1e-3)
    assert 1.5 <= cfg.psf_ratio <= 2.5
    assert cfg.lr.background > cfg.hr.background
    assert cfg.lr.photons < cfg.hr.photons


def test_native_grid_sigma_and_pixel():
    cfg = SynthConfig(binning=2, lr_grid="native")
    assert cfg.lr_pixel_nm == 2 * cfg.hr_pixel_nm
    assert cfg.psf_sigma_px("lr", "native") == pytest.approx(cfg.psf_sigma_px("lr") / 2)
    assert cfg.psf_sigma_px("hr", "native") == cfg.psf_sigma_px("hr")
    summary = cfg.psf_summary()
    assert summary["lr"]["sigma_px_native"] == pytest.approx(cfg.psf_sigma_px("lr") / 2, abs=1e-4)
    assert summary["ratio_lr_hr"] == pytest.approx(cfg.psf_ratio, abs=1e-4)


def test_gain_puts_expected_peak_at_peak_fraction():
    cfg = SynthConfig(bit_depth=8, binning=2)
    m = cfg.lr
    assert cfg.gain("lr") * 4 * m.photons * (1 + m.background) == pytest.approx(0.75 * 255)
    assert cfg.gain("hr") * cfg.hr.photons * (1 + cfg.hr.background) == pytest.approx(0.75 * 255)


def test_partial_modality_override_keeps_other_defaults():
    cfg = SynthConfig(hr={"photons": 1e4})
    assert cfg.hr.photons == 1e4
    assert cfg.hr.na == SynthConfig().hr.na
    assert cfg.lr == SynthConfig().lr


def test_json_round_trip():
    cfg = SynthConfig(seed=7, binning=4, lr_grid="native", structures={"puncta_density": 1.0})
    assert SynthConfig.model_validate_json(cfg.model_dump_json()) == cfg


@pytest.mark.parametrize(
    "bad",
    [
        {"size": 8},
        {"size": 100, "binning": 3},
        {"size": 32, "binning": 8},
        {"bit_depth": 12},
        {"lr_grid": "coarse"},
        {"hr": {"na": 0}},
        {"lr": {"photons": -1}},
        {"lr": {"pinhole_au": -0.5}},
        {"hr_pixel_nm": 0},
        {"seed": -1},
        {"structures": {"filament_length_um": (5.0, 1.0)}},
        {"structures": {"filament_density": -0.1}},
        {"unknown_field": 1},
    ],
)
def test_invalid_configs_are_rejected(bad):
    with pytest.raises(pydantic.ValidationError):
        SynthConfig(**bad)
    with pytest.raises(InputError):
        as_config(bad)


def test_as_config_message_names_the_field():
    with pytest.raises(InputError, match=r"hr\.na"):
        as_config({"hr": {"na": 5}})
    with pytest.raises(InputError):
        as_config("not a config")


def test_config_is_immutable():
    with pytest.raises(pydantic.ValidationError):
        SynthConfig().size = 512  # type: ignore[misc]


def test_modality_name_checked():
    with pytest.raises(InputError):
        SynthConfig().psf_sigma_nm("mr")  # type: ignore[arg-type]
