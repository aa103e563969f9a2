"""`pocketml estimate`: phone-class latency of artifacts (or bare model files) per device profile, with verdicts.

Each artifact's graph is verified, pre-checked and read once, in the sandboxed child
(`run.graph_cost_in_child`); the estimator then prices it for every device profile asked for.
A language model (text generation) is estimated from its manifest alone (checksums verified here, the model
never parsed): TTFT, prefill and decode tokens/s, peak memory, each with its band, judged against each
device's own LM targets (`profiler/estimate/lm_estimate.py`, `profiler/lm.py`).
"""
from __future__ import annotations

from pathlib import Path

from . import devices as dev
from .verdict import band_result


def device_profiles(device: str) -> list[dict]:
    """A profile name, a profile .toml, or 'all'."""
    return [dev.load(n) for n in (dev.available() if device == "all" else [device])]


def estimate_artifacts(paths, device: str, threads: int | None, limit_ms: float, emulate: bool = False,
                       lm=None) -> list[dict]:
    """One row per artifact × device profile: the estimate, its band, and its verdict (tensor models against
    `limit_ms`; language models against each device's LM targets, lengths from `lm`: a profiler.lm.LMSettings)."""
    from .estimate import estimate
    from .run import discover, graph_cost_in_child
    arts = [a for a, _ in discover(list(paths))]
    profiles = device_profiles(device)
    lm_arts = language_models(arts)
    rows = []
    for art in arts:
        if art in lm_arts:
            rows += estimate_lm_rows(art, lm_arts[art], profiles, threads, lm)
            continue
        threads_t = threads or 1
        cost = graph_cost_in_child(art)      # verified + pre-checked, and parsed, in the sandboxed child
        host_p50 = host_median(art, threads_t) if emulate else None
        for prof in profiles:
            e = estimate(art, prof, threads_t, cost=cost)
            e["artifact"] = str(art)
            e["verdict"] = band_result(e, limit_ms)
            if host_p50 is not None:
                from .estimate.emulate import emulate as run_emulate
                e["emulated"] = run_emulate(host_p50, e, prof, threads_t)
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


def language_models(arts) -> dict:
    """artifact dir -> its manifest, for the language-model artifacts (bare model files are tensor models)."""
    from pocketml.runtime.manifest import read_manifest
    from pocketml.runtime.model_file import bare_format

    from .lm import is_lm
    out = {}
    for art in arts:
        if not bare_format(art):
            manifest = read_manifest(art)
            if is_lm(manifest):
                out[art] = manifest
    return out


def estimate_lm_rows(art: Path, manifest, profiles: list[dict], threads: int | None, lm) -> list[dict]:
    """The LM estimate of one artifact on every profile: checksums verified once, lengths from each device's
    LM targets unless given, verdict against that device's own targets."""
    from pocketml.runtime.manifest import verify_checksums

    from .estimate.lm_estimate import estimate_workload, workload
    from .lm import LMSettings, check_lengths, estimate_verdict, targets
    verify_checksums(art, manifest)
    w = workload(art, manifest)
    rows = []
    for prof in profiles:
        s = (lm or LMSettings()).resolved(targets(prof, {}))
        check_lengths(art, manifest, s)
        e = estimate_workload(w, manifest.format, prof, prompt=s.prompt_tokens, gen=s.gen_tokens, context=s.context,
                              threads=threads, artifact=str(art), precision=manifest.precision)
        e["name"] = manifest.name
        e["verdict"] = estimate_verdict(e, prof)
        rows.append(e)
    return rows
