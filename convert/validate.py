"""Validation on every conversion: the artifact vs the fp32 torch reference, per-precision tolerances.

Tolerances are data. They catch broken conversions (wrong layout, collapsed int8, NaN);
the user's accuracy budget is judged later by the profiler.
"""
from __future__ import annotations

from pocketml.runtime.errors import ValidationFailed
from pocketml.runtime.families import tolerance   # tolerances are data: per metric and precision
from pocketml.runtime.metrics import compare


def check(stats: dict, tol: dict) -> list[str]:
    if "error" in stats:
        return [stats["error"]]
    ops = {">=": lambda a, b: a >= b, "<=": lambda a, b: a <= b, "==": lambda a, b: a == b}
    return [f"{k} = {stats[k]:.6g} (required {op} {bound})" if isinstance(stats[k], float)
            else f"{k} = {stats[k]} (required {op} {bound})"
            for k, (op, bound) in tol.items() if not ops[op](stats[k], bound)]


def run_outputs(session, samples, layouts) -> list[list]:
    from pocketml.runtime.data import to_layout

    outs = []
    for sample in samples:
        feeds = [to_layout(x, canon, art) for x, (canon, art) in zip(sample, layouts)]
        res = session.run(feeds)
        outs.append([res[o.name] for o in session.manifest.outputs])
    return outs


def validate(session, spec, references, dataset, precision: str) -> dict:
    """Run `dataset` through `session`; compare output 0 with `references`; raise exit 5 on failure."""
    layouts = [(i.get("layout"), t.layout) for i, t in zip(spec.inputs, session.manifest.inputs)]
    outs = run_outputs(session, dataset.samples, layouts)
    stats = compare([r[0] for r in references], [o[0] for o in outs], spec.metric)
    tol = tolerance(spec.metric, precision)
    failures = check(stats, tol)
    report = {"status": "failed" if failures else "passed", "reference": "torch fp32 (eager)",
              "data": dataset.source, "samples": len(dataset), "stats": stats,
              "tolerance": {k: f"{op} {b}" for k, (op, b) in tol.items()}}
    if failures:
        raise ValidationFailed(
            f"{spec.name} {session.manifest.format} {precision}: validation against the fp32 torch "
            f"reference failed on {dataset.source}: " + "; ".join(failures), validation=report)
    return report


# x86 without VNNI: onnxruntime's fused uint8 × int8 kernels (QLinearConv / MatMulInteger on AVX2) add pairs of
# products in int16 with saturation (vpmaddubsw), so a static-int8 QDQ graph computes less exactly on this host
# than on an ARM phone or a VNNI x86 (exact int32 sums). EfficientNet-Lite0 static int8 on an AVX2-only EPYC:
# top-1 agreement 0.871 with the host's kernels, 0.971 with the same file run without graph fusion.
# Which formats' runtimes do this is registry data (FormatEntry.int8_saturates_without_vnni).


def saturating_host(entry, quantization: dict | None) -> str | None:
    """Why this host's int8 kernels under-report `entry`'s static-int8 artifact, or None."""
    from pocketml.runtime.cpu import int8_pairs_saturate
    if not entry.int8_saturates_without_vnni or "static int8" not in str((quantization or {}).get("method", "")):
        return None
    if not int8_pairs_saturate():
        return None
    return ("this x86 host has no VNNI: onnxruntime's uint8×int8 kernels saturate int16 pair sums (AVX2 "
            "vpmaddubsw); stats above are this host's, these are the same file with QDQ run unfused (the "
            "exact integer semantics of ARM / VNNI kernels)")
