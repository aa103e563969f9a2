"""Profile one artifact inside a child process: `python -m pocketml.profiler.child '<json args>'`.

Running in a child contains native crashes (a signal becomes an error for this artifact only),
enforces a timeout, caps the address space (`memory_mb` → RLIMIT_AS, applied by the child to itself
before it imports a runtime or opens the artifact; core dumps off), and makes peak-RSS attributable
to this one session. Prints one JSON line.

Modes: an artifact directory; a bare model file (`bare`: manifest synthesized from the graph after the
pre-checks, random inputs unless `inputs_npz`); `graph_cost` adds the estimator's cost table of the
graph, and `cost_only` computes just that — so the estimator's parsers run in here, not in the parent.

Test hook: POCKETML_TEST_CHILD_FAULT=segv|abort|hang|oom|exit[:ARTIFACT_DIR_NAME] makes the child fail
that way before loading anything — honoured only while PYTEST_CURRENT_TEST is also set (pytest sets it).
"""
from __future__ import annotations

import json
import os
import resource
import sys
import time

FAULT_ENV = "POCKETML_TEST_CHILD_FAULT"


def apply_limits(memory_mb: int | None) -> None:
    """Limits for this process: no core files; address space capped at `memory_mb` (None: no cap)."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if memory_mb:
        want = int(memory_mb) << 20
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard != resource.RLIM_INFINITY:
            want = min(want, hard)
        resource.setrlimit(resource.RLIMIT_AS, (want, want))


def test_fault(artifact: str) -> None:
    """The test-only fault hook (see module docstring)."""
    spec = os.environ.get(FAULT_ENV)
    if not spec or not os.environ.get("PYTEST_CURRENT_TEST"):
        return
    mode, _, only = spec.partition(":")
    if only and os.path.basename(os.path.normpath(artifact)) != only:
        return
    import signal
    if mode == "segv":
        os.kill(os.getpid(), signal.SIGSEGV)
    elif mode == "abort":
        os.abort()
    elif mode == "hang":
        while True:
            time.sleep(60)
    elif mode == "oom":
        bytearray(1 << 40)                                   # 1 TiB: must hit the memory cap
    elif mode == "exit":
        os._exit(3)


def _rss_kb() -> int:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * (resource.getpagesize() // 1024)
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _reset_peak() -> None:
    """Reset VmHWM to the current RSS (Linux: write 5 to clear_refs) so the peak is the session's own."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


def _peak_rss_kb() -> int:
    """This process's own peak RSS. Not ru_maxrss: on Linux that keeps the parent's peak across fork+exec."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def latency_stats(ms: list[float]) -> dict:
    import numpy as np
    a = np.asarray(ms)
    mean = float(a.mean())
    return {"runs": len(ms), "min": float(a.min()), "mean": mean, "p50": float(np.percentile(a, 50)),
            "p90": float(np.percentile(a, 90)), "p99": float(np.percentile(a, 99)), "max": float(a.max()),
            "std": float(a.std(ddof=1)) if len(ms) > 1 else 0.0,
            "cv": float(a.std(ddof=1) / mean) if len(ms) > 1 and mean > 0 else 0.0}


def load_samples(inputs_npz: str, names: list[str]) -> list:
    import numpy as np
    with np.load(inputs_npz, allow_pickle=False) as z:
        arrays = [z[n] for n in names]
    return [[a[i:i + 1] for a in arrays] for i in range(arrays[0].shape[0])]


def profile(args: dict) -> dict:
    import numpy as np

    from pocketml.runtime.metrics import compare
    from pocketml.runtime import formats
    from pocketml.runtime import session as rt
    from pocketml.runtime.data import to_layout
    from pocketml.runtime.manifest import verify_files

    art, manifest, verify_ms = open_artifact(args)
    if args.get("reference_dir"):      # the reference set is input too: verified like an artifact
        verify_reference(args["reference_dir"], verify_files)
    if is_generative(manifest):        # a language model: its own measurements (profiler/lm_child.py)
        from .lm_child import profile_lm
        return profile_lm(args, art, manifest, verify_ms)
    formats.get(manifest.format).warm_runtime()
    layouts = args.get("layouts") or [None] * len(manifest.inputs)
    samples = timing_samples(args, manifest)               # before the baseline: data is not the session's
    _reset_peak()
    rss0 = _rss_kb()
    t = time.perf_counter()
    if args.get("bare"):               # pre-checked by open_artifact; nothing to verify
        sess = formats.get(manifest.format).session()(art.parent, manifest, args["threads"])
    else:
        sess = rt.load(art, threads=args["threads"], verify=False)
    load_ms = (time.perf_counter() - t) * 1e3
    feeds = lambda s: [to_layout(x, lay, spec.layout) for x, lay, spec in zip(s, layouts, manifest.inputs)]  # noqa: E731

    t = time.perf_counter()
    first = sess.run(feeds(samples[0]))
    first_ms = (time.perf_counter() - t) * 1e3

    sess.prepare(feeds(samples[0]))
    for _ in range(args["warmup"]):
        sess.invoke_prepared()
    times = []
    clock = time.perf_counter_ns
    for _ in range(args["runs"]):
        t0 = clock()
        sess.invoke_prepared()
        times.append((clock() - t0) / 1e6)

    peak_added_mb = max(0.0, (_peak_rss_kb() - rss0) / 1024)   # session + inference, before outputs pile up
    outputs = [first] + [sess.run(feeds(s)) for s in samples[1:]]
    out_name = manifest.outputs[0].name
    result = {"load_ms": load_ms, "verify_ms": verify_ms, "first_inference_ms": first_ms,
              "latency_ms": latency_stats(times), "peak_rss_added_mb": peak_added_mb,
              "samples": len(samples)}
    if args.get("save_outputs"):
        np.savez(args["save_outputs"], **{out_name: np.concatenate([o[out_name] for o in outputs])})
    if args.get("reference_npz"):
        with np.load(args["reference_npz"], allow_pickle=False) as z:
            ref = z[z.files[0]]
        result["accuracy"] = compare([ref[i:i + 1] for i in range(ref.shape[0])],
                                     [o[out_name] for o in outputs], args["metric"])
    if args.get("graph_cost"):         # the estimator's graph reading, here in the sandbox too
        result.update(graph_cost_or_error(args))
    return result


def is_generative(manifest) -> bool:
    """The family registry says whether the manifest's task generates text."""
    from pocketml.runtime.families import for_task
    family = for_task(manifest.task) if manifest.task else None
    return bool(family and family.generative)


def open_artifact(args: dict):
    """(artifact directory or bare file, manifest, ms spent verifying). An artifact's manifest with every
    checksum verified; a bare file's synthesized from its graph after the gate (nothing to verify)."""
    from pathlib import Path

    from pocketml.runtime.manifest import read_manifest, verify_checksums
    from pocketml.runtime.model_file import bare_manifest
    from pocketml.runtime.session import resolve_artifact

    if args.get("bare"):
        path = Path(args["artifact"])
        return path, bare_manifest(path), 0.0
    art = resolve_artifact(args["artifact"])
    manifest = read_manifest(art)
    t = time.perf_counter()
    verify_checksums(art, manifest)
    return art, manifest, (time.perf_counter() - t) * 1e3


def timing_samples(args: dict, manifest) -> list:
    """The inputs: the given set (canonical inputs, npz), else one random sample (model_file.RANDOM_INPUTS)."""
    from pocketml.runtime.model_file import random_inputs
    if args.get("inputs_npz"):
        return load_samples(args["inputs_npz"], [s["name"] for s in args["canonical_inputs"]])
    return [random_inputs(manifest.inputs)]


def graph_cost_only(args: dict) -> dict:
    """The estimator's cost table of the artifact (through its gate), as data for the parent."""
    from pocketml.profiler.estimate.graph_cost import graph_cost
    return {"graph_cost": graph_cost(args["artifact"]).to_dict()}


def graph_cost_or_error(args: dict) -> dict:
    """After a measurement: the cost table, or why there is none (the measurement stands either way)."""
    from pocketml.runtime.errors import PocketmlError
    try:
        return graph_cost_only(args)
    except PocketmlError as exc:
        return {"graph_cost_error": exc.as_dict()}


def verify_reference(ref_dir: str, verify_files) -> None:
    from pocketml.runtime.errors import UnsafeInputError
    from pocketml.runtime.manifest import MAX_MANIFEST_BYTES, parse_json
    from pocketml.runtime.paths import open_contained

    with open_contained(ref_dir, "manifest.json") as fh:
        meta = parse_json(fh.read(MAX_MANIFEST_BYTES + 1), f"{ref_dir}/manifest.json")
    sums = meta.get("checksums") if isinstance(meta, dict) else None
    if not isinstance(sums, dict) or not {"inputs.npz", "outputs.npz"} <= set(sums) \
            or not all(isinstance(v, str) for v in sums.values()):
        raise UnsafeInputError(f"{ref_dir}/manifest.json: no checksums for inputs.npz and outputs.npz")
    verify_files(ref_dir, sums)


def main() -> int:
    args = json.loads(sys.argv[1])
    apply_limits(args.get("memory_mb"))
    from pocketml.runtime.errors import PocketmlError
    try:
        test_fault(args["artifact"])
        res = {"ok": True, **(graph_cost_only(args) if args.get("cost_only") else profile(args))}
    except PocketmlError as exc:
        res = {"ok": False, "error": exc.as_dict()}
    except MemoryError:
        res = {"ok": False, "error": {
            "kind": "resource", "exit_code": 4, "memory_mb": args.get("memory_mb"),
            "message": f"{args['artifact']}: profiling needed more memory than the child's cap of "
                       f"{args.get('memory_mb')} MB (set POCKETML_CHILD_MEMORY_MB to raise it)"}}
    print("POCKETML-RESULT " + json.dumps(res), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
