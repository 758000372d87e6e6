"""Offline re-scoring of the trust benchmark (issue 17): candidate scoring rules on the raw
per-frame statistics of an ``ood_trust.py`` results file, without re-running inference.

    python benchmarks/ood_rules.py RESULTS.json [--out FILE]

A rule is a set of statistics and the side on which each is suspicious (``high``, ``low``,
``both``), scored exactly as the runtime scores it (``TrustScorer.judge`` against robust
median/MAD spreads, Bonferroni over the rule's statistics, the conformal threshold of
``trust.calibrate``). The reference distribution is the calibration frames' statistics when the
results file records them (``calibration.recorded``, written since feature version 3), else the
development split's in-domain frames (then the dev split's false-alarm rate is measured on the
frames the spreads came from, and is optimistic).

Labels (``trust.evaluate.LABEL_RULE``) are recomputed from each frame's PSNR/SSIM gains:
neutral frames are counted and left out of the AUC. The rule is CHOSEN ON THE DEV SPLIT ONLY
(the highest dev AUC among the rules with at most 5 % dev in-domain false alarms; ties: fewer
statistics) and then reported on the report split, with the held-out kinds apart.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np

from cyclesr_deploy.io import atomic_path
from cyclesr_deploy.trust.calibrate import conformal_threshold
from cyclesr_deploy.trust.calibration import TrustCalibration
from cyclesr_deploy.trust.evaluate import LABEL_RULE, label, roc_auc
from cyclesr_deploy.trust.score import FLOORS, SIDES, TrustScorer, robust_stats

OUT = Path(__file__).resolve().parent / "results" / "ood_rules.json"
MAX_FALSE_ALARM = 0.05

#: candidate rules, each {statistic: side or (side, spread floor)}: the review's fixes (gain on
#: both sides, level on both sides, consistency), the transfer bands and the output's high band;
#: a floor makes a statistic a guard against gross failures only
C01, C05, C10 = ("high", 0.01), ("high", 0.05), ("high", 0.1)
LGT = {"level": "both", "gain": "both", "transfer_mid": "both"}
GUARDS = {"saturated": "high", "outside": "high"}
RULES: dict[str, dict[str, str | tuple[str, float]]] = {
    "v2: level low, gain high": {"level": "low", "gain": "high"},
    "gain both": {"gain": "both"},
    "level both, gain both": {"level": "both", "gain": "both"},
    "gain both, transfer_mid both": {"gain": "both", "transfer_mid": "both"},
    "level both, gain both, transfer_mid both": dict(LGT),
    "level both, gain both, transfer both": {**LGT, "transfer_low": "both"},
    "level both, gain both, output_hf high": {"level": "both", "gain": "both", "output_hf": "high"},
    "gain both, consistency": {"gain": "both", "consistency": C01},
    "level both, gain both, consistency": {"level": "both", "gain": "both", "consistency": C01},
    "level both, gain both, transfer_mid, consistency": {**LGT, "consistency": C01},
    "level both, gain both, transfer_mid, consistency floor 0.05": {**LGT, "consistency": C05},
    "level both, gain both, transfer_mid, consistency floor 0.1": {**LGT, "consistency": C10},
    "gain both, consistency floor 0.1": {"gain": "both", "consistency": C10},
    "runtime: score.SIDES (level, gain, transfer_mid, consistency + saturated/outside guards)": {
        k: (v, FLOORS[k]) if k in FLOORS else v for k, v in SIDES.items()
    },
    "level, gain, transfer_mid, consistency, transfer_high both": {
        **LGT,
        "consistency": C01,
        "transfer_high": "both",
    },
    "level, gain, transfer_mid, consistency, transfer_high high": {
        **LGT,
        "consistency": C01,
        "transfer_high": "high",
    },
    "level, gain, transfer_mid, consistency, transfer_top both": {
        **LGT,
        "consistency": C01,
        "transfer_top": "both",
    },
    "level, gain, transfer_mid, consistency, transfer_top high": {
        **LGT,
        "consistency": C01,
        "transfer_top": "high",
    },
    "level, gain, transfer_mid, consistency, transfer_high + transfer_top both": {
        **LGT,
        "consistency": C01,
        "transfer_high": "both",
        "transfer_top": "both",
    },
    "level, gain, transfer_mid, consistency floor 0.05, transfer_top high": {
        **LGT,
        "consistency": C05,
        "transfer_top": "high",
    },
    "level, gain, transfer_mid, consistency floor 0.05, transfer_high high": {
        **LGT,
        "consistency": C05,
        "transfer_high": "high",
    },
    "every statistic, both sides": {
        k: "both"
        for k in ("level", "gain", "consistency", "transfer_low", "transfer_mid", "output_hf")
    },
}


def reference(result: dict) -> tuple[dict[str, list[float]], str]:
    """The reference statistics (per statistic, a list over frames) and where they came from."""
    recorded = result.get("calibration", {}).get("recorded")
    if recorded:
        return {k: [v for v in vs if v is not None] for k, vs in recorded.items()}, "calibration"
    rows = [r for r in result["frames"] if r["split"] == "dev" and r["group"] == "in-domain"]
    keys = set.intersection(*(set(r["features"]) for r in rows))
    ref = {k: [r["features"][k] for r in rows if r["features"][k] is not None] for k in keys}
    return ref, "dev in-domain frames (no calibration statistics recorded)"


def _side_floor(v: str | tuple[str, float]) -> tuple[str, float | None]:
    return (v[0], v[1]) if isinstance(v, tuple) else (v, None)


def scorer_for(
    rule: dict[str, str | tuple[str, float]], ref: dict[str, list[float]]
) -> TrustScorer:
    """The runtime's scorer for ``rule`` with spreads and conformal threshold from ``ref``
    (a statistic's spread floor: the rule's, else the default 1e-6)."""
    feats = {k: robust_stats(ref[k], *_side_floor(v)) for k, v in rule.items()}
    n = min(len(ref[k]) for k in rule)
    cal = TrustCalibration(
        weights_sha256={},
        sigma=0.0,
        features=feats,
        threshold=1.0,
        n_frames=n,
        false_alarm_rate=0.0,
        data="offline",
    )
    scorer = TrustScorer(cal)
    ref_rows = [{k: ref[k][i] for k in rule} for i in range(n)]
    threshold, bound = conformal_threshold(np.array([scorer.judge(r).score for r in ref_rows]))
    return TrustScorer(cal.model_copy(update={"threshold": threshold, "false_alarm_rate": bound}))


def _median(values: list[float]) -> float | None:
    return round(float(statistics.median(values)), 4) if values else None


def summary(rows: list[dict], evidence: list[float], flagged: list[bool]) -> dict:
    """AUC (hurt vs helped, neutral left out), in-domain false alarms, flagged fractions."""
    lab = np.array([r.get("label") or label(r["psnr_gain"], r["ssim_gain"]) for r in rows])
    ev, fl = np.array(evidence, np.float64), np.array(flagged, bool)
    ind = np.array([r["group"] == "in-domain" for r in rows])
    keep = lab != "neutral"
    hurt, helped = lab == "hurt", lab == "helped"

    def frac(mask: np.ndarray) -> float | None:
        return round(float(fl[mask].mean()), 4) if mask.any() else None

    auc = roc_auc(ev[keep], hurt[keep]) if keep.any() else float("nan")
    return {
        "n": len(rows),
        "hurt": int(hurt.sum()),
        "helped": int(helped.sum()),
        "neutral": int((~keep).sum()),
        "auc_hurt_vs_helped": None if np.isnan(auc) else round(auc, 4),
        "false_alarm_in_domain": frac(ind),
        "in_domain_flagged": f"{int(fl[ind].sum())}/{int(ind.sum())}",
        "hurt_flagged": frac(hurt),
        "helped_ood_flagged": frac(helped & ~ind),
    }


def split_summary(rows: list[dict], evidence: list[float], flagged: list[bool], held: set) -> dict:
    """:func:`summary` of a split, and apart for its held-out kinds and its other kinds."""
    out = summary(rows, evidence, flagged)
    if not any(r["kind"] in held for r in rows):
        return out
    for name, pick in (("held_out_kinds", True), ("seen_kinds", False)):
        idx = [i for i, r in enumerate(rows) if (r["kind"] in held) == pick]
        if idx:
            sub = [rows[i] for i in idx]
            out[name] = summary(sub, [evidence[i] for i in idx], [flagged[i] for i in idx])
    return out


def rescore(result: dict) -> dict:
    ref, source = reference(result)
    frames = result["frames"]
    held = set(result.get("held_out_kinds", []))
    have = set.intersection(*(set(r["features"]) for r in frames)) & set(ref)
    table: dict[str, dict] = {}
    for name, rule in RULES.items():
        if not set(rule) <= have:
            continue
        scorer = scorer_for(rule, ref)
        per_split = {}
        for split in ("dev", "report"):
            rows = [r for r in frames if r["split"] == split]
            judged = [
                scorer.judge({k: np.nan if v is None else v for k, v in r["features"].items()})
                for r in rows
            ]
            per_split[split] = split_summary(
                rows, [t.evidence for t in judged], [not t.trusted for t in judged], held
            )
        table[name] = {
            "rule": {k: list(v) if isinstance(v, tuple) else v for k, v in rule.items()},
            "threshold": scorer.calibration.threshold,
            **per_split,
        }
    ok = {
        n: t
        for n, t in table.items()
        if (t["dev"]["false_alarm_in_domain"] or 0) <= MAX_FALSE_ALARM
        and t["dev"]["auc_hurt_vs_helped"] is not None
    }
    chosen = (
        max(ok, key=lambda n: (ok[n]["dev"]["auc_hurt_vs_helped"], -len(ok[n]["rule"])))
        if ok
        else None  # no rule meets the false-alarm limit on the development split
    )
    return {
        "benchmark": "ood_rules",
        "results": result.get("command", ""),
        "reference": source,
        "label": LABEL_RULE,
        "held_out_kinds": sorted(held),
        "selection": f"highest dev AUC with dev in-domain false alarms <= {MAX_FALSE_ALARM}",
        "chosen": chosen,
        "rules": table,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", type=Path, help="an ood_trust.py results JSON")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    out = rescore(json.loads(args.results.read_text(encoding="utf-8")))
    out["results"] = str(args.results)
    print(f"reference: {out['reference']}")
    print("| rule | dev AUC | dev FA | report AUC | report FA | held-out AUC | hurt flagged |")
    print("|---|---|---|---|---|---|---|")
    for name, t in out["rules"].items():
        d, r = t["dev"], t["report"]
        h = r.get("held_out_kinds", {}).get("auc_hurt_vs_helped")
        mark = " (chosen)" if name == out["chosen"] else ""
        print(
            f"| {name}{mark} | {d['auc_hurt_vs_helped']} | {d['in_domain_flagged']} | "
            f"{r['auc_hurt_vs_helped']} | {r['in_domain_flagged']} | {h} | {r['hurt_flagged']} |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(args.out) as part:
        part.write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    print(f"-> {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
