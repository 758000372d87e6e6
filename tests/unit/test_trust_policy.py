"""The untrusted-frame policy of one file (runtime/trust_policy.py: FileTrust) and the marks it
leaves in TIFF outputs (runtime/tiff.py: annotate / read_annotations)."""

from __future__ import annotations

import pickle
from types import SimpleNamespace

import numpy as np
import pytest
import tifffile

from cyclesr_deploy.errors import InputError
from cyclesr_deploy.runtime.tiff import annotate, read_annotations
from cyclesr_deploy.runtime.trust_policy import FileTrust, UntrustedFile, resolve_scorer
from cyclesr_deploy.trust import FrameTrust

GOOD = FrameTrust(0.8, True, "level")
BAD = FrameTrust(2e-4, False, "spectrum")


def _run(policy, verdicts, n=None):
    ft = FileTrust(policy, "x.tif", n if n is not None else len(verdicts))
    frames = [np.full((4, 4), i + 1, np.uint16) for i in range(len(verdicts))]
    return ft, [ft.admit(i, f, t) for i, (f, t) in enumerate(zip(frames, verdicts, strict=True))]


@pytest.mark.parametrize("policy", ["warn", "mark"])
def test_warn_and_mark_write_every_frame(policy, caplog):
    ft, out = _run(policy, [GOOD, BAD, GOOD])
    assert all(o.any() for o in out)
    assert ft.untrusted == [1]
    summary = ft.summary()
    assert summary["untrusted"] == [1] and summary["policy"] == policy
    assert summary["scores"] == [0.8, 2e-4, 0.8] and summary["count"] == 3
    assert [f["index"] for f in summary["flagged"]] == [1] and "indices" not in summary
    assert summary["min"] == pytest.approx(2e-4) and summary["mean"] == pytest.approx(1.6002 / 3)
    assert (ft.metadata() is None) == (policy == "warn")
    if policy == "mark":
        assert ft.metadata()["untrusted_frames"] == "1"
    ft.report()
    (record,) = [r for r in caplog.records if r.levelname == "WARNING"]
    assert "1 of 3 frame(s) untrusted" in record.getMessage()
    assert "frame 1 trust 0.0002 (spectrum)" in record.getMessage()


def test_skip_writes_zeros_in_a_stack_and_refuses_a_single_frame():
    ft, out = _run("skip", [GOOD, BAD, BAD])
    assert out[0].any() and not out[1].any() and not out[2].any()
    assert out[1].dtype == np.uint16 and out[1].shape == (4, 4)
    assert ft.metadata()["skipped_frames"] == "1,2"
    with pytest.raises(UntrustedFile) as info:
        _run("skip", [BAD])
    assert info.value.skipped


def test_fail_refuses_at_the_first_untrusted_frame():
    with pytest.raises(UntrustedFile, match=r"frame 1 .*untrusted.*no output") as info:
        _run("fail", [GOOD, BAD, GOOD])
    assert not info.value.skipped
    copy = pickle.loads(pickle.dumps(UntrustedFile("m", skipped=True)))  # cluster worker -> client
    assert isinstance(copy, InputError) and copy.skipped and str(copy) == "m"


def test_unscored_frames_pass_and_records_absorb_in_order():
    ft, out = _run("skip", [None, None])
    assert ft.summary() is None and ft.metadata() is None and all(o.any() for o in out)
    ft = FileTrust("mark", "x.tif", 4)
    ft.absorb([{"index": 2, "trust": 0.0, "trusted": False, "worst": "level"}])
    ft.absorb([{"index": 0, "trust": 0.5, "trusted": True, "worst": "level"}])
    assert [r["index"] for r in ft.records] == [0, 2] and ft.untrusted == [2]
    assert ft.summary()["indices"] == [0, 2]  # not 0..n-1: the indices are kept
    with pytest.raises(InputError, match="untrusted policy"):
        FileTrust("ignore", "x.tif")


def test_a_frame_scored_twice_is_recorded_once():
    """A page re-queued after a lost .part (watch) or a recomputed block: keyed by index."""
    ft, _ = _run("mark", [GOOD, BAD, GOOD])
    ft.admit(1, np.ones((4, 4)), BAD)
    ft.admit(2, np.ones((4, 4)), BAD)
    assert ft.metadata()["untrusted_frames"] == "1,2" and len(ft) == 3
    assert ft.summary()["count"] == 3 and ft.summary()["mean"] == pytest.approx(0.8004 / 3)


def test_far_frames_are_ranked_by_evidence_with_significant_digits(caplog):
    """Scores that underflow keep their order: ranked by evidence, written with significant
    digits (not rounded to 0.0)."""
    far = FrameTrust(3e-12, False, "level", evidence=11.5)
    farther = FrameTrust(0.0, False, "spectrum", evidence=40.2)
    ft, _ = _run("warn", [far, GOOD, farther])
    assert [r["index"] for r in ft.worst()] == [2, 0]
    assert ft.summary()["scores"][0] == 3e-12
    ft.report()
    assert "frame 2 trust 0 (spectrum); frame 0 trust 3e-12 (level)" in caplog.text


def test_restore_carries_an_earlier_runs_frames():
    ft, _ = _run("skip", [GOOD, BAD, GOOD, BAD])
    again = FileTrust("skip", "x.tif")
    again.restore(ft.summary(), below=3)  # the output holds 3 pages
    assert again.untrusted == [1] and len(again) == 3
    assert again.metadata()["skipped_frames"] == "1"
    live = FileTrust("skip", "x.tif")
    live.restore(ft.summary(scores=False))  # a live entry: the untrusted frames' records
    assert live.untrusted == [1, 3]


def test_report_says_what_happened_to_a_one_frame_file(caplog):
    with pytest.raises(UntrustedFile):
        _run("skip", [BAD])
    ft = FileTrust("skip", "x.tif", 1)
    with pytest.raises(UntrustedFile):
        ft.admit(0, np.ones((4, 4)), BAD)
    ft.report()
    assert "not written (no output)" in caplog.text and "zeros" not in caplog.text


def test_policies_other_than_warn_need_a_scorer():
    model = SimpleNamespace(name="m", scale=1)
    cfg = SimpleNamespace(trust=True, untrusted="warn")
    assert resolve_scorer(cfg, model, None) is None  # unknown folder: unscored, warn is fine
    with pytest.raises(InputError, match="no trust calibration"):
        resolve_scorer(SimpleNamespace(trust=True, untrusted="skip"), model, None)
    with pytest.raises(InputError, match="--no-trust"):
        resolve_scorer(SimpleNamespace(trust=False, untrusted="fail"), model, None)


@pytest.mark.parametrize("kind", ["ome", "imagej", "shaped", "plain"])
def test_annotations_round_trip_in_every_tiff_flavour(tmp_path, kind):
    path = tmp_path / f"{kind}.tif"
    data = np.zeros((2, 8, 8), np.uint16)
    kwargs = {
        "ome": {"ome": True, "metadata": {"axes": "TYX"}},
        "imagej": {"imagej": True, "metadata": {"axes": "TYX"}},
        "shaped": {"shaped": True, "metadata": {"axes": "TYX"}},
        "plain": {"shaped": False, "description": "acquired today"},
    }[kind]
    tifffile.imwrite(path, data, photometric="minisblack", **kwargs)
    assert read_annotations(path) is None
    annotate(path, {"policy": "mark", "untrusted_frames": "0,1"})
    assert read_annotations(path) == {"policy": "mark", "untrusted_frames": "0,1"}
    with tifffile.TiffFile(path) as tif:  # still the same kind of file, same pixels
        assert tif.is_ome == (kind == "ome") and tif.is_imagej == (kind == "imagej")
        np.testing.assert_array_equal(tif.asarray(), data)
        if kind == "ome":
            assert "AnnotationRef" in tif.ome_metadata
