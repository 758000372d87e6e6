"""CycleGAN and supervised losses as pure functions, their weights, and the image pool.

Notation (A = LR, B = HR): G = ``g_ab``, F = ``g_ba``, D_Y = ``d_b`` (judges B), D_X = ``d_a``.
With LSGAN targets (real 1, fake 0) and the reconstruction criterion ``rec`` (L1 or VGG-feature
MSE, see :class:`LossWeights`), one generator step minimises

    total = adversarial * [ (D_Y(G(a)) - 1)^2 + (D_X(F(b)) - 1)^2 ]
          + cycle_forward * rec(F(G(a)), a) + cycle_backward * rec(G(F(b)), b)
          + identity * [ rec(F(a), a) + rec(G(b), b) ]

(means over pixels and batch), and each discriminator
0.5 * [ (D(real) - 1)^2 + D(fake)^2 ] on pooled, detached fakes.

Scale 2 (LR on a 2x coarser grid): G upscales (``GeneratorConfig(scale=2)``) and F is built
from ``cfg.inverse()``, which has one extra stride-2 conv at its input, so both cycles return
to the starting grid; D_X judges LR, D_Y HR crops (twice the LR crop). Identity terms compare
an image with a generator's output on another grid and are impossible there: use weight 0
(``generator_losses`` raises InputError otherwise).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn
from torch.nn import functional as F

from cyclesr_deploy.errors import InputError
from cyclesr_deploy.training.perceptual import perceptual_loss

LossPresetName = Literal["paper", "canonical", "supervised"]

# the paper's Keras perceptual loss adds 0.01 * mean((y_pred - 1)^2), a reuse of its adversarial
# loss that pulls every generated pixel toward +1 (the top of the intensity range)
PAPER_PIXEL_TERM_WEIGHT = 0.01


class LossWeights(BaseModel):
    """Weights of the loss terms (dimensionless; terms are means over pixels and batch).

    ``criterion`` is the reconstruction distance used by the cycle, identity and supervised
    terms: "l1" (canonical) or "perceptual" = MSE of VGG19 features (the paper; needs a
    feature network). With "l1", ``perceptual`` > 0 adds ``perceptual`` x VGG-feature MSE to the
    cycle and supervised terms (not to identity). ``paper_pixel_term`` reproduces a quirk of the
    paper's code (criterion "perceptual" only): each perceptual term also gets
    0.01 * mean((prediction - 1)^2), which pulls pixels toward +1; off by default.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    adversarial: float = Field(default=1.0, ge=0, description="LSGAN term of each generator")
    cycle_forward: float = Field(default=10.0, ge=0, description="rec(F(G(a)), a), A->B->A")
    cycle_backward: float = Field(default=10.0, ge=0, description="rec(G(F(b)), b), B->A->B")
    identity: float = Field(default=5.0, ge=0, description="rec(G(b), b) + rec(F(a), a)")
    supervised: float = Field(default=0.0, ge=0, description="paired rec(G(a), b)")
    criterion: Literal["l1", "perceptual"] = "l1"
    perceptual: float = Field(
        default=0.0, ge=0, description="extra VGG-feature MSE on cycle/supervised terms (l1)"
    )
    paper_pixel_term: bool = Field(
        default=False, description="add the paper's 0.01 * mean((y - 1)^2) to perceptual terms"
    )

    @model_validator(mode="after")
    def _paper_pixel_term_needs_perceptual_criterion(self) -> LossWeights:
        if self.paper_pixel_term and self.criterion != "perceptual":
            raise ValueError("paper_pixel_term is part of the 'perceptual' criterion only")
        return self

    @property
    def needs_perceptual(self) -> bool:
        """True when a VGG feature network must be given to the loss functions."""
        return self.criterion == "perceptual" or self.perceptual > 0

    @classmethod
    def preset(cls, name: LossPresetName, **overrides: Any) -> LossWeights:
        """Named weights, optionally with fields replaced (validated).

        paper: adversarial 1, identity 1, cycle A->B->A 10, B->A->B 5, VGG-feature MSE
          (train_cycleGAN.py ``loss_weights=[1, 1, 10, 5]``). The Keras code trains each
          generator through its own composite model, where the cycle starting in that
          generator's input domain weighs 10 and the other 5; one joint loss cannot give G and F
          different weights, so 10 goes to the LR -> HR -> LR cycle (the deployed G's).
        canonical: adversarial 1, cycles 10 and 10, identity 0.5 x 10 = 5, L1 (junyanz).
        supervised: paired L1 weight 1, no adversarial/cycle/identity terms (set
          ``perceptual`` to add a VGG term).
        """
        presets: dict[str, dict[str, Any]] = {
            "paper": dict(
                adversarial=1.0,
                identity=1.0,
                cycle_forward=10.0,
                cycle_backward=5.0,
                criterion="perceptual",
            ),
            "canonical": dict(
                adversarial=1.0, identity=5.0, cycle_forward=10.0, cycle_backward=10.0
            ),
            "supervised": dict(
                adversarial=0.0, identity=0.0, cycle_forward=0.0, cycle_backward=0.0, supervised=1
            ),
        }
        if name not in presets:
            raise InputError(f"loss preset {name!r}: choose one of {', '.join(presets)}")
        return cls.model_validate({**presets[name], **overrides})


@dataclass(frozen=True)
class _Losses:
    def as_floats(self) -> dict[str, float]:
        """Scalar terms as Python floats (for logs; synchronises with the device)."""
        return {
            f.name: float(value.detach())
            for f in fields(self)
            if (value := getattr(self, f.name)).ndim == 0
        }


@dataclass(frozen=True)
class GeneratorLosses(_Losses):
    """One generator step. Terms are unweighted (0 when not computed); ``total`` is the
    weighted sum to backpropagate. ``fake_a`` = F(b), ``fake_b`` = G(a) are detached, for the
    image pools and discriminator step."""

    adversarial_ab: torch.Tensor
    adversarial_ba: torch.Tensor
    cycle_forward: torch.Tensor
    cycle_backward: torch.Tensor
    identity_a: torch.Tensor
    identity_b: torch.Tensor
    total: torch.Tensor
    fake_a: torch.Tensor
    fake_b: torch.Tensor


@dataclass(frozen=True)
class SupervisedLosses(_Losses):
    """One paired step: ``l1`` = mean |G(a) - b|, ``perceptual`` = VGG-feature MSE (0 when not
    computed), ``total`` = weighted sum; ``fake_b`` = G(a), detached."""

    l1: torch.Tensor
    perceptual: torch.Tensor
    total: torch.Tensor
    fake_b: torch.Tensor


def lsgan_loss(pred: torch.Tensor, target_is_real: bool) -> torch.Tensor:
    """Least-squares GAN loss: mean((pred - 1)^2) for real targets, mean(pred^2) for fake."""
    return F.mse_loss(pred, torch.full_like(pred, 1.0 if target_is_real else 0.0))


def _feature_mse(
    features: nn.Module | None, pred: torch.Tensor, target: torch.Tensor
) -> torch.Tensor:
    if features is None:
        raise InputError(
            "these loss weights use the perceptual (VGG19) term: pass a feature network "
            "(training.perceptual.VGG19Features) or choose criterion 'l1' with perceptual 0"
        )
    return perceptual_loss(features, pred, target)


def reconstruction_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    weights: LossWeights,
    features: nn.Module | None = None,
    *,
    extra_perceptual: bool = True,
) -> torch.Tensor:
    """``weights.criterion`` distance of ``pred`` to ``target`` (see :class:`LossWeights`);
    ``extra_perceptual`` adds the ``perceptual``-weighted VGG term to an L1 criterion."""
    if weights.criterion == "l1":
        loss = F.l1_loss(pred, target)
        if extra_perceptual and weights.perceptual > 0:
            loss = loss + weights.perceptual * _feature_mse(features, pred, target)
        return loss
    loss = _feature_mse(features, pred, target)
    if weights.paper_pixel_term:
        loss = loss + PAPER_PIXEL_TERM_WEIGHT * lsgan_loss(pred, True)
    return loss


def generator_losses(
    real_a: torch.Tensor,
    real_b: torch.Tensor,
    g_ab: nn.Module,
    g_ba: nn.Module,
    d_a: nn.Module,
    d_b: nn.Module,
    weights: LossWeights,
    features: nn.Module | None = None,
) -> GeneratorLosses:
    """CycleGAN generator objective for one batch (formula in the module docstring).

    ``real_a`` (N, C, h, w) LR and ``real_b`` (N, C, H, W) HR in [-1, 1], unpaired. Pure:
    nothing is stored, no optimiser is touched. Freeze the discriminators first
    (``set_requires_grad([d_a, d_b], False)``) so that ``total.backward()`` leaves no
    gradient in them. Identity terms run only when ``weights.identity`` > 0.
    """
    zero = real_a.new_zeros(())
    fake_b = g_ab(real_a)  # G(a)
    fake_a = g_ba(real_b)  # F(b)
    rec_a = g_ba(fake_b)  # F(G(a))
    rec_b = g_ab(fake_a)  # G(F(b))
    adversarial_ab = lsgan_loss(d_b(fake_b), True)
    adversarial_ba = lsgan_loss(d_a(fake_a), True)
    cycle_forward = reconstruction_loss(rec_a, real_a, weights, features)
    cycle_backward = reconstruction_loss(rec_b, real_b, weights, features)
    identity_a = identity_b = zero
    if weights.identity > 0:
        same_b = g_ab(real_b) if real_a.shape[1] == real_b.shape[1] else None  # G(b)
        if same_b is None or same_b.shape != real_b.shape:
            raise InputError(
                "identity loss needs generators that keep the grid and the channels (G(b) the "
                f"shape of b, {tuple(real_b.shape[1:])}); set the identity weight to 0 for "
                "scale-2 models"
            )
        identity_a = reconstruction_loss(
            g_ba(real_a), real_a, weights, features, extra_perceptual=False
        )
        identity_b = reconstruction_loss(same_b, real_b, weights, features, extra_perceptual=False)
    total = (
        weights.adversarial * (adversarial_ab + adversarial_ba)
        + weights.cycle_forward * cycle_forward
        + weights.cycle_backward * cycle_backward
        + weights.identity * (identity_a + identity_b)
    )
    return GeneratorLosses(
        adversarial_ab=adversarial_ab,
        adversarial_ba=adversarial_ba,
        cycle_forward=cycle_forward,
        cycle_backward=cycle_backward,
        identity_a=identity_a,
        identity_b=identity_b,
        total=total,
        fake_a=fake_a.detach(),
        fake_b=fake_b.detach(),
    )


def supervised_losses(
    real_a: torch.Tensor,
    real_b: torch.Tensor,
    g_ab: nn.Module,
    weights: LossWeights,
    features: nn.Module | None = None,
) -> SupervisedLosses:
    """Paired objective ``supervised * rec(G(a), b)`` (rec as in :func:`reconstruction_loss`,
    including the extra VGG term). ``real_b`` must be on G's output grid."""
    if weights.supervised <= 0:
        raise InputError("supervised training needs a positive 'supervised' loss weight")
    fake_b = g_ab(real_a)
    if fake_b.shape != real_b.shape:
        raise InputError(
            f"supervised pair: G(a) is {tuple(fake_b.shape)} but b is {tuple(real_b.shape)}"
        )
    l1 = F.l1_loss(fake_b, real_b)
    perceptual = real_a.new_zeros(())
    if weights.needs_perceptual:
        perceptual = _feature_mse(features, fake_b, real_b)
    if weights.criterion == "l1":
        rec = l1 + weights.perceptual * perceptual
    else:
        rec = perceptual
        if weights.paper_pixel_term:
            rec = rec + PAPER_PIXEL_TERM_WEIGHT * lsgan_loss(fake_b, True)
    return SupervisedLosses(
        l1=l1, perceptual=perceptual, total=weights.supervised * rec, fake_b=fake_b.detach()
    )


def discriminator_loss(d: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """0.5 * [lsgan(d(real), real) + lsgan(d(fake), fake)]; ``fake`` is detached here, so no
    gradient reaches the generator that made it."""
    return 0.5 * (lsgan_loss(d(real), True) + lsgan_loss(d(fake.detach()), False))


def set_requires_grad(nets: nn.Module | Iterable[nn.Module | None], flag: bool) -> None:
    """Set ``requires_grad`` on every parameter of ``nets`` (None entries skipped)."""
    for net in [nets] if isinstance(nets, nn.Module) else nets:
        if net is not None:
            net.requires_grad_(flag)


class ImagePool:
    """History of generated images for the discriminator (Shrivastava et al. 2017; CycleGAN
    ``pool_size`` 50): until full, each image is stored and returned; then, with probability
    1/2, a random stored image is returned and replaced by the new one, else the new one is
    returned. ``size`` 0 returns the batch unchanged.

    All draws come from ``generator`` (a CPU torch.Generator), which the caller owns and
    checkpoints (``generator.get_state()``); ``state_dict()`` holds the stored images only.
    """

    def __init__(self, size: int = 50, *, generator: torch.Generator) -> None:
        if size < 0:
            raise InputError(f"image pool size must be >= 0, got {size}")
        self.size = size
        self.generator = generator
        self.images: list[torch.Tensor] = []

    def query(self, images: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) fresh fakes -> (N, C, H, W) mix of fresh and stored fakes (detached)."""
        images = images.detach()
        if self.size == 0:
            return images
        out = []
        for image in images:
            if len(self.images) < self.size:
                self.images.append(image.clone())
                out.append(image)
            elif float(torch.rand((), generator=self.generator)) < 0.5:
                index = int(torch.randint(self.size, (), generator=self.generator))
                out.append(self.images[index])
                self.images[index] = image.clone()
            else:
                out.append(image)
        return torch.stack(out)

    def state_dict(self) -> dict[str, Any]:
        return {"size": self.size, "images": list(self.images)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state["size"]) != self.size:
            raise InputError(f"image pool: saved size {state['size']} != configured {self.size}")
        self.images = [t.clone() for t in state["images"]]
