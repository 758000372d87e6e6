"""CycleGAN / supervised losses, weights presets, gradient isolation, image pool."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from pydantic import ValidationError  # noqa: E402
from torch import nn  # noqa: E402

from cyclesr_deploy.errors import InputError  # noqa: E402
from cyclesr_deploy.model import DiscriminatorConfig, GeneratorConfig  # noqa: E402
from cyclesr_deploy.nets import build_discriminator, build_generator  # noqa: E402
from cyclesr_deploy.training.losses import (  # noqa: E402
    ImagePool,
    LossWeights,
    discriminator_loss,
    generator_losses,
    lsgan_loss,
    reconstruction_loss,
    set_requires_grad,
    supervised_losses,
)
from cyclesr_deploy.training.perceptual import VGG19Features  # noqa: E402


class Scale(nn.Module):
    """x -> factor * x with a learnable factor."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = nn.Parameter(torch.tensor(factor))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.factor * x


class Constant(nn.Module):
    """A 'discriminator' answering ``value`` everywhere (one learnable scalar)."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = nn.Parameter(torch.tensor(float(value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.value + 0 * x[:, :1, ::4, ::4]


def _images(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.fixture(scope="module")
def vgg():
    return VGG19Features("relu1_2", "random", generator=torch.Generator().manual_seed(0))


def test_presets():
    paper = LossWeights.preset("paper")
    assert (paper.adversarial, paper.identity, paper.cycle_forward, paper.cycle_backward) == (
        1,
        1,
        10,
        5,
    )
    assert paper.criterion == "perceptual" and paper.needs_perceptual
    assert not paper.paper_pixel_term
    canonical = LossWeights.preset("canonical")
    assert (canonical.adversarial, canonical.identity) == (1, 5)
    assert (canonical.cycle_forward, canonical.cycle_backward) == (10, 10)
    assert canonical.criterion == "l1" and not canonical.needs_perceptual
    assert canonical == LossWeights()
    sup = LossWeights.preset("supervised")
    assert (sup.supervised, sup.adversarial, sup.identity, sup.perceptual) == (1, 0, 0, 0)
    assert sup.cycle_forward == sup.cycle_backward == 0
    assert LossWeights.preset("supervised", perceptual=0.1).needs_perceptual
    assert LossWeights.preset("paper", paper_pixel_term=True).paper_pixel_term
    with pytest.raises(ValidationError, match="paper_pixel_term"):
        LossWeights.preset("canonical", paper_pixel_term=True)
    with pytest.raises(ValidationError):
        LossWeights(identity=-1)
    with pytest.raises(InputError, match="choose one of"):
        LossWeights.preset("cut")  # type: ignore[arg-type]


def test_lsgan_targets():
    ones, zeros = torch.ones(2, 1, 5, 5), torch.zeros(2, 1, 5, 5)
    assert float(lsgan_loss(ones, True)) == 0
    assert float(lsgan_loss(zeros, False)) == 0
    assert float(lsgan_loss(zeros, True)) == 1
    assert float(lsgan_loss(ones, False)) == 1
    assert float(lsgan_loss(torch.full((3,), 0.5), True)) == 0.25


@pytest.mark.parametrize("preset", ["canonical", "paper"])
def test_identity_generators_give_zero_cycle_and_identity_losses(preset, vgg):
    weights = LossWeights.preset(preset)
    a, b = _images(2, 1, 32, 32, seed=1), _images(2, 1, 32, 32, seed=2)
    d = Constant(1.0)
    out = generator_losses(a, b, nn.Identity(), nn.Identity(), d, d, weights, vgg)
    for term in ("cycle_forward", "cycle_backward", "identity_a", "identity_b"):
        assert getattr(out, term).item() == 0, term
    assert out.adversarial_ab.item() == out.adversarial_ba.item() == 0  # D says "real"
    assert out.total.item() == 0
    assert torch.equal(out.fake_b, a) and torch.equal(out.fake_a, b)


def test_total_is_the_weighted_sum():
    weights = LossWeights(adversarial=2, cycle_forward=3, cycle_backward=4, identity=5)
    a, b = _images(2, 1, 16, 16, seed=3), _images(2, 1, 16, 16, seed=4)
    g_ab, g_ba = Scale(0.5), Scale(3.0)  # cycles: 1.5 x
    out = generator_losses(a, b, g_ab, g_ba, Constant(0.25), Constant(0.5), weights)
    torch.testing.assert_close(out.adversarial_ab, torch.tensor(0.25))  # d_b(G(a)) = 0.5
    torch.testing.assert_close(out.adversarial_ba, torch.tensor(0.5625))  # d_a(F(b)) = 0.25
    torch.testing.assert_close(out.cycle_forward, 0.5 * a.abs().mean())
    torch.testing.assert_close(out.cycle_backward, 0.5 * b.abs().mean())
    torch.testing.assert_close(out.identity_a, 2 * a.abs().mean())  # |F(a) - a|
    torch.testing.assert_close(out.identity_b, 0.5 * b.abs().mean())  # |G(b) - b|
    expected = (
        2 * (out.adversarial_ab + out.adversarial_ba)
        + 3 * out.cycle_forward
        + 4 * out.cycle_backward
        + 5 * (out.identity_a + out.identity_b)
    )
    torch.testing.assert_close(out.total, expected)
    floats = out.as_floats()
    assert set(floats) == {
        "adversarial_ab",
        "adversarial_ba",
        "cycle_forward",
        "cycle_backward",
        "identity_a",
        "identity_b",
        "total",
    }
    assert all(isinstance(v, float) for v in floats.values())


def test_identity_is_skipped_at_weight_zero():
    calls = []

    class Counting(nn.Identity):
        def forward(self, x):
            calls.append(x.shape)
            return x

    weights = LossWeights(identity=0)
    a = _images(1, 1, 16, 16)
    out = generator_losses(a, a, Counting(), Counting(), Constant(1), Constant(1), weights)
    assert len(calls) == 4  # G(a), F(b), F(G(a)), G(F(b)); no identity passes
    assert out.identity_a.item() == out.identity_b.item() == 0


def test_scale_2_cyclegan_with_a_downscaling_inverse_generator():
    g_cfg = GeneratorConfig(ngf=4, n_blocks=1, scale=2)
    g_ab, g_ba = build_generator(g_cfg), build_generator(g_cfg.inverse())
    d_a = build_discriminator(DiscriminatorConfig(ndf=4, n_layers=2))
    d_b = build_discriminator(DiscriminatorConfig(ndf=4, n_layers=2))
    a, b = _images(2, 1, 32, 32, seed=5), _images(2, 1, 64, 64, seed=6)
    out = generator_losses(a, b, g_ab, g_ba, d_a, d_b, LossWeights(identity=0))
    assert out.fake_b.shape == b.shape and out.fake_a.shape == a.shape
    out.total.backward()
    assert all(p.grad is not None for p in (*g_ab.parameters(), *g_ba.parameters()))
    with pytest.raises(InputError, match="identity weight to 0"):
        generator_losses(a, b, g_ab, g_ba, d_a, d_b, LossWeights.preset("canonical"))


def test_perceptual_criterion_needs_features_and_paper_pixel_term():
    a = torch.zeros(1, 1, 16, 16)
    with pytest.raises(InputError, match="feature network"):
        reconstruction_loss(a, a, LossWeights.preset("paper"))
    with pytest.raises(InputError, match="feature network"):
        reconstruction_loss(a, a, LossWeights(perceptual=1.0))
    reconstruction_loss(a, a, LossWeights(perceptual=1.0), extra_perceptual=False)


def test_paper_pixel_term_pulls_toward_plus_one(vgg):
    quirk = LossWeights.preset("paper", paper_pixel_term=True)
    zeros, ones = torch.zeros(1, 1, 16, 16), torch.ones(1, 1, 16, 16)
    torch.testing.assert_close(reconstruction_loss(zeros, zeros, quirk, vgg), torch.tensor(0.01))
    assert reconstruction_loss(ones, ones, quirk, vgg).item() == 0
    assert reconstruction_loss(zeros, zeros, LossWeights.preset("paper"), vgg).item() == 0


def test_l1_with_extra_perceptual_term(vgg):
    a, b = _images(1, 1, 16, 16, seed=7), _images(1, 1, 16, 16, seed=8)
    plain = reconstruction_loss(a, b, LossWeights())
    mixed = reconstruction_loss(a, b, LossWeights(perceptual=0.5), vgg)
    with torch.no_grad():
        feature_mse = ((vgg(a) - vgg(b)) ** 2).mean()
    torch.testing.assert_close(mixed, plain + 0.5 * feature_mse)


def test_discriminator_loss_does_not_reach_the_generator():
    g, d = Scale(0.5), Constant(0.3)
    real = _images(2, 1, 16, 16, seed=9)
    loss = discriminator_loss(d, real, g(real))
    loss.backward()
    assert g.factor.grad is None
    assert d.value.grad is not None
    # 0.5 * ((0.3 - 1)^2 + 0.3^2)
    torch.testing.assert_close(loss, torch.tensor(0.5 * (0.49 + 0.09)))


def test_frozen_discriminators_get_no_gradient_from_the_generator_step():
    g_ab, g_ba = Scale(0.9), Scale(1.1)
    d_a, d_b = Constant(0.2), Constant(0.4)
    set_requires_grad([d_a, d_b, None], False)
    a, b = _images(2, 1, 16, 16, seed=10), _images(2, 1, 16, 16, seed=11)
    generator_losses(a, b, g_ab, g_ba, d_a, d_b, LossWeights()).total.backward()
    assert d_a.value.grad is None and d_b.value.grad is None
    assert g_ab.factor.grad is not None and g_ba.factor.grad is not None
    set_requires_grad(d_a, True)
    assert d_a.value.requires_grad and not d_b.value.requires_grad


def test_supervised_losses(vgg):
    a, b = _images(2, 1, 16, 16, seed=12), _images(2, 1, 16, 16, seed=13)
    weights = LossWeights.preset("supervised")
    same = supervised_losses(a, a, nn.Identity(), weights)
    assert same.total.item() == same.l1.item() == same.perceptual.item() == 0
    out = supervised_losses(
        a, b, nn.Identity(), LossWeights.preset("supervised", perceptual=2), vgg
    )
    torch.testing.assert_close(out.l1, (a - b).abs().mean())
    assert out.perceptual.item() > 0
    torch.testing.assert_close(out.total, out.l1 + 2 * out.perceptual)
    assert set(out.as_floats()) == {"l1", "perceptual", "total"}
    with pytest.raises(InputError, match="positive 'supervised'"):
        supervised_losses(a, b, nn.Identity(), LossWeights())
    with pytest.raises(InputError, match="supervised pair"):
        supervised_losses(a, b[..., :8], nn.Identity(), weights)
    g = build_generator(GeneratorConfig(ngf=4, n_blocks=1, scale=2))
    hr = _images(2, 1, 32, 32, seed=14)
    supervised_losses(a, hr, g, weights).total.backward()
    assert all(p.grad is not None for p in g.parameters())


def _run_pool(pool: ImagePool, batches: list[torch.Tensor]) -> list[torch.Tensor]:
    return [pool.query(batch) for batch in batches]


def _batches(n: int, seed: int) -> list[torch.Tensor]:
    return [_images(3, 1, 4, 4, seed=seed + i) for i in range(n)]


def test_image_pool_fills_then_mixes_deterministically():
    batches = _batches(12, seed=100)
    pool = ImagePool(4, generator=torch.Generator().manual_seed(0))
    first = _run_pool(pool, batches[:1])[0]
    assert torch.equal(first, batches[0])  # not full yet: returned as is
    outputs = _run_pool(pool, batches[1:])
    again = ImagePool(4, generator=torch.Generator().manual_seed(0))
    assert all(
        torch.equal(x, y) for x, y in zip([first, *outputs], _run_pool(again, batches), strict=True)
    )
    swapped = sum(not torch.equal(o, b) for o, b in zip(outputs, batches[1:], strict=True))
    assert swapped > 0  # some stored images came back
    assert len(pool.images) == 4
    fakes = batches[0].requires_grad_(True) * 2
    assert not ImagePool(0, generator=torch.Generator()).query(fakes).requires_grad
    with pytest.raises(InputError):
        ImagePool(-1, generator=torch.Generator())


def test_image_pool_state_round_trip(tmp_path):
    batches = _batches(10, seed=200)
    gen = torch.Generator().manual_seed(5)
    pool = ImagePool(3, generator=gen)
    _run_pool(pool, batches[:5])
    path = tmp_path / "pool.pt"
    torch.save({"pool": pool.state_dict(), "gen": gen.get_state()}, path)
    expected = _run_pool(pool, batches[5:])

    saved = torch.load(path, weights_only=True)
    gen2 = torch.Generator().manual_seed(999)
    gen2.set_state(saved["gen"])
    resumed = ImagePool(3, generator=gen2)
    resumed.load_state_dict(saved["pool"])
    got = _run_pool(resumed, batches[5:])
    assert all(torch.equal(x, y) for x, y in zip(expected, got, strict=True))
    with pytest.raises(InputError, match="saved size"):
        ImagePool(4, generator=gen2).load_state_dict(saved["pool"])
