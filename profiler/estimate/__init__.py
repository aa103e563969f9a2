"""Phone-class latency estimator (no torch): graph cost x roofline device model, fitted on
published phone measurements. See docs/ESTIMATE.md.

    from pocketml.profiler.estimate import estimate, estimate_all
    estimate("out/effnet/tflite-fp32", devices.load("pixel-7"), threads=4)
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from pocketml.runtime import formats
from pocketml.runtime.errors import UsageError

from .band import FLAG_SHARE, band, time_shares
from .device_model import PRECISIONS, core_family, cores, device_terms, fixed_time, op_arrays, op_times
from .graph_cost import CATEGORIES, GraphCost, graph_cost

FITTED = Path(__file__).with_name("data") / "fitted.json"
METHOD = "estimated ({device}, ±{pct} %{flag})"
# Condition -> note explaining an extrapolation beyond the calibration data.
NOTES = {
    "family": "no calibration rows on {family} cores ({core}); the 'big'-core efficiency is assumed",
    "fp16": "fp16 CPU compute was never calibrated; fp32 efficiencies are used at the fp16 peak rate",
    "format": "calibrated on TFLite measurements; {fmt} on CPU is assumed to reach the same efficiency",
    "tied": "no calibration rows for {cats}; their efficiency is tied to fc / elementwise",
    "threads": "{asked} threads requested, the profile has {cores} cores",
    "runtime": "no {fmt} CPU runtime is listed for this device (runtimes.available)",
    "uncalibrated": "uncalibrated op categories: {cats} of the estimate (no calibration row spends time "
                    "there); band widened to x{lo:.2f}-x{hi:.2f}",
}


@lru_cache(maxsize=4)
def _fitted(path: str = str(FITTED)) -> dict:
    if not Path(path).is_file():
        raise UsageError(f"{path} is missing: run `python -m pocketml.profiler.estimate.fit`")
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _uncalibrated_note(b: dict) -> list[str]:
    if b["uncalibrated_share"] < FLAG_SHARE:
        return []
    cats = ", ".join(f"{c} {100 * s:.0f} %" for c, s in b["uncalibrated_categories"].items())
    return [NOTES["uncalibrated"].format(cats=cats, lo=b["ratio_low"], hi=b["ratio_high"])]


def _notes(cost: GraphCost, dev: dict, profile: dict, fitted: dict, threads: int) -> list[str]:
    cal = fitted["calibration"]
    lead = cores(profile)[0]
    out = []
    if dev["family"] not in cal["families_fit"]:
        out.append(NOTES["family"].format(family=dev["family"], core=lead["arm_core"]))
    if any(dev["exec"][o.precision] == "fp16" for o in cost.live()):
        out.append(NOTES["fp16"])
    if not formats.get(cost.format).estimate_calibrated:
        out.append(NOTES["format"].format(fmt=cost.format))
    tied = sorted({o.category for o in cost.live()
                   if o.category in ("attention", "reshape", "other") and o.macs + o.bytes})
    if tied:
        out.append(NOTES["tied"].format(cats=", ".join(tied)))
    if not _runs_on(cost.format, profile):
        out.append(NOTES["runtime"].format(fmt=cost.format))
    if threads > len(cores(profile)):
        out.append(NOTES["threads"].format(asked=threads, cores=len(cores(profile))))
    return out + list(cost.notes)


def _runs_on(fmt: str, profile: dict) -> bool:
    """The device profile lists the CPU runtime the format runs with (format registry: `device_runtime`)."""
    return formats.get(fmt).device_runtime in profile.get("runtimes", {}).get("available", [])


def _breakdown(cost: GraphCost, times) -> dict:
    out = {}
    for op, t in zip(cost.live(), times):
        row = out.setdefault(op.category, {"count": 0, "macs": 0, "ms": 0.0})
        row["count"] += 1
        row["macs"] += int(op.macs)
        row["ms"] += float(t) * 1e3
    return {c: {**out[c], "ms": round(out[c]["ms"], 3)} for c in CATEGORIES if c in out}


def _artifact_precision(artifact, cost: GraphCost) -> str:
    """The manifest's precision (read through the validator); a bare file's is the graph's."""
    from pocketml.runtime.manifest import read_manifest
    from pocketml.runtime.model_file import artifact_dir_of
    art = artifact_dir_of(Path(artifact))
    return read_manifest(art).precision if art is not None else cost.precision


def estimate(artifact_path, device_profile_dict: dict, threads: int = 1, *, cost: GraphCost | None = None,
             runtime: str = "xnnpack") -> dict:
    """Estimated single-inference latency of an artifact on a profiled phone CPU."""
    if not isinstance(threads, int) or threads < 1:
        raise UsageError(f"threads must be a positive integer, got {threads!r}")
    fitted = _fitted()
    cost = cost or graph_cost(artifact_path)
    dev = device_terms(device_profile_dict, threads)      # UsageError naming a missing CPU field
    arr = op_arrays(cost.ops)
    times = op_times(arr, dev, fitted["params"], runtime)
    ms = float(times.sum() * 1e3)
    exec_prec = [PRECISIONS.index(dev["exec"][PRECISIONS[i]]) for i in arr["prec"]]
    b = band(fitted, *time_shares(arr["cat"], exec_prec, times, fixed_time(dev, fitted["params"])))
    lo, hi, flagged = b["ratio_low"], b["ratio_high"], b["uncalibrated_share"] >= FLAG_SHARE
    name = device_profile_dict.get("name", "profile")
    lead = cores(device_profile_dict)[0]
    return {"device": name, "threads": dev["threads"], "format": cost.format,
            "precision": _artifact_precision(artifact_path, cost),
            "compute_precision": sorted({dev["exec"][o.precision] for o in cost.live() if o.macs}) or ["fp32"],
            "latency_ms": round(ms, 3), "low_ms": round(ms * lo, 3), "high_ms": round(ms * hi, 3),
            "method": METHOD.format(device=name, pct=b["pct"], flag=", uncalibrated op mix" if flagged else ""),
            "band": b, "uncalibrated_categories": b["uncalibrated_categories"] if flagged else {},
            "runs_on_device": _runs_on(cost.format, device_profile_dict),
            "breakdown": _breakdown(cost, times),
            "totals": {**cost.totals(), "lead_core": f"{lead['arm_core']} @ {lead['max_clock_ghz']:g} GHz",
                       "core_family": core_family(lead)},
            "notes": _uncalibrated_note(b) + _notes(cost, dev, device_profile_dict, fitted, threads)}


def estimate_all(artifact, threads: int = 1) -> list[dict]:
    """`estimate` on every device profile (graph cost computed once)."""
    from pocketml.profiler import devices
    cost = graph_cost(artifact)
    return [estimate(artifact, devices.load(name), threads, cost=cost) for name in devices.available()]


__all__ = ["estimate", "estimate_all", "graph_cost", "GraphCost", "PRECISIONS"]
