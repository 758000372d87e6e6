"""VGG19 features for the perceptual loss: torchvision layout, weight loading, normalisation."""

from __future__ import annotations

import logging

import pytest

torch = pytest.importorskip("torch")

from cyclesr_deploy.errors import InputError  # noqa: E402
from cyclesr_deploy.training.perceptual import (  # noqa: E402
    DEFAULT_LAYER,
    IMAGENET_MEAN,
    IMAGENET_STD,
    LAYERS,
    VGG19_FILE,
    VGG19Features,
    perceptual_loss,
    resolve_vgg_weights,
)

CONV_INDICES = [0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34]


@pytest.fixture(scope="module")
def reference():
    """A full random VGG19Features and its weights saved in torchvision's format."""
    return VGG19Features("pool5", "random", generator=torch.Generator().manual_seed(0))


@pytest.fixture
def torchvision_state(reference):
    state = dict(reference.state_dict())
    # torchvision's vgg19 also has the classifier (real shapes are huge; ignored anyway)
    state.update({"classifier.0.weight": torch.zeros(4, 8), "classifier.0.bias": torch.zeros(4)})
    state.update({"classifier.6.weight": torch.zeros(2, 4), "classifier.6.bias": torch.zeros(2)})
    return state


def test_layout_is_torchvision_vgg19_features(reference):
    keys = list(reference.state_dict())
    assert keys == [f"features.{i}.{p}" for i in CONV_INDICES for p in ("weight", "bias")]
    assert len(reference.features) == 37
    assert reference.features[34].weight.shape == (512, 512, 3, 3)
    assert isinstance(reference.features[36], torch.nn.MaxPool2d)
    assert LAYERS["pool5"] == 36 and LAYERS["relu5_4"] == 35 and LAYERS["conv5_4"] == 34
    assert DEFAULT_LAYER == "relu5_4"


def test_truncation_and_output_shapes(reference):
    x = torch.zeros(2, 1, 64, 64)
    with torch.no_grad():
        assert reference(x).shape == (2, 512, 2, 2)  # pool5
        small = VGG19Features("relu2_2", "random")
        assert len(small.features) == 9
        assert small(x).shape == (2, 128, 32, 32)
        assert VGG19Features("relu5_4", "random")(x).shape == (2, 512, 4, 4)
    with pytest.raises(InputError, match="choose one of"):
        VGG19Features("relu9_9", "random")  # type: ignore[arg-type]


def test_frozen_eval_and_gradient_reaches_the_input(reference):
    assert not any(p.requires_grad for p in reference.parameters())
    reference.train()
    assert not reference.training
    x = (torch.rand(1, 1, 32, 32) * 2 - 1).requires_grad_(True)
    loss = perceptual_loss(reference, x, torch.zeros_like(x))
    loss.backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
    assert all(p.grad is None for p in reference.parameters())


def test_torchvision_checkpoint_loads_and_reproduces_features(
    reference, torchvision_state, tmp_path
):
    path = tmp_path / VGG19_FILE
    torch.save(torchvision_state, path)
    loaded = VGG19Features("pool5", path)
    x = torch.rand(2, 1, 32, 48) * 2 - 1
    with torch.no_grad():
        assert torch.equal(loaded(x), reference(x))
        relu4 = VGG19Features("relu4_4", str(path))
        assert torch.equal(relu4(x), reference.features[:27](reference.normalize(x)))


def test_bad_checkpoints_name_the_key(torchvision_state, tmp_path):
    path = tmp_path / "bad.pth"
    wrong = dict(torchvision_state)
    wrong["features.0.weight"] = torch.zeros(64, 1, 3, 3)
    torch.save(wrong, path)
    with pytest.raises(InputError, match=r"wrong shape keys: features\.0\.weight \(64, 1, 3, 3\)"):
        VGG19Features("relu1_2", path)

    missing = dict(torchvision_state)
    del missing["features.34.weight"]
    torch.save(missing, path)
    with pytest.raises(InputError, match=r"missing keys: features\.34\.weight"):
        VGG19Features("relu5_4", path)
    VGG19Features("relu2_2", path)  # keys beyond the chosen layer are not needed

    vgg16_like = dict(torchvision_state)
    vgg16_like["features.17.weight"] = torch.zeros(256, 256, 3, 3)
    torch.save(vgg16_like, path)
    with pytest.raises(InputError, match=r"unexpected keys: features\.17\.weight"):
        VGG19Features("relu1_2", path)

    path.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="cannot read"):
        VGG19Features("relu1_2", path)


def test_resolve_vgg_weights(tmp_path, monkeypatch, caplog):
    file = tmp_path / "vgg.pth"
    file.write_bytes(b"x")
    assert resolve_vgg_weights(file) == file
    assert resolve_vgg_weights(str(file)) == file
    with pytest.raises(InputError, match="does not exist"):
        resolve_vgg_weights(tmp_path / "nope.pth")

    with caplog.at_level(logging.WARNING, logger="cyclesr_deploy"):
        assert resolve_vgg_weights("random") == "random"
    assert any("random weights" in r.getMessage() for r in caplog.records)

    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    with pytest.raises(InputError) as err:
        resolve_vgg_weights(None)
    message = str(err.value)
    assert "torchvision.models.vgg19(weights='IMAGENET1K_V1')" in message
    assert f"https://download.pytorch.org/models/{VGG19_FILE}" in message
    assert "--perceptual-weights PATH" in message and "--perceptual-weights random" in message
    cached = hub / "checkpoints" / VGG19_FILE
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"x")
    assert resolve_vgg_weights(None) == cached


def test_grayscale_repeat_and_imagenet_normalisation():
    vgg = VGG19Features("relu1_2", "random", generator=torch.Generator().manual_seed(1))
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    for value, unit in ((-1.0, 0.0), (0.0, 0.5), (1.0, 1.0)):
        x = torch.full((1, 1, 4, 4), value)
        torch.testing.assert_close(vgg.normalize(x), ((unit - mean) / std).expand(1, 3, 4, 4))
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    rgb = torch.rand(2, 3, 16, 16) * 2 - 1
    torch.testing.assert_close(vgg.normalize(rgb), ((rgb + 1) / 2 - mean) / std)
    with torch.no_grad():
        assert torch.equal(vgg(x), vgg(x.repeat(1, 3, 1, 1)))
    with pytest.raises(InputError, match="1 or 3 channels"):
        vgg(torch.zeros(1, 2, 8, 8))
    assert not any(k in vgg.state_dict() for k in ("mean", "std"))


def test_perceptual_loss_is_feature_mse():
    vgg = VGG19Features("relu2_2", "random", generator=torch.Generator().manual_seed(2))
    a = torch.rand(2, 1, 32, 32) * 2 - 1
    b = torch.rand(2, 1, 32, 32) * 2 - 1
    assert float(perceptual_loss(vgg, a, a)) == 0
    with torch.no_grad():
        expected = ((vgg(a) - vgg(b)) ** 2).mean()
    torch.testing.assert_close(perceptual_loss(vgg, a, b), expected)
