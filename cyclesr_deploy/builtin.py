"""Built-in reference models, shipped inside the package (``cyclesr_deploy/models/<name>/``).

``reference-cyclegan`` (the default: unpaired CycleGAN) and ``reference-supervised`` (the same
generator trained on paired data, for comparison); how they were made and how good they are:
``benchmarks/reference_models.py`` and each folder's ``reference.json``. Commands that take
``--model`` accept a model folder or one of these names, and use the default when it is omitted.
"""

from __future__ import annotations

from pathlib import Path

from cyclesr_deploy.errors import InputError
from cyclesr_deploy.model import MODEL_JSON

MODELS_DIR = Path(__file__).resolve().parent / "models"
DEFAULT_MODEL = "reference-cyclegan"
BUILTIN_MODELS = ("reference-cyclegan", "reference-supervised")


def builtin_model(name: str = DEFAULT_MODEL) -> Path:
    """The folder of built-in model ``name``; InputError naming the choices if unknown, or if
    this installation lacks its files."""
    if name not in BUILTIN_MODELS:
        raise InputError(
            f"no built-in model {name!r}; built-in models: {', '.join(BUILTIN_MODELS)}"
        )
    folder = MODELS_DIR / name
    if not (folder / MODEL_JSON).is_file():
        raise InputError(
            f"built-in model {name!r} is missing from this installation ({folder}); reinstall "
            "cyclesr-deploy or pass --model with a model folder"
        )
    return folder


def resolve_model(value: str | Path | None) -> Path:
    """``--model``: None -> the default built-in model; an existing folder -> itself; a
    built-in name -> its folder. Anything else is an InputError saying what was tried."""
    if value is None:
        return builtin_model(DEFAULT_MODEL)
    path = Path(value)
    if path.is_dir():
        return path
    if str(value) in BUILTIN_MODELS:
        return builtin_model(str(value))
    raise InputError(
        f"--model {value}: neither a model folder nor a built-in model "
        f"({', '.join(BUILTIN_MODELS)})"
    )
