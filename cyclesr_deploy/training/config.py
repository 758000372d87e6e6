"""``TrainConfig``: one typed config for a training run, saved next to the weights it made.

Loaded from YAML/JSON (``cyclesr train --config train.yaml``) with CLI overrides, validated once
here (cross-field rules with readable names), never inside the training loop.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from cyclesr_deploy.errors import InputError
from cyclesr_deploy.model import DiscriminatorConfig, GeneratorConfig

LossPreset = Literal["paper", "canonical", "supervised"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Strict):
    """Where the images are and how crops are drawn."""

    train_a: Path = Field(description="LR images (domain A): a folder of TIFFs or a TIFF stack")
    train_b: Path = Field(description="HR images (domain B): a folder of TIFFs or a TIFF stack")
    val_a: Path | None = Field(default=None, description="paired validation LR (optional)")
    val_b: Path | None = Field(default=None, description="paired validation HR (optional)")
    crop: int = Field(default=128, ge=32, le=4096, description="training crop side, LR px")
    batch_size: int = Field(default=4, ge=1, le=512)
    pmin: float = Field(default=0.1, ge=0, lt=100, description="low dataset percentile")
    pmax: float = Field(default=99.9, gt=0, le=100, description="high dataset percentile")
    augment: bool = Field(default=True, description="random flips and 90° rotations")
    max_val_images: int = Field(default=8, ge=1, description="validation images used")

    @model_validator(mode="after")
    def _validation_set_is_paired(self) -> DataConfig:
        if (self.val_a is None) != (self.val_b is None):
            raise ValueError("give both val_a and val_b (a paired validation set) or neither")
        if not self.pmin < self.pmax:
            raise ValueError(f"pmin ({self.pmin}) must be < pmax ({self.pmax})")
        return self


class OptimConfig(_Strict):
    """Adam with the CycleGAN linear-decay schedule, in steps (one step = one batch)."""

    steps: int = Field(default=2000, ge=1, description="total optimisation steps")
    decay_start: int | None = Field(
        default=None, ge=0, description="step where the linear decay to 0 begins (steps // 2)"
    )
    lr: float = Field(default=2e-4, gt=0, le=1)
    beta1: float = Field(default=0.5, ge=0, lt=1)
    beta2: float = Field(default=0.999, ge=0, lt=1)
    pool_size: int = Field(default=50, ge=0, description="history of generated images for D")

    @property
    def decay_from(self) -> int:
        return self.steps // 2 if self.decay_start is None else self.decay_start

    def lr_factor(self, step: int) -> float:
        """Canonical CycleGAN linear policy, per step: 1 until decay_from, then linearly
        down to 1 / (n_decay + 1) at the last step."""
        n_decay = max(self.steps - self.decay_from, 0)
        return 1.0 - max(0, step - self.decay_from) / (n_decay + 1)


class TrainConfig(_Strict):
    """A whole training run. Defaults: a small CPU-friendly CycleGAN (ngf 32, 6 blocks)."""

    schema_version: Literal["1"] = "1"
    mode: Literal["cyclegan", "supervised"] = "cyclegan"
    out: Path = Field(description="model folder to write (created)")
    name: str = "cyclesr-model"
    generator: GeneratorConfig = GeneratorConfig(ngf=32, n_blocks=6)
    discriminator: DiscriminatorConfig = DiscriminatorConfig(ndf=32, n_layers=3)
    loss_preset: LossPreset | None = Field(
        default=None, description="paper | canonical | supervised (default: by mode)"
    )
    loss_overrides: dict[str, Any] = Field(
        default_factory=dict, description="LossWeights fields that replace the preset's"
    )
    perceptual_weights: str | None = Field(
        default=None, description="VGG19 weights: a file, 'random', or None = torch hub cache"
    )
    perceptual_layer: str | None = Field(default=None, description="VGG19 layer (None: default)")
    data: DataConfig
    optim: OptimConfig = OptimConfig()
    seed: int = Field(default=0, ge=0, lt=2**63)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = Field(default=True, description="mixed precision on CUDA (ignored on CPU)")
    checkpoint_every: int = Field(default=250, ge=1, description="steps between checkpoints")
    val_every: int = Field(default=500, ge=1, description="steps between validations")
    log_every: int = Field(default=10, ge=1, description="steps between CSV log rows")

    @model_validator(mode="before")
    @classmethod
    def _merge_partial_sections(cls, data: Any) -> Any:
        """``generator: {ngf: 16}`` changes ngf and keeps *this* config's other defaults
        (n_blocks 6), not the bare GeneratorConfig defaults (the canonical 9 blocks)."""
        if isinstance(data, dict):
            data = dict(data)
            for key in ("generator", "discriminator", "optim"):
                value = data.get(key)
                if isinstance(value, dict):
                    data[key] = {**cls.model_fields[key].default.model_dump(), **value}
        return data

    @property
    def preset(self) -> LossPreset:
        if self.loss_preset is not None:
            return self.loss_preset
        return "supervised" if self.mode == "supervised" else "canonical"

    @model_validator(mode="after")
    def _crop_fits_generator(self) -> TrainConfig:
        self.generator.check_shape(self.data.crop, self.data.crop, name="crop")
        return self

    @model_validator(mode="after")
    def _single_channel_images(self) -> TrainConfig:
        g = self.generator
        if g.in_channels != 1 or g.out_channels != 1 or self.discriminator.in_channels != 1:
            raise ValueError("training reads single-channel images: use 1 in/out channel")
        return self

    @model_validator(mode="after")
    def _preset_matches_mode(self) -> TrainConfig:
        if (self.mode == "supervised") != (self.preset == "supervised"):
            raise ValueError(
                f"loss preset {self.preset!r} does not fit mode {self.mode!r}: supervised "
                "training uses the 'supervised' preset, CycleGAN 'paper' or 'canonical'"
            )
        return self

    @model_validator(mode="after")
    def _scale_two_cyclegan_has_no_identity_loss(self) -> TrainConfig:
        if (
            self.generator.scale == 2
            and self.mode == "cyclegan"
            and self.loss_overrides.get("identity", None) != 0
        ):
            raise ValueError(
                "a scale-2 CycleGAN cannot use the identity loss (G(B) is twice B's size): "
                "set loss_overrides: {identity: 0}"
            )
        return self


def _format_errors(exc: ValidationError) -> str:
    return "\n".join(
        f"  {'.'.join(map(str, e['loc'])) or '(config)'}: {e['msg']}" for e in exc.errors()
    )


def load_train_config(path: str | Path | None, overrides: dict[str, Any]) -> TrainConfig:
    """Read a YAML/JSON config file (optional), apply dotted ``overrides`` (``"data.crop": 64``;
    None values are ignored) and validate. Errors become InputError listing every bad field."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise InputError(f"--config {path}: cannot read ({exc})") from exc
        import yaml  # part of the train extra; parses JSON too

        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise InputError(f"--config {path}: not valid YAML ({exc})") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise InputError(f"--config {path}: expected a mapping at the top level")
        data = loaded or {}
    for key, value in overrides.items():
        if value is None:
            continue
        node = data
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise InputError(f"config: {key} cannot be set, {p} is not a mapping")
        node[leaf] = value
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as exc:
        raise InputError("invalid training config:\n" + _format_errors(exc)) from exc
