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

Per-frame trust goes into the manifest entry (``trust``, :meth:`FileTrust.summary`): frame count,
mean and lowest score, the untrusted frames' records, the worst few, and every frame's score as
one compact list (4 significant digits).
A model folder without ``trust.json`` runs unscored (one info line says how to calibrate);
every policy but ``warn`` then fails at the edge, as does a stale calibration (renewal command).
"""

from __future__ import annotations

import heapq
import logging
import math
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
WORST_KEPT = 10  # worst frames kept in the manifest
SIG_DIGITS = 4  # significant digits of the scores kept


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


def _sig(x: float) -> float:
    """A score rounded to :data:`SIG_DIGITS` significant digits (far frames keep their order)."""
    return float(f"{float(x):.{SIG_DIGITS}g}")


def _describe(rec: dict[str, Any]) -> str:
    return f"frame {rec['index']} trust {rec['trust']:.3g} ({rec['worst']})"


class FileTrust:
    """One output file's frames under ``policy`` (see the module docstring): :meth:`admit` each
    frame as it is written, then :meth:`metadata` (for the output), :meth:`summary` (for the
    manifest) and :meth:`report` (the file's warning). Frames are keyed by their index: a
    frame scored again (a page re-queued, a block recomputed) replaces its earlier record."""

    def __init__(self, policy: str, name: str, n_frames: int | None = None) -> None:
        if policy not in POLICIES:
            raise InputError(f"untrusted policy must be one of {', '.join(POLICIES)}: {policy!r}")
        self.policy, self.name, self.n_frames = policy, name, n_frames
        self._frames: dict[int, dict[str, Any]] = {}
        self._bad: dict[int, dict[str, Any]] = {}  # the untrusted frames' records
        self._sum = 0.0  # running statistics (kept per frame: no rebuild per page)
        self._min = math.inf

    @property
    def records(self) -> list[dict[str, Any]]:
        """Every frame's record, in index order."""
        return [self._frames[i] for i in sorted(self._frames)]

    @property
    def untrusted(self) -> list[int]:
        return sorted(self._bad)

    def __len__(self) -> int:
        return len(self._frames)

    def _put(self, rec: dict[str, Any]) -> None:
        i = int(rec["index"])
        old = self._frames.pop(i, None)
        self._bad.pop(i, None)
        self._frames[i] = rec
        if not rec["trusted"]:
            self._bad[i] = rec
        if old is None:
            self._sum += rec["trust"]
            self._min = min(self._min, rec["trust"])
        else:  # rare (a re-scored frame): recomputed
            self._sum = sum(r["trust"] for r in self._frames.values())
            self._min = min(r["trust"] for r in self._frames.values())

    def admit(self, index: int, frame: np.ndarray, trust: FrameTrust | None) -> np.ndarray:
        """The frame to write for frame ``index`` (zeros when skipped); raises
        :class:`UntrustedFile` when the policy refuses the file."""
        if trust is None:
            return frame
        rec = {"index": int(index), "trust": _sig(trust.score), "trusted": bool(trust.trusted)}
        rec.update(worst=trust.worst, evidence=_sig(min(trust.evidence, 1e9)))  # JSON: finite
        self._put(rec)
        if trust.trusted:
            return frame
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
        """Add frames scored elsewhere (a cluster worker's block, an earlier run), the policy
        already applied to them."""
        for rec in records:
            self._put(rec)

    def restore(self, summary: dict[str, Any] | None, below: int | None = None) -> None:
        """Add the frames of a manifest ``trust`` entry (:meth:`summary`) of an earlier run:
        every frame with its score where the entry has them, the untrusted frames' records
        (only frames ``< below`` when given: those its output holds)."""
        if not summary:
            return
        scores = summary.get("scores") or []
        indices = summary.get("indices") or range(len(scores))
        recs = {
            int(i): {"index": int(i), "trust": float(s), "trusted": True, "worst": None}
            for i, s in zip(indices, scores, strict=False)
        }
        for rec in summary.get("flagged") or []:
            recs[int(rec["index"])] = dict(rec)
        self.absorb([recs[i] for i in sorted(recs) if below is None or i < below])

    def metadata(self) -> dict[str, str] | None:
        """What the output's metadata records (``mark``/``skip`` with untrusted frames)."""
        if self.policy not in ("mark", "skip") or not self._bad:
            return None
        bad = [self._bad[i] for i in sorted(self._bad)]
        frames = ",".join(str(r["index"]) for r in bad)
        key = "skipped_frames" if self.policy == "skip" else "untrusted_frames"
        scores = ",".join(f"{r['trust']:.4g}" for r in bad)
        return {"policy": self.policy, key: frames, "untrusted_trust": scores}

    def summary(self, scores: bool = True) -> dict[str, Any] | None:
        """The manifest's ``trust`` entry: policy, frame count, mean and lowest score, the
        untrusted frames (indices, and their records in ``flagged``), the :data:`WORST_KEPT`
        worst records, and with ``scores`` every frame's score (one list in index order,
        ``indices`` when they are not 0..n-1; watch writes it at the file's end only)."""
        if not self._frames:
            return None
        n = len(self._frames)
        out: dict[str, Any] = {
            "policy": self.policy,
            "count": n,
            "mean": _sig(self._sum / n),
            "min": _sig(self._min),
            "untrusted": self.untrusted,
            "flagged": [self._bad[i] for i in sorted(self._bad)],
            "worst": self.worst(WORST_KEPT, trusted_too=True),
        }
        if scores:
            order = sorted(self._frames)
            out["scores"] = [self._frames[i]["trust"] for i in order]
            if order != list(range(n)):
                out["indices"] = order
        return out

    def worst(self, n: int = WORST_SHOWN, *, trusted_too: bool = False) -> list[dict[str, Any]]:
        """The ``n`` least trusted frames (untrusted only unless ``trusted_too``), ranked by
        their evidence (-log10 of the unclipped score: no ties where scores underflow)."""
        pool = self._frames if trusted_too else self._bad
        return heapq.nsmallest(n, pool.values(), key=_rank)

    def report(self, *, failed: bool = False) -> None:
        """One warning for the file when frames were untrusted (what the policy did;
        ``failed``: the file failed for another reason, e.g. a bad frame)."""
        if not self._bad:
            return
        if failed:
            did = "the file failed for another reason (see its error)"
        elif self.policy == "skip" and self.n_frames == 1:
            did = "not written (no output)"
        else:
            did = {
                "warn": "written as enhanced",
                "mark": "written, listed in the output's metadata",
                "skip": "written as zeros, listed in the output's metadata",
                "fail": "the file failed (no output)",
            }[self.policy]
        log.warning(
            "%s: %d of %d frame(s) untrusted (%s): %s; --untrusted %s: %s",
            self.name,
            len(self._bad),
            len(self._frames),
            "the model may invent structure there",
            "; ".join(_describe(r) for r in self.worst()),
            self.policy,
            did,
        )


def _rank(rec: dict[str, Any]) -> tuple[float, int]:
    evidence = rec.get("evidence")
    if evidence is None:  # a record without it (an earlier run's trusted frame)
        evidence = -math.log10(max(rec["trust"], 1e-300))
    return (-float(evidence), int(rec["index"]))
