"""The cluster module's helpers that need no cluster: GPU discovery (nvidia-smi), CPU threads
per worker, the settings digest's model identity."""

from __future__ import annotations

import logging
import shutil
import subprocess

from cyclesr_deploy.builtin import DEFAULT_MODEL, builtin_model
from cyclesr_deploy.runtime import cluster
from cyclesr_deploy.runtime.cluster import EngineRecipe
from cyclesr_deploy.runtime.runner import EnhanceConfig

SMI = """GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-0c3e1f0a-1111-2222-3333-444455556666)
GPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-1d4f2a1b-1111-2222-3333-444455556666)
  MIG 3g.40gb     Device  0: (UUID: MIG-5a6b7c8d-1111-2222-3333-444455556666)
GPU 2: NVIDIA RTX A4000 (UUID: GPU-2e5a3b2c-1111-2222-3333-444455556666)
"""


def test_nvidia_smi_lines_are_parsed():
    assert cluster.parse_nvidia_smi(SMI) == ["0", "1", "2"]
    assert cluster.parse_nvidia_smi("No devices were found\n") == []


def test_gpus_counted_by_nvidia_smi_without_cuda_python(monkeypatch):
    import cyclesr_deploy.cuda_runtime as cuda_runtime

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(cuda_runtime, "device_count", lambda: 1 / 0)  # no cuda-python
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")
    seen = []

    def run(args, **kw):
        seen.append((args, kw))
        return subprocess.CompletedProcess(args, 0, stdout=SMI, stderr="")

    monkeypatch.setattr(subprocess, "run", run)
    assert cluster.visible_gpus() == ["0", "1", "2"]
    assert seen[0][0] == ["/usr/bin/nvidia-smi", "-L"] and seen[0][1]["timeout"] > 0
    assert "shell" not in seen[0][1]
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert cluster.visible_gpus() == []


def test_cpu_threads_per_worker_on_every_backend(monkeypatch, caplog):
    model = builtin_model(DEFAULT_MODEL)
    monkeypatch.setattr(cluster.os, "cpu_count", lambda: 8)
    monkeypatch.setattr(cluster, "visible_gpus", lambda: ["0"])  # a GPU host, a CPU engine
    recipe = EngineRecipe.for_run(model, "local:4", "onnxruntime", "auto", EnhanceConfig(), [])
    assert recipe.threads == 2
    recipe = EngineRecipe.for_run(model, "tcp://h:8786", "auto", "auto", EnhanceConfig(), [])
    assert recipe.threads is None  # each worker: its own cores / the workers on its host
    assert 1 <= cluster.worker_threads() <= (cluster.os.cpu_count() or 1)
    monkeypatch.setattr(cluster, "visible_gpus", lambda: [])
    with caplog.at_level(logging.WARNING):
        EngineRecipe.for_run(model, "local:2", "tensorrt", "auto", EnhanceConfig(), [])
    assert "needs a GPU but none is visible" in caplog.text


def test_settings_digest_follows_the_model_content(tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(builtin_model(DEFAULT_MODEL), folder)
    recipe, cfg = EngineRecipe(str(folder)), EnhanceConfig()
    before = cluster._settings_digest(recipe, cfg, 8)
    assert cluster._settings_digest(recipe, cfg, 8) == before
    onnx = next(folder.glob("*.onnx"))
    onnx.write_bytes(onnx.read_bytes() + b"\0")  # re-exported in place
    assert cluster._settings_digest(recipe, cfg, 8) != before


def test_blocks_done_are_recorded_as_runs_and_read_in_either_form():
    done = cluster.BlocksDone()
    for b in (3, 0, 1, 5, 2, 9, 4, 2):  # out of order, one twice
        done.add(b)
    assert done.record() == [[0, 5], [9, 9]] and len(done) == 7
    assert 4 in done and 6 not in done and 9 in done and 10 not in done
    many = cluster.BlocksDone()  # a long stack done in order: one run, each save stays short
    for b in range(5000):
        many.add(b)
    assert many.record() == [[0, 4999]] and len(many) == 5000
    old = cluster.BlocksDone([0, 1, 2, 7])  # a manifest written with block numbers
    assert old.record() == [[0, 2], [7, 7]]
    assert len(cluster.BlocksDone(old.record())) == 4
