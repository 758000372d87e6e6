"""The napari plugin's Qt-free part (cyclesr_deploy/napari/_work.py): no napari needed."""

from __future__ import annotations

import numpy as np
import pytest

from cyclesr_deploy.errors import InputError
from cyclesr_deploy.napari._work import (
    EnhancerPool,
    Settings,
    as_frame,
    frame_indices,
    new_output,
    result_geometry,
    result_name,
)


def test_frame_indices_cover_every_leading_axis():
    assert frame_indices((5, 6)) == [()]
    assert frame_indices((2, 3, 5, 6)) == [(t, z) for t in range(2) for z in range(3)]
    with pytest.raises(InputError, match="no 2-D frames"):
        frame_indices((7,))


def test_as_frame_converts_float64_and_refuses_other_dtypes():
    assert as_frame(np.zeros((4, 4))).dtype == np.float32
    assert as_frame(np.zeros((4, 4), np.uint16)).dtype == np.uint16
    with pytest.raises(InputError, match="int32 is not supported"):
        as_frame(np.zeros((4, 4), np.int32))
    with pytest.raises(InputError, match="2-D"):
        as_frame(np.zeros((2, 4, 4), np.uint8))


def test_result_geometry_keeps_output_pixels_on_the_input_pixels():
    scale, translate = result_geometry((3.0, 0.2, 0.4), (1.0, 10.0, 20.0), 2)
    assert scale == (3.0, 0.1, 0.2)
    # input pixel 0 spans [-0.5, 0.5] x 0.2 + 10; output pixels 0 and 1 split it: centres
    # at 10 - 0.05 and 10 + 0.05
    assert translate == pytest.approx((1.0, 9.95, 19.9))
    assert result_geometry((0.5, 0.5), (0.0, 0.0), 1) == ((0.5, 0.5), (0.0, 0.0))


def test_new_output_and_name():
    out = new_output((3, 10, 12), np.uint16, 2)
    assert out.shape == (3, 20, 24) and out.dtype == np.uint16 and not out.any()
    assert new_output((10, 12), np.float64, 1).dtype == np.float32
    assert result_name("cells", "D:\\models\\my-model\\", 2) == "cells [CycleSR my-model x2]"
    assert result_name("cells", "reference-cyclegan", 1, follow=True).endswith("x1 live]")


class _Closable:
    def __init__(self, settings):
        self.settings, self.closed = settings, False

    def close(self):
        self.closed = True


def test_enhancer_pool_closes_an_enhancer_only_when_its_last_user_is_done():
    pool = EnhancerPool(_Closable)
    a, b = Settings(tile=0), Settings(tile=64)
    with pool.use(a) as ea:
        with pool.use(b) as eb:  # other settings while a is in use: a stays open
            assert not ea.closed
            with pool.use(b) as eb2:
                assert eb2 is eb
        assert not ea.closed and not eb.closed  # b: the latest, kept for the next frame
    assert ea.closed and not eb.closed  # a's last user is done, b is the latest
    with pool.use(b) as again:
        assert again is eb  # not reopened
    with pool.use(a) as ea2:
        assert ea2 is not ea and eb.closed  # b idle and no longer the latest
    assert not ea2.closed
    pool.close()
    assert ea2.closed
    with pytest.raises(RuntimeError, match="closed"), pool.use(a):
        pass


def test_trust_text_names_the_untrusted_frames():
    from cyclesr_deploy.napari._work import trust_text
    from cyclesr_deploy.trust import FrameTrust

    good, bad = FrameTrust(0.5, True, "level"), FrameTrust(2e-4, False, "spectrum")
    assert trust_text([((0,), None)]) == ""  # unscored: the model has no calibration
    assert trust_text([((0,), good)]) == "trust: ok (lowest 0.5)"
    text = trust_text([((0,), good), ((1,), bad), ((2,), good)])
    assert text.startswith("trust: 1 of 3 frame(s) untrusted (lowest 0.0002 at (1,), spectrum)")


def test_enhance_into_takes_each_frames_trust_from_its_own_call():
    """The trust comes with the frame from Enhancer.run (under its lock), never from
    last_trust, which another thread sharing the Enhancer may have set since."""
    from cyclesr_deploy.napari._work import enhance_into

    class Shared:
        last_trust = "another thread's frame"

        def run(self, frame):
            return frame * 2, f"trust of {int(frame[0, 0])}"

    data = np.arange(3, dtype=np.float32)[:, None, None] * np.ones((3, 2, 2), np.float32)
    out, trusts = np.zeros((3, 2, 2), np.float32), []
    assert list(enhance_into(Shared(), data, [(0,), (1,), (2,)], out, trusts)) == [1, 2, 3]
    assert trusts == [((0,), "trust of 0"), ((1,), "trust of 1"), ((2,), "trust of 2")]
    assert out[2].max() == 4
