"""Fit the language-model estimator (lm_model.py) on published phone measurements and validate it.

    python -m pocketml.profiler.estimate.lm_fit        # writes data/lm_fitted.json, prints the tables

Rows: data/lm_measurements.csv (one published number each, with its source URL; role fit | holdout | check),
architectures: data/lm_archs.csv. Fitted (log space, bounded, scipy least_squares on log(predicted /
measured) with a weak prior toward a plausible value): dec_eff[q4, q8, float], dec_rt[llama.cpp] (xnnpack = 1),
layer_us[xnnpack, llama.cpp], pre_eff[int8, fp32], pre_rt[llama.cpp] (xnnpack = 1); mem_overhead_mb per
runtime is the median of measured minus modelled memory. Validation: leave-one-source-out (each fit source
refitted without its rows, then predicted); hold-out and check rows are predicted by the final fit. The band
of each metric is the 10th-90th percentile of measured / predicted over the leave-one-source-out fit rows and
the hold-out rows; its coverage is counted source by source, each source against a band built without it.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from pocketml.profiler import devices

from .lm_model import DEFAULT_THREADS, FITTED, LOGIT_BYTES, Workload, decode_s, prefill_s

DATA = Path(__file__).with_name("data")
ROWS, ARCHS = DATA / "lm_measurements.csv", DATA / "lm_archs.csv"
SPEED = ("decode_tok_s", "prefill_tok_s")           # fitted by least squares
BANDED = ("decode_tok_s", "prefill_tok_s", "memory_mb")
# (table, key): prior, low, high. xnnpack is the reference runtime (dec_rt = pre_rt = 1).
FREE = {("dec_eff", "q4"): (0.5, 0.05, 1.0), ("dec_eff", "q8"): (0.5, 0.05, 1.0),
        ("dec_eff", "float"): (0.5, 0.05, 1.0), ("dec_rt", "llama.cpp"): (1.0, 0.2, 5.0),
        ("layer_us", "xnnpack"): (100.0, 1.0, 3000.0), ("layer_us", "llama.cpp"): (100.0, 1.0, 3000.0),
        ("pre_eff", "int8"): (0.3, 0.01, 1.0), ("pre_eff", "fp32"): (0.3, 0.01, 1.0),
        ("pre_rt", "llama.cpp"): (1.0, 0.1, 10.0)}
PRIOR_WEIGHT = 0.3                                   # per parameter, on log(value / prior)
COMPUTE = {"int8": "int8", "float": "fp32"}


def load() -> tuple[list[dict], dict]:
    with open(ARCHS, newline="", encoding="utf-8") as f:
        archs = {a["model"]: a for a in csv.DictReader(f)}
    with open(ROWS, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r["value"] = float(r["value"])
        r["workload"] = row_workload(r, archs[r["model"]])
    return rows, archs


def row_workload(r: dict, a: dict) -> Workload:
    params, vocab, hidden = float(a["params"]), int(a["vocab"]), int(a["hidden"])
    tied, bits, eb = a["tied"] == "true", float(r["bits"]), float(r["embed_bits"] or 0)
    emb = vocab * hidden
    gather = emb * eb / 8                             # a gather-only embedding table, not streamed per token
    linear = params if tied else params - emb         # a tied head is the embedding (a quantized copy if separate)
    resident = float(r["weights_mb"]) * 1e6 if r["weights_mb"] else linear * bits / 8 + gather
    kv = 2 * int(a["layers"]) * int(a["kv_heads"]) * int(a["head_dim"]) * float(r["kv_bytes"])
    return Workload(name=r["model"], params=params, body_params=params - emb * (1 if tied else 2),
                    head_params=emb, resident_bytes=resident, read_bytes=resident - gather, kv_bytes_per_token=kv,
                    wclass=r["wclass"], compute=COMPUTE[r["compute"]], vocab=vocab, layers=int(a["layers"]))


def predict(r: dict, params: dict, profiles: dict) -> float:
    w, prof, rt = r["workload"], profiles[r["device"]], r["runtime"]
    threads = int(r["threads"] or DEFAULT_THREADS)
    m = r["metric"]
    if m == "decode_tok_s":
        return 1.0 / decode_s(w, prof, params, rt, float(r["depth"]))
    if m == "prefill_tok_s":
        return int(r["prompt_tokens"]) / prefill_s(w, prof, params, rt, int(r["prompt_tokens"]), threads)
    if m == "ttft_ms":
        return prefill_s(w, prof, params, rt, int(r["prompt_tokens"]), threads) * 1e3
    return physical_memory_mb(r) + params["mem_overhead_mb"][rt]


def physical_memory_mb(r: dict) -> float:
    w = r["workload"]
    return (w.resident_bytes + w.kv_bytes_per_token * int(r["context"])
            + int(r["logit_rows"]) * w.vocab * LOGIT_BYTES) / 1e6


def _params_from(x, mem: dict) -> dict:
    p = {"dec_eff": {}, "dec_rt": {"xnnpack": 1.0}, "layer_us": {}, "pre_eff": {}, "pre_rt": {"xnnpack": 1.0},
         "mem_overhead_mb": mem}
    for (table, key), v in zip(FREE, np.exp(x)):
        p[table][key] = float(v)
    return p


def fit(rows: list[dict], profiles: dict) -> dict:
    """Least squares on log(predicted / measured) of the speed rows, weak priors; memory overhead = median."""
    from scipy.optimize import least_squares
    speed = [r for r in rows if r["metric"] in SPEED]
    prior = np.log([v[0] for v in FREE.values()])
    lo, hi = np.log([v[1] for v in FREE.values()]), np.log([v[2] for v in FREE.values()])
    mem = memory_overheads(rows)

    count = defaultdict(int)
    for r in speed:
        count[(r["source_id"], r["metric"])] += 1
    weight = [1 / math.sqrt(count[(r["source_id"], r["metric"])]) for r in speed]   # each source x metric alike

    def resid(x):
        p = _params_from(x, mem)
        data = [wt * math.log(predict(r, p, profiles) / r["value"]) for wt, r in zip(weight, speed)]
        return np.concatenate([data, PRIOR_WEIGHT * (x - prior)])

    sol = least_squares(resid, prior.copy(), bounds=(lo, hi), max_nfev=2000)
    return _params_from(sol.x, mem)


def memory_overheads(rows: list[dict]) -> dict:
    """mem_overhead_mb per runtime: median measured minus modelled (0 for a runtime without memory rows)."""
    by = defaultdict(list)
    for r in rows:
        if r["metric"] == "memory_mb":
            by[r["runtime"]].append(r["value"] - physical_memory_mb(r))
    return {rt: float(np.median(by[rt])) if by[rt] else 0.0 for rt in ("xnnpack", "llama.cpp")}


def metrics(ratios) -> dict:
    """measured / predicted ratios -> n, median |error| (|predicted / measured - 1|), median ratio."""
    r = np.asarray(ratios, dtype=float)
    if not r.size:
        return {"n": 0}
    return {"n": int(r.size), "median_ape": round(float(np.median(np.abs(1 / r - 1))), 4),
            "median_ratio": round(float(np.median(r)), 4)}


def band_of(ratios) -> tuple[float, float]:
    return float(np.percentile(ratios, 10)), float(np.percentile(ratios, 90))


def validate(rows: list[dict], final: dict, profiles: dict) -> tuple[list[dict], dict]:
    fit_rows = [r for r in rows if r["role"] == "fit"]
    out = []
    for src in sorted({r["source_id"] for r in fit_rows}):
        loso = fit([r for r in fit_rows if r["source_id"] != src], profiles)
        out += [_row_out(r, predict(r, loso, profiles), "loso") for r in fit_rows if r["source_id"] == src]
    out += [_row_out(r, predict(r, final, profiles), "final") for r in rows if r["role"] != "fit"]
    bands = {}
    for m in BANDED:
        pool = [o for o in out if o["metric"] == m and o["role"] in ("fit", "holdout")]
        if not pool:
            continue
        lo, hi = band_of([o["ratio"] for o in pool])
        inside, total = 0, 0
        for src in {o["source_id"] for o in pool}:
            others = [o["ratio"] for o in pool if o["source_id"] != src]
            if len(others) < 3:
                continue
            slo, shi = band_of(others)
            own = [o["ratio"] for o in pool if o["source_id"] == src]
            inside += sum(slo <= x <= shi for x in own)
            total += len(own)
        bands[m] = {"ratio_low": round(lo, 4), "ratio_high": round(hi, 4), "rows": len(pool),
                    "sources": len({o["source_id"] for o in pool}),
                    "median_ape_loso": metrics([o["ratio"] for o in pool])["median_ape"],
                    "coverage_loso": round(inside / total, 3) if total else None, "coverage_rows": total,
                    "in_sample_coverage": round(float(np.mean([lo <= o["ratio"] <= hi for o in pool])), 3)}
    return out, bands


def _row_out(r: dict, pred: float, how: str) -> dict:
    return {"source_id": r["source_id"], "device": r["device"], "runtime": r["runtime"], "model": r["model"],
            "quant": r["quant"], "metric": r["metric"], "role": r["role"], "measured": r["value"],
            "predicted": round(pred, 3), "ratio": round(r["value"] / pred, 4), "predicted_by": how}


def summary(out: list[dict]) -> dict:
    table = defaultdict(list)
    for o in out:
        table[(o["role"], o["source_id"], o["metric"])].append(o["ratio"])
    return {f"{role} | {src} | {m}": metrics(v) for (role, src, m), v in sorted(table.items())}


def run(out_path: Path = FITTED) -> dict:
    from pocketml.runtime.atomic import write_file_atomic
    rows, _ = load()
    profiles = {d: devices.load(d) for d in sorted({r["device"] for r in rows})}
    fit_rows = [r for r in rows if r["role"] == "fit"]
    final = fit(fit_rows, profiles)
    out, bands = validate(rows, final, profiles)
    in_sample = [r["value"] / predict(r, final, profiles) for r in fit_rows]
    result = {"schema": 1, "params": final,
              "calibration": {"fit_rows": len(fit_rows), "fit_speed_rows": sum(r["metric"] in SPEED for r in fit_rows),
                              "fit_sources": sorted({r["source_id"] for r in fit_rows}),
                              "holdout_sources": sorted({r["source_id"] for r in rows if r["role"] == "holdout"}),
                              "devices": sorted({r["device"] for r in rows}), "free_parameters": len(FREE) + 2,
                              "prior_weight": PRIOR_WEIGHT, "default_threads": DEFAULT_THREADS},
              "validation": {"band": bands, "summary": summary(out),
                             "in_sample_median_ape": metrics(in_sample)["median_ape"], "rows": out}}
    write_file_atomic(out_path, (json.dumps(result, indent=1) + "\n").encode("utf-8"))
    return result


def print_report(res: dict) -> None:
    p = res["params"]
    print("parameters:", json.dumps({k: {kk: round(vv, 4) for kk, vv in v.items()} for k, v in p.items()}))
    c = res["calibration"]
    print(f"fit rows {c['fit_rows']} ({c['fit_speed_rows']} speed) from {len(c['fit_sources'])} sources; "
          f"hold-out sources {c['holdout_sources']}; {c['free_parameters']} fitted parameters")
    print(f"{'role | source | metric':70s} {'n':>3s} {'median |err|':>12s} {'median meas/pred':>16s}")
    for k, m in res["validation"]["summary"].items():
        if m["n"]:
            print(f"{k:70s} {m['n']:3d} {100 * m['median_ape']:11.1f}% {m['median_ratio']:16.3f}")
    for m, b in res["validation"]["band"].items():
        print(f"band {m}: x{b['ratio_low']:.2f}-x{b['ratio_high']:.2f} over {b['rows']} rows / {b['sources']} sources, "
              f"leave-one-source-out median |err| {100 * b['median_ape_loso']:.1f}%, coverage (each source vs a band "
              f"built without it) {b['coverage_loso']} of {b['coverage_rows']} rows")
    print(f"in-sample median |err| {100 * res['validation']['in_sample_median_ape']:.1f}%")


def main(argv=None) -> int:
    argparse.ArgumentParser(prog="python -m pocketml.profiler.estimate.lm_fit", description=__doc__.split("\n")[0]
                            ).parse_args(argv)
    res = run()
    print_report(res)
    print(f"wrote {FITTED}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
