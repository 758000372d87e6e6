"""Ground-truth rendering: seeded, vectorised, pixel-integrated."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cyclesr_deploy.synthetic import Structures, render_structures
from cyclesr_deploy.synthetic.structures import _Canvas

NOTHING = {
    "filament_density": 0.0,
    "puncta_density": 0.0,
    "vesicle_density": 0.0,
    "membrane_probability": 0.0,
    "nucleus_probability": 0.0,
}


def test_seeded_and_deterministic():
    s = Structures()
    a = render_structures(s, 128, 40.0, np.random.default_rng(5))
    b = render_structures(s, 128, 40.0, np.random.default_rng(5))
    c = render_structures(s, 128, 40.0, np.random.default_rng(6))
    assert a.dtype == np.float32 and a.shape == (128, 128)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert (a >= 0).all()


def test_does_not_touch_the_global_rng():
    np.random.seed(123)  # noqa: NPY002 - the legacy global state is what must stay untouched
    state = np.random.get_state()[1].copy()  # noqa: NPY002
    render_structures(Structures(), 64, 40.0, np.random.default_rng(0))
    np.testing.assert_array_equal(np.random.get_state()[1], state)  # noqa: NPY002


def test_default_mix_is_a_filament_network():
    gt = render_structures(Structures(), 256, 40.0, np.random.default_rng(1))
    covered = (gt > 0).mean()
    assert 0.05 < covered < 0.9
    # many filaments: most rows and columns are crossed by something
    assert (gt > 0).any(axis=1).mean() > 0.9 and (gt > 0).any(axis=0).mean() > 0.9


def test_empty_mix_renders_zeros():
    gt = render_structures(Structures(**NOTHING), 32, 40.0, np.random.default_rng(0))
    assert not gt.any()


def test_nucleus_fill_is_area_integrated():
    s = Structures(
        **{**NOTHING, "nucleus_probability": 1.0},
        nucleus_radius_um=(3.0, 3.0),
        nucleus_envelope_brightness=(0.0, 0.0),
        nucleus_fill=2.0,
    )
    px_um = 0.1
    found = False
    for seed in range(20):  # the cell centre is random; find one fully covering some pixels
        gt = render_structures(s, 64, 100.0, np.random.default_rng(seed))
        if gt.any():
            found = True
            full = 2.0 * px_um**2
            assert gt.max() == pytest.approx(full, rel=1e-5)
            assert (gt <= full * (1 + 1e-5)).all()
            # partially covered edge pixels exist (sub-pixel rasterisation)
            assert ((gt > 0) & (gt < 0.99 * full)).any()
    assert found


def test_canvas_points_integrate_a_line_exactly():
    c = _Canvas(20, 1.0, 4)
    t = np.arange(0, 10, c.step_um) + c.step_um / 2  # 10 µm straight line inside the field
    c.points(5.3 + 0.0 * t, 2.0 + t, np.full(t.shape, c.step_um))
    img = c.render()
    assert img.sum() == pytest.approx(10.0, rel=1e-6)
    assert img[5, 2:12] == pytest.approx(np.ones(10), rel=1e-5)


def test_canvas_polygon_area():
    c = _Canvas(50, 1.0, 4)
    t = np.linspace(0, 2 * np.pi, 4000, endpoint=False)
    c.fill_polygon(25 + 15 * np.sin(t), 25 + 15 * np.cos(t), 1.0)
    assert c.render().sum() == pytest.approx(math.pi * 15**2, rel=2e-3)


def test_puncta_integrate_to_their_brightness():
    s = Structures(**{**NOTHING, "puncta_density": 0.5}, punctum_brightness=(1.0, 1.0))
    gt = render_structures(s, 256, 100.0, np.random.default_rng(3))
    total = float(gt.sum())
    n = round(total)
    assert n > 10
    # edge-clipped puncta may lose a little; interior ones integrate to exactly 1
    assert total == pytest.approx(n, abs=0.5)


def test_full_mix_renders():
    """Every structure kind at once (membrane and nucleus always on), odd canvas size."""
    s = Structures(membrane_probability=1.0, nucleus_probability=1.0)
    rng = np.random.default_rng(0)
    for _ in range(3):
        gt = render_structures(s, 280, 40.0, rng)
        assert gt.dtype == np.float32 and gt.shape == (280, 280)
        assert np.isfinite(gt).all() and (gt >= 0).all() and (gt > 0).mean() > 0.05
    membrane_only = Structures(**{**NOTHING, "membrane_probability": 1.0})
    assert render_structures(membrane_only, 280, 40.0, np.random.default_rng(0)).any()
