"""The runtime and the CLI must work with only the core dependencies installed."""

from __future__ import annotations

import subprocess
import sys
import textwrap

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
        import cyclesr_deploy.engines, cyclesr_deploy.pipeline, cyclesr_deploy.frames
        import cyclesr_deploy.tiling, cyclesr_deploy.enhancer, cyclesr_deploy.watch
        import cyclesr_deploy.bench, cyclesr_deploy.export, cyclesr_deploy.model
        import cyclesr_deploy.onnx_metadata
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
