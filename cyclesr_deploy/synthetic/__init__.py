"""Physics-based synthetic confocal data: seeded ground-truth structures imaged by two confocal
settings (HR: closed pinhole, high NA; LR: larger PSF, more background, fewer photons).

Model grid (``SynthConfig.lr_grid``):

* ``"hr"`` (default, the paper's same-grid setting): LR and HR share the HR pixel grid. With
  ``binning = b > 1`` the LR is acquired on a ``b``-times coarser detector grid (``b x b`` sums)
  and interpolated back onto the HR grid with ``skimage.transform.resize(order=3)`` (cubic
  spline), so a scale-1 model applies.
* ``"native"``: the LR stays on its coarse grid (``size / b`` px, pixel ``b · hr_pixel_nm``), for
  models with an upsampling factor ``b``.

Pipeline: :mod:`.structures` (ground truth, integrated over pixels) → :mod:`.optics` (Gaussian
confocal PSF sigma from λex, λem, NA and pinhole) → :mod:`.acquire` (blur, background, binning,
Poisson + read noise, 8/16-bit quantisation) → :mod:`.dataset` (OME-TIFF files + dataset.json).
Units: nm in the config and PSF figures, µm in files.
"""

from __future__ import annotations

from cyclesr_deploy.synthetic.config import Modality, Structures, SynthConfig, as_config
from cyclesr_deploy.synthetic.dataset import DatasetSummary, generate_dataset
from cyclesr_deploy.synthetic.optics import (
    confocal_psf_sigma_nm,
    nyquist_pixel_nm,
    pinhole_radius_nm,
    widefield_psf_sigma_nm,
)
from cyclesr_deploy.synthetic.simulate import SimulatedPair, simulate_pair
from cyclesr_deploy.synthetic.structures import render_structures

__all__ = [
    "DatasetSummary",
    "Modality",
    "SimulatedPair",
    "Structures",
    "SynthConfig",
    "as_config",
    "confocal_psf_sigma_nm",
    "generate_dataset",
    "nyquist_pixel_nm",
    "pinhole_radius_nm",
    "render_structures",
    "simulate_pair",
    "widefield_psf_sigma_nm",
]
