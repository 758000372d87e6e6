"""Per-frame trust at the runtime's edge (issue 17): which scorer a run uses, and what a file's
untrusted frames get (``EnhanceConfig.untrusted``, ``--untrusted``).

The frame runner scores every frame (:class:`~cyclesr_deploy.runtime.runner.FrameWork`:
input statistics when the frame starts, its :class:`~cyclesr_deploy.trust.FrameTrust` at
``result()``); the doors hand each written frame to a :class:`FileTrust`, one per output file:

* ``warn`` (default): every frame is written; one warning per file with the count and the
  worst frames (index, trust, the statistic that set it);
* ``mark``: as ``warn``, and the untrusted frames are listed in the output's metadata
  (OME-TIFF: a ``MapAnnotation`` of namespace :data:`~cyclesr_deploy.runtime.tiff.ANNOTATION_NS`;
  other TIFFs: a ``cyclesr`` key of the description; OME-Zarr: the group's ``cyclesr``
  attribute; read back with ``formats.read_annotations``);
* ``skip``: an untrusted frame of a stack is written as zeros, so T/Z indices stay aligned, and
  listed in the metadata (``skipped_frames``); a one-frame file gets no output (status
  ``skipped``, with the reason);
* ``fail``: the file fails like a bad input at its first untrusted frame (no output, the
  ``.part`` removed; the other files go on; exit code 1).

Per-frame trust (score, trusted, worst statistic) goes into the manifest entry (``trust``).
A model folder without ``trust.json`` runs unscored (one info line says how to calibrate);
every policy but ``warn`` then fails at the edge, as does a stale calibration (renewal command).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from cyclesr_deploy.errors import InputError

if TYPE_CHECKING:
    from cyclesr_deploy.trust import FrameTrust, TrustScorer

__all__ = ["POLICIES", "FileTrust", "UntrustedFile", "check_trust", "resolve_scorer"]

log = logging.getLogger(__name__)

Policy = Literal["warn", "mark", "skip", "fail"]
POLICIES: tuple[Policy, ...] = ("warn", "mark", "skip", "fail")
WORST_SHOWN = 3  # frames named in a file's warning


def resolve_scorer(
    cfg: Any,
    model: Any,
    folder: str | Path | None,
    scorer: TrustScorer | Literal["auto"] | None = "auto",
    *,
    quiet: bool = False,
) -> TrustScorer | None:
    """The run's scorer: None with ``cfg.trust`` off; ``auto``: the calibration of the model
    folder ``folder`` (None: unknown, e.g. an injected engine: unscored). Raises InputError,
    before any frame, for a stale calibration (naming the renewal command) and for a policy
    other than ``warn`` without a scorer; logs once (unless ``quiet``) that an uncalibrated
    model runs unscored."""
    policy = cfg.untrusted
    if not cfg.trust:
        if policy != "warn":
            raise InputError(f"--untrusted {policy} needs trust scores; drop --no-trust")
        return None
    if scorer == "auto":
        from cyclesr_deploy.trust import TrustScorer

        scorer = None if folder is None else TrustScorer.for_model(folder, model.scale)
    if scorer is None:
        from cyclesr_deploy.trust.calibration import RENEW_HINT

        hint = RENEW_HINT.format(d=folder if folder is not None else "MODEL")
        if policy != "warn":
            raise InputError(
                f"--untrusted {policy}: model {model.name} has no trust calibration "
                f"(trust.json); calibrate it with '{hint}', or use --untrusted warn"
            )
        if not quiet:
            log.info(
                "model %s has no trust calibration: frames are not scored (%s)", model.name, hint
            )
    return scorer


def check_trust(cfg: Any, model: Any, folder: str | Path) -> None:
    """:func:`resolve_scorer`'s refusals, for a CLI before its engine loads."""
    resolve_scorer(cfg, model, folder, quiet=True)


class UntrustedFile(InputError):
    """A file refused by the policy: ``fail`` (``skipped`` False), or ``skip`` of a one-frame
    file (``skipped`` True: recorded as skipped, not failed)."""

    def __init__(self, message: str, *, skipped: bool = False) -> None:
        super().__init__(message)
        self.skipped = skipped

    def __reduce__(self) -> Any:  # pickled from a cluster worker to the client: keep skipped
        return (_untrusted_file, (str(self), self.skipped))


def _untrusted_file(message: str, skipped: bool) -> UntrustedFile:
    return UntrustedFile(message, skipped=skipped)


def _describe(rec: dict[str, Any]) -> str:
    return f"frame {rec['index']} trust {rec['trust']:.3g} ({rec['worst']})"


class FileTrust:
    """One output file's frames under ``policy`` (see the module docstring): :meth:`admit` each
    frame as it is written, then :meth:`metadata` (for the output), :meth:`summary` (for the
    manifest) and :meth:`report` (the file's warning)."""

    def __init__(self, policy: str, name: str, n_frames: int | None = None) -> None:
        if policy not in POLICIES:
            raise InputError(f"untrusted policy must be one of {', '.join(POLICIES)}: {policy!r}")
        self.policy, self.name, self.n_frames = policy, name, n_frames
        self.records: list[dict[str, Any]] = []
        self.untrusted: list[int] = []

    def admit(self, index: int, frame: np.ndarray, trust: FrameTrust | None) -> np.ndarray:
        """The frame to write for frame ``index`` (zeros when skipped); raises
        :class:`UntrustedFile` when the policy refuses the file."""
        if trust is None:
            return frame
        rec = {"index": int(index), "trust": round(float(trust.score), 6)}
        rec.update(trusted=bool(trust.trusted), worst=trust.worst)
        self.records.append(rec)
        if trust.trusted:
            return frame
        self.untrusted.append(int(index))
        if self.policy == "fail":
            raise UntrustedFile(
                f"{self.name}: {_describe(rec)} is untrusted (--untrusted fail): no output"
            )
        if self.policy == "skip":
            if self.n_frames == 1:
                raise UntrustedFile(
                    f"{_describe(rec)} is untrusted (--untrusted skip): not written", skipped=True
                )
            return np.zeros_like(frame)
        return frame

    def absorb(self, records: list[dict[str, Any]]) -> None:
        """Add frames scored elsewhere (a cluster worker's block, an earlier run), in order
        of their index, the policy already applied to them."""
        self.records = sorted([*self.records, *records], key=lambda r: r["index"])
        self.untrusted = [r["index"] for r in self.records if not r["trusted"]]

    def metadata(self) -> dict[str, str] | None:
        """What the output's metadata records (``mark``/``skip`` with untrusted frames)."""
        if self.policy not in ("mark", "skip") or not self.untrusted:
            return None
        frames = ",".join(map(str, self.untrusted))
        key = "skipped_frames" if self.policy == "skip" else "untrusted_frames"
        scores = ",".join(f"{r['trust']:.4g}" for r in self.records if not r["trusted"])
        return {"policy": self.policy, key: frames, "untrusted_trust": scores}

    def summary(self) -> dict[str, Any] | None:
        """The manifest's ``trust`` entry: policy, per-frame records, untrusted indices."""
        if not self.records:
            return None
        scores = [r["trust"] for r in self.records]
        return {
            "policy": self.policy,
            "untrusted": list(self.untrusted),
            "mean": round(float(np.mean(scores)), 6),
            "min": round(float(min(scores)), 6),
            "frames": self.records,
        }

    def worst(self, n: int = WORST_SHOWN) -> list[dict[str, Any]]:
        bad = [r for r in self.records if not r["trusted"]]
        return sorted(bad, key=lambda r: (r["trust"], r["index"]))[:n]

    def report(self) -> None:
        """One warning for the file when frames were untrusted (what the policy did)."""
        if not self.untrusted:
            return
        did = {
            "warn": "written as enhanced",
            "mark": "written, listed in the output's metadata",
            "skip": "written as zeros, listed in the output's metadata",
            "fail": "the file failed",
        }[self.policy]
        log.warning(
            "%s: %d of %d frame(s) untrusted (%s): %s; --untrusted %s: %s",
            self.name,
            len(self.untrusted),
            len(self.records),
            "the model may invent structure there",
            "; ".join(_describe(r) for r in self.worst()),
            self.policy,
            did,
        )
