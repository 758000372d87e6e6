"""The runtime and the CLI must work with only the core dependencies installed."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

HEAVY = (
    "torch",
    "onnx",
    "onnxruntime",
    "tensorrt",
    "cuda",
    "torchvision",
    "cv2",
    "matplotlib",
    "watchdog",
    "yaml",
    "bioimageio",
    "zarr",
    "ome_zarr",
    "ome_zarr_models",
    "dask",
    "distributed",
    "dask_jobqueue",
    "openvino",
    "nncf",
)

# Block the heavy modules as if they were not installed, then run the given code.
_BLOCKER = textwrap.dedent(
    f"""
    import sys, importlib.abc
    HEAVY = {HEAVY!r}
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split('.')[0] in HEAVY:
                raise ImportError('blocked for test: ' + name)
            return None
    sys.meta_path.insert(0, Block())
    """
)


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _BLOCKER + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_import_package_and_cli_pull_no_heavy_dependency():
    res = _run(
        """
        import sys
        import cyclesr_deploy, cyclesr_deploy.cli, cyclesr_deploy.metrics, cyclesr_deploy.synthetic
        import cyclesr_deploy.io, cyclesr_deploy.normalization
        import cyclesr_deploy.engines, cyclesr_deploy.runtime.pipeline, cyclesr_deploy.runtime.tiff
        import cyclesr_deploy.runtime.tiling, cyclesr_deploy.runtime.enhancer
        import cyclesr_deploy.runtime.formats, cyclesr_deploy.runtime.omezarr
        import cyclesr_deploy.runtime.cluster
        import cyclesr_deploy.runtime.watch, cyclesr_deploy.runtime.acquisition
        import cyclesr_deploy.napari, cyclesr_deploy.napari._work
        import cyclesr_deploy.bench, cyclesr_deploy.export, cyclesr_deploy.model
        import cyclesr_deploy.export.bioimageio, cyclesr_deploy.export.bioimageio_docs
        import cyclesr_deploy.onnx_metadata
        import cyclesr_deploy.engines.openvino_engine, cyclesr_deploy.engines.precision
        import cyclesr_deploy.runtime.tile_size, cyclesr_deploy.export.precision_check
        import cyclesr_deploy.trust.calibrate, cyclesr_deploy.trust.evaluate
        import cyclesr_deploy.runtime.trust_policy, cyclesr_deploy.trust
        import cyclesr_deploy.export.trust
        loaded = sorted(m for m in sys.modules if m.split('.')[0] in HEAVY)
        print('LOADED', loaded)
        """
    )
    assert res.returncode == 0, res.stderr
    assert "LOADED []" in res.stdout


def test_cli_help_works_with_core_only():
    res = _run(
        """
        import sys
        from cyclesr_deploy.cli import app
        sys.argv = ['cyclesr', '--help']
        app()
        """
    )
    assert res.returncode == 0, res.stderr
    for command in ("synth", "metrics", "demo"):
        assert command in res.stdout


def test_bioimageio_export_without_the_extra_names_it():
    res = _run(
        """
        from cyclesr_deploy.errors import MissingExtraError
        from cyclesr_deploy.export.bioimageio import export_bioimageio
        try:
            export_bioimageio('reference-cyclegan', 'never-written.zip')
        except MissingExtraError as exc:
            print('MSG', exc)
        """
    )
    assert res.returncode == 0, res.stderr
    assert "pip install 'cyclesr-deploy[bioimageio]'" in res.stdout


GUI = ("napari", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "superqt", "vispy", "magicgui")


def test_package_cli_and_hook_import_neither_napari_nor_qt():
    """napari and Qt load only when napari asks for the widget (cyclesr_deploy.napari._widget):
    not with the package, the CLI, the acquisition hook or the plugin's Qt-free parts."""
    res = _run(
        f"""
        import sys
        import cyclesr_deploy, cyclesr_deploy.cli, cyclesr_deploy.runtime.acquisition
        import cyclesr_deploy.napari, cyclesr_deploy.napari._work
        from cyclesr_deploy.cli import app
        sys.argv = ['cyclesr', '--help']
        try:
            app()
        except SystemExit:
            pass
        print('GUI', sorted(m for m in sys.modules if m.split('.')[0] in {GUI!r}))
        """
    )
    assert res.returncode == 0, res.stderr
    assert "GUI []" in res.stdout, res.stdout


def test_missing_extra_error_names_the_extra():
    res = _run(
        """
        from cyclesr_deploy.errors import require, MissingExtraError
        try:
            require('onnxruntime', 'cpu', 'ONNX Runtime inference')
        except MissingExtraError as exc:
            print('MSG', exc)
        """
    )
    assert res.returncode == 0, res.stderr
    assert "pip install 'cyclesr-deploy[cpu]'" in res.stdout


def test_cluster_and_zarr_without_their_extras_name_the_extra(tmp_path):
    """``--cluster`` without dask and an OME-Zarr output without zarr: exit 2, the message
    names the extra to install; nothing is written."""
    import numpy as np
    import tifffile

    tifffile.imwrite(tmp_path / "a.tif", np.zeros((16, 16), np.uint16))
    out = tmp_path / "out"
    for extra, args in (("dask", ["--cluster", "local:1"]), ("zarr", ["--output-format", "zarr"])):
        res = _run(
            f"""
            import sys
            from cyclesr_deploy.cli import app
            sys.argv = ['cyclesr', 'enhance', {str(tmp_path / "a.tif")!r}, '-o', {str(out)!r},
                        *{args!r}]
            app()
            """
        )
        assert res.returncode == 2, res.stderr
        assert f"pip install 'cyclesr-deploy[{extra}]'" in " ".join(res.stderr.split())
        assert not (out / "a.ome.zarr").exists() and not (out / "a.tif").exists()


def test_without_openvino_its_engine_names_the_extra_and_auto_skips_it():
    from cyclesr_deploy.builtin import DEFAULT_MODEL, builtin_model

    res = _run(
        f"""
        from cyclesr_deploy.engines.openvino_engine import OpenVINOEngine
        from cyclesr_deploy.errors import MissingExtraError
        try:
            OpenVINOEngine({str(builtin_model(DEFAULT_MODEL))!r})
        except MissingExtraError as exc:
            print('MSG', exc)
        """
    )
    assert res.returncode == 0, res.stderr
    assert "pip install 'cyclesr-deploy[cpu]'" in res.stdout and "OpenVINO" in res.stdout


# --- the runtime never imports export/ or training/; no import cycle in the package ---------

PACKAGE = "cyclesr_deploy"
#: sub-packages outside the runtime (export and training build models; cli, bench, synthetic
#: metrics and the napari plugin are front ends and tools around it)
NOT_RUNTIME = ("export", "training", "cli", "bench", "synthetic", "metrics", "napari")


def _package_root() -> Path:
    import cyclesr_deploy

    return Path(cyclesr_deploy.__file__).parent


def _modules() -> dict[str, Path]:
    """Every module of the package: dotted name -> file."""
    root = _package_root()
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _runtime_modules() -> list[str]:
    return [
        name
        for name in _modules()
        if name != PACKAGE
        and name.split(".")[1] not in NOT_RUNTIME
        and name != f"{PACKAGE}.__main__"
    ]


def test_runtime_modules_load_no_export_or_training_module():
    """Import every runtime module (engines.*, tiling, pipeline, frames, io, watch, enhancer,
    normalization, model, builtin, integrity, runner/manifest when present, ...) in a fresh
    interpreter: no cyclesr_deploy.export or cyclesr_deploy.training module may get loaded."""
    runtime = _runtime_modules()
    assert {f"{PACKAGE}.engines.select", f"{PACKAGE}.model", f"{PACKAGE}.runtime.runner"} <= set(
        runtime
    )
    code = textwrap.dedent(
        f"""
        import importlib, sys
        for name in {runtime!r}:
            importlib.import_module(name)
        bad = sorted(
            m for m in sys.modules
            if m.startswith(('{PACKAGE}.export', '{PACKAGE}.training'))
        )
        print('BAD', bad)
        """
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "BAD []" in res.stdout, res.stdout


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Package modules that module ``name`` imports: every ``import`` and ``from ... import``
    statement, module-level and function-local alike (a lazy import still closes a loop when
    it runs), except those in ``if TYPE_CHECKING:`` blocks (they never run). ``from pkg import
    sub`` counts ``pkg.sub`` when it is a module, else ``pkg``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_package = path.name == "__init__.py"
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            node.body = []
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = name.split(".") if is_package else name.split(".")[:-1]
                parent = parent[: len(parent) - (node.level - 1)]
                base = ".".join([*parent, base] if base else parent)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in known else base)
    # importing a.b.c runs a and a.b first: the edge goes to the module named, which is enough
    return {m for m in found if m in known and m != name}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path [a, b, ..., a], or None (iterative DFS)."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    for start in sorted(graph):
        if state.get(start):
            continue
        stack = [(start, iter(sorted(graph[start])))]
        path = [start]
        state[start] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                state[node] = 2
                stack.pop()
                path.pop()
            elif state.get(child) == 1:
                return [*path[path.index(child) :], child]
            elif not state.get(child):
                state[child] = 1
                stack.append((child, iter(sorted(graph[child]))))
                path.append(child)
    return None


def test_find_cycle_reports_the_path():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_import_cycle_inside_the_package():
    """The package's imports (module-level and function-local, see :func:`_imports`) form no
    cycle: the failure names the path."""
    modules = _modules()
    known = set(modules)
    graph = {name: _imports(name, path, known) for name, path in modules.items()}
    assert f"{PACKAGE}.engines.frozen_stats" in graph[f"{PACKAGE}.engines.frozen_torch"]  # sanity
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_no_runtime_module_reaches_export_or_training_even_lazily():
    """The static import graph (function-local imports included, which the import-time test
    above cannot see until they run): no path from a runtime module to export/ or training/;
    the failure names the path."""
    modules = _modules()
    known = set(modules)
    graph = {name: _imports(name, path, known) for name, path in modules.items()}
    forbidden = (f"{PACKAGE}.export", f"{PACKAGE}.training")
    for start in _runtime_modules():
        parent = {start: ""}
        todo = [start]
        while todo:
            node = todo.pop()
            if node.startswith(forbidden):
                path = [node]
                while parent[path[-1]]:
                    path.append(parent[path[-1]])
                raise AssertionError("runtime reaches " + " <- ".join(path))
            for child in graph[node]:
                if child not in parent:
                    parent[child] = node
                    todo.append(child)
