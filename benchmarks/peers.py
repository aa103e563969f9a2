"""pocketml's artifacts vs what users ship without it, side by side, in one run on this host.

Default peer pipelines rebuilt here:
  EfficientNet-Lite0: ORT static int8 (QDQ, per-channel, otherwise ORT defaults, same calibration images);
                      litert-torch fp32 TFLite with its defaults (NCHW input).
  all-MiniLM-L6-v2:   ORT dynamic int8 with ORT defaults (per-tensor) on the fp32 ONNX; litert-torch fp32.
Every latency: 1 thread, same warm-up/runs, p50, measured in this process. Quality: against torch fp32
on the built-in evaluation sets (top-1 agreement / cosine to the fp32 embeddings).

    python benchmarks/peers.py [--out out] [--runs 100] [--extra minilm=out/minilm-small ...]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import MODELS, ensure_artifacts  # noqa: E402

from pocketml.runtime import formats  # noqa: E402


def ort_session(path: str):
    import onnxruntime as ort
    o = ort.SessionOptions()
    o.intra_op_num_threads, o.inter_op_num_threads = 1, 1
    s = ort.InferenceSession(path, o, providers=["CPUExecutionProvider"])
    names = [i.name for i in s.get_inputs()]
    return lambda xs: s.run(None, dict(zip(names, xs)))[0]


def tflite_session(path: str):
    from pocketml.runtime.session import tflite_interpreter, dequantize, quantize
    it = tflite_interpreter()(model_path=path, num_threads=1)
    it.allocate_tensors()
    ins, out = sorted(it.get_input_details(), key=lambda d: d["index"]), it.get_output_details()[0]

    def run(xs):
        for d, x in zip(ins, xs):
            it.set_tensor(d["index"], quantize(x, d) if d["dtype"] == np.int8 else x.astype(d["dtype"]))
        it.invoke()
        y = it.get_tensor(out["index"])
        return dequantize(y, out) if y.dtype == np.int8 else y
    return run


def p50(run, xs, warmup: int, runs: int) -> float:
    for _ in range(warmup):
        run(xs)
    t = []
    for _ in range(runs):
        a = time.perf_counter_ns()
        run(xs)
        t.append((time.perf_counter_ns() - a) / 1e6)
    return float(np.median(t))


def quality(run, samples, refs, metric, post=None) -> tuple[str, float]:
    outs = [run(s) for s in samples]
    if post:
        outs = [post(o, s) for o, s in zip(outs, samples)]
    o = np.concatenate([x.reshape(1, -1) for x in outs])
    r = np.concatenate([x[0].reshape(1, -1) for x in refs])
    if metric == "top1":
        agree = float((o.argmax(1) == r.argmax(1)).mean())
        return f"top-1 agreement {agree:.3f}", agree
    cos = (o * r).sum(1) / np.linalg.norm(o, axis=1) / np.linalg.norm(r, axis=1)
    return f"cosine mean {cos.mean():.4f}, min {cos.min():.4f}", float(cos.mean())


def peers(spec, sub: Path, tmp: Path) -> dict:
    """Build the default peer artifacts; return name -> (runner, layout_fn, post)."""
    import litert_torch
    from onnxruntime.quantization import QuantType, quantize_dynamic, quantize_static

    base = str(sub / "onnx-fp32" / "model.onnx")
    out = {"ORT fp32 (torch.onnx export)": (ort_session(base), None, Path(base))}
    if formats.capability("onnx", "int8", spec.kind).static:      # what pocketml's int8 is: static or dynamic
        from pocketml.convert.exporters.onnx import _Reader
        q = str(tmp / "peer-static.onnx")
        quantize_static(base, q, _Reader([i["name"] for i in spec.inputs], spec.calib.samples), per_channel=True)
        out["peer: ORT static int8 (defaults, per-channel)"] = (ort_session(q), None, Path(q))
    else:
        q = str(tmp / "peer-dynamic.onnx")
        quantize_dynamic(base, q, weight_type=QuantType.QInt8)
        out["peer: ORT dynamic int8 (defaults)"] = (ort_session(q), None, Path(q))
    t = str(tmp / "peer.tflite")
    litert_torch.convert(spec.module, spec.torch_example()).export(t)
    out["peer: litert-torch fp32 (defaults)"] = (tflite_session(t), None, Path(t))
    return out


def ours(sub: Path, label: str = "pocketml") -> dict:
    from pocketml.runtime.data import to_layout
    from pocketml.runtime.manifest import PRECISIONS, read_manifest
    res = {}
    for fmt in ("onnx", "tflite"):
        for prec in PRECISIONS:
            art = sub / f"{fmt}-{prec}"
            if not (art / "manifest.json").exists():
                continue
            m = read_manifest(art)
            path = str(art / m.model_file)
            run = ort_session(path) if fmt == "onnx" else tflite_session(path)
            lay = m.inputs[0].layout
            res[f"{label} {fmt} {prec}"] = (run, (lambda xs, lay=lay: [to_layout(xs[0], "NCHW", lay)] + xs[1:])
                                            if lay == "NHWC" else None, art / m.model_file)
    return res


# the quality bar of issue 6: the fastest pocketml artifact at or above it, per model
QUALITY_BAR = {"top1": 0.98, "cosine": 0.99}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="out")
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--extra", action="append", default=[], metavar="MODEL=DIR",
                    help="more pocketml artifacts to compare, e.g. minilm=out/minilm-small (repeatable)")
    args = ap.parse_args()
    extras = [e.split("=", 1) for e in args.extra]
    from pocketml.convert.pipeline import reference_outputs
    from pocketml.profiler.host import describe

    print(f"Latency: {describe(1)}, p50 of {args.runs} runs after {args.warmup} warm-up, same process.\n")
    print(f"| {'model':<18} | {'pipeline':<46} | {'p50 ms':>7} | {'× ORT fp32':>10} | {'quality vs torch fp32':<34} | {'size MB':>7} |")
    print("|" + "|".join("-" * w for w in (20, 48, 9, 12, 36, 9)) + "|")
    summary = []
    with tempfile.TemporaryDirectory() as td:
        for model, name in MODELS:
            sub = Path(args.out) / name
            spec = ensure_artifacts(model, sub)
            refs = reference_outputs(spec, spec.eval)
            xs = spec.eval.samples[0]
            table = {**peers(spec, sub, Path(td)), **ours(sub)}
            for key, d in extras:
                if key == name:
                    table.update(ours(Path(d), f"pocketml {Path(d).name}"))
            base, best = None, None
            first_run = next(iter(table.values()))[0]
            settle = time.perf_counter() + 3.0       # the first timed model must not pay for a cold process
            while time.perf_counter() < settle:
                first_run(list(xs))
            for label, (run, adapt, file) in table.items():
                f = (lambda s, run=run, adapt=adapt: run(adapt(list(s)) if adapt else list(s)))
                ms = p50(f, xs, args.warmup, args.runs)
                base = base or ms
                q, value = quality(f, spec.eval.samples, refs, spec.metric)
                print(f"| {model:<18} | {label:<46} | {ms:7.2f} | {base / ms:9.2f}× | {q:<34} | "
                      f"{file.stat().st_size / 1e6:7.2f} |")
                if label.startswith("pocketml") and value >= QUALITY_BAR[spec.metric] and (not best or ms < best[1]):
                    best = (label, ms)
            summary.append(f"{model}: fastest pocketml artifact with {'top-1 agreement' if spec.metric == 'top1' else 'mean cosine'} "
                           f"≥ {QUALITY_BAR[spec.metric]}: " + (f"{best[0]}, {base / best[1]:.2f}× ORT fp32" if best else "none"))
    print("\n" + "\n".join(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
