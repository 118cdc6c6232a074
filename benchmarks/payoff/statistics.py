"""Paired statistics over seeds: the t-interval (:func:`paired`, :func:`t975`), per-arm summaries,
and the gate (the oracle must beat base-only by more than 2 standard errors)."""

from __future__ import annotations

import math
import statistics
from typing import Any

_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045]


def t975(df: int) -> float:
    """Two-sided 95 % Student t quantile (1.96 beyond the table)."""
    return _T975[df - 1] if 1 <= df <= len(_T975) else 1.96


def paired(a: list[float], b: list[float]) -> dict[str, float]:
    """Mean paired difference ``a - b`` with its standard error and 95 % t-interval."""
    d = [x - y for x, y in zip(a, b, strict=True)]
    mean = statistics.mean(d)
    if len(d) < 2:
        return {"mean": mean, "se": float("nan"), "lo": float("nan"), "hi": float("nan"), "n": len(d)}
    se = statistics.stdev(d) / math.sqrt(len(d))
    half = t975(len(d) - 1) * se
    return {"mean": mean, "se": se, "lo": mean - half, "hi": mean + half, "n": len(d)}


def summarise(results: list[dict[str, Any]], arms: list[str], splits: list[str],
              refs: tuple[str, ...] = ("none", "cutmix")) -> dict[str, Any]:
    """Per-arm means and paired differences to each of ``refs`` (over the seeds present in both)."""
    by = {(r["arm"], r["seed"]): r for r in results}
    seeds = sorted({r["seed"] for r in results})
    out: dict[str, Any] = {}
    for arm in arms:
        rs = [by[(arm, s)] for s in seeds if (arm, s) in by]
        if not rs:
            continue
        row: dict[str, Any] = {"n": len(rs), "seconds": statistics.mean(r["seconds"] for r in rs),
                               "augmenter": rs[0]["augmenter"]}
        for key in ["train_acc", "pointing_game", "label_mae", *[f"acc_{s}" for s in splits]]:
            vals = [r[key] for r in rs if r.get(key) is not None]
            if vals:
                row[key] = statistics.mean(vals)
                row[key + "_sd"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
        for ref in refs:
            common = [s for s in seeds if (arm, s) in by and (ref, s) in by]
            if ref == arm or not common:
                continue
            row[f"vs_{ref}"] = {sp: paired([by[(arm, s)][f"acc_{sp}"] for s in common],
                                           [by[(ref, s)][f"acc_{sp}"] for s in common]) for sp in splits}
        out[arm] = row
    return out


def gate(summary: dict[str, Any]) -> str:
    """The gate of a cell, in words: passed when oracle - none (in-distribution) exceeds 2 SE."""
    o = summary.get("oracle", {}).get("vs_none", {}).get("id")
    if o is None:
        return "gate not evaluated (needs the arms oracle and none)"
    if o["n"] < 2:
        return "gate not evaluated (needs at least 2 paired seeds)"
    passed = o["mean"] > 2 * o["se"]
    return (f"gate {'PASSED' if passed else 'FAILED'}: oracle - none = {o['mean']:+.3f} "
            f"(SE {o['se']:.3f}, {o['mean'] / o['se'] if o['se'] > 0 else float('inf'):.1f} SE; "
            f"95% CI [{o['lo']:+.3f}, {o['hi']:+.3f}], {o['n']} paired seeds)")
