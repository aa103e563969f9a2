"""Per model × format × precision, in one run on this host: p50 latency (1 thread), size, accuracy,
and the speed ratio to torch eager fp32 measured in the same run.

    python benchmarks/formats.py [--out out] [--runs 50] [--threads 1]

Reuses artifacts under --out (as written by `pocketml demo`), converting what is missing.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import MODELS, ensure_artifacts, fmt_acc  # noqa: E402


def torch_eager_p50(spec, threads: int, warmup: int, runs: int) -> float:
    import torch

    torch.set_num_threads(threads)
    x = spec.torch_example()
    with torch.no_grad():
        for _ in range(warmup):
            spec.module(*x)
        times = []
        for _ in range(runs):
            t = time.perf_counter_ns()
            spec.module(*x)
            times.append((time.perf_counter_ns() - t) / 1e6)
    return float(np.percentile(times, 50))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="out")
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    from pocketml.profiler.host import describe
    from pocketml.profiler.run import profile

    rows = []
    for model, sub in MODELS:
        spec = ensure_artifacts(model, Path(args.out) / sub)
        eager = torch_eager_p50(spec, args.threads, args.warmup, args.runs)
        rows.append((model, "torch eager", "fp32", eager, None, "reference", 1.0))
        report = profile([Path(args.out) / sub], threads=args.threads, warmup=args.warmup, runs=args.runs)
        for r in report["artifacts"]:
            if r.get("status") != "measured":
                rows.append((model, r["format"], r["precision"], None, r["size_mb"], "not measured (needs macOS)", None))
                continue
            p50 = r["latency_ms"]["p50"]
            rows.append((model, r["format"], r["precision"], p50, r["size_mb"], fmt_acc(r), eager / p50))
    print(f"\nLatency: {describe(args.threads)}, {args.warmup} warm-up + {args.runs} runs, p50; "
          "accuracy vs torch fp32 on the built-in evaluation sets.\n")
    print(f"| {'model':<18} | {'format':<11} | {'prec':<4} | {'p50 ms':>7} | {'size MB':>7} | "
          f"{'accuracy vs fp32':<32} | {'× torch eager':>13} |")
    print("|" + "|".join("-" * w for w in (20, 13, 6, 9, 9, 34, 15)) + "|")
    for m, f, p, lat, size, acc, ratio in rows:
        print(f"| {m:<18} | {f:<11} | {p:<4} | {'-' if lat is None else f'{lat:7.2f}':>7} | "
              f"{'' if size is None else f'{size:7.2f}':>7} | {acc:<32} | "
              f"{'' if ratio is None else f'{ratio:12.2f}×':>13} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
