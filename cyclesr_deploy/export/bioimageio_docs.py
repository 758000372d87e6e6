"""The human side of a BioImage Model Zoo package: its README (``documentation``) and cover.

Kept apart from :mod:`cyclesr_deploy.export.bioimageio` (which builds and tests the
description) because it is text. Needs numpy and imageio (a dependency of bioimageio.spec).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cyclesr_deploy.model import ModelConfig

PAPER = (
    "Trujillo, C., Thompson, L., Skalli, O., Doblas, A. (2024). Unpaired data training enables "
    "super-resolution confocal microscopy from low-resolution acquisitions. Optics Letters "
    "49(20), 5775-5778."
)
PAPER_DOI = "10.1364/OL.537713"
MODE_TITLE = {"cyclegan": "CycleGAN (unpaired)", "supervised": "Supervised (paired)"}
COVER_SIDE = 256  # px per panel of the cover (input | output): 512 x 256, 2:1


def _to_uint8(image: np.ndarray, lo: float, hi: float) -> np.ndarray:
    scaled = (np.asarray(image, np.float64) - lo) / max(hi - lo, 1e-12)
    return (np.clip(scaled, 0, 1) * 255 + 0.5).astype(np.uint8)


def write_cover(path: Path, lr: np.ndarray, hr: np.ndarray) -> Path:
    """A 2:1 PNG: the central ``COVER_SIDE`` px of the test input (left) and of the model's
    output resampled to the same field (right), each stretched to its 0.1-99.9 % range."""
    import imageio.v3 as iio

    def centre(image: np.ndarray, side: int) -> np.ndarray:
        h, w = image.shape
        top, left = max((h - side) // 2, 0), max((w - side) // 2, 0)
        return image[top : top + side, left : left + side]

    s = hr.shape[-1] // lr.shape[-1]
    side = min(COVER_SIDE, *lr.shape)
    panels = []
    for image, factor in ((lr, 1), (hr, s)):
        crop = centre(image, side * factor)[::factor, ::factor]  # same field, same pixels
        lo, hi = np.percentile(crop, [0.1, 99.9])
        panels.append(_to_uint8(crop, lo, hi))
    iio.imwrite(path, np.concatenate(panels, axis=1))
    return path


def readme(
    model: ModelConfig,
    *,
    halo: int,
    min_size: int,
    step: int,
    tolerance: dict[str, float],
    test_shape: tuple[int, ...],
    tests: dict[str, Any],
) -> str:
    """The package's ``README.md``: what the model does, how its pre/post-processing relates
    to ``cyclesr enhance``, tiling in other tools, a Validation section and the citation."""
    n, g, p = model.normalization, model.generator, model.provenance
    tested = ", ".join(f"{fmt}: {status}" for fmt, status in tests.items()) or "not run"
    return f"""# {model.name}: {MODE_TITLE[p.mode]} super-resolution for confocal microscopy

A ResNet generator (ngf {g.ngf}, {g.n_blocks} residual blocks, {g.norm} normalization, scale
{g.scale}) that maps a low-resolution (LR: open pinhole, low dose) confocal image to a
high-resolution (HR) one, trained with cyclesr-deploy ({p.mode}, {p.steps} steps,
{p.n_images_a} LR and {p.n_images_b} HR images, loss preset {p.loss_preset or "-"}). It follows
Trujillo et al., Optics Letters 2024 (doi:{PAPER_DOI}).

## Input and output

- input `lr`: one channel, float32 or any integer type (cast to float32), batch x channel x
  y x x; y and x are {min_size} + n x {step} px (any multiple of {step} works for the network
  itself).
- preprocessing: `scale_linear`, the model's fixed intensity mapping of the LR domain:
  intensity {n.low_a:g} -> -1 and {n.high_a:g} -> +1 (the {n.pmin:g} / {n.pmax:g} percentiles of
  the training LR images). This is exactly `cyclesr enhance --normalize model` (the default).
  Images must come in the raw units of the training data (same detector, gain, bit depth).
- output `hr`: float32, y and x times {g.scale}; postprocessing `scale_linear` maps the
  generator's (-1, 1) to the HR domain's {n.low_b:g} .. {n.high_b:g}. `cyclesr enhance` does the
  same and then, for integer input, rounds to the input's type; here the output stays float32
  (round it yourself for uint16: the tanh output never leaves {n.low_b:g} .. {n.high_b:g}).
- halo: {halo} output px per side (the farthest an output pixel's inputs reach past a tile
  edge, receptive field {model.receptive_field} input px, rounded up to a multiple of the
  scale).
- axis `scale` (pixel size): the LR pixel size rounded to float32 precision (6e-8 relative),
  so that the spec's halo and size arithmetic comes out whole.

{_tiling(model)}
## Validation

The test input is a synthetic LR confocal frame ({test_shape[-2]} x {test_shape[-1]} px,
`cyclesr_deploy.synthetic`) mapped linearly onto the model's LR range (its {n.pmin:g} / {n.pmax:g}
percentiles onto {n.low_a:g} / {n.high_a:g}); the test output is what the cyclesr-deploy
runtime (ONNX Runtime, CPU, the frame run whole) produced for it. At
export, `bioimageio.core`'s `test_description` ran on this package offline on the CPU
({tested}) and the export would have failed otherwise.
Tolerance: a pixel fails when |difference| > {tolerance["absolute_tolerance"]:.3g} (absolute,
1e-4 of the output range) + {tolerance["relative_tolerance"]:g} x |expected| (relative); at most
{tolerance["mismatched_elements_per_million"]:g} failing pixels per million pass.
The model's quality on held-out synthetic data (PSNR,
SSIM, background noise, resolution) is in the cyclesr-deploy README (`cyclesr bench quality`);
check it on paired LR/HR acquisitions of your own before trusting it on your samples.

## Citation

{PAPER} doi:{PAPER_DOI}
"""


def _tiling(model: ModelConfig) -> str:
    """The README section on tiled prediction in other tools, by normalization layer."""
    if model.generator.norm != "instance":
        return """## Tiling in other tools

The generator has no normalization layers: a tool that tiles (bioimage.io core's blockwise
prediction, deepImageJ's patches, ilastik) with at least the halo above gets the whole-image
output, apart from float rounding.
"""
    return """## Differences from `cyclesr enhance` in other tools

The generator uses InstanceNorm: every layer normalizes its features with the mean and
variance of the whole image it is given. A tool that tiles (bioimage.io core's blockwise
prediction, deepImageJ's patches, ilastik) normalizes each tile with that tile's own
statistics, so tiled output differs from whole-image output beyond the halo, whatever the
halo: the halo removes border effects of the convolutions, not the statistics' dependence on
the tile's content. `cyclesr enhance` runs frames up to 2048 x 2048 px whole, and tiles larger
frames with frozen frame-level statistics (no seams). For results that match `cyclesr enhance`,
run the image whole (largest tile your memory allows); the cyclesr-deploy README states the
PSNR of bioimage.io core's default tiled prediction against the whole-image output.
"""
