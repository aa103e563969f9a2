"""Compression, step by step, in one run on this host: for each stage of a recipe, per format and
precision: size, MACs, p50 latency (1 thread), accuracy vs the ORIGINAL fp32 model on the built-in
evaluation set, and the ratio to the uncompressed fp32 artifact of the same format.

    python benchmarks/compression.py [--out out/bench-compression] [--runs 50] [--only minilm]
        [--minilm-distill "data=DIR,checkpoint_dir=DIR"]   # extra distill fields for the MiniLM student

Artifacts are converted with pocketml's own pipeline and reused when unchanged, so a second run only
measures. Distillation checkpoints live under --out; an interrupted run resumes.
MiniLM's distillation is the long part (about 15–25 min per epoch on one core here, 4 epochs).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import fmt_acc  # noqa: E402

FORMATS = ["onnx", "tflite"]
PRECISIONS = ["fp32", "int8"]


def stages(minilm_distill: str) -> dict:
    """model -> [(stage name, recipe steps)]; each stage starts from the original model."""
    from pocketml.convert.compress.recipe import as_step, load_recipe, parse_shorthand
    root = Path(__file__).resolve().parents[1]
    minilm = load_recipe(root / "recipes" / "minilm-phone.toml")
    if minilm_distill:
        extra = parse_shorthand("distill", minilm_distill)
        minilm[-1] = as_step({**minilm[-1].as_dict(), **extra.as_dict()})
    return {
        "efficientnet-lite0": [("original", []),
                               ("prune 30 % + distill (recipes/effnet-prune.toml)",
                                load_recipe(root / "recipes" / "effnet-prune.toml"))],
        "minilm-l6": [("original", []),
                      ("3 of 6 layers + distill (recipes/minilm-phone.toml)", minilm)],
    }


def macs(out: Path, spec) -> int | None:
    """MACs of the model the stage exported: from the compression report, else counted on the original."""
    m = json.loads((out / "onnx-fp32" / "manifest.json").read_text())
    steps = m.get("source", {}).get("compression") or []
    if steps:
        return steps[-1]["macs"][1]
    from pocketml.convert.compress.report import count
    return count(spec.module, spec.torch_example())[0]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="out/bench-compression")
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--only", choices=["effnet", "minilm"])
    ap.add_argument("--minilm-distill", default="", help="extra distill fields, as for --distill")
    args = ap.parse_args()

    from pocketml.runtime.quiet import quiet
    from pocketml.convert import Recipe, run
    from pocketml.convert.sources import load_model
    from pocketml.profiler.host import describe
    from pocketml.profiler.run import profile

    quiet(verbose=False)
    rows = []
    for model, model_stages in stages(args.minilm_distill).items():
        if args.only and not model.startswith({"effnet": "efficientnet", "minilm": "minilm"}[args.only]):
            continue
        base = {}
        for i, (stage, steps) in enumerate(model_stages):
            out = Path(args.out) / model / f"stage{i}"
            spec = load_model(model)
            print(f"== {model}: {stage}", flush=True)
            run(Recipe(model=model, formats=FORMATS, precisions=PRECISIONS, steps=steps), out, spec=spec)
            n_macs = macs(out, spec)
            report = profile([out], threads=1, warmup=args.warmup, runs=args.runs)
            for r in report["artifacts"]:
                p50 = r["latency_ms"]["p50"]
                if i == 0 and r["precision"] == "fp32":
                    base[r["format"]] = (p50, r["size_mb"])
                rows.append((model, stage, r["format"], r["precision"], r["size_mb"], n_macs, p50, fmt_acc(r),
                             base))
    print(f"\nLatency: {describe(1)}, {args.warmup} warm-up + {args.runs} runs, p50. Accuracy: vs the ORIGINAL "
          "fp32 model on the built-in evaluation sets (342 views of 9 photos; 64 held-out sentences). "
          "Ratios: to the uncompressed fp32 artifact of the same format, same run. Core ML: not measurable on "
          "Linux (sizes in docs/COMPRESSION.md).\n")
    head = ("model", "stage", "format", "prec", "size MB", "MACs (M)", "p50 ms", "accuracy vs original fp32",
            "size ×", "speed ×")
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("---" for _ in head) + "|")
    for model, stage, fmt, prec, size, n_macs, p50, acc, model_base in rows:
        b_p50, b_size = model_base[fmt]          # this model's uncompressed fp32 artifact, same format
        print(f"| {model} | {stage} | {fmt} | {prec} | {size:.2f} | {n_macs / 1e6:,.0f} | {p50:.2f} | {acc} | "
              f"{b_size / size:.2f}× smaller | {b_p50 / p50:.2f}× |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
