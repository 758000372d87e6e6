"""SynthConfig.vary: each sample draws its own structure mix and LR acquisition, reproducibly."""

from __future__ import annotations

import numpy as np
import pytest

from cyclesr_deploy.errors import InputError
from cyclesr_deploy.synthetic import SynthConfig, as_config, generate_dataset
from cyclesr_deploy.synthetic.simulate import child, simulate_sample
from cyclesr_deploy.synthetic.variation import KINDS, draw_config

VARIED = SynthConfig(size=64, seed=7, vary={"hr_photons": (200.0, 400.0)})


def _draws(cfg: SynthConfig, n: int) -> list[SynthConfig]:
    return [draw_config(cfg, np.random.default_rng(i)) for i in range(n)]


def test_draws_stay_in_the_ranges_and_differ_between_samples():
    v = VARIED.vary
    draws = _draws(VARIED, 200)
    for d in draws:
        assert d.vary is None
        assert v.lr_na[0] <= d.lr.na <= v.lr_na[1]
        assert v.lr_pinhole_au[0] <= d.lr.pinhole_au <= v.lr_pinhole_au[1]
        assert v.lr_photons[0] <= d.lr.photons <= v.lr_photons[1]
        assert v.lr_background[0] <= d.lr.background <= v.lr_background[1]
        assert 200 <= d.hr.photons <= 400
        assert d.hr.na == VARIED.hr.na and d.hr.pinhole_au == VARIED.hr.pinhole_au  # HR optics
        on = [k for k, fields in KINDS.items() if getattr(d.structures, fields[0]) > 0]
        assert on, "at least one structure kind is kept"
    assert len({d.lr.na for d in draws}) == len(draws)
    sigmas = [d.psf_sigma_px("lr") for d in draws]
    assert max(sigmas) > 1.2 * min(sigmas)  # LR PSF widths vary, HR's do not
    assert len({d.psf_sigma_px("hr") for d in draws}) == 1
    # every kind is switched off in some images and present in others
    for fields in KINDS.values():
        present = [getattr(d.structures, fields[0]) > 0 for d in draws]
        assert 0 < sum(present) < len(draws)
    # photons log-uniform: as many draws below the geometric mean as above (loosely)
    lo, hi = v.lr_photons
    below = np.mean([d.lr.photons < np.sqrt(lo * hi) for d in draws])
    assert 0.35 < below < 0.65


def test_filament_brightness_above_one_keeps_a_valid_range():
    cfg = SynthConfig(size=64, vary={"filament_brightness": (1.2, 2.0)})
    d = draw_config(cfg, np.random.default_rng(0))
    lo, hi = d.structures.filament_brightness
    assert 1.2 <= lo <= hi


def test_no_vary_is_the_config_itself():
    cfg = SynthConfig(size=64)
    assert draw_config(cfg, np.random.default_rng(0)) is cfg


def test_samples_are_reproducible_and_order_independent(tmp_path):
    root = np.random.SeedSequence(VARIED.seed)
    a = simulate_sample(VARIED, child(root, 2, 5))
    simulate_sample(VARIED, child(root, 2, 4))  # another sample in between changes nothing
    b = simulate_sample(VARIED, child(root, 2, 5))
    for k in ("gt", "lr", "hr"):
        np.testing.assert_array_equal(a[k], b[k])
    one = generate_dataset(tmp_path / "one", VARIED, 3, 1)
    two = generate_dataset(tmp_path / "two", VARIED, 3, 1)
    for f1, f2 in zip(one.files, two.files, strict=True):
        assert f1.read_bytes() == f2.read_bytes()
    assert one.manifest["config"]["vary"]["hr_photons"] == [200.0, 400.0]
    assert "nominal" in one.manifest["psf_note"]


def test_each_sample_is_simulated_with_its_own_draw():
    """simulate_sample with ``vary`` == simulate_sample with the drawn config (child key 3)."""
    ss = child(np.random.SeedSequence(VARIED.seed), 0, 3)
    drawn = draw_config(VARIED, np.random.default_rng(child(ss, 3)))
    a = simulate_sample(VARIED, ss)
    b = simulate_sample(drawn, ss)
    for k in ("gt", "lr", "hr"):
        np.testing.assert_array_equal(a[k], b[k])
    other = draw_config(VARIED, np.random.default_rng(child(child(ss, 0), 3)))
    assert other.lr != drawn.lr


@pytest.mark.parametrize(
    "bad",
    [
        {"vary": {"lr_na": (0.9, 0.7)}},
        {"vary": {"structure_off": 1.0}},
        {"vary": {"lr_photons": (0.0, 10.0)}},
        {"vary": {"unknown": 1}},
        {"vary": {"lr_na": (1.5, 1.9)}},
    ],
)
def test_bad_variation_is_rejected(bad):
    with pytest.raises(InputError):
        as_config(bad)
