"""Generator / discriminator architecture: parameter counts, shapes, receptive fields."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

from cyclesr_deploy.errors import InputError  # noqa: E402
from cyclesr_deploy.model import DiscriminatorConfig, GeneratorConfig  # noqa: E402
from cyclesr_deploy.nets import (  # noqa: E402
    PatchDiscriminator,
    ResnetGenerator,
    build_discriminator,
    build_generator,
    count_parameters,
    init_weights,
)

TINY = GeneratorConfig(ngf=4, n_blocks=1)


def test_canonical_parameter_counts():
    # resnet_9blocks, ngf 64, 1 -> 1 channel: c7 3200 + down 73856 + 295168
    # + 9 x 1180160 + up 295040 + 73792 + c7 3137
    g = ResnetGenerator(GeneratorConfig(ngf=64, n_blocks=9))
    assert count_parameters(g) == 11_365_633
    # the canonical RGB model: the well-known 11.378 M
    rgb = ResnetGenerator(GeneratorConfig(in_channels=3, out_channels=3))
    assert count_parameters(rgb) == 11_378_179
    # 70x70 PatchGAN, 1 channel: 1088 + 131200 + 524544 + 2097664 + 8193
    assert count_parameters(PatchDiscriminator(DiscriminatorConfig())) == 2_762_689
    assert count_parameters(PatchDiscriminator(DiscriminatorConfig(in_channels=3))) == 2_764_737


def test_state_dict_keys_follow_the_canonical_layout():
    keys = set(ResnetGenerator(GeneratorConfig(n_blocks=9)).state_dict())
    assert {"model.1.weight", "model.10.conv_block.1.weight", "model.19.weight"} <= keys
    assert "model.26.bias" in keys and len(keys) == 2 * (3 + 18 + 3)
    d_keys = set(PatchDiscriminator(DiscriminatorConfig()).state_dict())
    assert d_keys == {f"model.{i}.{p}" for i in (0, 2, 5, 8, 11) for p in ("weight", "bias")}


@pytest.mark.parametrize("scale", [1, 2])
@pytest.mark.parametrize("size", [(64, 64), (68, 92)])
@pytest.mark.parametrize("head", ["pixel_shuffle", "resize_conv"])
def test_generator_output_shape_and_range(scale, size, head):
    cfg = GeneratorConfig(ngf=4, n_blocks=1, scale=scale, head=head, upsample="resize_conv")
    g = build_generator(cfg, generator=torch.Generator().manual_seed(0))
    x = torch.rand(2, 1, *size) * 2 - 1
    with torch.no_grad():
        y = g(x)
    assert y.shape == (2, 1, size[0] * scale, size[1] * scale)
    assert y.dtype == torch.float32
    assert float(y.abs().max()) < 1


def test_transpose_upsampling_and_channels_and_tanh_saturation():
    g = build_generator(GeneratorConfig(ngf=4, n_blocks=2, in_channels=3, out_channels=2))
    x = torch.randn(2, 3, 68, 92)
    with torch.no_grad():
        for m in g.modules():  # large weights: tanh must still bound the output
            if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
                m.weight.mul_(100)
        y = g(x)
    assert y.shape == (2, 2, 68, 92)
    assert float(y.abs().max()) <= 1


def test_downscale_generator_inverts_the_scale_2_shape():
    g_ab_cfg = GeneratorConfig(ngf=4, n_blocks=1, scale=2)
    g_ba_cfg = g_ab_cfg.inverse()
    assert (g_ba_cfg.scale, g_ba_cfg.downscale, g_ba_cfg.size_multiple) == (1, 2, 8)
    assert g_ba_cfg.inverse() == g_ab_cfg
    g_ab, g_ba = build_generator(g_ab_cfg), build_generator(g_ba_cfg)
    a = torch.rand(2, 1, 32, 40)
    with torch.no_grad():
        assert g_ba(g_ab(a)).shape == a.shape
        b = torch.rand(2, 1, 64, 80)
        assert g_ab(g_ba(b)).shape == b.shape


def test_config_rejects_up_and_downscale_together():
    with pytest.raises(ValueError, match="not both"):
        GeneratorConfig(scale=2, downscale=2)


def test_discriminator_output_shape():
    d = build_discriminator(DiscriminatorConfig(ndf=4))
    with torch.no_grad():
        assert d(torch.zeros(1, 1, 256, 256)).shape == (1, 1, 30, 30)
        assert d(torch.zeros(2, 1, 64, 64)).shape == (2, 1, 6, 6)


def test_init_weights_is_reproducible_and_icnr_gives_nearest_upsampling():
    cfg = GeneratorConfig(ngf=4, n_blocks=1, scale=2)
    g1 = build_generator(cfg, generator=torch.Generator().manual_seed(3))
    g2 = build_generator(cfg, generator=torch.Generator().manual_seed(3))
    for (k, v1), v2 in zip(g1.state_dict().items(), g2.state_dict().values(), strict=True):
        assert torch.equal(v1, v2), k
    conv = next(m for m in g1.modules() if isinstance(m, nn.Conv2d))
    assert abs(conv.weight.std().item() - 0.02) < 0.01
    assert conv.bias.abs().max().item() == 0
    head = g1.model[-4]
    x = torch.rand(1, 4, 8, 8)
    with torch.no_grad():
        y = head(x)
    assert torch.equal(y[..., 0::2, 0::2], y[..., 1::2, 1::2])
    assert torch.equal(y[..., 0::2, 0::2], y[..., 0::2, 1::2])


def test_check_shape():
    cfg = GeneratorConfig()
    with pytest.raises(InputError, match="multiples of 4"):
        cfg.check_shape(66, 64)
    cfg.check_shape(68, 64)
    with pytest.raises(InputError, match="multiples of 8"):
        GeneratorConfig(downscale=2).check_shape(68, 64)
    GeneratorConfig(downscale=2).check_shape(72, 64)


def _positive_constant_weights(net: nn.Module) -> nn.Module:
    """Weights > 0 and biases 0 on positive inputs: no ReLU is off, no gradient cancels, so
    d out / d in is nonzero exactly on the receptive field."""
    net = net.double()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
                m.weight.fill_(1.0 / m.weight[0].numel())
                m.bias.zero_()
    return net


def _measured_receptive_field(net: nn.Module, size: int, phases: int) -> int:
    """Largest extent (rows or columns, input px) of nonzero d out[c + k, c + k] / d input over
    output pixels near the centre, k < ``phases`` (the extent depends on the output position
    modulo the net's total stride)."""
    x = torch.rand(1, 1, size, size, dtype=torch.float64) + 0.5
    x.requires_grad_(True)
    out = net(x)
    centre = out.shape[-1] // 2
    extent = 0
    for k in range(phases):
        (grad,) = torch.autograd.grad(out[0, 0, centre + k, centre + k], x, retain_graph=True)
        nonzero = grad[0, 0] != 0
        rows = torch.nonzero(nonzero.any(dim=1)).flatten()
        cols = torch.nonzero(nonzero.any(dim=0)).flatten()
        assert rows.min() > 0 and rows.max() < size - 1, "receptive field reaches the border"
        extent = max(extent, int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1))
    return extent


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(n_blocks=0),
        dict(n_blocks=2),
        dict(n_blocks=1, upsample="resize_conv"),
        dict(n_blocks=1, scale=2),
        dict(n_blocks=0, scale=2, head="resize_conv"),
        dict(n_blocks=2, scale=2, upsample="resize_conv", head="resize_conv"),
        dict(n_blocks=1, downscale=2),
    ],
)
def test_generator_receptive_field_matches_gradients(kwargs):
    cfg = GeneratorConfig(ngf=2, norm="none", **kwargs)
    net = _positive_constant_weights(ResnetGenerator(cfg))
    size = 128 if cfg.receptive_field < 100 else 160
    assert _measured_receptive_field(net, size, phases=8) == cfg.receptive_field


@pytest.mark.parametrize("n_layers", [1, 3])
def test_discriminator_receptive_field_matches_gradients(n_layers):
    cfg = DiscriminatorConfig(ndf=2, n_layers=n_layers, norm="none")
    net = _positive_constant_weights(PatchDiscriminator(cfg))
    assert _measured_receptive_field(net, 128, phases=2) == cfg.receptive_field
    if n_layers == 3:
        assert cfg.receptive_field == 70


def test_canonical_receptive_fields():
    assert GeneratorConfig(n_blocks=9).receptive_field == 169
    assert GeneratorConfig(n_blocks=6).receptive_field == 121


def test_count_trainable_only():
    g = init_weights(ResnetGenerator(TINY))
    for p in g.parameters():
        p.requires_grad_(False)
    assert count_parameters(g, trainable_only=True) == 0
    assert count_parameters(g) > 0


def _measured_halo(net: nn.Module, cfg: GeneratorConfig) -> tuple[int, int]:
    """(left, right) output px per side that an input tile edge at column ``a`` (a multiple
    of the size multiple, mid-image) reaches, by perturbation: +1 on each input column j, one
    copy each; left = the last output column that some j < a changes, + 1, - scale * a; right
    = scale * a - the first output column that some j >= a changes."""
    m, s = cfg.size_multiple, cfg.scale
    width = (cfg.receptive_field // m + 2) * m * 2
    a = width // 2 // m * m
    x = torch.rand(
        1, 1, 4 * m, width, dtype=torch.float64, generator=torch.Generator().manual_seed(0)
    )
    batch = (x + 0.5).repeat(width + 1, 1, 1, 1)  # last copy unperturbed
    batch[torch.arange(width), 0, :, torch.arange(width)] += 1.0
    with torch.no_grad():
        out = net(batch)[:, 0]
    changed = ((out[:-1] - out[-1:]).abs() > 1e-12).any(dim=1)  # [input column, output column]
    left = int(torch.nonzero(changed[:a].any(dim=0)).max()) + 1 - s * a
    right = s * a - int(torch.nonzero(changed[a:].any(dim=0)).min())
    return left, right


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(n_blocks=1),
        dict(n_blocks=1, scale=2),
        dict(n_blocks=1, upsample="resize_conv"),
        dict(n_blocks=1, scale=2, upsample="resize_conv"),
        dict(n_blocks=0, scale=2, upsample="resize_conv", head="resize_conv"),
    ],
)
def test_generator_halo_covers_the_measured_reach_of_a_tile_edge(kwargs):
    cfg = GeneratorConfig(ngf=2, norm="none", **kwargs)
    net = _positive_constant_weights(ResnetGenerator(cfg))
    left, right = _measured_halo(net, cfg)
    s = cfg.scale
    assert cfg.halo == -(-max(left, right) // s) * s  # the smallest multiple of the scale
    assert cfg.halo % s == 0 and min(left, right) > 0


def test_canonical_halos():
    """Half the receptive field falls short where the span is off-centre (x2 stages)."""
    assert GeneratorConfig(n_blocks=9).halo == 83
    assert GeneratorConfig(n_blocks=6, scale=2).halo == 118  # 117 needed, half the RF: 116
    assert GeneratorConfig(n_blocks=6, upsample="resize_conv").halo == 62  # 60
    assert GeneratorConfig(n_blocks=6, scale=2, upsample="resize_conv").halo == 124  # 120
