"""Per-frame trust through the doors (issue 17): ``cyclesr export trust`` and ``export check``,
the ``--untrusted warn|mark|skip|fail`` policy end to end through ``cyclesr enhance`` (TIFF and
OME-Zarr), the manifest, ``cyclesr watch``'s status, ``Enhancer``, ``cyclesr bench quality``, a
model without calibration and a stale calibration.

A copy of the built-in CycleGAN is calibrated on 10 small synthetic LR frames of its training
domain; the in-domain frames of the tests are calibration frames that score well, the far frame
a bright square on black (nothing like a confocal acquisition).
"""

from __future__ import annotations

import json
import shutil
import threading

import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

pytest.importorskip("onnxruntime")

from cyclesr_deploy.builtin import DEFAULT_MODEL, builtin_model
from cyclesr_deploy.cli import app
from cyclesr_deploy.model import ModelFolder, load_model
from cyclesr_deploy.runtime.formats import read_annotations
from cyclesr_deploy.runtime.manifest import MANIFEST_NAME

cli = CliRunner()
SIZE = 128


def _copy_model(dst):
    shutil.copytree(builtin_model(DEFAULT_MODEL), dst)
    ModelFolder(dst).trust_json.unlink(missing_ok=True)
    return dst


def far_frame() -> np.ndarray:
    frame = np.zeros((SIZE, SIZE), np.uint16)
    frame[40:80, 40:80] = 3000
    return frame


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    """(model folder calibrated with `cyclesr export trust`, two in-domain frames)."""
    from cyclesr_deploy.runtime.enhancer import Enhancer
    from cyclesr_deploy.synthetic.simulate import simulate_pair

    root = tmp_path_factory.mktemp("trust")
    model = _copy_model(root / "model")
    data = root / "cal"
    data.mkdir()
    frames = [simulate_pair({"size": SIZE}, i).lr for i in range(10)]
    for i, f in enumerate(frames):
        tifffile.imwrite(data / f"c{i:02d}.tif", f, photometric="minisblack")
    res = cli.invoke(app, ["export", "trust", str(model), "--data", str(data)])
    assert res.exit_code == 0, res.output
    cal = json.loads(ModelFolder(model).trust_json.read_text())
    assert cal["n_frames"] == 10 and cal["data"] == str(data)
    with Enhancer(model) as enhancer:
        scores = []
        for f in frames:
            enhancer(f)
            scores.append(enhancer.last_trust.score)
        enhancer(far_frame())
        assert enhancer.trusted is False  # the far frame is flagged
    good = [frames[i] for i in np.argsort(scores)[::-1][:2]]
    assert min(sorted(scores)[-2:]) >= 0.1, scores  # in-domain frames pass
    return model, good


@pytest.fixture()
def inputs(tmp_path, calibrated):
    """A 3-frame stack (in, far, in), a far single frame and an in-domain single frame."""
    _model, (a, b) = calibrated
    folder = tmp_path / "in"
    folder.mkdir()
    stack = np.stack([a, far_frame(), b])
    tifffile.imwrite(
        folder / "stack.tif", stack, photometric="minisblack", metadata={"axes": "TYX"}
    )
    tifffile.imwrite(folder / "far.tif", far_frame(), photometric="minisblack")
    tifffile.imwrite(folder / "good.tif", a, photometric="minisblack")
    return folder


def _enhance(inputs, out, model, *extra):
    res = cli.invoke(app, ["enhance", str(inputs), "-o", str(out), "--model", str(model), *extra])
    files = {}
    manifest = out / MANIFEST_NAME
    if manifest.is_file():
        entries = json.loads(manifest.read_text())["files"]
        files = {k.replace("\\", "/").rsplit("/", 1)[-1]: v for k, v in entries.items()}
    return res, files


def _small_check(tmp_path):
    """``--check-frame`` of a small frame: keeps export check's frozen-statistics check short."""
    from cyclesr_deploy.synthetic.simulate import simulate_pair

    path = tmp_path / "check.tif"
    tifffile.imwrite(path, simulate_pair({"size": 256}, 99).lr, photometric="minisblack")
    return ["--check-frame", str(path)]


def _untrusted(entry):
    return entry["trust"]["untrusted"]


@pytest.mark.parametrize("policy", ["warn", "mark", "skip", "fail"])
def test_policy_end_to_end_through_enhance(tmp_path, calibrated, inputs, policy):
    model, _ = calibrated
    out = tmp_path / "out"
    res, files = _enhance(inputs, out, model, "--untrusted", policy)
    text = " ".join(res.output.split())
    assert _untrusted(files["stack.tif"]) == [1]
    assert _untrusted(files["far.tif"]) == [0]
    assert _untrusted(files["good.tif"]) == []
    trust = files["stack.tif"]["trust"]
    n = 2 if policy == "fail" else 3  # fail stops the file at its first untrusted frame
    assert trust["count"] == n and len(trust["scores"]) == n and "indices" not in trust
    (bad,) = trust["flagged"]
    assert bad["index"] == 1 and bad["worst"] and bad["trusted"] is False
    assert 0 <= bad["trust"] == trust["scores"][1] < trust["scores"][0] <= 1
    assert trust["worst"][0] == bad and trust["min"] == bad["trust"]
    assert files["good.tif"]["status"] == "done" and (out / "good.tif").is_file()
    if policy in ("warn", "mark"):
        assert res.exit_code == 0, res.output
        assert "stack.tif: 1 of 3 frame(s) untrusted" in text
        stack = tifffile.imread(out / "stack.tif")
        assert stack.shape == (3, SIZE, SIZE) and stack[1].any()
        marks = read_annotations(out / "stack.tif")
        if policy == "warn":
            assert marks is None
        else:
            assert marks["untrusted_frames"] == "1" and marks["policy"] == "mark"
            assert read_annotations(out / "good.tif") is None
    elif policy == "skip":
        assert res.exit_code == 0, res.output
        stack = tifffile.imread(out / "stack.tif")
        assert stack.shape == (3, SIZE, SIZE)  # T indices stay aligned
        assert not stack[1].any() and stack[0].any() and stack[2].any()
        assert read_annotations(out / "stack.tif")["skipped_frames"] == "1"
        assert files["far.tif"]["status"] == "skipped" and not (out / "far.tif").exists()
        assert "untrusted" in files["far.tif"]["note"]
    else:
        assert res.exit_code == 1, res.output
        for name in ("stack.tif", "far.tif"):
            assert files[name]["status"] == "failed" and "untrusted" in files[name]["error"]
            assert not (out / name).exists()
        assert not list(out.glob("*.part"))


def test_mark_in_ome_zarr_attributes(tmp_path, calibrated, inputs):
    pytest.importorskip("zarr")
    model, _ = calibrated
    (inputs / "far.tif").unlink()
    (inputs / "good.tif").unlink()
    out = tmp_path / "out"
    res, files = _enhance(inputs, out, model, "--untrusted", "mark", "--output-format", "zarr")
    assert res.exit_code == 0, res.output
    assert _untrusted(files["stack.tif"]) == [1]
    assert read_annotations(out / "stack.ome.zarr")["untrusted_frames"] == "1"


def test_model_without_calibration_warns_only(tmp_path, inputs, caplog):
    model = _copy_model(tmp_path / "plain")
    res, files = _enhance(inputs, tmp_path / "warn", model)
    assert res.exit_code == 0, res.output
    assert files["stack.tif"]["trust"] is None
    assert f"cyclesr export trust {model}" in " ".join(res.output.split())
    for policy in ("mark", "skip", "fail"):
        res, _ = _enhance(inputs, tmp_path / policy, model, "--untrusted", policy)
        assert res.exit_code == 2
        assert "no trust calibration" in res.output and "export trust" in res.output
        assert not (tmp_path / policy / "stack.tif").exists()
    res, _ = _enhance(inputs, tmp_path / "off", model, "--no-trust", "--untrusted", "skip")
    assert res.exit_code == 2 and "--no-trust" in res.output
    res = cli.invoke(app, ["watch", str(inputs), "-o", str(tmp_path / "w"), "--model", str(model),
                           "--untrusted", "fail", "--exit-idle", "0.5"])  # fmt: skip
    assert res.exit_code == 2 and "no trust calibration" in res.output  # before any engine
    assert not (tmp_path / "w" / MANIFEST_NAME).exists()


def test_stale_calibration_is_refused_with_the_renewal_command(tmp_path, calibrated, inputs):
    model = tmp_path / "model"
    shutil.copytree(calibrated[0], model)
    trust_json = ModelFolder(model).trust_json
    cal = json.loads(trust_json.read_text())
    cal["weights_sha256"] = {k: "0" * 64 for k in cal["weights_sha256"]}  # other weights
    trust_json.write_text(json.dumps(cal))
    res, _ = _enhance(inputs, tmp_path / "out", model)
    text = " ".join(res.output.split())
    assert res.exit_code == 2 and "stale" in text and f"cyclesr export trust {model}" in text
    res = cli.invoke(app, ["export", "check", str(model), *_small_check(tmp_path)])
    assert "trust calibration: stale" in " ".join(res.output.split())
    res, files = _enhance(inputs, tmp_path / "off", model, "--no-trust")
    assert res.exit_code == 0 and files["stack.tif"]["trust"] is None
    res = cli.invoke(app, ["export", "trust", str(model), "--data", str(inputs / "good.tif")])
    assert res.exit_code == 2 and "at least" in res.output  # one frame is not enough
    assert json.loads(trust_json.read_text()) == cal  # kept as it was


def test_export_trust_needs_data_and_check_reports_states(tmp_path, calibrated):
    model = _copy_model(tmp_path / "plain")
    res = cli.invoke(app, ["export", "trust", str(model)])
    assert res.exit_code == 2 and "--data" in res.output  # no recorded training folder here
    res = cli.invoke(app, ["export", "check", str(model), *_small_check(tmp_path)])
    assert "trust calibration: missing" in " ".join(res.output.split())
    copy = tmp_path / "calibrated"
    shutil.copytree(calibrated[0], copy)  # export check rewrites frozen_stats.json
    res = cli.invoke(app, ["export", "check", str(copy), *_small_check(tmp_path)])
    assert "trust calibration: ok: 10 frames" in " ".join(res.output.split())


def test_enhancer_and_watch_report_the_same_trust(tmp_path, calibrated, inputs):
    from cyclesr_deploy.engines import open_engine
    from cyclesr_deploy.runtime.enhancer import Enhancer
    from cyclesr_deploy.runtime.runner import EnhanceConfig
    from cyclesr_deploy.runtime.watch import WatchConfig, watch_folder

    model, (a, _b) = calibrated
    with Enhancer(model) as enhancer:
        enhancer(a)
        good = enhancer.last_trust
        _, meta = enhancer.image_process_fn(far_frame(), {})
        assert meta["CycleSRTrust"]["trusted"] is False and enhancer.trusted is False
    assert good.trusted
    statuses = []
    ecfg = EnhanceConfig(untrusted="skip")
    wcfg = WatchConfig(poll=0.05, stable=0.1, exit_idle=1.0, use_events=False)
    with open_engine(model) as engine:
        final = watch_folder(inputs, tmp_path / "w", engine, load_model(model), wcfg, ecfg,
                             stop=threading.Event(), on_status=statuses.append)  # fmt: skip
    assert final.untrusted == 2 and final.trust is not None
    assert "untrusted 2" in final.line()
    entries = json.loads((tmp_path / "w" / MANIFEST_NAME).read_text())["files"]
    by_name = {k.replace("\\", "/").rsplit("/", 1)[-1]: v for k, v in entries.items()}
    (rec,) = by_name["good.tif"]["trust"]["worst"]
    assert rec["trust"] == float(f"{good.score:.4g}") and rec["worst"] == good.worst
    assert by_name["far.tif"]["status"] == "skipped"  # skip: a one-frame file is not written
    assert not (tmp_path / "w" / "far.tif").exists()
    stack = tifffile.imread(tmp_path / "w" / "stack.tif")
    assert stack.shape[0] == 3 and not stack[1].any()  # zeros in its place
    assert read_annotations(tmp_path / "w" / "stack.tif")["skipped_frames"] == "1"


def test_bench_quality_reports_trust(tmp_path, calibrated):
    from cyclesr_deploy.bench.quality import quality_header, run_quality
    from cyclesr_deploy.synthetic.simulate import simulate_pair

    model, (a, _b) = calibrated
    lr, hr = tmp_path / "lr", tmp_path / "hr"
    lr.mkdir()
    hr.mkdir()
    pair = simulate_pair({"size": SIZE}, 3)
    for name, lr_frame, hr_frame in (("a", a, pair.hr), ("far", far_frame(), pair.hr)):
        tifffile.imwrite(lr / f"{name}.tif", lr_frame)
        tifffile.imwrite(hr / f"{name}.tif", hr_frame)
    result = run_quality(lr, hr, {"m": model})
    (row,) = [r for r in result["rows"] if r["method"] == "m"]
    assert row["trust"]["flagged"] == 1 and row["trust"]["n"] == 2
    per = {it["name"]: it["trust"]["trusted"] for it in row["per_image"]}
    assert per == {"a.tif": True, "far.tif": False}
    from cyclesr_deploy.runtime.enhancer import Enhancer

    with Enhancer(model) as enhancer:  # the same frame: the same trust as enhance's runner
        got = {it["name"]: it["trust"] for it in row["per_image"]}
        assert got["a.tif"] == enhancer.run(a)[1].record()
        assert got["far.tif"] == enhancer.run(far_frame())[1].record()
    assert quality_header(result)[-1] == "trust (flagged)"


@pytest.mark.parametrize("policy", ["skip", "fail"])
def test_cluster_applies_the_policy_on_its_workers(tmp_path, calibrated, inputs, policy):
    """`enhance --cluster local:1`: the workers apply the policy (OME-Zarr blocks and whole
    TIFF files), the client records trust per frame and the refusals (skipped / failed)."""
    pytest.importorskip("distributed")
    pytest.importorskip("zarr")
    from cyclesr_deploy.runtime.formats import open_frames

    model, _ = calibrated
    out = tmp_path / "out"
    res, files = _enhance(inputs, out, model, "--cluster", "local:1", "--untrusted", policy,
                          "--output-format", "zarr", "--block", "1")  # fmt: skip
    assert _untrusted(files["good.tif"]) == [] and files["good.tif"]["status"] == "done"
    assert files["far.tif"]["status"] == ("skipped" if policy == "skip" else "failed")
    assert not (out / "far.ome.zarr").exists()
    if policy == "skip":
        assert res.exit_code == 0, res.output
        assert _untrusted(files["stack.tif"]) == [1]
        with open_frames(out / "stack.ome.zarr") as reader:
            assert reader.read(0).any() and not reader.read(1).any() and reader.read(2).any()
        assert read_annotations(out / "stack.ome.zarr")["skipped_frames"] == "1"
    else:
        assert res.exit_code == 1, res.output
        assert files["stack.tif"]["status"] == "failed"
        assert "untrusted" in files["stack.tif"]["error"]
        assert not (out / "stack.ome.zarr").exists()
        assert not list(out.glob("*.part"))  # removed once no task of it writes any more


def _watch(inputs, out, model, policy):
    from cyclesr_deploy.engines import open_engine
    from cyclesr_deploy.runtime.runner import EnhanceConfig
    from cyclesr_deploy.runtime.watch import WatchConfig, watch_folder

    wcfg = WatchConfig(poll=0.05, stable=0.1, exit_idle=1.0, use_events=False)
    with open_engine(model) as engine:
        final = watch_folder(inputs, out, engine, load_model(model), wcfg,
                             EnhanceConfig(untrusted=policy), stop=threading.Event())  # fmt: skip
    entries = json.loads((out / MANIFEST_NAME).read_text())["files"]
    return final, {k.replace("\\", "/").rsplit("/", 1)[-1]: v for k, v in entries.items()}


def test_watch_keeps_the_trust_marks_of_an_earlier_run(tmp_path, calibrated, inputs):
    """skip, stop, restart with the stack grown: the output's marks and the manifest's trust
    cover the pages of both runs (the earlier run's records are carried on)."""
    _model, (a, b) = calibrated
    model, out = calibrated[0], tmp_path / "w"
    (inputs / "far.tif").unlink()
    (inputs / "good.tif").unlink()
    _watch(inputs, out, model, "skip")
    assert read_annotations(out / "stack.tif")["skipped_frames"] == "1"
    grown = np.stack([a, far_frame(), b, far_frame(), a])
    tifffile.imwrite(inputs / "stack.tif", grown, photometric="minisblack",
                     metadata={"axes": "TYX"})  # fmt: skip
    final, files = _watch(inputs, out, model, "skip")
    stack = tifffile.imread(out / "stack.tif")
    assert stack.shape[0] == 5 and not stack[1].any() and not stack[3].any() and stack[4].any()
    assert read_annotations(out / "stack.tif")["skipped_frames"] == "1,3"
    trust = files["stack.tif"]["trust"]
    assert trust["untrusted"] == [1, 3] and trust["count"] == 5 and len(trust["scores"]) == 5
    assert final.untrusted == 1  # this run's frames only


def test_watch_fail_gives_a_stack_no_output(tmp_path, calibrated, inputs):
    """--untrusted fail in watch: the stack gets no output (no zero pages, no .part), is
    recorded failed; the other files go on."""
    model, _ = calibrated
    (inputs / "far.tif").unlink()
    out = tmp_path / "w"
    final, files = _watch(inputs, out, model, "fail")
    assert files["stack.tif"]["status"] == "failed" and "untrusted" in files["stack.tif"]["error"]
    assert files["stack.tif"]["output"] is None
    assert not (out / "stack.tif").exists() and not list(out.glob("*.part"))
    assert files["good.tif"]["status"] == "done" and (out / "good.tif").is_file()
    assert final.failed == 1 and not final.ok


def test_enhancer_run_returns_each_frames_trust(calibrated):
    """Enhancer.run: the output with its trust (per frame of a stack); trusted is all of them;
    pycro-manager's metadata gets the call's own trust."""
    from cyclesr_deploy.runtime.enhancer import Enhancer

    model, (a, _b) = calibrated
    with Enhancer(model) as enhancer:
        out, trusts = enhancer.run(np.stack([far_frame(), a]))
        assert out.shape[0] == 2 and [t.trusted for t in trusts] == [False, True]
        assert enhancer.last_trusts == trusts and enhancer.trusted is False  # not the last only
        y, one = enhancer.run(a)
        assert one.trusted and enhancer.trusted and np.array_equal(y, out[1])
        _, meta = enhancer.image_process_fn(np.stack([a, far_frame()]), {})
        assert [r["trusted"] for r in meta["CycleSRTrust"]] == [True, False]
