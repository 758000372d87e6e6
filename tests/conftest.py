"""Shared fixtures. Heavy optional stacks (torch, onnx) are never imported here."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


class FakeEngine:
    """A stand-in for :class:`cyclesr_deploy.engines.base.Engine`, numpy only.

    ``mode``: ``identity`` (returns the batch buffer itself), ``plus1`` (adds 1 in model units),
    ``nearest2`` (nearest-neighbour x2, scale 2). The output of ``plus1``/``nearest2`` is one
    reused buffer per shape, as TensorRT's pinned output (exercises the copy contract).
    ``delay`` sleeps per call; ``raise_at`` raises ``exc`` on that call (1-based). ``calls`` and
    ``shapes`` record what ran.
    """

    def __init__(
        self,
        mode: str = "identity",
        *,
        delay: float = 0.0,
        raise_at: int | None = None,
        exc: BaseException | None = None,
        max_batch: int | None = None,
        max_tile: tuple[int, int] | None = None,
    ) -> None:
        from cyclesr_deploy.engines.base import TensorSpec

        if mode not in ("identity", "plus1", "nearest2"):
            raise ValueError(mode)
        self.mode = mode
        self.name = f"fake[{mode}]"
        self.selection = f"fake engine ({mode}) for tests"
        self.input_spec = TensorSpec(
            name="input",
            shape=(None, 1, None, None),
            dtype=np.dtype(np.float32),
            size_multiple=4,
            scale=2 if mode == "nearest2" else 1,
            max_batch=max_batch,
            max_tile=max_tile,
        )
        self.delay = delay
        self.raise_at = raise_at
        self.exc = exc if exc is not None else RuntimeError("fake engine failure")
        self.calls = 0
        self.shapes: list[tuple[int, ...]] = []
        self.entered = False
        self._out: dict[tuple[int, ...], np.ndarray] = {}

    def __enter__(self) -> FakeEngine:
        self.entered = True
        return self

    def __exit__(self, *exc: object) -> None:
        self.entered = False

    def infer(self, batch: np.ndarray) -> np.ndarray:
        import time

        self.calls += 1
        self.shapes.append(tuple(batch.shape))
        if self.delay:
            time.sleep(self.delay)
        if self.raise_at is not None and self.calls == self.raise_at:
            raise self.exc
        if self.mode == "identity":
            return batch
        if self.mode == "plus1":
            out = self._out.setdefault(batch.shape, np.empty(batch.shape, np.float32))
            np.add(batch, np.float32(1), out=out)
            return out
        n, c, h, w = batch.shape
        out = self._out.setdefault(batch.shape, np.empty((n, c, 2 * h, 2 * w), np.float32))
        out[:] = batch.repeat(2, axis=2).repeat(2, axis=3)
        return out


def fail_first_stack_append(monkeypatch: pytest.MonkeyPatch, at: int) -> list:
    """Make the first ``StackAppender``'s append of frame ``at`` raise before writing, as a
    frame of another shape does; returns the appenders made (to check they were closed)."""
    from cyclesr_deploy.runtime import tiff

    made: list = []
    real_init, real_append = tiff.StackAppender.__init__, tiff.StackAppender.append

    def init(self, *a, **k):  # type: ignore[no-untyped-def]
        real_init(self, *a, **k)
        made.append(self)

    def append(self, frame):  # type: ignore[no-untyped-def]
        if len(made) == 1 and self.count == at:
            raise ValueError(f"frame {at}: got uint16 (30, 20), expected another shape")
        real_append(self, frame)

    monkeypatch.setattr(tiff.StackAppender, "__init__", init)
    monkeypatch.setattr(tiff.StackAppender, "append", append)
    return made
