"""Profile one artifact inside a child process: `python -m pocketml.profiler.child '<json args>'`.

Running in a child contains native crashes (a signal becomes an error for this artifact only),
enforces a timeout, and makes peak-RSS attributable to this one session. Prints one JSON line.
"""
from __future__ import annotations

import json
import resource
import statistics
import sys
import time

import numpy as np


def _rss_kb() -> int:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * (resource.getpagesize() // 1024)
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


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
    a = np.asarray(ms)
    mean = float(a.mean())
    return {"runs": len(ms), "min": float(a.min()), "mean": mean, "p50": float(np.percentile(a, 50)),
            "p90": float(np.percentile(a, 90)), "p99": float(np.percentile(a, 99)), "max": float(a.max()),
            "std": float(a.std(ddof=1)) if len(ms) > 1 else 0.0,
            "cv": float(a.std(ddof=1) / mean) if len(ms) > 1 and mean > 0 else 0.0}


def load_samples(inputs_npz: str, names: list[str]) -> list[list[np.ndarray]]:
    with np.load(inputs_npz, allow_pickle=False) as z:
        arrays = [z[n] for n in names]
    return [[a[i:i + 1] for a in arrays] for i in range(arrays[0].shape[0])]


def profile(args: dict) -> dict:
    from pocketml.profiler.metrics import compare
    from pocketml.runtime import session as rt
    from pocketml.runtime.data import to_layout
    from pocketml.runtime.manifest import read_manifest, verify_checksums

    art = rt.resolve_artifact(args["artifact"])
    manifest = read_manifest(art)
    t = time.perf_counter()
    verify_checksums(art, manifest)
    verify_ms = (time.perf_counter() - t) * 1e3
    {"onnx": lambda: __import__("onnxruntime"), "tflite": rt._tflite_interpreter}.get(manifest.format, lambda: 0)()
    rss0 = _rss_kb()
    t = time.perf_counter()
    sess = rt.load(art, threads=args["threads"], verify=False)
    load_ms = (time.perf_counter() - t) * 1e3

    layouts = args.get("layouts") or [None] * len(manifest.inputs)
    names = [s["name"] for s in args["canonical_inputs"]]
    samples = load_samples(args["inputs_npz"], names)
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

    outputs = [first] + [sess.run(feeds(s)) for s in samples[1:]]
    out_name = manifest.outputs[0].name
    result = {"load_ms": load_ms, "verify_ms": verify_ms, "first_inference_ms": first_ms,
              "latency_ms": latency_stats(times),
              "peak_rss_added_mb": max(0.0, (_peak_rss_kb() - rss0) / 1024),
              "samples": len(samples)}
    if args.get("save_outputs"):
        np.savez(args["save_outputs"], **{out_name: np.concatenate([o[out_name] for o in outputs])})
    if args.get("reference_npz"):
        with np.load(args["reference_npz"], allow_pickle=False) as z:
            ref = z[z.files[0]]
        result["accuracy"] = compare([ref[i:i + 1] for i in range(ref.shape[0])],
                                     [o[out_name] for o in outputs], args["metric"])
    return result


def main() -> int:
    args = json.loads(sys.argv[1])
    from pocketml.runtime.errors import PocketmlError
    try:
        res = {"ok": True, **profile(args)}
    except PocketmlError as exc:
        res = {"ok": False, "error": exc.as_dict()}
    print("POCKETML-RESULT " + json.dumps(res), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
