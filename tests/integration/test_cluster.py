"""The cluster path on a LocalCluster (2 worker processes, 1 thread each, one cluster for the
module): outputs bit-identical to a single-process run for TIFF and OME-Zarr inputs, a worker
killed mid-run, the client stopped mid-run and resumed, a bad frame."""

from __future__ import annotations

import json
import logging
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import tifffile

pytest.importorskip("onnxruntime")
pytest.importorskip("distributed")
pytest.importorskip("zarr")

from cyclesr_deploy.builtin import DEFAULT_MODEL, builtin_model
from cyclesr_deploy.engines import open_engine
from cyclesr_deploy.model import load_model
from cyclesr_deploy.runtime.cluster import (
    BlocksDone,
    EngineRecipe,
    enhance_on_cluster,
    load_cluster_file,
    parse_cluster,
)
from cyclesr_deploy.runtime.formats import open_frames
from cyclesr_deploy.runtime.manifest import MANIFEST_NAME
from cyclesr_deploy.runtime.pipeline import EnhanceConfig, collect_inputs, enhance_files
from tests.unit.test_omezarr import _write_ngff

MODEL = builtin_model(DEFAULT_MODEL)
SHAPE = (96, 128)


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        Client(cluster) as c,
    ):
        c.wait_for_workers(2)
        yield c


def _recipe(cfg: EnhanceConfig) -> EngineRecipe:
    return EngineRecipe(str(MODEL), tiling=cfg.engine_tiling, stats=cfg.stats, threads=1)


def _stack(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(200, 3000, (1, *SHAPE))
    return (base + rng.integers(0, 400, (n, *SHAPE))).astype(np.uint16)


def _single(inputs, out_dir, cfg):
    """The single-process reference (``cyclesr enhance --threads 1`` without a cluster): the same
    engine settings as the workers' (one thread each), since OpenVINO's output depends on its
    thread count (its reductions split by thread: up to ~2e-5 of the range, 1 level)."""
    with open_engine(MODEL, tiling=cfg.engine_tiling, stats=cfg.stats, threads=1) as engine:
        summary = enhance_files(inputs, out_dir, engine, load_model(MODEL), cfg)
    assert summary.ok, summary.files
    return summary


def _frames(path: Path) -> np.ndarray:
    with open_frames(path) as reader:
        return np.stack([reader.read(i) for i in range(reader.info.n_frames)])


def _same_outputs(a: Path, b: Path) -> None:
    names = sorted(p.name for p in a.iterdir() if not p.name.startswith((".", "cyclesr-")))
    assert names == sorted(p.name for p in b.iterdir() if not p.name.startswith((".", "cyclesr-")))
    assert names
    for name in names:
        np.testing.assert_array_equal(_frames(a / name), _frames(b / name), err_msg=name)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A TIFF stack, a folder of small TIFF files and an OME-Zarr stack."""
    root = tmp_path_factory.mktemp("inputs")
    (root / "stack").mkdir()
    tifffile.imwrite(root / "stack" / "s.tif", _stack(10, 0), photometric="minisblack")
    (root / "small").mkdir()
    for i in range(3):
        tifffile.imwrite(root / "small" / f"f{i}.tif", _stack(1, 10 + i)[0])
    axes = [("t", "time", None), ("y", "space", "micrometer"), ("x", "space", "micrometer")]
    _write_ngff(root / "zarr" / "z.zarr", _stack(7, 1), "0.5", axes, (1.0, 0.2, 0.2))
    return root


@pytest.mark.slow
def test_tiff_and_zarr_inputs_bit_identical_to_one_process(client, inputs, tmp_path):
    zarr_cfg = EnhanceConfig(output_format="zarr")
    stacks = [inputs / "stack" / "s.tif", inputs / "zarr" / "z.zarr"]
    _single(stacks, tmp_path / "single", zarr_cfg)
    summary = enhance_on_cluster(
        stacks, tmp_path / "cluster", _recipe(zarr_cfg), zarr_cfg, client=client, block=3
    )
    assert summary.ok and summary.frames == 17, summary.files
    _same_outputs(tmp_path / "single", tmp_path / "cluster")

    small = collect_inputs([inputs / "small"])  # one task per file, TIFF out
    cfg = EnhanceConfig()
    _single(small, tmp_path / "single-small", cfg)
    out = tmp_path / "cluster-small"
    summary = enhance_on_cluster(small, out, _recipe(cfg), cfg, client=client)
    assert summary.ok and summary.count("done") == 3, summary.files
    _same_outputs(tmp_path / "single-small", tmp_path / "cluster-small")


@pytest.mark.slow
def test_worker_killed_mid_run_gives_complete_identical_output(client, inputs, tmp_path):
    cfg = EnhanceConfig(output_format="zarr")
    src = [inputs / "stack" / "s.tif"]
    _single(src, tmp_path / "single", cfg)
    pids = client.run(os.getpid)
    killed: list[int] = []

    def kill_a_busy_worker(event):
        if event.kind == "frame" and not killed:
            busy = [a for a, keys in client.processing().items() if keys] or list(pids)
            killed.append(pids[busy[0]])
            os.kill(pids[busy[0]], getattr(signal, "SIGKILL", signal.SIGTERM))

    summary = enhance_on_cluster(
        src, tmp_path / "cluster", _recipe(cfg), cfg, client=client, block=1,
        on_progress=kill_a_busy_worker,
    )  # fmt: skip
    assert killed and summary.ok and summary.frames == 10, summary.files
    _same_outputs(tmp_path / "single", tmp_path / "cluster")
    client.wait_for_workers(2)  # the nanny restarted it
    assert killed[0] not in client.run(os.getpid).values()


def _stopped_after(client, src, out, cfg, n: int) -> None:
    """A run (blocks of 2 frames) whose client stops (KeyboardInterrupt) after ``n`` frames."""
    frames = []

    def stop(event):
        if event.kind == "frame":
            frames.append(1)
            if len(frames) == n:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        enhance_on_cluster(src, out, _recipe(cfg), cfg, client=client, block=2, on_progress=stop)


@pytest.mark.slow
def test_client_stopped_then_rerun_computes_only_what_is_missing(client, inputs, tmp_path):
    cfg = EnhanceConfig(output_format="zarr")
    src = [inputs / "stack" / "s.tif"]
    _single(src, tmp_path / "single", cfg)
    out = tmp_path / "cluster"
    _stopped_after(client, src, out, cfg, 4)
    entry = next(iter(json.loads((out / MANIFEST_NAME).read_text())["files"].values()))
    assert entry["status"] == "partial" and entry["n_blocks"] == 5
    recorded = len(BlocksDone(entry["blocks_done"]))
    assert recorded >= 2  # the 4 frames seen: 2 blocks of 2
    assert not (out / "s.ome.zarr").exists()  # only complete outputs carry the final name

    summary = enhance_on_cluster(src, out, _recipe(cfg), cfg, client=client, block=2)
    assert summary.ok, summary.files
    assert summary.frames == 10 - 2 * recorded  # nothing recorded was computed again
    _same_outputs(tmp_path / "single", out)

    again = enhance_on_cluster(src, out, _recipe(cfg), cfg, client=client, block=2)
    assert again.frames == 0 and again.files[0].status == "skipped"


@pytest.mark.slow
def test_client_killed_then_the_same_command_resumes(client, tmp_path):
    """``cyclesr enhance --cluster tcp://...`` in a subprocess, killed (SIGKILL) once the
    manifest records finished blocks: the same command again computes only the others."""
    import subprocess
    import sys
    import time

    rng = np.random.default_rng(5)
    data = rng.integers(200, 3000, (1, 256, 256)) + rng.integers(0, 400, (40, 256, 256))
    src = tmp_path / "in" / "long.tif"
    src.parent.mkdir()
    tifffile.imwrite(src, data.astype(np.uint16), photometric="minisblack")
    out = tmp_path / "out"
    args = ["enhance", str(src), "-o", str(out), "--cluster", client.scheduler.address,
            "--output-format", "zarr", "--block", "2"]  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "cyclesr_deploy", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
    )
    killed = False
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        with_entries = (out / MANIFEST_NAME).is_file() and json.loads(
            (out / MANIFEST_NAME).read_text() or "{}"
        ).get("files")
        entry = next(iter(with_entries.values()), {}) if with_entries else {}
        if len(BlocksDone(entry.get("blocks_done", ()))) >= 2:
            proc.kill()
            proc.wait()
            killed = True
            break
        time.sleep(0.02)
    assert killed, "the run ended before the test could kill it"
    entry = next(iter(json.loads((out / MANIFEST_NAME).read_text())["files"].values()))
    recorded = BlocksDone(entry["blocks_done"])  # what the killed client had saved
    assert entry["status"] == "partial" and len(recorded) < 20

    from typer.testing import CliRunner

    from cyclesr_deploy.cli import app

    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert f"{40 - 2 * len(recorded)} frame(s)" in res.output  # only the missing blocks
    cfg = EnhanceConfig(output_format="zarr")
    _single([src], tmp_path / "single", cfg)
    _same_outputs(tmp_path / "single", out)


@pytest.mark.slow
def test_bad_frame_fails_its_file_names_the_frame_others_go_on(client, inputs, tmp_path):
    bad = np.random.default_rng(3).random((6, *SHAPE)).astype(np.float32)
    bad[4, 5, 6] = np.nan
    axes = [("t", "time", None), ("y", "space", None), ("x", "space", None)]
    _write_ngff(tmp_path / "in" / "bad.zarr", bad, "0.5", axes, (1.0, 1.0, 1.0))
    cfg = EnhanceConfig(output_format="zarr")
    src = [tmp_path / "in" / "bad.zarr", inputs / "stack" / "s.tif"]
    summary = enhance_on_cluster(src, tmp_path / "out", _recipe(cfg), cfg, client=client, block=2)
    status = {Path(f.input).name: f for f in summary.files}
    assert status["s.tif"].status == "done"
    assert status["bad.zarr"].status == "failed"
    assert "bad.zarr: frame 4 contains NaN" in status["bad.zarr"].error
    assert not summary.ok
    assert not (tmp_path / "out" / "bad.zarr").exists()


def test_local_workers_get_one_gpu_each_or_a_share_of_the_cores(monkeypatch):
    from cyclesr_deploy.runtime import cluster

    envs = cluster.worker_env(4, ["0", "1", "2", "3"])
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["0", "1", "2", "3"]
    assert [e["CUDA_VISIBLE_DEVICES"] for e in cluster.worker_env(4, ["2", "5"])] == [
        "2", "5", "2", "5",
    ]  # fmt: skip
    monkeypatch.setattr(cluster.os, "cpu_count", lambda: 8)
    envs = cluster.worker_env(3, [])
    assert all("CUDA_VISIBLE_DEVICES" not in e and e["OMP_NUM_THREADS"] == "2" for e in envs)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,3")
    assert cluster.visible_gpus() == ["1", "3"]
    recipe = EngineRecipe.for_run(MODEL, "local:4", "auto", "auto", EnhanceConfig(), [(8, 8)])
    assert recipe.threads == 2  # GPUs too: a CPU engine (--backend onnxruntime) shares the cores
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    recipe = EngineRecipe.for_run(MODEL, "local:4", "auto", "auto", EnhanceConfig(), [(8, 8)])
    assert recipe.threads == 2 and recipe.frames == ((8, 8),)
    recipe = EngineRecipe.for_run(MODEL, "local:4", "auto", "auto", EnhanceConfig(), [], 1)
    assert recipe.threads == 1  # --threads: the setting a single-process run can repeat


def test_cluster_specs_and_the_example_slurm_file():
    assert parse_cluster("local:4") == ("local", 4)
    assert parse_cluster("tcp://10.0.0.1:8786") == ("address", "tcp://10.0.0.1:8786")
    from cyclesr_deploy.errors import InputError

    for bad in ("local:0", "local:x", "yarn"):
        with pytest.raises(InputError, match="--cluster"):
            parse_cluster(bad)
    example = Path(__file__).parents[2] / "docs" / "examples" / "slurm-gpu.yaml"
    cls, kwargs, jobs = load_cluster_file(example)
    assert cls.__name__ == "SLURMCluster" and jobs == 4
    job = cls.job_cls(scheduler="tcp://127.0.0.1:8786", name="w", **kwargs)
    script = job.job_script()
    assert "#SBATCH --gres=gpu:1" in script and "#SBATCH --cpus-per-task=8" in script


def test_a_file_whose_output_cannot_be_made_fails_alone(client, tmp_path):
    """Axes OME-Zarr cannot express (T after Z; a custom axis between space axes): those
    files are recorded failed, named, before any task; the good file is done."""
    src = tmp_path / "in"
    src.mkdir()
    for name, axes in (("zt.ome.tif", "ZTYX"), ("zq.ome.tif", "ZQYX")):
        tifffile.imwrite(
            src / name, _stack(4, 5).reshape(2, 2, *SHAPE), ome=True,
            photometric="minisblack", metadata={"axes": axes},
        )  # fmt: skip
    tifffile.imwrite(src / "ok.tif", _stack(2, 6), photometric="minisblack")
    cfg = EnhanceConfig(output_format="zarr")
    summary = enhance_on_cluster(
        collect_inputs([src]), tmp_path / "out", _recipe(cfg), cfg, client=client
    )
    status = {Path(f.input).name: f for f in summary.files}
    assert status["ok.tif"].status == "done" and summary.frames == 2
    for name in ("zt.ome.tif", "zq.ome.tif"):
        assert status[name].status == "failed"
        assert status[name].error.startswith(str(src / name))
        assert "cannot be written as OME-Zarr" in status[name].error
    assert not summary.ok


def test_zarr_blocks_whole_input_chunks_manifest_saved_per_block(
    client, tmp_path, monkeypatch, caplog
):
    from cyclesr_deploy.runtime.manifest import Manifest

    axes = [("t", "time", None), ("y", "space", None), ("x", "space", None)]
    src = _write_ngff(
        tmp_path / "c.zarr", _stack(8, 7), "0.5", axes, (1.0, 1.0, 1.0), chunks=(4, *SHAPE)
    )
    forced = []
    save = Manifest.save
    monkeypatch.setattr(
        Manifest, "save", lambda self, force=False: (forced.append(force), save(self, force))
    )
    cfg = EnhanceConfig(output_format="zarr")
    with caplog.at_level(logging.INFO, logger="cyclesr_deploy.runtime.cluster"):
        summary = enhance_on_cluster(
            [src], tmp_path / "o", _recipe(cfg), cfg, client=client, block=3
        )
    assert summary.ok, summary.files
    assert "blocks of 4 frames (a multiple of its 4-frame input chunks)" in caplog.text
    assert forced.count(True) >= 2 + 2  # triage, each block, the end


def test_whole_file_task_run_again_after_its_rename_is_done(tmp_path):
    """A worker lost after renaming a TIFF output: the retried task finds it and is done."""
    from cyclesr_deploy.runtime.cluster import Block, run_block
    from cyclesr_deploy.runtime.tiff import output_info

    src = tmp_path / "a.tif"
    tifffile.imwrite(src, _stack(2, 8), photometric="minisblack")
    cfg = EnhanceConfig()
    with open_frames(src) as reader:
        out_info = output_info(reader.info, load_model(MODEL).scale)
    task = Block(str(src), 0, 2, target=str(tmp_path / "out" / "a.tif"), out_info=out_info)
    (tmp_path / "out").mkdir()
    assert run_block(task, _recipe(cfg), cfg).frames == 2
    first = _frames(tmp_path / "out" / "a.tif")
    assert run_block(task, _recipe(cfg), cfg).frames == 2  # the retry
    np.testing.assert_array_equal(_frames(tmp_path / "out" / "a.tif"), first)


def test_the_client_settles_the_auto_tile_for_every_worker(monkeypatch, tmp_path):
    """tile auto: the budget is measured once, on the client, and sent in the settings: a
    worker with other free memory uses the same tiles (and the manifest records it)."""
    from cyclesr_deploy.runtime import cluster as cl
    from cyclesr_deploy.runtime import tile_size as ts

    seen = []

    class Run(cl._ClusterRun):
        def run(self, client, jobs):
            seen.append(self.cfg)

    monkeypatch.setattr(cl, "_ClusterRun", Run)
    model = load_model(MODEL)
    monkeypatch.setattr(ts, "available_memory", lambda: 2 * ts.bytes_per_px(model) * 1024 * 1024)
    frame = tmp_path / "f.tif"
    tifffile.imwrite(frame, _stack(1, 0)[0])
    cfg = EnhanceConfig()
    enhance_on_cluster([frame], tmp_path / "out", _recipe(cfg), cfg, client=object())
    assert seen[0].tile == "auto" and seen[0].tile_budget_px == 1024 * 1024
    header = json.loads((tmp_path / "out" / MANIFEST_NAME).read_text("utf-8"))
    assert header["config"]["tile_budget_px"] == 1024 * 1024


def test_the_client_checks_the_trust_calibration_before_any_task(tmp_path, inputs):
    """--untrusted fail with an uncalibrated model: refused on the client (no cluster is
    reached: the address is never connected to)."""
    import shutil

    from cyclesr_deploy.errors import InputError
    from cyclesr_deploy.model import ModelFolder

    model = shutil.copytree(MODEL, tmp_path / "model")
    ModelFolder(model).trust_json.unlink(missing_ok=True)
    cfg = EnhanceConfig(untrusted="fail")
    recipe = EngineRecipe(str(model), tiling=cfg.engine_tiling, stats=cfg.stats, threads=1)
    with pytest.raises(InputError, match="no trust calibration"):
        enhance_on_cluster([inputs / "stack" / "s.tif"], tmp_path / "out", recipe, cfg,
                           cluster="tcp://127.0.0.1:9")  # fmt: skip
    assert not (tmp_path / "out" / MANIFEST_NAME).exists()


@pytest.mark.slow
def test_a_part_without_zarr_json_is_never_reused(client, inputs, tmp_path):
    """A Zarr .part whose metadata is gone (a refused file's .part removed while a task still
    wrote chunks): the rerun starts it afresh and gives the full output."""
    cfg = EnhanceConfig(output_format="zarr")
    src = [inputs / "stack" / "s.tif"]
    _single(src, tmp_path / "single", cfg)
    out = tmp_path / "cluster"
    _stopped_after(client, src, out, cfg, 2)
    (out / "s.ome.zarr.part" / "zarr.json").unlink()
    summary = enhance_on_cluster(src, out, _recipe(cfg), cfg, client=client, block=2)
    assert summary.ok, summary.files
    assert summary.frames == 10  # nothing reused
    _same_outputs(tmp_path / "single", out)
