"""PyTorch backend: the folder's ``generator_ab.pt`` in eager mode or ``torch.compile``.

The only runtime module that imports torch (and :mod:`cyclesr_deploy.nets`), lazily: importing it
needs no torch; creating a :class:`TorchEngine` without torch raises MissingExtraError naming
the ``train`` extra.

FP16 (CUDA only): the network is ``.half()``-ed and every ``InstanceNorm2d`` wrapped to run in
FP32 (input cast up, output cast back), the same recipe as the FP16 ONNX. ``torch.autocast``
is not used because it does not keep InstanceNorm in FP32: ``instance_norm`` is in neither of
its cast lists and runs in its input's dtype, i.e. FP16 after an autocast conv (checked with
CPU autocast on torch 2.13; the CUDA list is documented the same way). I/O stays FP32.

``compile=True`` wraps the model in ``torch.compile(dynamic=False)``: mode
``"max-autotune-no-cudagraphs"`` on CUDA (autotuned conv kernels; no CUDA graphs, whose static
outputs buy nothing at tile sizes where launch overhead is negligible), ``"default"`` on the
CPU; a string picks the mode. The first call with each new shape compiles (tens of seconds,
minutes with autotuning); after ``torch._dynamo.config.recompile_limit`` shapes (8) it runs
eagerly. A pipeline with one tile size sees two shapes at most (full and last batch).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from cyclesr_deploy.engines.base import TensorSpec
from cyclesr_deploy.errors import InputError, require
from cyclesr_deploy.model import WEIGHTS, ModelFolder, load_model

if TYPE_CHECKING:
    import torch

    from cyclesr_deploy.engines.select import Selection

log = logging.getLogger("cyclesr_deploy.engines")

Device = Literal["auto", "cpu", "cuda"]
Precision = Literal["fp32", "fp16"]
INPUT_NAME = "input"
_MAX_SHAPES = 8


def _torch() -> Any:
    return require("torch", "train", "The PyTorch backend")


def fp16_with_fp32_norms(net: torch.nn.Module) -> torch.nn.Module:
    """``net.half()`` with every InstanceNorm (1d/2d/3d) wrapped to compute in FP32 and cast
    back (in place; returns ``net``). The wrapped norms keep their (FP32) affine parameters."""
    _torch()
    from torch import nn

    class Float32Norm(nn.Module):
        """Runs ``norm`` in float32 on a (half) input and casts the result back."""

        def __init__(self, norm: nn.Module) -> None:
            super().__init__()
            self.norm = norm.float()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.norm(x.float()).to(x.dtype)

    net.half()
    norms = (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)
    for parent in list(net.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, norms):
                setattr(parent, child_name, Float32Norm(child))
    return net


@dataclass
class _Buffers:
    """Per-shape CUDA staging: pinned host input/output (+ numpy views), device input."""

    pinned_in: Any
    host_in: np.ndarray
    device_in: Any
    pinned_out: Any
    host_out: np.ndarray


class TorchEngine:
    """The generator as a PyTorch module (eval mode, ``torch.inference_mode``).

    Args:
        model_dir: model folder with ``model.json`` and ``generator_ab.pt``.
        device: ``"cpu"``, ``"cuda"`` or ``"auto"`` (CUDA when torch sees a GPU).
        precision: ``"fp32"``, or ``"fp16"`` (CUDA only; InstanceNorm in FP32).
        channels_last: NHWC memory format for weights and activations (Tensor Cores).
        compile: False, True (mode by device, see the module docstring) or a
            ``torch.compile`` mode.
        threads: ``torch.set_num_threads`` while open (restored on exit; process-wide).
        device_id: CUDA device index.

    Buffer contract: on the CPU every call returns a new array; on CUDA the output is copied
    into a pinned host buffer per shape, which the next call with that shape overwrites.
    """

    #: Set by :func:`~cyclesr_deploy.engines.open_engine`: why this engine was chosen.
    selection: Selection | None = None

    def __init__(
        self,
        model_dir: str | Path,
        *,
        device: Device = "auto",
        precision: Precision = "fp32",
        channels_last: bool = False,
        compile: bool | str = False,
        threads: int | None = None,
        device_id: int = 0,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.model = load_model(self.model_dir)
        self.weights = self.model_dir / WEIGHTS["ab"]
        if not self.weights.is_file():
            raise InputError(
                f"model: {self.model_dir} has no {WEIGHTS['ab']}; the torch backend needs the "
                "trained weights (use the onnxruntime or tensorrt backend with an exported model)"
            )
        if precision not in ("fp32", "fp16"):
            raise InputError(f"precision must be 'fp32' or 'fp16', not {precision!r}")
        if threads is not None and threads < 1:
            raise InputError(f"threads must be >= 1, got {threads}")
        torch = _torch()
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device not in ("cpu", "cuda"):
            raise InputError(f"device must be 'auto', 'cpu' or 'cuda', not {device!r}")
        if device == "cuda" and not torch.cuda.is_available():
            raise InputError(
                f"device='cuda', but torch {torch.__version__} sees no CUDA device "
                "(a CPU build of torch, no GPU, or a driver too old for it)"
            )
        if precision == "fp16" and device != "cuda":
            raise InputError("precision='fp16' needs device='cuda'; use fp32 on the CPU")
        self._t = torch
        self.device = device
        self.device_id = int(device_id)
        self.precision: Precision = precision
        self.channels_last = bool(channels_last)
        self.compile_mode: str | None = None
        if compile:
            default = "max-autotune-no-cudagraphs" if device == "cuda" else "default"
            self.compile_mode = compile if isinstance(compile, str) else default
        self.threads = threads
        tags = [device]
        if precision == "fp16":
            tags.append("fp16")
        if self.channels_last:
            tags.append("channels_last")
        if self.compile_mode is not None:
            tags.append("compiled")
        self.name = f"torch[{','.join(tags)}]"
        gen = self.model.generator
        self.input_spec = TensorSpec(
            name=INPUT_NAME,
            shape=(None, gen.in_channels, None, None),
            dtype=np.dtype(np.float32),
            size_multiple=self.model.size_multiple,
            scale=self.model.scale,
        )
        self._module: Any = None
        self._buffers: dict[tuple[int, ...], _Buffers] = {}
        self._restore: list[Any] = []

    # --- lifecycle ------------------------------------------------------------------------

    def __enter__(self) -> TorchEngine:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def module(self) -> Any:
        """The (possibly compiled) module while open, else None."""
        return self._module

    def open(self) -> None:
        """Load the weights, move and convert the network, compile it (idempotent)."""
        if self._module is not None:
            return
        torch = self._t
        if self.threads is not None:
            previous = torch.get_num_threads()
            torch.set_num_threads(self.threads)
            self._restore.append(lambda: torch.set_num_threads(previous))
        net = self._load_network()
        if self.device == "cuda":
            self._torch_device = torch.device("cuda", self.device_id)
            benchmark = torch.backends.cudnn.benchmark
            torch.backends.cudnn.benchmark = True  # fixed tile shapes: tune each once
            self._restore.append(lambda: setattr(torch.backends.cudnn, "benchmark", benchmark))
        else:
            self._torch_device = torch.device("cpu")
        if self.precision == "fp16":
            fp16_with_fp32_norms(net)
        net.to(self._torch_device)
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        if self.channels_last:
            net.to(memory_format=fmt)
        dtype = torch.float16 if self.precision == "fp16" else torch.float32

        def run(x: torch.Tensor) -> torch.Tensor:
            y = net(x.to(dtype=dtype, memory_format=fmt))
            return y.to(dtype=torch.float32, memory_format=torch.contiguous_format)

        module: Any = run
        if self.compile_mode is not None:
            module = torch.compile(run, mode=self.compile_mode, dynamic=False)
        self._net = net
        self._module = module
        log.info("PyTorch generator %s from %s", self.name, self.weights)

    def close(self) -> None:
        """Drop the network and buffers, restore thread count and cuDNN settings."""
        was_open = self._module is not None
        self._module = None
        self._net = None
        self._buffers = {}
        while self._restore:
            self._restore.pop()()
        if was_open and self.device == "cuda":
            with contextlib.suppress(Exception):
                self._t.cuda.empty_cache()

    def _load_network(self) -> torch.nn.Module:
        torch = self._t
        from cyclesr_deploy.nets import build_generator

        ModelFolder(self.model_dir).verify(
            self.weights
        )  # refuses weights export.json does not know
        try:
            state = torch.load(self.weights, map_location="cpu", weights_only=True)
        except Exception as exc:  # UnpicklingError, RuntimeError, EOFError, ...
            raise InputError(
                f"weights: cannot read {self.weights} as a state dict ({exc})"
            ) from exc
        net = build_generator(self.model.generator)
        try:
            net.load_state_dict(state, strict=True)
        except (RuntimeError, TypeError, AttributeError) as exc:
            raise InputError(
                f"weights: {self.weights.name} does not fit the generator in model.json ({exc})"
            ) from exc
        net.eval()
        net.requires_grad_(False)
        return net

    # --- inference ------------------------------------------------------------------------

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """(N, C, H, W) float32 -> (N, C', H*s, W*s) float32 (see the buffer contract)."""
        if self._module is None:
            raise RuntimeError(f"{self.name} is closed; use it inside a with block")
        torch = self._t
        with torch.inference_mode():
            if self.device == "cpu":
                return self._module(torch.from_numpy(batch)).numpy()
            buf = self._buffers.get(batch.shape) or self._allocate(batch.shape)
            np.copyto(buf.host_in, batch)
            buf.device_in.copy_(buf.pinned_in, non_blocking=True)
            y = self._module(buf.device_in)
            buf.pinned_out.copy_(y, non_blocking=True)
            torch.cuda.current_stream(self._torch_device).synchronize()
            return buf.host_out

    def _allocate(self, shape: tuple[int, ...]) -> _Buffers:
        torch = self._t
        if len(self._buffers) >= _MAX_SHAPES:
            self._buffers.pop(next(iter(self._buffers)))
        n, _, h, w = shape
        s = self.input_spec.scale
        out_shape = (n, self.model.generator.out_channels, h * s, w * s)
        pinned_in = torch.empty(shape, dtype=torch.float32, pin_memory=True)
        pinned_out = torch.empty(out_shape, dtype=torch.float32, pin_memory=True)
        buf = _Buffers(
            pinned_in=pinned_in,
            host_in=pinned_in.numpy(),
            device_in=torch.empty(shape, dtype=torch.float32, device=self._torch_device),
            pinned_out=pinned_out,
            host_out=pinned_out.numpy(),
        )
        self._buffers[tuple(shape)] = buf
        return buf

    def __repr__(self) -> str:
        state = "open" if self._module is not None else "closed"
        return f"TorchEngine({str(self.model_dir)!r}, {self.name}, {state})"
