"""Targets → PASS / FAIL per artifact. Targets come from the device profile, then CLI overrides."""
from __future__ import annotations

from pocketml.runtime.metrics import DROP_DEFINITION, accuracy_drop

DEFAULTS = {"p90_latency_ms": 100.0, "max_accuracy_drop": 0.01, "max_size_mb": None, "max_memory_mb": None}


def targets(profile: dict | None, overrides: dict) -> dict:
    t = dict(DEFAULTS)
    if profile:
        t.update({k: profile["targets"][k] for k in DEFAULTS if k in profile["targets"]})
    t.update({k: v for k, v in overrides.items() if v is not None and k in DEFAULTS})
    t["source"] = (f"device profile {profile['name']}" if profile else "pocketml defaults") + \
        (" with command-line overrides" if any(overrides.get(k) is not None for k in DEFAULTS) else "")
    from .lm import targets as lm_targets       # language models' own targets (profiler/lm.py)
    return {**t, **lm_targets(profile, overrides)}


def judge(row: dict, t: dict, profile: dict | None) -> dict:
    if row.get("status") != "measured":
        return {"result": "NOT MEASURED" if row.get("status") == "not measured" else "ERROR", "checks": []}
    from . import lm
    if lm.is_lm_row(row):
        return _result(lm.judge(row, t, profile))
    est = row.get("estimate") or {}
    if profile and "latency_ms" in est:
        checks = [_band_check("p90 latency on device (ms)", est, t["p90_latency_ms"])]
    else:
        basis = ("host measurement vs the phone's budget (no estimate available: "
                 f"{est.get('error', 'none')})" if profile else "host measurement")
        checks = [_check("p90 latency (ms)", row["latency_ms"]["p90"], t["p90_latency_ms"], basis)]
    if "accuracy" in row:
        drop = accuracy_drop(row["accuracy"], row["metric"])
        checks.append(_check("accuracy drop", drop, t["max_accuracy_drop"], DROP_DEFINITION[row["metric"]]))
    if t.get("max_size_mb"):
        checks.append(_check("size (MB)", row["size_mb"], t["max_size_mb"], "model file(s) on disk"))
    if t.get("max_memory_mb"):
        checks.append(_check("memory (MB)", row["peak_rss_added_mb"], t["max_memory_mb"],
                             "peak resident memory added by the session, on the host"))
    return _result(checks)


def _result(checks: list[dict]) -> dict:
    return {"result": RESULT[min(RANK[c["pass"]] for c in checks)], "checks": checks}


RANK = {False: 0, None: 1, True: 2}
RESULT = {0: "FAIL", 1: "UNCERTAIN", 2: "PASS"}


def _band_check(name: str, est: dict, limit: float) -> dict:
    """PASS only when the whole band is under the budget; a band that crosses it is uncertain (None)."""
    ok = True if est["high_ms"] <= limit else False if est["low_ms"] > limit else None
    return {"name": name, "value": est["latency_ms"], "low": est["low_ms"], "high": est["high_ms"],
            "limit": limit, "pass": ok, "basis": f"{est['method']}, {est['threads']} thread(s): single-inference "
                                                 "estimate, judged as the p90 budget"}


def _check(name, value, limit, basis) -> dict:
    return {"name": name, "value": value, "limit": limit, "pass": bool(value <= limit), "basis": basis}


def _min_check(name, value, limit, basis) -> dict:
    """A floor (tokens/s): passes at or above `limit`."""
    return {"name": name, "value": value, "limit": limit, "op": ">=", "pass": bool(value >= limit), "basis": basis}


# The report's overall verdict → the command's exit code (docs/EXIT_CODES.md).
EXIT_CODES = {"PASS": 0, "NOT MEASURED": 0, "FAIL": 6, "UNCERTAIN": 6, "ERROR": 4}


def exit_code(result: str) -> int:
    return EXIT_CODES[result]


def band_result(est: dict, limit: float) -> str:
    """PASS / FAIL / UNCERTAIN of an estimate band against a latency budget (the rule of `_band_check`)."""
    if not est.get("runs_on_device", True):
        return "N/A: no runtime for this format"
    return RESULT[RANK[_band_check("latency", est, limit)["pass"]]]


def overall(rows: list[dict]) -> str:
    results = [r["verdict"]["result"] for r in rows]
    if "ERROR" in results:
        return "ERROR"
    if "FAIL" in results:
        return "FAIL"
    if "UNCERTAIN" in results:
        return "UNCERTAIN"
    return "PASS" if "PASS" in results else "NOT MEASURED"
