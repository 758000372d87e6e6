"""Shared fixtures. Heavy optional stacks (torch, onnx) are never imported here."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
