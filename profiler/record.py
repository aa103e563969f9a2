"""`pocketml profile --record`: write what was measured into each artifact's manifest.

The manifest travels with the model into the app; the report does not. Each measured artifact gets
runtime_hints.measured["<threads>"] = the session settings, latency (a language model: TTFT, prefill and
decode tokens/s, memory, at the lengths measured) and verdict of this run, and runtime_hints.recommended =
the fastest thread count measured on this host (lowest p50; a language model: highest decode tokens/s). `pocketml.runtime.load`
opens the artifact with the recommended thread count unless told otherwise, and an app reading the
manifest can do the same. The model files and their checksums are untouched; the manifest is
replaced atomically.
"""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from pocketml.runtime.atomic import write_file_atomic
from pocketml.runtime.manifest import read_manifest
from pocketml.runtime import formats
from pocketml.runtime.session import valid_thread_count


def record(report: dict) -> list[Path]:
    """Record every measured row of a `profile` report in its artifact's manifest. Returns the manifests written."""
    threads, cpu = report["settings"]["threads"], report["host"]["cpu"]
    written = []
    for row in report["artifacts"]:
        speed = _lm_speed(row) if "decode" in row else _latency(row) if "latency_ms" in row else None
        if row.get("status") != "measured" or row.get("manifest") or speed is None:
            continue            # a bare file has no manifest to record in
        art = Path(row["artifact"])
        manifest = read_manifest(art)
        hints = manifest.runtime_hints
        old = hints.get("measured")
        measured = hints["measured"] = {k: m for k, m in old.items() if _entry_ok(m)} if isinstance(old, dict) else {}
        measured[str(threads)] = {
            **formats.get(manifest.format).settings, "num_threads": threads, **speed,
            "host": row["measured"], "cpu": cpu, "verdict": row["verdict"]["result"],
            "at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        hints["recommended"] = recommend(measured, cpu)
        write_file_atomic(art / "manifest.json", manifest.to_json().encode())
        written.append(art / "manifest.json")
    return written


def _latency(row) -> dict:
    lat = row["latency_ms"]
    return {"latency_ms": {k: round(lat[k], 3) for k in ("p50", "p90", "p99")}, "runs": lat["runs"]}


def _lm_speed(row) -> dict:
    return {"decode_tokens_per_s": round(float(row["decode"]["tokens_per_s"]), 2),
            "ttft_ms": round(float(row["ttft_ms"]), 1), "peak_rss_added_mb": row.get("peak_rss_added_mb"),
            "lengths": row.get("lengths")}


def _entry_ok(m) -> bool:
    """An earlier recording we can compare with (a manifest is input: anything else is dropped)."""
    try:
        speed = float(m["decode_tokens_per_s"]) if "decode_tokens_per_s" in m else float(m["latency_ms"]["p50"])
        return valid_thread_count(m["num_threads"]) and speed > 0 and isinstance(m["cpu"], str)
    except (TypeError, KeyError, ValueError):
        return False


def recommend(measured: dict, cpu: str) -> dict:
    """The fastest among the thread counts measured on the same CPU as the latest run: lowest p50, or for a
    language model the highest decode tokens/s."""
    same_host = [m for m in measured.values() if m.get("cpu") == cpu]
    counts = ", ".join(str(n) for n in sorted(m["num_threads"] for m in same_host))
    if all("decode_tokens_per_s" in m for m in same_host):
        best = max(same_host, key=lambda m: m["decode_tokens_per_s"])
        return {"num_threads": best["num_threads"], "decode_tokens_per_s": best["decode_tokens_per_s"],
                "basis": f"highest decode tokens/s of the thread counts measured with `pocketml profile --record` "
                         f"({counts}) on host {cpu}"}
    same_host = [m for m in same_host if "latency_ms" in m]
    best = min(same_host, key=lambda m: m["latency_ms"]["p50"])
    return {"num_threads": best["num_threads"], "p50_ms": best["latency_ms"]["p50"],
            "basis": f"fastest p50 of the thread counts measured with `pocketml profile --record` ({counts}) on host {cpu}"}
