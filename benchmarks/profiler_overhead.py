"""Does `pocketml profile` add overhead? Its p50 vs a bare invoke loop over the same session, one run.

For each artifact: a bare loop (runtime.load → prepare → N × invoke_prepared) in a fresh Python process,
and `pocketml profile` (which also measures in a fresh child process, same threads/warm-up/runs),
alternated `--repeats` times (which side goes first alternates too) so drift hits both; prints the
medians of the p50s, their ratio, and the run-to-run p50 spread of each. Many short repeats rather
than a few long ones: a fresh process lands in one of two speed modes for some models (e.g. 4.4–4.6
or 5.1–5.3 ms for EfficientNet TFLite int8, docs/PERFORMANCE.md), on both sides alike, and three
repeats can catch more slow processes on one side. Run it on an otherwise idle host.

    python benchmarks/profiler_overhead.py [--out out] [--runs 50] [--repeats 9]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ARTIFACTS = ("effnet/onnx-fp32", "effnet/tflite-int8", "minilm/onnx-int8", "minilm/tflite-int8")


def bare_p50(art: Path, runs: int, warmup: int) -> float:
    from pocketml.profiler.child import load_samples
    from pocketml.runtime import load
    from pocketml.runtime.data import to_layout
    import json

    sess = load(art, threads=1)
    meta = json.loads((art.parent / "reference" / "manifest.json").read_text())
    sample = load_samples(str(art.parent / "reference" / "inputs.npz"), [i["name"] for i in meta["inputs"]])[0]
    sess.prepare([to_layout(x, i.get("layout"), t.layout) for x, i, t in zip(sample, meta["inputs"], sess.manifest.inputs)])
    for _ in range(warmup):
        sess.invoke_prepared()
    t = []
    for _ in range(runs):
        a = time.perf_counter_ns()
        sess.invoke_prepared()
        t.append((time.perf_counter_ns() - a) / 1e6)
    return float(np.median(t))


def bare_p50_child(art: Path, runs: int, warmup: int) -> float:
    """The bare loop in a fresh process, like the profiler's child: same allocator and cache state."""
    import subprocess
    out = subprocess.run([sys.executable, __file__, "--bare", str(art), "--runs", str(runs), "--warmup", str(warmup)],
                         capture_output=True, text=True, check=True).stdout
    return float(out.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="out")
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--bare", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.bare:
        print(bare_p50(Path(args.bare), args.runs, args.warmup))
        return 0
    from pocketml.profiler.run import profile

    print(f"| {'artifact':<20} | {'bare p50 ms':>11} | {'profile p50 ms':>14} | {'profile / bare':>14} | "
          f"{'bare spread':>11} | {'profile spread':>14} |")
    print("|" + "|".join("-" * w for w in (22, 13, 16, 16, 13, 16)) + "|")
    for rel in ARTIFACTS:
        art = Path(args.out) / rel
        if not (art / "manifest.json").exists():
            print(f"| {rel:<20} | missing: run `make demo` first |")
            continue
        bare, prof = [], []
        for i in range(args.repeats):
            sides = [(bare, lambda: bare_p50_child(art, args.runs, args.warmup)),
                     (prof, lambda: profile([art], runs=args.runs, warmup=args.warmup)["artifacts"][0]["latency_ms"]["p50"])]
            for into, measure in sides[::1 if i % 2 == 0 else -1]:
                into.append(measure())
        b, p = float(np.median(bare)), float(np.median(prof))
        spread = lambda v: f"{(max(v) - min(v)) / np.median(v):.1%}"  # noqa: E731
        print(f"| {rel:<20} | {b:11.3f} | {p:14.3f} | {p / b:13.3f}× | {spread(bare):>11} | {spread(prof):>14} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
