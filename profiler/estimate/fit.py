"""Fit the device model's free parameters on the calibration rows; validate leave-one-device-out.

    python -m pocketml.profiler.estimate.fit               # fit, validate, write data/fitted.json
    python -m pocketml.convert.calibration_zoo             # (needs torch + litert-torch) rebuild
                                                           # data/costs.json.gz (convert/calibration_zoo.py)

Only rows with role=fit enter the fit; role=holdout rows are predicted, never fitted, and set
the band width with the fit rows' leave-one-device-out residuals; role=check rows (published
measurements of op mixes the fit never saw, e.g. transformers) are predicted and reported only.
Parameters live in log space; a weak prior pulls each toward a physically plausible value
so categories the MobileNets barely exercise (fc, pooling) stay sane.
"""
from __future__ import annotations

import argparse
import csv
import gzip
import json
import sys
from pathlib import Path

import numpy as np

from .device_model import PRECISIONS, device_terms, latency_ms
from .graph_cost import CATEGORIES

DATA = Path(__file__).with_name("data")
MEASUREMENTS, COSTS, FITTED = DATA / "measurements.csv", DATA / "costs.json.gz", DATA / "fitted.json"
PRIOR_WEIGHT = 0.15           # residual weight of one parameter's log-distance from its prior
BAND = (0.10, 0.90)           # quantiles of out-of-sample measured/estimated that bound the band
BAND_PRECISIONS = ("fp32", "int8")   # a band each; fp16 (no rows) takes the fp32 one

# name -> (prior, low, high). eff.<precision>.<category> are efficiencies of the roofline peak.
PRIOR = {"par_eff": (0.85, 0.3, 1.0), "par_exp": (1.0, 0.4, 1.0), "mem_eff": (0.3, 0.02, 1.0),
         "mem_par": (0.5, 0.01, 1.0), "cache_bpc": (16.0, 1.0, 128.0), "dispatch_us": (4.0, 0.2, 60.0),
         "sync_us": (4.0, 0.1, 60.0), "family.apple": (1.0, 0.3, 3.0), "runtime.tflite-2018": (1.4, 0.5, 3.0)}
EFF_PRIOR = {"conv1x1": 0.7, "convkxk": 0.5, "depthwise": 0.3, "fc": 0.5, "elementwise": 0.5, "pooling": 0.5}
for _p in ("fp32", "int8"):
    for _c, _v in EFF_PRIOR.items():
        PRIOR[f"eff.{_p}.{_c}"] = (_v * (0.6 if _p == "int8" else 1.0), 0.01, 1.5)
# Categories / precisions the calibration set cannot inform: tied to a fitted one (documented).
# reshape / other move data only: they take the fp32 elementwise efficiency at every precision.
TIES = {"attention": "fc"}
DATA_MOVES = ("reshape", "other")


def load_rows(path: Path = MEASUREMENTS) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        r["threads"], r["latency_ms"] = int(r["threads"]), float(r["latency_ms"])
    return rows


def load_costs(path: Path = COSTS) -> dict:
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        raw = json.load(fh)
    out = {}
    for key, d in raw.items():
        ops = np.array(d["ops"], dtype=float).reshape(-1, 5)
        out[key] = {"cat": ops[:, 0].astype(int), "prec": ops[:, 1].astype(int), "macs": ops[:, 2],
                    "flops": ops[:, 3], "bytes": ops[:, 4]}
    return out


def to_params(vec: np.ndarray, names: list[str]) -> dict:
    """Flat vector (log space) -> nested parameter dict the device model reads."""
    flat = dict(zip(names, np.exp(vec)))
    p = {"eff": {pr: {} for pr in PRECISIONS}, "family": {}, "runtime": {"xnnpack": 1.0}}
    for k, v in flat.items():
        head, _, rest = k.partition(".")
        if head == "eff":
            pr, cat = rest.split(".")
            p["eff"][pr][cat] = float(v)
        elif head in ("family", "runtime"):
            p[head][rest] = float(v)
        else:
            p[k] = float(v)
    for pr in ("fp32", "int8"):
        for cat, src in TIES.items():
            p["eff"][pr][cat] = p["eff"][pr][src]
        for cat in DATA_MOVES:
            p["eff"][pr][cat] = p["eff"]["fp32"]["elementwise"]
    p["eff"]["fp16"] = dict(p["eff"]["fp32"])       # no fp16 CPU measurements: fp16 = fp32 efficiency
    return p


class Problem:
    def __init__(self, rows, costs, profiles):
        self.rows = [r for r in rows if f"{r['model']}|{r['precision']}" in costs]
        self.missing = sorted({f"{r['model']}|{r['precision']}" for r in rows} - set(costs))
        self.costs = costs
        self.devs = {(r["device"], r["threads"]): device_terms(profiles[r["device"]], r["threads"]) for r in self.rows}
        self.names = sorted(PRIOR)
        self.x0 = np.log([PRIOR[n][0] for n in self.names])
        self.lo = np.log([PRIOR[n][1] for n in self.names])
        self.hi = np.log([PRIOR[n][2] for n in self.names])

    def predict(self, params, rows=None) -> np.ndarray:
        rows = self.rows if rows is None else rows
        return np.array([latency_ms(self.costs[f"{r['model']}|{r['precision']}"],
                                    self.devs[(r["device"], r["threads"])], params, r["runtime"]) for r in rows])

    def fit(self, rows) -> dict:
        from scipy.optimize import least_squares

        meas = np.log([r["latency_ms"] for r in rows])

        def resid(v):
            pred = self.predict(to_params(v, self.names), rows)
            return np.concatenate([np.log(pred) - meas, PRIOR_WEIGHT * (v - self.x0)])

        sol = least_squares(resid, self.x0, bounds=(self.lo, self.hi), x_scale=1.0, max_nfev=400)
        return to_params(sol.x, self.names)


def spearman(a, b) -> float | None:
    """Rank correlation (no tie correction); None under 3 rows."""
    if len(a) < 3:
        return None
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def metrics(meas, pred) -> dict:
    meas, pred = np.asarray(meas, float), np.asarray(pred, float)
    ape = np.abs(pred - meas) / meas
    rho = spearman(meas, pred)
    return {"n": int(len(meas)), "median_ape": round(float(np.median(ape)), 4),
            "within_25pct": round(float(np.mean(ape <= 0.25)), 4), "spearman": rho if rho is None else round(rho, 4)}


def by_device(rows, pred) -> dict:
    out = {}
    for dev in sorted({r["device"] for r in rows}):
        idx = [i for i, r in enumerate(rows) if r["device"] == dev]
        out[dev] = metrics([rows[i]["latency_ms"] for i in idx], pred[idx])
    return out


def _q(r, q) -> float:
    return float(np.quantile(r, q))


def band_of(groups) -> tuple[float, float]:
    """Union of each non-empty group's [q10, q90] of measured/estimated: the leave-one-device-out
    fit rows and the hold-out rows are two samples of the error, and the hold-out one is biased."""
    groups = [g for g in groups if len(g)]
    return min(_q(g, BAND[0]) for g in groups), max(_q(g, BAND[1]) for g in groups)


def precision_band(loo: np.ndarray, hold: np.ndarray) -> dict:
    """One precision's band, its coverage of the hold-out rows (each row left out of the band it is
    checked against) and of the LOO fit rows, and the centre's bias (median measured/estimated)."""
    lo, hi = band_of([loo, hold])
    inside = [lo_i <= r <= hi_i for i, r in enumerate(hold)
              for lo_i, hi_i in [band_of([loo, np.delete(hold, i)])]]
    r4 = lambda x: round(float(x), 4)                        # noqa: E731
    return {"ratio_low": r4(lo), "ratio_high": r4(hi), "n_fit_loo": int(len(loo)), "n_holdout": int(len(hold)),
            "holdout_coverage": r4(np.mean(inside)) if len(hold) else None,
            "fit_loo_coverage": r4(np.mean((loo >= lo) & (loo <= hi))) if len(loo) else None,
            "median_ratio_fit_loo": r4(np.median(loo)) if len(loo) else None,
            "median_ratio_holdout": r4(np.median(hold)) if len(hold) else None,
            "holdout_ratio_range": [r4(hold.min()), r4(hold.max())] if len(hold) else None}


def bands(fit_rows, loo, hold_rows, hold) -> dict:
    ratio = lambda rows, pred, p: np.array([r["latency_ms"] / e for r, e in zip(rows, pred)  # noqa: E731
                                            if r["precision"] == p])
    out = {p: precision_band(ratio(fit_rows, loo, p), ratio(hold_rows, hold, p)) for p in BAND_PRECISIONS}
    return {"quantiles": list(BAND), "centre": "the fit's estimate, not recentred on hold-out rows",
            "basis": "per precision: union of the q10-q90 ranges of measured/estimated over the "
                     "leave-one-device-out fit rows and over the hold-out rows (final fit); hold-out "
                     "coverage counts each hold-out row against the band rebuilt without it",
            **out, "fp16": {**out["fp32"], "note": "no fp16 rows: the fp32 band"}}


def category_shares(prob: Problem, params, rows) -> dict:
    """Mean and max share of modelled time (efficiency-dependent part, as in band.time_shares) per
    op category over the fit rows: a category the fit rows barely spend time in is uncalibrated,
    whatever its fitted efficiency says."""
    from .band import time_shares
    from .device_model import fixed_time, op_times
    shares = []
    for r in rows:
        arr, dev = prob.costs[f"{r['model']}|{r['precision']}"], prob.devs[(r["device"], r["threads"])]
        t = op_times(arr, dev, params, r["runtime"])
        by_cat = time_shares(arr["cat"], arr["prec"], t, fixed_time(dev, params))[0]
        shares.append([by_cat.get(c, 0.0) for c in CATEGORIES])
    sh = np.array(shares)
    return {c: {"mean": round(float(sh[:, i].mean()), 4), "max": round(float(sh[:, i].max()), 4)}
            for i, c in enumerate(CATEGORIES)}


def validate(prob: Problem, fit_rows, hold_rows, final, check_rows=()) -> dict:
    """Leave-one-device-out on the fit rows; the final fit on the hold-out and check rows."""
    loo = np.zeros(len(fit_rows))
    for dev in sorted({r["device"] for r in fit_rows}):
        train = [r for r in fit_rows if r["device"] != dev]
        idx = [i for i, r in enumerate(fit_rows) if r["device"] == dev]
        loo[idx] = prob.predict(prob.fit(train), [fit_rows[i] for i in idx])
    meas = np.array([r["latency_ms"] for r in fit_rows])
    hold = prob.predict(final, hold_rows) if hold_rows else np.array([])
    check = prob.predict(final, list(check_rows)) if check_rows else np.array([])
    return {"fit_loo": {"overall": metrics(meas, loo), "per_device": by_device(fit_rows, loo)},
            "fit_in_sample": metrics(meas, prob.predict(final, fit_rows)),
            "holdout": {"overall": metrics([r["latency_ms"] for r in hold_rows], hold),
                        "per_device": by_device(hold_rows, hold),
                        "per_precision": {p: metrics([r["latency_ms"] for r in hold_rows if r["precision"] == p],
                                                     [e for r, e in zip(hold_rows, hold) if r["precision"] == p])
                                          for p in BAND_PRECISIONS}} if hold_rows else {},
            "band": bands(fit_rows, loo, hold_rows, hold),
            "rows": [{**{k: r[k] for k in ("model", "device", "threads", "precision", "latency_ms", "role")},
                      "estimate_ms": round(float(p), 2)} for r, p in
                     zip(fit_rows + hold_rows + list(check_rows), list(loo) + list(hold) + list(check))]}


def run(out: Path = FITTED) -> dict:
    from pocketml.profiler import devices

    rows, costs = load_rows(), load_costs()
    profiles = {d: devices.load(d) for d in sorted({r["device"] for r in rows})}
    prob = Problem(rows, costs, profiles)
    fit_rows = [r for r in prob.rows if r["role"] == "fit"]
    hold_rows = [r for r in prob.rows if r["role"] == "holdout"]
    check_rows = [r for r in prob.rows if r["role"] == "check"]
    final = prob.fit(fit_rows)
    report = validate(prob, fit_rows, hold_rows, final, check_rows)
    result = {"schema": "pocketml.estimate/1", "params": final, "validation": report,
              "calibration": {"fit_rows": len(fit_rows), "holdout_rows": len(hold_rows),
                              "devices_fit": sorted({r["device"] for r in fit_rows}),
                              "families_fit": sorted({prob.devs[(r["device"], r["threads"])]["family"]
                                                      for r in fit_rows}),
                              "precisions_fit": sorted({r["precision"] for r in fit_rows}),
                              "category_time_share": category_shares(prob, final, fit_rows),
                              "missing_costs": prob.missing, "prior_weight": PRIOR_WEIGHT}}
    out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return result


def print_report(res: dict) -> None:
    v = res["validation"]
    print("fit rows, leave-one-device-out:", v["fit_loo"]["overall"])
    for d, m in v["fit_loo"]["per_device"].items():
        print(f"  {d:10s} {m}")
    print("fit rows, in sample:", v["fit_in_sample"])
    print("holdout rows:", v["holdout"].get("overall"))
    for d, m in v["holdout"].get("per_device", {}).items():
        print(f"  {d:10s} {m}")
    for p in BAND_PRECISIONS:
        print(f"band {p}:", v["band"][p])
    for r in v["rows"]:
        if r["role"] == "check":
            print("check row:", r)
    print("category time share over fit rows:", res["calibration"]["category_time_share"])
    print(json.dumps({k: v for k, v in res["params"].items() if k != "eff"}, indent=None))
    for pr, e in res["params"]["eff"].items():
        print(pr, {c: round(e[c], 3) for c in CATEGORIES})


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pocketml.profiler.estimate.fit")
    ap.parse_args(argv)      # cost tables are rebuilt by `python -m pocketml.convert.calibration_zoo` (torch)
    res = run()
    print_report(res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
