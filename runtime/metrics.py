"""Accuracy of an artifact's outputs against reference outputs. Pure numpy, torch-free: the converter's
validation and the profiler both use it.

`compare(ref, out, metric)` returns plain floats:
  max_abs, mean_abs, sqnr_db, nan_count                  for any output
  cosine_mean, cosine_min                                per-sample cosine similarity
  top1_agreement, top5_overlap                           classifiers (metric "top1")
  collapsed                                              outputs constant while the reference varies
"""
from __future__ import annotations

import numpy as np

from .families import METRICS


def _flat(batch: list[np.ndarray]) -> np.ndarray:
    return np.stack([np.asarray(x, dtype=np.float64).reshape(-1) for x in batch])


def compare(ref: list[np.ndarray], out: list[np.ndarray], metric: str) -> dict:
    r, o = _flat(ref), _flat(out)
    if r.shape != o.shape:
        return {"error": f"output shape {list(o.shape)} differs from reference {list(r.shape)}"}
    nan = int((~np.isfinite(o)).sum())
    o_safe = np.nan_to_num(o, nan=0.0, posinf=0.0, neginf=0.0)
    err = np.abs(o_safe - r)
    num = np.sum(r * o_safe, axis=1)
    den = np.linalg.norm(r, axis=1) * np.linalg.norm(o_safe, axis=1)
    cos = np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)   # no floor: tiny outputs are still ±1
    noise = np.sum((o_safe - r) ** 2)
    stats = {
        "samples": int(r.shape[0]), "max_abs": float(err.max()), "mean_abs": float(err.mean()),
        "sqnr_db": float(10 * np.log10(np.sum(r ** 2) / noise)) if noise > 0 else float("inf"),
        "cosine_mean": float(cos.mean()), "cosine_min": float(cos.min()), "nan_count": nan,
        "collapsed": bool(r.shape[0] > 1 and np.ptp(o_safe, axis=0).max() == 0 and np.ptp(r, axis=0).max() > 0),
    }
    if METRICS[metric].classifier:
        r1, o1 = r.argmax(1), o_safe.argmax(1)
        k = min(5, r.shape[1])
        r5, o5 = np.argsort(-r, 1)[:, :k], np.argsort(-o_safe, 1)[:, :k]
        stats["top1_agreement"] = float((r1 == o1).mean())
        stats["top5_overlap"] = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(r5, o5)]))
    return stats


def accuracy_drop(stats: dict, metric: str) -> float:
    """The one number a budget is judged on (families.Metric.drop): 1 − top-1 agreement (classifiers) or 1 − mean cosine."""
    return METRICS[metric].drop(stats)


DROP_DEFINITION = {name: m.drop_definition for name, m in METRICS.items()}
