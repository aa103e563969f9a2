"""Estimate the issue-4 model zoo on every device profile and check the ranking against published latencies.

    python benchmarks/estimate_zoo.py              # convert what is missing (torch + litert-torch), estimate
    python benchmarks/estimate_zoo.py --threads 4 --json /tmp/zoo.json

Each model is rebuilt with random weights (convert/calibration_zoo.py), converted to TFLite once
(cached under /tmp/pocketml-estimate-zoo) and estimated with `pocketml.profiler.estimate.estimate`
on every profile in profiles/. Its compact cost table goes to profiler/estimate/data/zoo_costs.json.gz
(so tests/test_estimate_zoo.py checks the same ranking without torch) and to the fit's cost cache.

Ranking checks (Spearman, no tie correction):
- per published group: every device x threads x precision x runtime of data/measurements.csv with
  at least 3 zoo models (the role of the rows - fit = in sample, holdout / check = never fitted -
  is printed with it);
- per device profile: the estimated order at --threads vs the published Pixel 4 fp32 order (the
  largest never-fitted set: EfficientNet-Lite0-4, MobileNet v1, MobileBERT). Most profiles have no
  published rows of their own, so this checks that the estimate keeps the published order
  elsewhere, not that it is right there.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
from pathlib import Path

from pocketml.profiler.estimate.fit import DATA, load_rows, spearman

ZOO = ("mobilenet_v1_1.0_224", "mobilenet_v2_1.0_224", "mobilenet_v3_large_1.0_224", "mobilenet_v3_small_1.0_224",
       *(f"efficientnet_lite{n}" for n in range(5)), "resnet18", "resnet50", "mobilebert", "minilm_l6")
ZOO_COSTS = DATA / "zoo_costs.json.gz"
TFLITE_DIR = Path("/tmp/pocketml-estimate-zoo")
REFERENCE = ("pixel-4", 4, "fp32", "tflite-2020")      # the published order every profile is compared to


def convert_missing(names) -> dict:
    """name -> .tflite path; converts (torch) only the missing ones."""
    TFLITE_DIR.mkdir(parents=True, exist_ok=True)
    out = {n: TFLITE_DIR / f"{n}.tflite" for n in names}
    missing = [n for n, p in out.items() if not p.exists()]
    if missing:
        from pocketml.convert.calibration_zoo import _tflite
        for n in missing:
            print(f"converting {n} ...", flush=True)
            _tflite(n, str(out[n]))
    return out


def cost_tables(paths: dict) -> dict:
    """Graph cost of each artifact; compact tables saved for the test and the fit's cost cache."""
    from pocketml.profiler.estimate.graph_cost import graph_cost
    from pocketml.convert.calibration_zoo import CACHE, compact
    costs = {n: graph_cost(p) for n, p in paths.items()}
    tables = {n: compact(c) for n, c in costs.items()}
    with gzip.open(ZOO_COSTS, "wt", encoding="utf-8") as fh:
        json.dump(tables, fh, separators=(",", ":"))
    os.makedirs(CACHE, exist_ok=True)
    for n, t in tables.items():
        Path(CACHE, f"{n}__fp32.json").write_text(json.dumps(t), encoding="utf-8")
    return costs


def arrays(table: dict, precision: str) -> dict:
    import numpy as np

    from pocketml.convert.calibration_zoo import int8_of
    t = table if precision == "fp32" else int8_of(table)
    ops = np.array(t["ops"], dtype=float).reshape(-1, 5)
    return {"cat": ops[:, 0].astype(int), "prec": ops[:, 1].astype(int), "macs": ops[:, 2],
            "flops": ops[:, 3], "bytes": ops[:, 4]}


def predict(tables: dict, device: str, threads: int, precision: str, runtime: str) -> dict:
    """name -> estimated ms from compact tables (the fit's own path; int8 = the fp32 graph, all int8)."""
    from pocketml.profiler import devices
    from pocketml.profiler.estimate import _fitted
    from pocketml.profiler.estimate.device_model import device_terms, latency_ms
    dev = device_terms(devices.load(device), threads)
    return {n: latency_ms(arrays(t, precision), dev, _fitted()["params"], runtime) for n, t in tables.items()}


def published_groups(names) -> dict:
    """(device, threads, precision, runtime) -> {model: (ms, role)} with >= 3 zoo models."""
    groups = {}
    for r in load_rows():
        if r["model"] in names:
            key = (r["device"], r["threads"], r["precision"], r["runtime"])
            groups.setdefault(key, {})[r["model"]] = (r["latency_ms"], r["role"])
    return {k: v for k, v in sorted(groups.items()) if len(v) >= 3}


def rank_checks(tables: dict) -> list[dict]:
    out = []
    for (dev, th, prec, rt), pub in published_groups(tables).items():
        est = predict({n: tables[n] for n in pub}, dev, th, prec, rt)
        names = sorted(pub)
        out.append({"device": dev, "threads": th, "precision": prec, "runtime": rt, "models": names,
                    "roles": sorted({pub[n][1] for n in names}),
                    "spearman": spearman([pub[n][0] for n in names], [est[n] for n in names]),
                    "published_ms": {n: pub[n][0] for n in names},
                    "estimated_ms": {n: round(est[n], 2) for n in names}})
    return out


def device_table(costs: dict, threads: int) -> list[dict]:
    """`estimate` on every profile for every zoo model, and the rank correlation with the
    published reference order."""
    from pocketml.profiler import devices
    from pocketml.profiler.estimate import estimate
    ref = published_groups(costs)[REFERENCE]
    rows = []
    for name in devices.available():
        prof = devices.load(name)
        est = {n: estimate(TFLITE_DIR / f"{n}.tflite", prof, threads, cost=c) for n, c in costs.items()}
        rho = spearman([ref[n][0] for n in sorted(ref)], [est[n]["latency_ms"] for n in sorted(ref)])
        rows.append({"device": name, "threads": threads, "spearman_vs_reference": rho,
                     "estimates": {n: {k: e[k] for k in ("latency_ms", "low_ms", "high_ms", "method")}
                                   for n, e in est.items()}})
    return rows


def print_report(checks: list[dict], table: list[dict]) -> None:
    print("\nranking vs published latencies (Spearman), per published group:")
    for c in checks:
        print(f"  {c['device']:10s} {c['threads']}t {c['precision']} {c['runtime']:11s} n={len(c['models']):2d} "
              f"rho={c['spearman']:.3f}  rows: {'/'.join(c['roles'])}")
    names = list(table[0]["estimates"])
    print(f"\nestimated ms, {table[0]['threads']} thread(s), fp32 TFLite; last column: Spearman vs "
          f"published {REFERENCE[0]} order")
    print("device".ljust(18) + " ".join(n.replace("mobilenet_", "mn").replace("efficientnet_", "")[:9].rjust(9)
                                       for n in names) + "   rho")
    for row in table:
        print(row["device"].ljust(18) + " ".join(f"{row['estimates'][n]['latency_ms']:9.1f}" for n in names)
              + f"  {row['spearman_vs_reference']:.3f}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python benchmarks/estimate_zoo.py")
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)
    costs = cost_tables(convert_missing(ZOO))
    with gzip.open(ZOO_COSTS, "rt", encoding="utf-8") as fh:
        tables = json.load(fh)
    checks, table = rank_checks(tables), device_table(costs, args.threads)
    print_report(checks, table)
    if args.json:
        args.json.write_text(json.dumps({"rank_checks": checks, "devices": table}, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
