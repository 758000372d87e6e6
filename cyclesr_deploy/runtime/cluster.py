"""Batch enhancement on a Dask cluster: ``cyclesr enhance ... --cluster SPEC``.

The client (this process) holds the output folder's lock and manifest, cuts the work into
tasks and records each one as it finishes; the workers (dask ``distributed`` processes) do the
enhancing and write their own results::

    client: triage (pipeline.triage: skip done outputs) -> tasks -> as_completed -> manifest
    worker: run_block(task) -> worker_runner(recipe, cfg)   engine opened once per worker
                                  -> FrameRunner(frame)     the one frame runner, frame by frame
                                  -> OME-Zarr: its frames into ``<name>.zarr.part`` level 0
                                     TIFF: the whole file, ``<name>.part`` renamed (runtime io)

Unit of work: a block of ``block`` frames of a stack written to OME-Zarr (chunks hold one
frame, so blocks never share a chunk), or one whole file for a TIFF output (a folder of small
files). A Zarr output is finished (pyramid from the stored level 0, NGFF metadata, rename) by
one more task once all its blocks are done.

The model never travels through the task graph: tasks carry an :class:`EngineRecipe` (the
model folder's path and the engine factory's settings) and each worker process opens the
engine once (:func:`worker_runner`, cached per recipe and settings). Every frame goes through
:class:`~cyclesr_deploy.runtime.runner.FrameRunner` exactly as in a single-process run, so the
outputs are bit-identical.

Faults: a worker that dies has its tasks re-run elsewhere by dask (a block rewrites the same
chunks: identical output; a finish or whole-file task that renamed its output is done when
run again). A bad frame fails its task with the file and frame named, and a file whose output
cannot be made (axes NGFF cannot express, no ``.part``) fails before any task, named; the
file is recorded failed and the other files go on (exit code 1 from the CLI). Resume: the
blocks done are recorded in the manifest entry of their input (``status: partial``,
``blocks_done``); the same command run again after the client was stopped or killed computes
only the blocks not recorded.

``dask.distributed`` is imported lazily (the ``dask`` extra); ``dask-jobqueue`` only for a
cluster configuration file.
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from cyclesr_deploy.errors import InputError, require
from cyclesr_deploy.model import ModelConfig, ModelFolder, load_model
from cyclesr_deploy.runtime.formats import open_frames, write_frames
from cyclesr_deploy.runtime.manifest import (
    FileResult,
    Manifest,
    OutputLock,
    held,
    manifest_header,
    utc_now,
)
from cyclesr_deploy.runtime.omezarr import ZarrOutput
from cyclesr_deploy.runtime.pipeline import EnhanceSummary, ProgressEvent, check_paths, triage
from cyclesr_deploy.runtime.runner import EnhanceConfig, FrameRunner
from cyclesr_deploy.runtime.tiff import StackInfo, output_info
from cyclesr_deploy.runtime.trust_policy import FileTrust, UntrustedFile, check_trust

__all__ = [
    "CLUSTER_COMMAND",
    "EngineRecipe",
    "check_cluster",
    "connect",
    "enhance_on_cluster",
    "local_cluster",
    "run_block",
    "worker_runner",
]

log = logging.getLogger(__name__)

CLUSTER_COMMAND = "cyclesr enhance --cluster"
_PURPOSE = "--cluster (Dask scale-out)"
_SAVE_S = 1.0  # whole-file results are saved at most every second (blocks: each at once)
_GPU_BACKENDS = ("tensorrt",)  # backends that need a GPU (auto/onnxruntime/torch fall back)


@dataclass(frozen=True)
class EngineRecipe:
    """How a worker opens its engine: the model folder and the engine factory's settings
    (``open_engine``), paths and strings only. ``frames``: the run's frame shapes (the factory's
    frozen-statistics policy needs them); ``threads``: CPU threads per engine."""

    model: str
    backend: str = "auto"
    precision: str = "default"
    tiling: str = "none"
    stats: str = "auto"
    threads: int | None = None
    frames: tuple[tuple[int, int], ...] = ()

    @classmethod
    def for_run(
        cls,
        model: str | Path,
        cluster: str,
        backend: str,
        precision: str,
        cfg: EnhanceConfig,
        frames: Sequence[tuple[int, int]],
        threads: int | None = None,
    ) -> EngineRecipe:
        """The recipe of a run: ``local:N`` gives each engine cores / N CPU threads (whatever
        the backend: a CPU engine on a GPU host too); on other clusters each worker shares its
        host's cores with the workers beside it (:func:`worker_threads`, on the worker);
        ``threads`` (``--threads``) overrides both."""
        kind, value = parse_cluster(cluster)
        if threads is None and kind == "local":
            threads = cpu_threads(value)
        if kind == "local" and backend in _GPU_BACKENDS and not visible_gpus():
            log.warning(
                "--backend %s needs a GPU but none is visible (CUDA_VISIBLE_DEVICES, the CUDA "
                "runtime, nvidia-smi): the %d workers are not pinned to GPUs",
                backend,
                value,
            )
        return cls(
            model=str(model),
            backend=backend,
            precision=precision,
            tiling=cfg.engine_tiling,
            stats=cfg.stats,
            threads=threads,
            frames=tuple(tuple(int(n) for n in f) for f in frames),  # type: ignore[misc]
        )

    def open(self) -> Any:
        """The engine (not entered), from the one engine factory."""
        from cyclesr_deploy.engines import open_engine

        return open_engine(
            self.model,
            backend=self.backend,  # type: ignore[arg-type]
            precision=self.precision,  # type: ignore[arg-type]
            threads=self.threads if self.threads is not None else worker_threads(),
            tiling=self.tiling,  # type: ignore[arg-type]
            stats=self.stats,  # type: ignore[arg-type]
            frames=self.frames,
        )

    def model_config(self) -> ModelConfig:
        return load_model(self.model)


# --- worker side -----------------------------------------------------------------------------
_ENGINES: dict[Any, Any] = {}  # recipe -> entered engine, one per worker process
_RUNNERS: dict[Any, FrameRunner] = {}  # (recipe, settings) -> runner
_STACK = contextlib.ExitStack()  # closes the engines when the worker process exits
_LOCK = threading.Lock()  # one frame at a time per engine, whatever the worker's threads
_READERS: OrderedDict[tuple[str, int, int], Any] = OrderedDict()  # the last inputs read
_READERS_KEPT = 4


def _reader(path: str, stamp: tuple[int, int]) -> Any:
    """An open reader of ``path`` (kept while its fingerprint ``stamp``, the client's
    ``formats.input_stat``, stays the same: a Zarr input's chunks rewritten in place change
    it): the blocks of a stack read its header once per worker, not once per block (a TIFF's
    header lists every page). Call with ``_LOCK`` held."""
    key = (path, *stamp)
    reader = _READERS.pop(key, None)
    if reader is None:
        reader = open_frames(path)
        while len(_READERS) >= _READERS_KEPT:
            _READERS.popitem(last=False)[1].close()
    _READERS[key] = reader
    return reader


def worker_runner(recipe: EngineRecipe, cfg: EnhanceConfig) -> FrameRunner:
    """This process's frame runner for ``recipe`` and ``cfg``: the engine is opened on the
    first call and kept (call with ``_LOCK`` held)."""
    key = (recipe, cfg.model_dump_json())
    runner = _RUNNERS.get(key)
    if runner is None:
        engine = _ENGINES.get(recipe)
        if engine is None:
            if not _ENGINES:
                import atexit

                atexit.register(_STACK.close)
            engine = _ENGINES[recipe] = _STACK.enter_context(recipe.open())
        runner = _RUNNERS[key] = FrameRunner(engine, recipe.model_config(), cfg)
    return runner


@dataclass(frozen=True)
class Block:
    """One task: frames ``start``..``stop`` of ``input`` into ``zarr`` (a Zarr output), or the
    whole file into ``target`` (a TIFF output, ``out_info`` describing it)."""

    input: str
    start: int
    stop: int
    zarr: ZarrOutput | None = None
    target: str | None = None
    out_info: StackInfo | None = None
    overwrite: bool = False
    stamp: tuple[int, int] = (0, 0)  # the input's (size, mtime_ns) fingerprint (input_stat)

    @property
    def frames(self) -> int:
        return self.stop - self.start


@contextlib.contextmanager
def _frame_named(path: str, index: int) -> Iterator[None]:
    """Any error inside becomes an InputError naming the file and the frame."""
    try:
        yield
    except Exception as exc:
        text = str(exc).removeprefix(f"{path}: ")
        if not text.startswith(f"frame {index}"):
            text = f"frame {index}: {text if isinstance(exc, InputError) else repr(exc)}"
        raise InputError(f"{path}: {text}") from None


def _enhanced(runner: FrameRunner, reader: Any, path: str, index: int, trust: FileTrust) -> Any:
    """Frame ``index`` through the runner and the trust policy; any error names the file and
    the frame (a refusal of the policy stays an :class:`UntrustedFile`)."""
    with _frame_named(path, index):
        result, scored = runner.run(reader.read(index), index)
    return trust.admit(index, result, scored)


def _run_zarr_block(block: Block, runner: FrameRunner, reader: Any, trust: FileTrust) -> None:
    """The block's frames through the runner, frame after frame, while one I/O thread reads
    the next frame and writes the previous one (as the pipeline's reader and writer threads
    overlap the engine)."""
    from concurrent.futures import ThreadPoolExecutor

    out = block.zarr
    assert out is not None
    with ThreadPoolExecutor(1, thread_name_prefix="cyclesr-block-io") as io:
        ahead = io.submit(reader.read, block.start)
        written = None
        for i in range(block.start, block.stop):
            with _frame_named(block.input, i):
                frame = ahead.result()
            if i + 1 < block.stop:
                ahead = io.submit(reader.read, i + 1)
            with _frame_named(block.input, i):
                result, scored = runner.run(frame, i)
            result = trust.admit(i, result, scored)
            if written is not None:
                written.result()
            written = io.submit(out.write, i, result)
        if written is not None:
            written.result()


class BlockResult(NamedTuple):
    """What a task reports: frames enhanced and their trust records (``FileTrust.records``;
    empty when unscored)."""

    frames: int
    trust: list[dict[str, Any]]


def run_block(block: Block, recipe: EngineRecipe, cfg: EnhanceConfig) -> BlockResult:
    """A task (runs on a worker): enhance the block's frames under the trust policy and write
    them (see :class:`BlockResult`)."""
    with _LOCK:
        reader = _reader(block.input, block.stamp)
        runner = worker_runner(recipe, cfg)
        trust = FileTrust(cfg.untrusted, Path(block.input).name, reader.info.n_frames)
        if block.zarr is not None:
            _run_zarr_block(block, runner, reader, trust)
        else:
            assert block.target is not None and block.out_info is not None
            if _written(block):
                return BlockResult(block.frames, [])
            frames = (_enhanced(runner, reader, block.input, i, trust) for i in range(block.stop))
            write_frames(
                block.target,
                block.out_info,
                frames,
                overwrite=block.overwrite,
                bigtiff=cfg.bigtiff,
                annotations=trust.metadata,
            )
    return BlockResult(block.frames, trust.records)


def _written(block: Block) -> bool:
    """A retried whole-file task whose first run renamed its output before its worker was lost:
    without overwrite the client only runs files whose output did not exist, so an existing
    output of the expected shape (written atomically) is this run's."""
    target = Path(block.target or "")
    if block.overwrite or not target.exists() or block.out_info is None:
        return False
    try:
        with open_frames(target) as done:
            return bool(done.info.shape == block.out_info.shape)
    except Exception:
        return False


def finish_zarr(out: ZarrOutput, overwrite: bool, annotations: dict[str, str] | None = None) -> str:
    """A task: pyramid, metadata (``annotations``: the trust policy's) and rename of a Zarr
    output whose frames are all written."""
    return str(out.finish(overwrite=overwrite, annotations=annotations))


# --- clusters ----------------------------------------------------------------------------------
def visible_gpus() -> list[str]:
    """The CUDA devices workers may be pinned to: ``CUDA_VISIBLE_DEVICES`` when set, else the
    devices the CUDA runtime counts (cuda-python), else those ``nvidia-smi -L`` lists (the
    driver's tool, there on any NVIDIA install, Windows included); none without a GPU."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d.strip() for d in env.split(",") if d.strip() and d.strip() != "-1"]
    with contextlib.suppress(Exception):
        from cyclesr_deploy.cuda_runtime import device_count

        return [str(i) for i in range(device_count())]
    return _nvidia_smi_gpus()


def _nvidia_smi_gpus() -> list[str]:
    """The GPU indices ``nvidia-smi -L`` lists (no shell, 10 s at most); [] without it."""
    import shutil
    import subprocess

    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        done = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return []
    return parse_nvidia_smi(done.stdout) if done.returncode == 0 else []


def parse_nvidia_smi(text: str) -> list[str]:
    """The indices of the ``GPU <i>: <name> (UUID: ...)`` lines of ``nvidia-smi -L`` (MIG
    device lines, indented, are not GPUs of their own here)."""
    import re

    return re.findall(r"^GPU (\d+):", text, flags=re.MULTILINE)


def worker_threads() -> int:
    """CPU threads for the engine of this dask worker (a jobqueue or ``tcp://`` worker; local
    workers get theirs in the recipe): the cores this process may use (its CPU affinity: a
    SLURM job's CPUs) shared by the dask workers on the same host; 1 at least."""
    try:
        cores = len(os.sched_getaffinity(0))  # type: ignore[attr-defined]
    except AttributeError:  # Windows, macOS
        cores = os.cpu_count() or 1
    peers = 1
    with contextlib.suppress(Exception):  # not in a worker, or the scheduler unreachable
        import distributed
        from distributed.comm import get_address_host

        host = get_address_host(distributed.get_worker().address)
        client = distributed.get_client()
        try:
            workers = client.scheduler_info(n_workers=-1)["workers"]
        except TypeError:  # older distributed: every worker listed
            workers = client.scheduler_info()["workers"]
        peers = max(1, sum(1 for w in workers.values() if w.get("host") == host))
    return max(1, cores // peers)


def cpu_threads(n_workers: int) -> int:
    """Engine threads per worker so that workers x threads <= the cores."""
    return max(1, (os.cpu_count() or 1) // max(1, n_workers))


def worker_env(n_workers: int, gpus: Sequence[str]) -> list[dict[str, str]]:
    """The environment of each of ``n_workers`` local workers: one GPU each, round robin
    (``CUDA_VISIBLE_DEVICES``; the engine then sees it as device 0) where ``gpus`` are given;
    the CPU threads capped so that workers x threads <= cores (``OMP_NUM_THREADS``)."""
    threads = str(cpu_threads(n_workers))
    envs = []
    for i in range(n_workers):
        env = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = str(gpus[i % len(gpus)])
        envs.append(env)
    return envs


def local_cluster(n_workers: int, gpus: Sequence[str] | None = None) -> Any:
    """``n_workers`` worker processes on this machine, one thread each, with the environment
    of :func:`worker_env` (``gpus``: the visible GPUs when None)."""
    distributed = require("distributed", "dask", _PURPOSE)
    gpus = visible_gpus() if gpus is None else list(gpus)
    workers = {
        f"cyclesr-{i}": {
            "cls": distributed.Nanny,
            # silence_logs: the workers' start/stop chatter (warnings and errors still show)
            "options": {"nthreads": 1, "env": env, "name": f"cyclesr-{i}", "silence_logs": 30},
        }
        for i, env in enumerate(worker_env(n_workers, gpus))
    }
    scheduler = {"cls": distributed.Scheduler, "options": {"dashboard": False}}
    return distributed.SpecCluster(workers=workers, scheduler=scheduler, name="cyclesr")


def load_cluster_file(config: Path) -> tuple[Any, dict[str, Any], int]:
    """The dask-jobqueue cluster class, its keyword arguments and the number of jobs a cluster
    file gives (see docs/scale-out.md and docs/examples/slurm-gpu.yaml)::

        kind: slurm          # slurm | pbs | lsf | sge | htcondor
        jobs: 4              # jobs to start (one worker per job: processes 1, cores 1)
        cluster:             # the keyword arguments of dask_jobqueue.<Kind>Cluster
          job_cpu: 8
          memory: 32GB
          ...
    """
    import yaml  # a dependency of dask

    jobqueue = require("dask_jobqueue", "dask", "a jobqueue cluster file")
    try:
        spec = yaml.safe_load(config.read_text(encoding="utf-8"))
        kind = str(spec["kind"]).lower()
        kwargs = dict(spec.get("cluster") or {})
        jobs = int(spec.get("jobs", 1))
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError) as exc:
        raise InputError(f"--cluster {config}: not a cluster file ({exc})") from exc
    classes = {
        "slurm": "SLURMCluster",
        "pbs": "PBSCluster",
        "lsf": "LSFCluster",
        "sge": "SGECluster",
        "htcondor": "HTCondorCluster",
    }
    if kind not in classes:
        raise InputError(f"--cluster {config}: kind {kind!r} is not one of {sorted(classes)}")
    return getattr(jobqueue, classes[kind]), kwargs, jobs


def jobqueue_cluster(config: Path) -> Any:
    """The cluster of a cluster file (:func:`load_cluster_file`), its jobs submitted."""
    cls, kwargs, jobs = load_cluster_file(config)
    cluster = cls(**kwargs)
    cluster.scale(jobs=jobs)
    return cluster


def parse_cluster(spec: str) -> tuple[str, Any]:
    """``local:N`` -> ("local", N); ``tcp://host:port`` (any ``scheme://``) -> ("address",
    spec); a ``.yaml``/``.yml`` file -> ("jobqueue", Path). InputError otherwise."""
    if spec.startswith("local:"):
        try:
            n = int(spec.removeprefix("local:"))
        except ValueError:
            n = 0
        if n < 1:
            raise InputError(f"--cluster {spec}: local:N needs a worker count N >= 1")
        return "local", n
    if "://" in spec:
        return "address", spec
    if spec.lower().endswith((".yaml", ".yml")):
        if not Path(spec).is_file():
            raise InputError(f"--cluster {spec}: no such cluster file")
        return "jobqueue", Path(spec)
    raise InputError(
        f"--cluster {spec}: use local:N, a scheduler address (tcp://host:port) or a "
        "dask-jobqueue cluster file (.yaml)"
    )


def check_cluster(spec: str) -> None:
    """InputError for a bad ``--cluster`` spec; MissingExtraError (naming the ``dask`` extra)
    when dask.distributed (or dask-jobqueue for a cluster file) is missing."""
    kind, _ = parse_cluster(spec)
    require("distributed", "dask", _PURPOSE)
    if kind == "jobqueue":
        require("dask_jobqueue", "dask", "a jobqueue cluster file")


@contextlib.contextmanager
def connect(spec: str) -> Iterator[Any]:
    """A ``distributed.Client`` for ``spec`` (see :func:`parse_cluster`); a cluster started
    here is closed at the end."""
    kind, value = parse_cluster(spec)
    distributed = require("distributed", "dask", _PURPOSE)
    logging.getLogger("distributed").setLevel(logging.WARNING)
    if kind == "address":
        with distributed.Client(value) as client:
            yield client
        return
    cluster = local_cluster(value) if kind == "local" else jobqueue_cluster(value)
    with cluster, distributed.Client(cluster) as client:
        yield client


# --- client side -------------------------------------------------------------------------------
def _settings_digest(recipe: EngineRecipe, cfg: EnhanceConfig, block: int) -> str:
    """What makes recorded blocks reusable: the model's content (a model re-exported into the
    same folder gets a new digest), the engine settings, the run settings, the block."""
    folder = Path(recipe.model)
    model = ModelFolder(folder if folder.is_dir() else folder.parent).content_digest()
    text = repr((model, recipe.backend, recipe.precision, recipe.tiling, recipe.stats))
    text += cfg.model_copy(update={"overwrite": False}).model_dump_json() + str(block)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _stamp(job: Any) -> tuple[int, int]:
    """The input's fingerprint as triage took it (``formats.input_stat``): the workers key
    their open readers by it instead of walking a Zarr input's chunks for every block."""
    return int(job.size or 0), int(job.mtime_ns or 0)


def _named(path: Path, exc: BaseException | None) -> str:
    """The error text of ``exc``, starting with the file's path."""
    text = str(exc) if isinstance(exc, InputError) else repr(exc)
    return text if text.startswith(str(path)) else f"{path}: {text}"


class BlocksDone:
    """The blocks of a Zarr output done, as sorted, disjoint ``[first, last]`` runs: what the
    manifest records as ``blocks_done``. Blocks finish in about their order, so an entry saved
    after every block stays a few runs long; one number per block made each save grow with
    the stack (the saves of a run quadratic in its blocks). Reads either form (block numbers:
    manifests written before runs)."""

    def __init__(self, recorded: Iterable[Any] = ()) -> None:
        self.runs: list[list[int]] = []
        self._count = 0
        for item in recorded:
            first, last = item if isinstance(item, list | tuple) else (item, item)
            for b in range(int(first), int(last) + 1):
                self.add(b)

    def _after(self, b: int) -> int:
        """The index of the first run that starts after block ``b``."""
        return bisect.bisect_right(self.runs, b, key=lambda run: run[0])

    def __contains__(self, b: object) -> bool:
        if not isinstance(b, int):
            return False
        i = self._after(b)
        return i > 0 and self.runs[i - 1][1] >= b

    def __len__(self) -> int:
        return self._count

    def add(self, b: int) -> None:
        if b in self:
            return
        i = self._after(b)
        joins_left = i > 0 and self.runs[i - 1][1] == b - 1
        joins_right = i < len(self.runs) and self.runs[i][0] == b + 1
        if joins_left and joins_right:
            self.runs[i - 1][1] = self.runs.pop(i)[1]
        elif joins_left:
            self.runs[i - 1][1] = b
        elif joins_right:
            self.runs[i][0] = b
        else:
            self.runs.insert(i, [b, b])
        self._count += 1

    def record(self) -> list[list[int]]:
        """The runs, copied (the manifest's ``blocks_done``)."""
        return [list(run) for run in self.runs]


class _File:
    """The client's view of one input: its tasks, what is done, how it ends."""

    def __init__(
        self, job: Any, info: StackInfo, out_info: StackInfo, cfg_untrusted: str = "warn"
    ) -> None:
        self.job, self.info, self.out_info = job, info, out_info
        self.pending: set[Any] = set()
        self.blocks_done = BlocksDone()
        self.frames = 0  # enhanced in this run
        self.error: str | None = None
        self.refused = False  # by the trust policy: no output (its .part removed)
        self.zarr: ZarrOutput | None = None
        self.block = 1  # frames per task of a Zarr output
        self.t0 = time.perf_counter()
        self.trust = FileTrust(cfg_untrusted, job.path.name, info.n_frames)


def enhance_on_cluster(
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    recipe: EngineRecipe,
    cfg: EnhanceConfig | None = None,
    *,
    cluster: str | None = "local:2",
    client: Any = None,
    block: int = 8,
    on_progress: Callable[[ProgressEvent], None] | None = None,
    lock: OutputLock | None = None,
) -> EnhanceSummary:
    """Enhance ``inputs`` into ``out_dir`` on a Dask cluster (see the module docstring).

    ``cluster``: ``local:N``, a scheduler address or a jobqueue file (:func:`connect`), or
    ``client``: a connected ``distributed.Client`` to use instead. ``block``: frames per task
    for Zarr outputs. Skipping, the manifest, the lock and the summary are those of
    ``enhance_files``; ``summary.frames`` counts the frames enhanced by this run.
    """
    start = time.perf_counter()
    cfg = cfg or EnhanceConfig()
    out_dir = Path(out_dir)
    paths = [Path(p) for p in inputs]
    check_paths(paths, out_dir, cfg.output_format)
    if block < 1:
        raise InputError(f"--block {block}: must be at least 1")
    model = recipe.model_config()
    check_trust(cfg, model, recipe.model)  # a stale or missing calibration: before any task
    if cfg.tile:
        cfg.tiling(model)  # bad tile/overlap: refused before any task
    if cfg.tile == "auto" and cfg.tile_budget_px is None:  # settled here: one tile on every worker
        budget = cfg.tile_budget(model)
        cfg = cfg.model_copy(update={"tile_budget_px": budget.budget_px})
        log.info("tile auto for every worker: up to %d px (%s)", budget.side, budget.reason)
    engine_name = f"dask ({cluster or 'client'}): {recipe.backend} engine per worker"
    header = manifest_header(model.name, engine_name, cfg.model_dump(mode="json"), cluster=cluster)
    with held(out_dir, lock, CLUSTER_COMMAND):
        manifest = Manifest(out_dir, header, interval=_SAVE_S)
        results: dict[int, FileResult] = {}
        jobs = triage(paths, out_dir, cfg, manifest, results, on_progress)
        run = _ClusterRun(recipe, cfg, model, manifest, results, on_progress, block)
        try:
            if jobs:
                with contextlib.ExitStack() as stack:
                    if client is None:
                        assert cluster is not None
                        client = stack.enter_context(connect(cluster))
                    run.run(client, jobs)
        finally:
            manifest.save(force=True)
    return EnhanceSummary(
        files=[results[i] for i in sorted(results)],
        engine=engine_name,
        out_dir=str(out_dir),
        seconds=round(time.perf_counter() - start, 4),
        frames=run.frames_done,
        megapixels=round(run.megapixels, 6),
    )


class _ClusterRun:
    """The client's loop: submit every file's tasks, record each as it finishes."""

    def __init__(
        self,
        recipe: EngineRecipe,
        cfg: EnhanceConfig,
        model: ModelConfig,
        manifest: Manifest,
        results: dict[int, FileResult],
        on_progress: Callable[[ProgressEvent], None] | None,
        block: int,
    ) -> None:
        self.recipe, self.cfg, self.model, self.block = recipe, cfg, model, block
        self.manifest, self.results, self.on_progress = manifest, results, on_progress
        self.digest = _settings_digest(recipe, cfg, block)
        self.tasks: dict[Any, tuple[_File, int | None]] = {}  # future -> (file, block or None)
        self.frames_done = 0
        self.megapixels = 0.0

    def run(self, client: Any, jobs: list[Any]) -> None:
        distributed = require("distributed", "dask", _PURPOSE)
        files = [f for f in (self._open(job) for job in jobs) if f is not None]
        for f in files:
            try:
                self._submit(client, f)
            except Exception as exc:  # this file's output cannot be made: the others go on
                client.cancel(list(f.pending))
                for fut in f.pending:
                    self.tasks.pop(fut, None)
                self._record_failed(f.job, _named(f.job.path, exc), 0)
        futures = distributed.as_completed(list(self.tasks))
        try:
            for future in futures:
                f, index = self.tasks.pop(future)
                f.pending.discard(future)
                if f.refused:  # by the trust policy: its other results are ignored
                    if not f.pending and f.zarr is not None:
                        f.zarr.abort()  # no task of it writes any more
                    continue
                if future.cancelled():
                    continue
                if future.status == "error":
                    self._failed(client, f, future.exception())
                elif index is None:  # a TIFF file or a Zarr output's finish task
                    if f.zarr is None:
                        f.trust.absorb(future.result().trust)
                        self._frames(f, f.info.n_frames)
                    self._done(f)
                else:
                    f.trust.absorb(future.result().trust)
                    self._block_done(f, index)
                    self.manifest.save(force=True)  # a killed client recomputes no block
                    if not f.pending and f.error is None and f.zarr is not None:
                        task = client.submit(
                            finish_zarr, f.zarr, self.cfg.overwrite, f.trust.metadata(), pure=False
                        )
                        self.tasks[task] = (f, None)
                        f.pending.add(task)
                        futures.add(task)
                self.manifest.save()
        except BaseException:  # interrupted (or a bug): nothing more runs for this client
            client.cancel(list(self.tasks))
            raise

    def _open(self, job: Any) -> _File | None:
        """The file's metadata (from the client) and its output's plan (a Zarr output's axes
        checked before any task), or its failure recorded."""
        try:
            with open_frames(job.path) as reader:
                info = reader.info
                chunk = int(getattr(reader, "chunk_frames", 1))
            f = _File(job, info, output_info(info, self.model.scale), self.cfg.untrusted)
            if Path(job.out).suffix.lower() == ".zarr":
                f.zarr = ZarrOutput(job.out, f.out_info, self.cfg.pyramid)
                f.block = -(-self.block // chunk) * chunk  # whole input chunks per task
                if f.block != self.block:
                    log.info(
                        "%s: blocks of %d frames (a multiple of its %d-frame input chunks)",
                        job.path,
                        f.block,
                        chunk,
                    )
            return f
        except Exception as exc:
            self._record_failed(job, _named(job.path, exc), 0)
            return None

    def _submit(self, client: Any, f: _File) -> None:
        job, n = f.job, f.info.n_frames
        entry = self.manifest.entry(job.path) or {}
        if f.zarr is not None:
            reusable = (
                entry.get("status") in ("partial", "failed")
                and entry.get("settings") == self.digest
                and entry.get("block") == f.block
                and entry.get("input_size") == job.size
                and entry.get("input_mtime_ns") == job.mtime_ns
                and (f.zarr.part / "zarr.json").is_file()  # never a half-removed .part
            )
            if reusable:
                f.blocks_done = BlocksDone(entry.get("blocks_done", ()))
                f.trust.restore(entry.get("trust"))
            else:
                f.zarr.create()
            blocks = range(-(-n // f.block))
            todo = [b for b in blocks if b not in f.blocks_done]
            self._record_partial(f)
            self._progress(
                ProgressEvent("start", job.path, sum(self._block_frames(f, b) for b in todo))
            )
            for b in todo:
                start, stop = b * f.block, min(n, (b + 1) * f.block)
                task = Block(str(job.path), start, stop, zarr=f.zarr, stamp=_stamp(job))
                self._add(client, f, task, b)
            if not todo:  # every block recorded: only the finish is left
                annotations = f.trust.metadata()
                fut = client.submit(
                    finish_zarr, f.zarr, self.cfg.overwrite, annotations, pure=False
                )
                self.tasks[fut] = (f, None)
                f.pending.add(fut)
        else:
            self._progress(ProgressEvent("start", job.path, n))
            task = Block(
                str(job.path),
                0,
                n,
                target=str(job.out),
                out_info=f.out_info,
                overwrite=self.cfg.overwrite,
                stamp=_stamp(job),
            )
            self._add(client, f, task, None)

    @staticmethod
    def _block_frames(f: _File, b: int) -> int:
        return min(f.info.n_frames, (b + 1) * f.block) - b * f.block

    def _add(self, client: Any, f: _File, task: Block, index: int | None) -> None:
        fut = client.submit(run_block, task, self.recipe, self.cfg, pure=False)
        self.tasks[fut] = (f, index)
        f.pending.add(fut)

    def _block_done(self, f: _File, index: int) -> None:
        f.blocks_done.add(index)
        self._record_partial(f)  # recorded before anything else can stop the client
        self._frames(f, self._block_frames(f, index))

    def _frames(self, f: _File, n: int) -> None:
        mpx = f.info.frame_shape[0] * f.info.frame_shape[1] / 1e6
        f.frames += n
        self.frames_done += n
        self.megapixels += n * mpx
        for _ in range(n):
            self._progress(ProgressEvent("frame", f.job.path, f.info.n_frames, megapixels=mpx))

    def _record_partial(self, f: _File) -> None:
        job = f.job
        self.manifest.update(
            job.path,
            input=str(job.path),
            output=str(job.out),
            status="partial" if f.error is None else "failed",
            settings=self.digest,
            block=f.block,
            n_blocks=-(-f.info.n_frames // f.block),
            blocks_done=f.blocks_done.record(),
            input_size=job.size,
            input_mtime_ns=job.mtime_ns,
            trust=f.trust.summary(),
        )

    def _failed(self, client: Any, f: _File, exc: BaseException | None) -> None:
        if f.error is not None:
            return
        f.error = _named(f.job.path, exc)
        client.cancel(list(f.pending))
        if isinstance(exc, UntrustedFile):  # the trust policy refused the file (no output)
            f.refused = True
            if f.zarr is not None and not f.pending:  # else once its running tasks are done
                f.zarr.abort()
            f.trust.report()
            status = "skipped" if exc.skipped else "failed"
            self._end(f.job, status, 0, error=None if exc.skipped else str(exc), t0=f.t0,
                      note=str(exc) if exc.skipped else None)  # fmt: skip
            return
        # a Zarr output keeps its recorded blocks: a rerun computes only the others
        self._end(f.job, "failed", f.frames, error=f.error, keep_blocks=f.zarr is not None, t0=f.t0)

    def _record_failed(self, job: Any, error: str, frames: int) -> None:
        self._end(job, "failed", frames, error=error)

    def _done(self, f: _File) -> None:
        f.trust.report()
        self._end(
            f.job, "done", f.info.n_frames, output=str(f.job.out), progress=f.frames, t0=f.t0,
            trust=f.trust.summary(),
        )  # fmt: skip

    def _end(
        self,
        job: Any,
        status: Any,
        frames: int,
        *,
        error: str | None = None,
        output: str | None = None,
        keep_blocks: bool = False,
        progress: int | None = None,
        t0: float = 0.0,
        note: str | None = None,
        trust: dict[str, Any] | None = None,
    ) -> None:
        """Record the end of ``job`` (result, manifest, progress event)."""
        result = FileResult(
            input=str(job.path),
            output=output,
            status=status,
            frames=frames,
            error=error,
            input_size=job.size,
            input_mtime_ns=job.mtime_ns,
            finished=utc_now(),
            seconds=round(time.perf_counter() - t0, 4) if t0 else 0.0,
            note=note,
            trust=trust,
        )
        self.results[job.index] = result
        if keep_blocks:
            self.manifest.update(job.path, status=status, error=error)
        else:
            self.manifest.record(result)
        n = frames if progress is None else progress
        self._progress(ProgressEvent("end", job.path, n, result=result))

    def _progress(self, event: ProgressEvent) -> None:
        if self.on_progress is not None:
            self.on_progress(event)
