"""VGG19 feature extractor for the perceptual loss, loading torchvision's ImageNet weights
without torchvision and without network access.

The paper's code (Keras) compares ``VGG19(include_top=False)`` outputs, i.e. ``block5_pool``
features, by MSE, feeding [-1, 1] images without ImageNet preprocessing. Here the features
follow torchvision's convention: the generator's [-1, 1] is mapped to [0, 1] and normalised with
the ImageNet mean and std, a single channel repeated to RGB.

Weights: torchvision's ``vgg19-dcbb9e9d.pth`` (from the torch hub cache or a given file), or
``"random"`` for tests and offline smoke runs (a warning says the loss is then not perceptual).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from cyclesr_deploy.errors import InputError

log = logging.getLogger("cyclesr_deploy")

VGG19_FILE = "vgg19-dcbb9e9d.pth"
VGG19_URL = f"https://download.pytorch.org/models/{VGG19_FILE}"

VGGLayer = Literal["relu1_2", "relu2_2", "relu3_4", "relu4_4", "conv5_4", "relu5_4", "pool5"]
# index of the layer's output in torchvision's ``vgg19().features``
LAYERS: dict[str, int] = {
    "relu1_2": 3,
    "relu2_2": 8,
    "relu3_4": 17,
    "relu4_4": 26,
    "conv5_4": 34,  # before the ReLU (ESRGAN)
    "relu5_4": 35,
    "pool5": 36,  # the paper's Keras block5_pool
}
# relu5_4 = the paper's block5_pool before its 2x2 max-pool: the same features on a 2x finer
# grid (8x8 rather than 4x4 on 128-px crops, 1/16 of the input side), every position used.
DEFAULT_LAYER: VGGLayer = "relu5_4"

_CFG_E = (64, 64, "M", 128, 128, "M", *(256,) * 4, "M", *(512,) * 4, "M", *(512,) * 4, "M")
_HOW_TO_CACHE = "import torchvision; torchvision.models.vgg19(weights='IMAGENET1K_V1')"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _vgg19_features(last: int = LAYERS["pool5"]) -> nn.Sequential:
    """torchvision's ``vgg19().features`` (config "E") up to index ``last``, with the same
    indices and parameter names."""
    layers: list[nn.Module] = []
    channels = 3
    for v in _CFG_E:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(channels, int(v), kernel_size=3, padding=1), nn.ReLU()]
            channels = int(v)
    return nn.Sequential(*layers[: last + 1])


def resolve_vgg_weights(spec: str | Path | None) -> Path | Literal["random"]:
    """Where the VGG19 weights come from (``--perceptual-weights``).

    ``None``: torchvision's file in the torch hub cache (``torch.hub.get_dir()/checkpoints``),
    InputError with instructions when absent; ``"random"``: random weights (logged warning);
    anything else: that file, which must exist.
    """
    if spec is None:
        path = Path(torch.hub.get_dir()) / "checkpoints" / VGG19_FILE
        if path.is_file():
            return path
        raise InputError(
            f"perceptual loss: the VGG19 ImageNet weights are not in the torch hub cache "
            f"({path}). On a machine with internet, run\n"
            f'  python -c "{_HOW_TO_CACHE}"\n'
            f"(it puts {VGG19_FILE} into the cache, {path.parent}), or download {VGG19_URL};\n"
            f"copy the file here and pass --perceptual-weights PATH, or pass "
            f"--perceptual-weights random to train with random (non-perceptual) VGG features, "
            f"or choose a loss without the perceptual term."
        )
    if isinstance(spec, str) and spec == "random":
        log.warning(
            "perceptual loss: VGG19 with random weights (--perceptual-weights random); the "
            "feature loss is then not perceptual. Use it for tests and smoke runs only."
        )
        return "random"
    path = Path(spec).expanduser()
    if not path.is_file():
        raise InputError(f"--perceptual-weights: {path} does not exist or is not a file")
    return path


def _load_torchvision_state(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors come in many types
        raise InputError(
            f"--perceptual-weights: cannot read {path} as a torch state dict ({exc})"
        ) from exc
    if not isinstance(state, dict):
        raise InputError(f"--perceptual-weights: {path} holds a {type(state).__name__}, not a dict")
    return state


def _check_state(state: dict[str, torch.Tensor], needed: list[str], path: Path) -> None:
    """Raise InputError listing missing (among ``needed``), unexpected and mis-shaped feature
    keys, the first few of each. ``classifier.*`` keys are ignored."""
    with torch.device("meta"):  # shapes only, no memory
        full = _vgg19_features().state_dict()
    known = {f"features.{k}": v.shape for k, v in full.items()}
    features = {k: v for k, v in state.items() if not k.startswith("classifier.")}
    missing = [k for k in needed if k not in features]
    unexpected = [k for k in features if k not in known]
    shapes = {
        k: tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
        for k, v in features.items()
        if k in known
    }
    wrong = [
        f"{k} {shape} (expected {tuple(known[k])})"
        for k, shape in shapes.items()
        if shape != tuple(known[k])
    ]
    problems = []
    for what, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
        if keys:
            more = f" and {len(keys) - 5} more" if len(keys) > 5 else ""
            problems.append(f"{what} keys: {', '.join(keys[:5])}{more}")
    if problems:
        raise InputError(
            f"--perceptual-weights: {path} is not a torchvision VGG19 state dict "
            f"({VGG19_FILE}): " + "; ".join(problems)
        )


class VGG19Features(nn.Module):
    """Frozen VGG19 features up to and including ``layer`` (see ``LAYERS``).

    Input: (N, 1 or 3, H, W) in the generator's range [-1, 1]; one channel is repeated to RGB,
    then ``(x + 1) / 2`` is normalised with the ImageNet mean/std (non-persistent buffers, so
    ``state_dict()`` keys are exactly torchvision's ``features.{i}.weight/bias``). Output: the
    features, e.g. (N, 512, H/16, W/16) for relu5_4. Parameters never require grad and the
    module stays in eval mode; gradients flow to the input.

    ``weights``: a torchvision ``vgg19`` checkpoint file (``classifier.*`` keys ignored),
    "random", or None for the torch hub cache; pass a user's spec through
    ``resolve_vgg_weights`` first (it logs the warning for "random"). ``generator`` seeds the
    random initialisation (torchvision's: Kaiming normal, fan_out, zero bias).
    """

    def __init__(
        self,
        layer: VGGLayer = DEFAULT_LAYER,
        weights: str | Path | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if layer not in LAYERS:
            raise InputError(f"perceptual layer {layer!r}: choose one of {', '.join(LAYERS)}")
        self.layer = layer
        source = "random" if weights == "random" else resolve_vgg_weights(weights)
        with torch.device("meta"):  # allocated below, once: no default initialisation
            features = _vgg19_features(LAYERS[layer])
        self.features = features.to_empty(device="cpu")
        if source == "random":
            for m in self.features.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(
                        m.weight, mode="fan_out", nonlinearity="relu", generator=generator
                    )
                    nn.init.zeros_(m.bias)
        else:
            state = _load_torchvision_state(source)
            needed = [f"features.{k}" for k in self.features.state_dict()]
            _check_state(state, needed, source)
            self.load_state_dict({k: state[k] for k in needed})
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> VGG19Features:
        """Always eval: a loss network has no training mode."""
        return super().train(False)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """[-1, 1] generator images (1 or 3 channels) -> ImageNet-normalised RGB."""
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        elif x.shape[1] != 3:
            raise InputError(f"perceptual loss: images need 1 or 3 channels, got {x.shape[1]}")
        return ((x + 1) * 0.5 - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(self.normalize(x))


def perceptual_loss(features: nn.Module, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of ``features(a)`` and ``features(b)`` over all elements (the
    paper: MSE of VGG19 block5_pool features). ``b`` is the target: when it needs no grad its
    features are computed without building a graph."""
    fa = features(a)
    if b.requires_grad:
        fb = features(b)
    else:
        with torch.no_grad():
            fb = features(b)
    return nn.functional.mse_loss(fa, fb)
