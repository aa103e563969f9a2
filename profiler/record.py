"""`pocketml profile --record`: write what was measured into each artifact's manifest.

The manifest travels with the model into the app; the report does not. Each measured artifact gets
runtime_hints.measured["<threads>"] = the session settings, latency and verdict of this run, and
runtime_hints.recommended = the fastest thread count measured on this host. `pocketml.runtime.load`
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
        if row.get("status") != "measured" or row.get("manifest") or "latency_ms" not in row:
            continue            # a bare file has no manifest to record in; a language model's speed is not recorded yet
        art = Path(row["artifact"])
        manifest = read_manifest(art)
        hints = manifest.runtime_hints
        old = hints.get("measured")
        measured = hints["measured"] = {k: m for k, m in old.items() if _entry_ok(m)} if isinstance(old, dict) else {}
        lat = row["latency_ms"]
        measured[str(threads)] = {
            **formats.get(manifest.format).settings, "num_threads": threads,
            "latency_ms": {k: round(lat[k], 3) for k in ("p50", "p90", "p99")}, "runs": lat["runs"],
            "host": row["measured"], "cpu": cpu, "verdict": row["verdict"]["result"],
            "at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        hints["recommended"] = recommend(measured, cpu)
        write_file_atomic(art / "manifest.json", manifest.to_json().encode())
        written.append(art / "manifest.json")
    return written


def _entry_ok(m) -> bool:
    """An earlier recording we can compare with (a manifest is input: anything else is dropped)."""
    try:
        return valid_thread_count(m["num_threads"]) and float(m["latency_ms"]["p50"]) > 0 and isinstance(m["cpu"], str)
    except (TypeError, KeyError, ValueError):
        return False


def recommend(measured: dict, cpu: str) -> dict:
    """The fastest p50 among the thread counts measured on the same CPU as the latest run."""
    same_host = [m for m in measured.values() if m.get("cpu") == cpu]
    best = min(same_host, key=lambda m: m["latency_ms"]["p50"])
    counts = ", ".join(str(n) for n in sorted(m["num_threads"] for m in same_host))
    return {"num_threads": best["num_threads"], "p50_ms": best["latency_ms"]["p50"],
            "basis": f"fastest p50 of the thread counts measured with `pocketml profile --record` ({counts}) on host {cpu}"}
