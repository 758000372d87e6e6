"""Generator and discriminator networks (torch). Imported only for training, export and the
torch backend, never by the torch-free runtime.

Names follow the CycleGAN paper (Zhu et al. 2017) as used by Trujillo et al. 2024, with A = LR
and B = HR: ``generator_ab`` = G (LR -> HR, the deployed network), ``generator_ba`` = F
(HR -> LR), ``discriminator_b`` = D_Y (judges HR images), ``discriminator_a`` = D_X (judges LR).

The architectures are the canonical ``junyanz/pytorch-CycleGAN-and-pix2pix`` ones
(``ResnetGenerator``, ``NLayerDiscriminator``), including the layer order inside ``model``,
so a canonical scale-1 checkpoint with matching channels loads with ``load_state_dict``.
The paper's Keras code differs (concatenating "residual" blocks, zero padding, a 142-px
PatchGAN); those deviations are deliberately not reproduced. Tensors are N x C x H x W, images
in [-1, 1].
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:  # annotations only: this file runs without cyclesr_deploy (BMZ packages)
    from cyclesr_deploy.model import DiscriminatorConfig, GeneratorConfig


def _norm(kind: str, channels: int) -> nn.Module:
    """InstanceNorm2d(affine=False, no running stats) (canonical) or Identity for 'none'."""
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)
    return nn.Identity()


class ResnetBlock(nn.Module):
    """x + [ReflPad1 - Conv3 - norm - ReLU - ReflPad1 - Conv3 - norm](x), channels kept."""

    def __init__(self, channels: int, norm: str) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, kernel_size=3, bias=True),
            _norm(norm, channels),
            nn.ReLU(inplace=True),
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, kernel_size=3, bias=True),
            _norm(norm, channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


class PixelShuffleUpsample(nn.Module):
    """x2 head: ReflPad1 - Conv3 (C -> 4C) - PixelShuffle(2) - ReLU. ``init_weights`` gives
    the conv an ICNR initialisation (Aitken et al. 2017): the head starts as nearest-neighbour
    upsampling of a conv, free of checkerboard artefacts."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.pad = nn.ReflectionPad2d(1)
        self.conv = nn.Conv2d(channels, channels * 4, kernel_size=3, bias=True)
        self.shuffle = nn.PixelShuffle(2)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.shuffle(self.conv(self.pad(x))))


def _resize_conv(in_channels: int, out_channels: int) -> list[nn.Module]:
    """Nearest x2 then ReflPad1 - Conv3 (Odena et al., Distill 2016: no checkerboard)."""
    return [
        nn.Upsample(scale_factor=2, mode="nearest"),
        nn.ReflectionPad2d(1),
        nn.Conv2d(in_channels, out_channels, kernel_size=3, bias=True),
    ]


class ResnetGenerator(nn.Module):
    """Canonical CycleGAN ResNet generator (Johnson et al. 2016), configured by ``cfg``.

    c7s1-ngf; [downscale 2: Conv3 s2 (ngf)]; d(2 ngf), d(4 ngf) (Conv3 s2); ``n_blocks`` x
    ResnetBlock(4 ngf); two x2 stages back to ngf (``cfg.upsample``); [scale 2: x2 ``cfg.head``];
    c7s1-out; tanh. Every conv but the head is followed by norm + ReLU. Output size per axis:
    input * scale / downscale. Input H, W must be multiples of ``cfg.size_multiple`` (checked by
    ``cfg.check_shape``, not here: the forward pass is the hot path).
    """

    def __init__(self, cfg: GeneratorConfig) -> None:
        super().__init__()
        self.cfg = cfg
        ngf, norm = cfg.ngf, cfg.norm
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3),
            nn.Conv2d(cfg.in_channels, ngf, kernel_size=7, bias=True),
            _norm(norm, ngf),
            nn.ReLU(inplace=True),
        ]
        if cfg.downscale == 2:  # HR -> LR generator (F of a scale-2 CycleGAN)
            layers += [
                nn.Conv2d(ngf, ngf, kernel_size=3, stride=2, padding=1, bias=True),
                _norm(norm, ngf),
                nn.ReLU(inplace=True),
            ]
        for mult in (1, 2):
            layers += [
                nn.Conv2d(ngf * mult, ngf * mult * 2, kernel_size=3, stride=2, padding=1),
                _norm(norm, ngf * mult * 2),
                nn.ReLU(inplace=True),
            ]
        layers += [ResnetBlock(ngf * 4, norm) for _ in range(cfg.n_blocks)]
        for mult in (4, 2):
            if cfg.upsample == "transpose":
                layers.append(
                    nn.ConvTranspose2d(
                        ngf * mult,
                        ngf * mult // 2,
                        kernel_size=3,
                        stride=2,
                        padding=1,
                        output_padding=1,
                        bias=True,
                    )
                )
            else:
                layers += _resize_conv(ngf * mult, ngf * mult // 2)
            layers += [_norm(norm, ngf * mult // 2), nn.ReLU(inplace=True)]
        if cfg.scale == 2:
            if cfg.head == "pixel_shuffle":
                layers.append(PixelShuffleUpsample(ngf))
            else:
                layers += [*_resize_conv(ngf, ngf), nn.ReLU(inplace=True)]
        layers += [
            nn.ReflectionPad2d(3),
            nn.Conv2d(ngf, cfg.out_channels, kernel_size=7, bias=True),
            nn.Tanh(),
        ]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_channels, H, W) in [-1, 1] -> (N, out_channels, H*s/d, W*s/d) in (-1, 1)."""
        return self.model(x)


class PatchDiscriminator(nn.Module):
    """Canonical PatchGAN (``NLayerDiscriminator``): per-patch real/fake logits (LSGAN: no
    sigmoid). C(ndf) s2 without norm - LReLU(0.2); (n_layers - 1) x C s2 + norm + LReLU with
    channels doubling up to 8 ndf; C s1 + norm + LReLU; C s1 -> 1 channel; all convs 4x4,
    padding 1. n_layers=3: 70x70 receptive field, 256x256 input -> 30x30 logits.
    """

    def __init__(self, cfg: DiscriminatorConfig) -> None:
        super().__init__()
        self.cfg = cfg
        ndf, kw = cfg.ndf, 4
        layers: list[nn.Module] = [
            nn.Conv2d(cfg.in_channels, ndf, kernel_size=kw, stride=2, padding=1),
            nn.LeakyReLU(0.2, inplace=True),
        ]
        mult = 1
        for n in range(1, cfg.n_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < cfg.n_layers else 1
            layers += [
                nn.Conv2d(ndf * prev, ndf * mult, kernel_size=kw, stride=stride, padding=1),
                _norm(cfg.norm, ndf * mult),
                nn.LeakyReLU(0.2, inplace=True),
            ]
        layers.append(nn.Conv2d(ndf * mult, 1, kernel_size=kw, stride=1, padding=1))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_channels, H, W) -> (N, 1, h, w) logits, one per overlapping patch."""
        return self.model(x)


def _icnr_(weight: torch.Tensor, std: float, generator: torch.Generator | None) -> None:
    """ICNR for a conv feeding PixelShuffle(2): the 4 sub-pixel kernels of each output channel
    are copies of one N(0, std) kernel, so the initial output is nearest-upsampled."""
    out4, *rest = weight.shape
    sub = torch.empty(out4 // 4, *rest, dtype=weight.dtype, device=weight.device)
    nn.init.normal_(sub, 0.0, std, generator=generator)
    with torch.no_grad():
        weight.copy_(sub.repeat_interleave(4, dim=0))


def init_weights(
    module: nn.Module, std: float = 0.02, generator: torch.Generator | None = None
) -> nn.Module:
    """Canonical CycleGAN initialisation, in place: conv and transposed-conv weights
    N(0, ``std``), biases 0; convs feeding a PixelShuffle get ICNR. ``generator`` (CPU)
    makes it reproducible without touching torch's global RNG. Returns ``module``."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, std, generator=generator)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    for m in module.modules():
        if isinstance(m, PixelShuffleUpsample):
            _icnr_(m.conv.weight, std, generator)
    return module


def build_generator(
    cfg: GeneratorConfig, *, generator: torch.Generator | None = None
) -> ResnetGenerator:
    """A ResnetGenerator initialised N(0, 0.02). Build G (``generator_ab``, LR -> HR) from the
    model's ``GeneratorConfig`` and F (``generator_ba``, HR -> LR) from ``cfg.inverse()``."""
    return init_weights(ResnetGenerator(cfg), generator=generator)


def resnet_generator(**config: Any) -> ResnetGenerator:
    """A ResnetGenerator from every field of a ``GeneratorConfig`` given as keywords
    (``model.json``'s ``generator``), without cyclesr_deploy installed: the architecture entry
    point of the BioImage Model Zoo packages (``cyclesr export bioimageio``), which ship this
    file as source. Weights are left as constructed; load a state dict into it."""
    return ResnetGenerator(SimpleNamespace(**config))  # type: ignore[arg-type]


def build_discriminator(
    cfg: DiscriminatorConfig, *, generator: torch.Generator | None = None
) -> PatchDiscriminator:
    """A PatchDiscriminator initialised N(0, 0.02): ``discriminator_b`` = D_Y judges HR
    (domain B) images, ``discriminator_a`` = D_X judges LR (domain A) images."""
    return init_weights(PatchDiscriminator(cfg), generator=generator)


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters (all, or only those with ``requires_grad``)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
