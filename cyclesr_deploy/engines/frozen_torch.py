"""Frame-level InstanceNorm statistics for tiled inference (torch; torch-side code only).

A CycleGAN generator's ``InstanceNorm2d(affine=False)`` normalises every feature map with the
mean and variance of the input it sees, so a tile is normalised with the tile's statistics and
tiled output differs from whole-frame output (brightness offsets between tiles, blended by the
tiler but not removed; research notes ``tiling_io.md`` §2.1). The fix here is two-pass inference,
as URST's thumbnail instance norm (``czczup/URST``) but with the estimate selectable:

1. **statistics pass**: every InstanceNorm layer records the per-channel mean and (biased)
   variance it sees on the frame: exactly (``record_statistics``, the whole frame in one pass),
   from a batch of crops pooled with calibrated sub-block weights (``statistics_from_crops``,
   :func:`weighted_statistics`), or from a downsampled frame (``statistics_from_thumbnail``);
2. **tile pass**: all tiles are normalised with those statistics (mode ``"frozen"``, which is
   BatchNorm in eval mode: ``F.batch_norm`` with the stored statistics). The generator then has
   no global operation left, so with a halo >= the receptive-field half-width the tiled output
   equals whole-frame inference (up to float rounding) when the statistics are exact.

The per-layer statistics travel as one flat vector ``[mean_0, var_0, mean_1, var_1, ...]``
(:func:`packed_statistics`, :func:`load_packed`): the interface of a later ONNX statistics graph
(frame or thumbnail -> vector) and tile graph (tile, vector -> output).

Swapping layers (:func:`freeze_instance_norms`) keeps the trained weights and the state-dict keys
(the statistics buffers are not persistent), so checkpoints load before and after.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cyclesr_deploy.engines.frozen_stats import (
    BLOCKS,
    CROP_AREA,
    Layout,
    calibration_weights,
    crop_origins,
    crops_for,
)
from cyclesr_deploy.errors import InputError
from cyclesr_deploy.runtime.tiling import TilingConfig, predict_tiled

__all__ = [
    "CROP_AREA",
    "MODES",
    "STATS",
    "FrozenInstanceNorm",
    "check_crops_estimate",
    "crop_origins",
    "crop_windows",
    "crops_for",
    "freeze_instance_norms",
    "layer_geometry",
    "load_packed",
    "packed_statistics",
    "predict_tiled_frozen",
    "psnr_range2",
    "record_statistics",
    "set_mode",
    "statistics_from_crops",
    "statistics_from_thumbnail",
    "weighted_statistics",
]

Mode = Literal["instance", "record", "pool", "frozen"]
MODES: tuple[str, ...] = ("instance", "record", "pool", "frozen")
Stats = Literal["whole", "crops", "thumbnail", "tile"]
STATS: tuple[str, ...] = ("whole", "crops", "thumbnail", "tile")


class FrozenInstanceNorm(nn.Module):
    """Drop-in for ``InstanceNorm2d(C, affine=False, track_running_stats=False)`` with modes:

    * ``"instance"``: plain instance norm (``F.instance_norm``; the default, bit-identical);
    * ``"record"``: instance norm (per-sample statistics, biased variance, the layer's eps) that
      also stores the statistics: ``sample_mean``/``sample_var`` (N, C) per sample (not with
      pooling ``weights``), and the
      ``mean``/``var`` buffers (C,) pooled over the batch (law of total variance; for N = 1 the
      sample's own statistics);
    * ``"pool"``: computes the per-sample statistics, stores them as ``record`` does, but
      normalises every sample with the pooled statistics: a batch of crops of one frame is then
      normalised as one image, so deeper layers see features as the frozen tile pass will;
    * ``"frozen"``: normalises with the stored ``mean``/``var`` broadcast over the batch
      (BatchNorm in eval mode: no global operation).

    Statistics are float32 whatever the input dtype. ``mean``/``var`` are non-persistent buffers
    (no state-dict keys, so checkpoints of the unmodified generator load unchanged); they follow
    ``.to(device)``.
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features = int(num_features)
        self.eps = float(eps)
        self.mode: Mode = "instance"
        self.register_buffer("mean", torch.zeros(self.num_features), persistent=False)
        self.register_buffer("var", torch.ones(self.num_features), persistent=False)
        self.sample_mean: torch.Tensor | None = None
        self.sample_var: torch.Tensor | None = None
        self.recorded = False
        # masked pooling (statistics_from_crops): receptive-field half-width of the network up to
        # this layer (input px), input px per feature px here, and the crops' interior sides
        self.margin: float = 0.0
        self.jump: float = 1.0
        self.sides: torch.Tensor | None = None  # (N, 4) top, bottom, left, right: 1 = masked
        # pooling weights of the samples' sub-blocks (N, B, B) (weighted_statistics; None: equal)
        self.weights: torch.Tensor | None = None

    @classmethod
    def from_instance_norm(cls, layer: nn.InstanceNorm2d) -> FrozenInstanceNorm:
        if layer.affine or layer.track_running_stats:
            raise InputError(
                "frozen_norm: only InstanceNorm2d(affine=False, track_running_stats=False) "
                f"(the canonical CycleGAN norm) can be replaced, got {layer!r}"
            )
        return cls(layer.num_features, layer.eps)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, mode={self.mode!r}"

    def _record(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.sides is not None:
            return self._record_masked(x)
        if self.weights is not None:  # weighted pooling only: no per-sample pass
            pooled_mean, pooled_var = weighted_statistics(x.float(), self.weights)
            self.sample_mean = self.sample_var = None
        else:
            var, mean = torch.var_mean(x.float(), dim=(2, 3), correction=0)  # (N, C) each
            pooled_mean = mean.mean(0)
            pooled_var = var.mean(0) + ((mean - pooled_mean) ** 2).mean(0)
            self.sample_mean, self.sample_var = mean.detach(), var.detach()
        self.mean.copy_(pooled_mean.detach())
        self.var.copy_(pooled_var.detach())
        self.recorded = True
        return pooled_mean, pooled_var

    def _record_masked(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pooled statistics over the crops' interiors: a feature pixel closer than
        ``margin`` input px to a crop side inside the frame (``sides``) sees that side's
        padding instead of the frame, so it is left out (sides at the frame edge are exact)."""
        assert self.sides is not None
        windows = crop_windows(self.sides, x.shape[-2:], self.margin, self.jump)
        means, variances, counts = [], [], []
        for i, (y0, y1, x0, x1) in enumerate(windows):
            var, mean = torch.var_mean(x[i, :, y0:y1, x0:x1].float(), dim=(1, 2), correction=0)
            means.append(mean)
            variances.append(var)
            counts.append((y1 - y0) * (x1 - x0))
        weight = torch.tensor(counts, dtype=torch.float32, device=x.device)[:, None]
        if self.weights is not None:  # per crop here: its blocks' mean weight
            per_crop = self.weights.reshape(self.weights.shape[0], -1).mean(1)
            weight = weight * per_crop.to(x.device, torch.float32)[:, None]
        weight = weight / weight.sum()
        mean, var = torch.stack(means), torch.stack(variances)  # (N, C)
        pooled_mean = (weight * mean).sum(0)
        pooled_var = (weight * (var + (mean - pooled_mean) ** 2)).sum(0)
        self.sample_mean = self.sample_var = None
        self.mean.copy_(pooled_mean.detach())
        self.var.copy_(pooled_var.detach())
        self.recorded = True
        return pooled_mean, pooled_var

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mode = self.mode
        if mode == "instance":
            return F.instance_norm(x, eps=self.eps)
        if mode == "record":
            self._record(x)
            return F.instance_norm(x, eps=self.eps)
        if mode == "pool":
            self._record(x)
        elif mode != "frozen":
            raise InputError(f"frozen_norm: mode must be one of {', '.join(MODES)}, got {mode!r}")
        elif not self.recorded:
            raise InputError(
                "frozen_norm: mode 'frozen' before any statistics were recorded or loaded"
            )
        mean, var = self.mean.to(x.dtype), self.var.to(x.dtype)
        return F.batch_norm(x, mean, var, training=False, eps=self.eps)


def weighted_statistics(
    x: torch.Tensor, weights: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and biased variance (C,) of a batch ``x`` (N, C, h, w) pooled over the
    batch and the pixels, pixel (n, y, x) weighted by ``weights[n, by, bx]`` (``weights`` (>=N,
    B, B), the first N used; ``by = (y * B) // h``, ``bx = (x * B) // w``:
    :func:`cyclesr_deploy.engines.frozen.block_index`, in integer arithmetic so torch and the
    exported graph pick the same pixels). Block sums come from two matmuls with one-hot block
    matrices (``Py^T x Px``: sums of at most a side's pixels each, so float32 rounding stays
    small in every runtime), the variance from a second pass over the squared deviations (no
    cancellation). With one sample and equal weights: the sample's own statistics. Used by
    :class:`FrozenInstanceNorm` (mode ``"pool"``) and the exported statistics graph."""
    n, c, h, w = x.shape
    b = weights.shape[-1]
    blocks = torch.arange(b, device=x.device)
    py = ((torch.arange(h, device=x.device) * b // h)[:, None] == blocks).to(x.dtype)  # (h, B)
    px = ((torch.arange(w, device=x.device) * b // w)[:, None] == blocks).to(x.dtype)  # (w, B)
    wb = weights[:n].to(device=x.device, dtype=x.dtype).unsqueeze(1)  # (N, 1, B, B)
    pixels = py.sum(0)[:, None] * px.sum(0)[None, :]  # (B, B) pixels per block
    total = (wb * pixels).sum(dim=(0, 2, 3))  # (1,)

    def block_sums(t: torch.Tensor) -> torch.Tensor:  # (N, C, h, w) -> (N, C, B, B)
        return py.transpose(0, 1) @ (t @ px)

    mean = (wb * block_sums(x)).sum(dim=(0, 2, 3)) / total
    dev = (x - mean.reshape(1, c, 1, 1)) ** 2
    var = (wb * block_sums(dev)).sum(dim=(0, 2, 3)) / total
    return mean, var


def crop_windows(
    sides: torch.Tensor, shape: Sequence[int], margin: float, jump: float
) -> list[tuple[int, int, int, int]]:
    """Per crop, the feature-map window ``(y0, y1, x0, x1)`` (of a ``shape`` (h, w) map whose
    pixels are ``jump`` input px) left when the sides flagged in ``sides`` (N, 4: top, bottom,
    left, right) lose ``margin`` input px. Never empty: at least the central pixel remains."""
    h, w = int(shape[0]), int(shape[1])
    cut = math.ceil(margin / jump) if margin > 0 else 0
    out = []
    for top, bottom, left, right in sides.tolist():
        y0, y1 = cut * int(top), h - cut * int(bottom)
        x0, x1 = cut * int(left), w - cut * int(right)
        if y1 <= y0:
            y0, y1 = (h - 1) // 2, (h - 1) // 2 + 1
        if x1 <= x0:
            x0, x1 = (w - 1) // 2, (w - 1) // 2 + 1
        out.append((y0, y1, x0, x1))
    return out


def layer_geometry(generator: nn.Module) -> list[tuple[float, float]]:
    """``(margin, jump)`` of every InstanceNorm / FrozenInstanceNorm of ``generator`` in module
    order: the half-width (input px) of the receptive field of the layers before it, and the
    input px per feature px of the map it normalises. Traced over the leaf modules in
    definition order (= forward order for the Sequential CycleGAN generators): Conv2d adds
    ``dilation * (k - 1) / 2`` feature px and multiplies the jump by its stride,
    ConvTranspose2d divides the jump by its stride and adds ``ceil((k - 1) / 2 / s)`` input
    feature px, PixelShuffle / Upsample divide the jump (conservative bounds)."""
    half, jump = 0.0, 1.0
    out = []
    for m in generator.modules():
        if isinstance(m, nn.Conv2d):
            k, d, st = m.kernel_size[0], m.dilation[0], m.stride[0]
            half += d * (k - 1) / 2 * jump
            jump *= st
        elif isinstance(m, nn.ConvTranspose2d):
            k, st = m.kernel_size[0], m.stride[0]
            half += math.ceil((k - 1) / 2 / st) * jump
            jump /= st
        elif isinstance(m, nn.PixelShuffle):
            jump /= m.upscale_factor
        elif isinstance(m, nn.Upsample) and m.scale_factor is not None:
            sf = m.scale_factor
            jump /= float(sf[0] if isinstance(sf, tuple) else sf)
        elif isinstance(m, nn.InstanceNorm2d | FrozenInstanceNorm):
            out.append((half, jump))
    return out


def freeze_instance_norms(generator: nn.Module) -> list[FrozenInstanceNorm]:
    """Replace every ``nn.InstanceNorm2d`` of ``generator`` in place by a
    :class:`FrozenInstanceNorm` (mode ``"instance"``: behaviour unchanged) and return all of them
    in module order (= forward order for the Sequential CycleGAN generators). Idempotent: layers
    already replaced are kept. Weights and state-dict keys are unchanged."""
    for parent in list(generator.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.InstanceNorm2d):
                new = FrozenInstanceNorm.from_instance_norm(child)
                ref = next(generator.buffers(), None)
                if ref is None:
                    ref = next(generator.parameters(), None)
                if ref is not None:
                    new = new.to(ref.device)
                setattr(parent, name, new)
    return [m for m in generator.modules() if isinstance(m, FrozenInstanceNorm)]


def _layers(generator_or_layers: nn.Module | Sequence[FrozenInstanceNorm]):
    if isinstance(generator_or_layers, nn.Module):
        return [m for m in generator_or_layers.modules() if isinstance(m, FrozenInstanceNorm)]
    return list(generator_or_layers)


def set_mode(layers: nn.Module | Sequence[FrozenInstanceNorm], mode: Mode) -> None:
    """Set the mode of ``layers`` (or of every FrozenInstanceNorm of a module)."""
    if mode not in MODES:
        raise InputError(f"frozen_norm: mode must be one of {', '.join(MODES)}, got {mode!r}")
    for layer in _layers(layers):
        layer.mode = mode


def packed_statistics(layers: nn.Module | Sequence[FrozenInstanceNorm]) -> torch.Tensor:
    """The stored statistics as one float32 vector ``[mean_0, var_0, mean_1, var_1, ...]``
    (each of its layer's channel count): what a statistics graph hands to a tile graph."""
    layers = _layers(layers)
    if not layers:
        return torch.zeros(0)
    return torch.cat([t for layer in layers for t in (layer.mean, layer.var)]).float()


def packed_length(layers: nn.Module | Sequence[FrozenInstanceNorm]) -> int:
    return sum(2 * layer.num_features for layer in _layers(layers))


def load_packed(
    layers: nn.Module | Sequence[FrozenInstanceNorm], vector: torch.Tensor | np.ndarray
) -> None:
    """Load a vector from :func:`packed_statistics` into ``layers`` (then mode ``"frozen"``
    uses it)."""
    layers = _layers(layers)
    vec = torch.as_tensor(np.asarray(vector) if not torch.is_tensor(vector) else vector)
    vec = vec.reshape(-1).float()
    need = packed_length(layers)
    if vec.numel() != need:
        raise InputError(
            f"frozen_norm: packed statistics have {vec.numel()} values, the generator's "
            f"{len(layers)} InstanceNorm layers need {need}"
        )
    if (vec[_var_index(layers)] < 0).any():
        raise InputError("frozen_norm: packed statistics contain a negative variance")
    pos = 0
    with torch.no_grad():
        for layer in layers:
            c = layer.num_features
            layer.mean.copy_(vec[pos : pos + c])
            layer.var.copy_(vec[pos + c : pos + 2 * c])
            layer.sample_mean = layer.sample_var = None
            layer.recorded = True
            pos += 2 * c


def _var_index(layers: Sequence[FrozenInstanceNorm]) -> torch.Tensor:
    idx, pos = [], 0
    for layer in layers:
        c = layer.num_features
        idx.extend(range(pos + c, pos + 2 * c))
        pos += 2 * c
    return torch.tensor(idx, dtype=torch.long)


# ---- statistics passes ---------------------------------------------------------------------


def _size_multiple(generator: nn.Module, size_multiple: int | None) -> int:
    if size_multiple is not None:
        return int(size_multiple)
    cfg = getattr(generator, "cfg", None)
    return int(getattr(cfg, "size_multiple", 4))


def _device(generator: nn.Module) -> torch.device:
    p = next(generator.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _as_nchw(frame: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(H, W), (C, H, W) or (1, C, H, W) -> float32 (1, C, H, W) tensor (no copy for tensors)."""
    t = frame if torch.is_tensor(frame) else torch.from_numpy(np.ascontiguousarray(frame))
    if t.ndim == 2:
        t = t[None, None]
    elif t.ndim == 3:
        t = t[None]
    if t.ndim != 4 or t.shape[0] != 1:
        raise InputError(
            f"frozen_norm: frame must be (H, W), (C, H, W) or (1, C, H, W), got {tuple(t.shape)}"
        )
    return t.float()


def _pad_to_multiple(x: torch.Tensor, m: int) -> torch.Tensor:
    """Reflect-pad the end of H and W to multiples of ``m``, as the tiler pads a frame."""
    h, w = x.shape[-2:]
    ph, pw = -h % m, -w % m
    if ph == 0 and pw == 0:
        return x
    if ph < h and pw < w:
        return F.pad(x, (0, pw, 0, ph), mode="reflect")
    # np.pad's reflect repeats for tiny frames; mirror that (tiling._reflect_index)
    iy = torch.from_numpy(np.pad(np.arange(h), (0, ph), mode="reflect"))
    ix = torch.from_numpy(np.pad(np.arange(w), (0, pw), mode="reflect"))
    return x[..., iy[:, None], ix]


class _StatisticsDone(Exception):
    """Raised after the last InstanceNorm recorded: the layers after it are not needed."""


def _stop(module: nn.Module, args: object, output: object) -> None:
    raise _StatisticsDone


@torch.no_grad()
def _run(generator: nn.Module, layers, mode: Mode, x: torch.Tensor) -> list[FrozenInstanceNorm]:
    """Run ``generator`` on ``x`` with ``layers`` in ``mode`` ("record"/"pool"), stopping right
    after the last layer recorded (the tail, e.g. the full-resolution output convolution, would
    only cost time)."""
    was_training = generator.training
    generator.eval()
    layers = _layers(layers)
    hook = layers[-1].register_forward_hook(_stop) if layers else None
    try:
        set_mode(layers, mode)
        generator(x.to(_device(generator)))
    except _StatisticsDone:
        pass
    finally:
        if hook is not None:
            hook.remove()
        set_mode(layers, "instance")
        generator.train(was_training)
    return layers


def record_statistics(
    generator: nn.Module,
    frame: np.ndarray | torch.Tensor,
    *,
    size_multiple: int | None = None,
) -> list[FrozenInstanceNorm]:
    """Exact frame statistics: run the whole ``frame`` ((H, W) or (C, H, W), model units) once in
    mode ``"record"`` (reflect-padded at its end to ``size_multiple``, as the tiler does); returns
    the layers with their statistics stored (read them with :func:`packed_statistics`)."""
    layers = freeze_instance_norms(generator)
    x = _pad_to_multiple(_as_nchw(frame), _size_multiple(generator, size_multiple))
    return _run(generator, layers, "record", x)


def statistics_from_crops(
    generator: nn.Module,
    frame: np.ndarray | torch.Tensor,
    crop: int | tuple[int, int] = 512,
    n: int = 4,
    *,
    margin: float = 0.0,
    layout: Layout = "spread",
    calibrate: bool = True,
    size_multiple: int | None = None,
) -> list[FrozenInstanceNorm]:
    """Estimated frame statistics from ``n`` crops (``crop`` px, a multiple of the size multiple)
    placed over the frame (:func:`crop_origins`, ``layout``), run as one batch in mode
    ``"pool"``: at every layer the statistics are pooled over the crops (mean and biased
    variance of the union of their pixels, counted with multiplicity) and all crops are
    normalised with them, so the next layer sees features as in the frozen tile pass.

    Masked pooling (``margin`` > 0): at each layer, the feature pixels within ``margin`` x the
    receptive-field half-width of the layers before it (:func:`layer_geometry`) of a crop side
    that lies inside the frame see that side's reflect padding, not the frame: they are left out
    of the pooled statistics (sides on the frame edge are kept: there the whole frame sees the
    same padding). The pixels kept then see exactly what the frozen whole-frame pass sees, so the
    only error left is sampling (pixels outside the crops' interiors). ``margin=0``: plain pooling
    over whole crops.

    ``calibrate`` (default): the crops' sub-blocks are pooled with
    :func:`~cyclesr_deploy.engines.frozen.calibration_weights` (weighted so that their mean
    intensity equals the frame's; with ``margin`` > 0 per crop) instead of equally; this
    removes most of the sampling error that comes from the crops holding more or less
    structure than the frame (measured in ``benchmarks/results/frozen_norm.md``). Memory is
    that of one forward pass over n x crop^2 px."""
    m = _size_multiple(generator, size_multiple)
    x = _pad_to_multiple(_as_nchw(frame), m)
    h, w = x.shape[-2:]
    ch, cw = (crop, crop) if isinstance(crop, int | np.integer) else crop
    ch, cw = min(int(ch), h), min(int(cw), w)
    if ch < m or cw < m or ch % m or cw % m:
        raise InputError(
            f"frozen_norm: crop {ch}x{cw} px must be a positive multiple of {m} (the size multiple)"
        )
    if n < 1:
        raise InputError(f"frozen_norm: need n >= 1 crops, got {n}")
    if margin < 0:
        raise InputError(f"frozen_norm: crop margin must be >= 0, got {margin}")
    origins = crop_origins((h, w), (ch, cw), n, m, layout)
    batch = torch.cat([x[..., y : y + ch, x0 : x0 + cw] for y, x0 in origins])
    layers = freeze_instance_norms(generator)
    weights = None
    if calibrate:
        frame_np = x[0].detach().cpu().numpy()
        w = calibration_weights(frame_np, origins, (ch, cw), blocks=1 if margin > 0 else BLOCKS)
        weights = torch.from_numpy(w).float()
    try:  # set inside: a failure here must not leave weights or sides on the layers
        for layer in layers:
            layer.weights = weights
        if margin > 0:
            sides = torch.tensor(
                [[y > 0, y + ch < h, x0 > 0, x0 + cw < w] for y, x0 in origins],
                dtype=torch.int64,
            )
            for layer, (half, jump) in zip(layers, layer_geometry(generator), strict=True):
                layer.margin, layer.jump, layer.sides = margin * half, jump, sides
        return _run(generator, layers, "pool", batch)
    finally:
        for layer in layers:
            layer.sides = layer.weights = None


def statistics_from_thumbnail(
    generator: nn.Module,
    frame: np.ndarray | torch.Tensor,
    factor: int = 4,
    *,
    size_multiple: int | None = None,
) -> list[FrozenInstanceNorm]:
    """URST-style estimate (Thumbnail Instance Normalization, ``czczup/URST``): record the
    statistics of the frame area-downsampled by ``factor`` (reflect-padded to a multiple of
    ``factor * size_multiple`` first). Cheap (1 / factor^2 of the pixels) but **biased**: the
    generator's filters see structures ``factor`` times smaller and lose the fine texture, so the
    feature maps' spatial variances (and, through the ReLUs, their means) differ from those at
    full resolution; the bias grows with ``factor`` and with the image's high-frequency content.
    Prefer :func:`statistics_from_crops` when a few large crops fit in memory."""
    if factor < 1:
        raise InputError(f"frozen_norm: thumbnail factor must be >= 1, got {factor}")
    m = _size_multiple(generator, size_multiple)
    x = _pad_to_multiple(_as_nchw(frame), m * factor)
    if factor > 1:
        x = F.avg_pool2d(x, factor)
    layers = freeze_instance_norms(generator)
    return _run(generator, layers, "record", x)


# ---- two-pass tiled inference --------------------------------------------------------------


def compute_statistics(
    generator: nn.Module,
    frame: np.ndarray | torch.Tensor,
    stats: Stats = "whole",
    *,
    crop: int | tuple[int, int] | None = None,
    n_crops: int | None = None,
    margin: float = 0.0,
    calibrate: bool = True,
    factor: int = 4,
    size_multiple: int | None = None,
) -> torch.Tensor:
    """Pass 1 of :func:`predict_tiled_frozen`: the packed statistics vector of ``frame``.
    ``"crops"`` without ``crop`` / ``n_crops``: :func:`crops_for` the frame's shape;
    ``margin``: masked pooling (:func:`statistics_from_crops`; 0 = off, the default: on the
    measured frames it did not help, sampling error dominates); ``calibrate``: calibrated crop
    weights (default) or equal ones."""
    if stats == "whole":
        layers = record_statistics(generator, frame, size_multiple=size_multiple)
    elif stats == "crops":
        shape = tuple(frame.shape)
        auto_crop, auto_n = crops_for(shape, _size_multiple(generator, size_multiple))
        layers = statistics_from_crops(
            generator,
            frame,
            auto_crop if crop is None else crop,
            auto_n if n_crops is None else n_crops,
            margin=margin,
            calibrate=calibrate,
            size_multiple=size_multiple,
        )
    elif stats == "thumbnail":
        layers = statistics_from_thumbnail(generator, frame, factor, size_multiple=size_multiple)
    else:
        raise InputError(
            f"frozen_norm: stats must be 'whole', 'crops' or 'thumbnail', got {stats!r}"
        )
    return packed_statistics(layers)


def predict_tiled_frozen(
    generator: nn.Module,
    frame: np.ndarray,
    tiling_cfg: TilingConfig,
    *,
    stats: Stats = "whole",
    crop: int | tuple[int, int] | None = None,
    n_crops: int | None = None,
    margin: float = 0.0,
    calibrate: bool = True,
    factor: int = 4,
    packed: torch.Tensor | np.ndarray | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Two-pass tiled inference of one frame ((H, W) or (C, H, W) float32, model units) with
    frame-level InstanceNorm statistics.

    Pass 1 computes the statistics (``stats``: ``"whole"`` exact, ``"crops"`` from ``n_crops``
    crops of ``crop`` px, ``"thumbnail"`` from the frame downsampled by ``factor``; or a given
    ``packed`` vector); pass 2 runs :func:`cyclesr_deploy.runtime.tiling.predict_tiled` with the
    generator in mode ``"frozen"`` on tile batches. ``stats="tile"`` is naive tiling (per-tile
    instance norm) for comparison. The generator's norms are swapped in place
    (:func:`freeze_instance_norms`) and left in mode ``"instance"``. Returns the tiled output
    as :func:`predict_tiled` does.
    """
    if stats not in STATS:
        raise InputError(f"frozen_norm: stats must be one of {', '.join(STATS)}, got {stats!r}")
    layers = freeze_instance_norms(generator)
    m = tiling_cfg.size_multiple
    if packed is not None:
        load_packed(layers, packed)
    elif stats != "tile":
        load_packed(
            layers,
            compute_statistics(
                generator,
                frame,
                stats,
                crop=crop,
                n_crops=n_crops,
                margin=margin,
                calibrate=calibrate,
                factor=factor,
                size_multiple=m,
            ),
        )
    mode: Mode = "instance" if stats == "tile" and packed is None else "frozen"
    device = _device(generator)
    was_training = generator.training

    def predict(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            y = generator(torch.from_numpy(batch).to(device))
        return y.float().cpu().numpy()

    generator.eval()
    set_mode(layers, mode)
    try:
        return predict_tiled(frame, predict, tiling_cfg, out=out)
    finally:
        set_mode(layers, "instance")
        generator.train(was_training)


# ---- per-model check of the crops estimate (stats "auto") ----------------------------------


def psnr_range2(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two model-unit outputs (range [-1, 1], so peak 2)."""
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return float("inf") if mse == 0 else float(10 * np.log10(4.0 / mse))


@torch.no_grad()
def check_crops_estimate(
    generator: nn.Module, frame: np.ndarray | torch.Tensor, *, size_multiple: int | None = None
) -> dict[str, float]:
    """How well the default crops estimate reproduces whole-frame inference for this
    ``generator`` on ``frame`` ((H, W) or (C, H, W), model units): whole-frame inference
    (plain instance norm) against the frozen whole-frame pass with the crops statistics (equal
    to the frozen tile pass up to float rounding, the halo covering the receptive field), as
    ``psnr_db`` (range 2) and ``max_abs``, with the seconds of each pass. Networks differ a lot
    here (trained reference CycleGAN ~50 dB at 1024^2, a randomly initialised canonical one
    ~40 dB: ``benchmarks/results/frozen_norm.md``), which is why ``stats="auto"`` follows this
    check per model (:mod:`cyclesr_deploy.export.frozen_check`)."""
    layers = freeze_instance_norms(generator)
    m = _size_multiple(generator, size_multiple)
    x = _pad_to_multiple(_as_nchw(frame), m)
    device = _device(generator)
    was_training = generator.training
    generator.eval()
    try:
        start = time.perf_counter()
        set_mode(layers, "instance")
        ref = generator(x.to(device)).float().cpu().numpy()
        whole_s = time.perf_counter() - start
        start = time.perf_counter()
        packed = compute_statistics(generator, x[0], "crops", size_multiple=m)
        crops_s = time.perf_counter() - start
        load_packed(layers, packed)
        set_mode(layers, "frozen")
        est = generator(x.to(device)).float().cpu().numpy()
    finally:
        set_mode(layers, "instance")
        generator.train(was_training)
    return {
        "psnr_db": psnr_range2(est, ref),
        "max_abs": float(np.abs(est - ref).max()),
        "whole_frame_s": whole_s,
        "crops_stats_s": crops_s,
    }
