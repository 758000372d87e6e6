"""Typed configuration of the synthetic confocal simulator (pydantic v2).

Lengths: nm in the config (pixel sizes, wavelengths, PSF sigma), µm for structure sizes and
densities (per µm² of field); written files carry µm. Defaults describe a 488/520 nm confocal:

* HR: NA 1.4 oil objective, pinhole 0.5 AU, 40 nm pixels (Nyquist λex/8NA = 43.6 nm), peak 100
  photons, background 4 % of the peak: sigma_PSF ≈ 60 nm (1.5 px);
* LR: NA 0.8 dry objective, pinhole 1 AU, peak 40 photons, background 25 % of the peak (the paper's
  Fig. 1 shows a raised LR background): sigma_PSF ≈ 117 nm (2.9 px), a ratio of ≈ 1.94 (a x2 task).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from cyclesr_deploy.errors import InputError
from cyclesr_deploy.synthetic.optics import FWHM_PER_SIGMA, confocal_psf_sigma_nm

Which = Literal["hr", "lr"]


def _ordered(v: tuple[float, float]) -> tuple[float, float]:
    if not v[0] <= v[1]:
        raise ValueError(f"range must be (low, high) with low <= high, got {v}")
    return v


_NonNeg = Annotated[float, Field(ge=0, allow_inf_nan=False)]
_Pos = Annotated[float, Field(gt=0, allow_inf_nan=False)]
#: a (low, high) range with 0 <= low <= high; values are drawn uniformly from it
NonNegRange = Annotated[tuple[_NonNeg, _NonNeg], AfterValidator(_ordered)]
#: a (low, high) range with 0 < low <= high
PosRange = Annotated[tuple[_Pos, _Pos], AfterValidator(_ordered)]


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Modality(_Frozen):
    """One acquisition setting: objective, pinhole, photon budget and detector noise."""

    na: float = Field(gt=0, le=1.7, description="numerical aperture of the objective")
    pinhole_au: float = Field(ge=0, le=50, description="pinhole diameter in Airy units at λem")
    photons: float = Field(
        gt=0, le=1e9, description="expected signal photons at the brightest HR-grid pixel"
    )
    background: float = Field(
        ge=0, le=1e3, description="uniform background, as a fraction of the peak signal"
    )
    read_noise: float = Field(
        ge=0, le=1e4, description="Gaussian read/detector noise sigma, in photo-electrons per pixel"
    )


class Structures(_Frozen):
    """What the ground truth contains. Densities are per µm² of field; sizes in µm unless noted.

    Intensity unit: the dye in 1 µm of a brightness-1 filament. Curves deposit ``brightness``
    per µm of length, puncta ``brightness`` each, the nucleus ``nucleus_fill`` per µm².
    """

    filament_density: float = Field(default=0.2, ge=0, le=20, description="filaments per µm²")
    filament_length_um: PosRange = (4.0, 20.0)
    persistence_length_um: float = Field(default=8.0, gt=0, le=1e4)
    filament_brightness: NonNegRange = (0.2, 1.0)
    puncta_density: float = Field(default=0.3, ge=0, le=100, description="puncta per µm²")
    punctum_sigma_nm: NonNegRange = (15.0, 40.0)
    punctum_brightness: NonNegRange = (0.05, 0.25)
    vesicle_density: float = Field(default=0.05, ge=0, le=100, description="vesicles per µm²")
    vesicle_radius_nm: PosRange = (100.0, 300.0)
    vesicle_brightness: NonNegRange = (0.3, 1.0)
    membrane_probability: float = Field(default=0.5, ge=0, le=1)
    membrane_radius_um: PosRange = (6.0, 12.0)
    membrane_brightness: NonNegRange = (0.5, 1.0)
    nucleus_probability: float = Field(default=0.5, ge=0, le=1)
    nucleus_radius_um: PosRange = (2.5, 4.5)
    nucleus_fill: float = Field(default=1.0, ge=0, le=1e3, description="dye per µm² inside")
    nucleus_envelope_brightness: NonNegRange = (0.3, 0.6)
    irregularity: float = Field(
        default=0.15, ge=0, le=1, description="shape noise of closed outlines (relative radius)"
    )


class Variation(_Frozen):
    """Per-image variation of a data set (``SynthConfig.vary``): every sample draws its own
    structure mix and LR acquisition from these ranges (uniform; photons log-uniform), from its
    own seed stream, so a model sees many specimens and LR settings rather than one. HR optics
    stay fixed (the target domain is one HR microscope); ``hr_photons`` optionally varies its dose.
    """

    structure_scale: NonNegRange = Field(
        default=(0.25, 2.5), description="factor on each structure's density / probability"
    )
    structure_off: float = Field(
        default=0.35,
        ge=0,
        lt=1,
        description="probability that a structure type is absent from an image (one is kept)",
    )
    nucleus_fill: NonNegRange = (0.3, 3.0)
    nucleus_radius_um: PosRange = Field(
        default=(0.6, 4.5), description="the image's nucleus radius range starts in this range"
    )
    filament_brightness: NonNegRange = (0.1, 1.0)
    lr_na: PosRange = (0.7, 0.95)
    lr_pinhole_au: PosRange = (0.8, 1.6)
    lr_photons: PosRange = (20.0, 150.0)
    lr_background: NonNegRange = (0.05, 0.6)
    hr_photons: PosRange | None = None

    @model_validator(mode="after")
    def _within_modality_limits(self) -> Variation:
        """The drawn values must make valid configs (Modality's limits), checked here once."""
        limits = {
            "lr_na": 1.7,
            "lr_pinhole_au": 50,
            "lr_photons": 1e9,
            "lr_background": 1e3,
            "hr_photons": 1e9,
        }
        for name, top in limits.items():
            rng = getattr(self, name)
            if rng is not None and rng[1] > top:
                raise ValueError(f"{name}: the range must end at or below {top}, got {rng}")
        return self


class SynthConfig(_Frozen):
    """Everything that determines a simulated image pair (with ``seed``, a whole dataset)."""

    wavelength_ex_nm: float = Field(default=488.0, ge=200, le=2000)
    wavelength_em_nm: float = Field(default=520.0, ge=200, le=2000)
    hr_pixel_nm: float = Field(default=40.0, gt=1, le=1e5, description="HR pixel size, nm")
    size: int = Field(default=256, ge=16, le=16384, description="image side on the HR grid, px")
    binning: int = Field(default=1, ge=1, le=16, description="LR detector pixel = binning x HR")
    lr_grid: Literal["hr", "native"] = "hr"
    bit_depth: Literal[8, 16] = 16
    peak_fraction: float = Field(
        default=0.75, gt=0, le=1, description="expected peak (signal + background) / full scale"
    )
    oversample: int = Field(default=4, ge=1, le=16, description="ground-truth sub-pixel grid")
    hr: Modality = Modality(na=1.4, pinhole_au=0.5, photons=100.0, background=0.04, read_noise=1.0)
    lr: Modality = Modality(na=0.8, pinhole_au=1.0, photons=40.0, background=0.25, read_noise=1.0)
    structures: Structures = Structures()
    vary: Variation | None = Field(
        default=None, description="draw structures and LR acquisition per image (see Variation)"
    )
    seed: int = Field(default=0, ge=0, lt=2**63)

    @model_validator(mode="before")
    @classmethod
    def _merge_partial_modalities(cls, data: Any) -> Any:
        """``{"hr": {"photons": 1e4}}`` overrides one field and keeps the other HR defaults."""
        if isinstance(data, Mapping):
            data = dict(data)
            for which in ("hr", "lr"):
                value = data.get(which)
                if isinstance(value, Mapping):
                    default = cls.model_fields[which].default.model_dump()
                    data[which] = {**default, **value}
        return data

    @model_validator(mode="after")
    def _grid(self) -> SynthConfig:
        if self.size % self.binning:
            raise ValueError(f"size ({self.size}) must be a multiple of binning ({self.binning})")
        if self.size // self.binning < 8:
            raise ValueError(
                f"size // binning = {self.size // self.binning} px; the LR image needs >= 8"
            )
        return self

    def modality(self, which: Which) -> Modality:
        if which not in ("hr", "lr"):
            raise InputError(f"modality: expected 'hr' or 'lr', got {which!r}")
        return self.hr if which == "hr" else self.lr

    @property
    def lr_pixel_nm(self) -> float:
        """LR detector pixel (nm) = binning x HR pixel."""
        return self.hr_pixel_nm * self.binning

    def psf_sigma_nm(self, which: Which) -> float:
        """Lateral PSF sigma (nm) of modality ``which``."""
        m = self.modality(which)
        return confocal_psf_sigma_nm(
            self.wavelength_ex_nm, self.wavelength_em_nm, m.na, m.pinhole_au
        )

    def psf_sigma_px(self, which: Which, grid: Literal["hr", "native"] = "hr") -> float:
        """PSF sigma in HR-grid pixels, or (``grid="native"``) in that modality's own pixels."""
        px = self.lr_pixel_nm if (grid == "native" and which == "lr") else self.hr_pixel_nm
        return self.psf_sigma_nm(which) / px

    @property
    def psf_ratio(self) -> float:
        """sigma_LR / sigma_HR."""
        return self.psf_sigma_nm("lr") / self.psf_sigma_nm("hr")

    def gain(self, which: Which) -> float:
        """Digital units per photo-electron: the expected peak of that modality (signal plus
        background, summed over the binned pixel for LR) lands at ``peak_fraction`` of full
        scale."""
        m = self.modality(which)
        b2 = self.binning**2 if which == "lr" else 1
        full = float(2**self.bit_depth - 1)
        return self.peak_fraction * full / (b2 * m.photons * (1.0 + m.background))

    def psf_summary(self) -> dict[str, Any]:
        """PSF sigma and FWHM (nm, px) of both modalities, for reports and ``dataset.json``."""
        out: dict[str, Any] = {}
        for which in ("hr", "lr"):
            s = self.psf_sigma_nm(which)
            out[which] = {
                "sigma_nm": round(s, 4),
                "fwhm_nm": round(s * FWHM_PER_SIGMA, 4),
                "sigma_px_hr_grid": round(s / self.hr_pixel_nm, 5),
            }
        out["lr"]["sigma_px_native"] = round(self.psf_sigma_px("lr", "native"), 5)
        out["ratio_lr_hr"] = round(self.psf_ratio, 5)
        return out


def as_config(config: SynthConfig | Mapping[str, Any] | None) -> SynthConfig:
    """Return ``config`` as a :class:`SynthConfig`; a mapping is validated, errors become
    :class:`InputError` listing every bad field."""
    if config is None:
        return SynthConfig()
    if isinstance(config, SynthConfig):
        return config
    if not isinstance(config, Mapping):
        raise InputError(
            f"config: expected a SynthConfig or a mapping, got {type(config).__name__}"
        )
    try:
        return SynthConfig.model_validate(dict(config))
    except ValidationError as exc:
        lines = [
            f"  {'.'.join(map(str, e['loc'])) or '(config)'}: {e['msg']}" for e in exc.errors()
        ]
        raise InputError("invalid synthetic config:\n" + "\n".join(lines)) from exc
