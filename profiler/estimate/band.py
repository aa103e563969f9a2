"""The estimate's error band: per compute precision from data/fitted.json, widened for op categories
the calibration rows never exercised.

Calibrated band (fit.py): for fp32 and int8, the union of the 10th-90th percentile ranges of
measured/estimated over the leave-one-device-out fit rows and over the hold-out rows. An artifact
mixing precisions gets the time-weighted geometric mean of the precisions' bands.

Uncalibrated op categories: a category on which no fit row spends CALIBRATED_SHARE of its modelled
time (fc, attention, pooling, reshape, other: the fit rows are MobileNet-family CNNs, their
classifier is a 1x1 conv) runs at a prior or tied efficiency nothing was fitted to. Its share s of
this artifact's modelled time (the efficiency-dependent part; per-op dispatch is fitted for all
ops) widens the band by UNCALIBRATED_WIDENING ** s on each side. The widening is an assumption, not a measurement: the one
published transformer row (MobileBERT, Pixel 4, role=check in data/measurements.csv) measured 0.6x
the estimate, which the widened band covers (docs/ESTIMATE.md).
"""
from __future__ import annotations

import math

import numpy as np

from .device_model import PRECISIONS
from .graph_cost import CATEGORIES

CALIBRATED_SHARE = 0.05              # max time share over the fit rows that counts as calibrated
UNCALIBRATED_WIDENING = (0.5, 2.0)   # band factors at 100 % uncalibrated time (assumed)
FLAG_SHARE = 0.2                     # uncalibrated share from which method / notes say so


def uncalibrated_categories(fitted: dict) -> set[str]:
    shares = fitted["calibration"].get("category_time_share", {})
    return {c for c in CATEGORIES if shares.get(c, {}).get("max", 0.0) < CALIBRATED_SHARE}


def time_shares(cats, precs, times, fixed: float = 0.0) -> tuple[dict, dict]:
    """Share of modelled time per op category and per compute precision (index arrays + seconds).
    Category shares count only the efficiency-dependent time (each op's time less the fixed
    per-op dispatch / sync, which is calibrated for every category alike)."""
    total = float(np.sum(times)) or 1.0
    by_cat = np.bincount(cats, weights=np.maximum(np.asarray(times) - fixed, 0.0),
                         minlength=len(CATEGORIES)) / total
    by_prec = np.bincount(precs, weights=times, minlength=len(PRECISIONS)) / total
    return ({c: float(v) for c, v in zip(CATEGORIES, by_cat) if v > 0},
            {p: float(v) for p, v in zip(PRECISIONS, by_prec) if v > 0})


def band(fitted: dict, cat_share: dict, prec_share: dict) -> dict:
    """Band factors for one estimate, with where they come from."""
    b = fitted["validation"]["band"]
    weights = prec_share or {"fp32": 1.0}
    log_lo = sum(w * math.log(b[p]["ratio_low"]) for p, w in weights.items())
    log_hi = sum(w * math.log(b[p]["ratio_high"]) for p, w in weights.items())
    uncal = {c: round(s, 3) for c, s in sorted(cat_share.items(), key=lambda kv: -kv[1])
             if c in uncalibrated_categories(fitted) and s >= 0.005}
    s = sum(uncal.values())
    lo = math.exp(log_lo) * UNCALIBRATED_WIDENING[0] ** s
    hi = math.exp(log_hi) * UNCALIBRATED_WIDENING[1] ** s
    cover = {p: b[p]["holdout_coverage"] for p in weights if p in b}
    return {"ratio_low": round(lo, 4), "ratio_high": round(hi, 4),
            "pct": round(100 * max(1 - lo, hi - 1)),
            "uncalibrated_categories": uncal, "uncalibrated_share": round(s, 3),
            "holdout_coverage": cover,
            "centre_bias": {p: b[p]["median_ratio_holdout"] for p in weights if p in b},
            "basis": ("measured/estimated q10-q90, union of leave-one-device-out fit rows and hold-out rows, "
                      "per precision (time-weighted); centre not recentred; holdout_coverage = share of "
                      "hold-out rows inside a band rebuilt without them; centre_bias = median hold-out "
                      "measured/estimated"
                      + (f"; widened x{UNCALIBRATED_WIDENING[0]}/x{UNCALIBRATED_WIDENING[1]} per unit "
                         "share of uncalibrated op time (assumed)" if s else ""))}
