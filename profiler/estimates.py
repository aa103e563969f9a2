"""`pocketml estimate`: phone-class latency of artifacts (or bare model files) per device profile, with verdicts.

Each artifact's graph is verified, pre-checked and read once, in the sandboxed child
(`run.graph_cost_in_child`); the estimator then prices it for every device profile asked for.
"""
from __future__ import annotations

from pathlib import Path

from . import devices as dev
from .verdict import band_result


def device_profiles(device: str) -> list[dict]:
    """A profile name, a profile .toml, or 'all'."""
    return [dev.load(n) for n in (dev.available() if device == "all" else [device])]


def estimate_artifacts(paths, device: str, threads: int, limit_ms: float, emulate: bool = False) -> list[dict]:
    """One row per artifact × device profile: the estimate, its band, and its verdict against `limit_ms`."""
    from .estimate import estimate
    from .run import discover, graph_cost_in_child
    arts = [a for a, _ in discover(list(paths))]
    profiles = device_profiles(device)
    rows = []
    for art in arts:
        cost = graph_cost_in_child(art)      # verified + pre-checked, and parsed, in the sandboxed child
        host_p50 = host_median(art, threads) if emulate else None
        for prof in profiles:
            e = estimate(art, prof, threads, cost=cost)
            e["artifact"] = str(art)
            e["verdict"] = band_result(e, limit_ms)
            if host_p50 is not None:
                from .estimate.emulate import emulate as run_emulate
                e["emulated"] = run_emulate(host_p50, e, prof, threads)
            rows.append(e)
    return rows


def host_median(art: Path, threads: int) -> float | None:
    """Host p50 of one artifact for emulation (a short, sandboxed profile run); None if not measurable here."""
    from pocketml.runtime import formats
    from pocketml.runtime.manifest import read_manifest
    from pocketml.runtime.model_file import bare_format

    from .run import profile
    if formats.get(bare_format(art) or read_manifest(art).format).host_support() is not None:
        return None
    row = profile([art], threads=threads, warmup=3, runs=20)["artifacts"][0]
    return row["latency_ms"]["p50"] if row.get("status") == "measured" else None
