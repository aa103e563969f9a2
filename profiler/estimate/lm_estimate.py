"""The language-model estimate of one artifact on one device profile: lm_model's central values with the
bands of data/lm_fitted.json, from the manifest alone (its checksums verified; the model is never parsed or run).

    from pocketml.profiler.estimate.lm_estimate import estimate_lm
    estimate_lm("out/smollm2/tflite-int4", devices.load("pixel-7"), prompt=128, gen=128, context=1024)
"""
from __future__ import annotations

import math
from pathlib import Path

from pocketml.runtime import formats
from pocketml.runtime.errors import UsageError
from pocketml.runtime.families import for_task

from ..lm import KIND
from .lm_model import (DEFAULT_THREADS, MEMORY_CLASS, PRECISION_BITS, RUNTIME_CLASS, RUNTIMES, Workload, central,
                       fitted, physical_memory_bytes, prefill_flops, weight_class)

METHOD = ("estimated (bandwidth model, fitted on {n} rows from {m} sources, leave-one-source-out median "
          "error {err:.0f} %{flag})")
# metric -> (band of data/lm_fitted.json, unit, inverted). The bands are measured / predicted of the calibration
# metric; TTFT is the prompt over the prefill rate, so its band is the prefill band inverted.
METRICS = {"ttft_ms": ("prefill_tok_s", "ms", True), "prefill_tokens_per_s": ("prefill_tok_s", "tokens/s", False),
           "decode_tokens_per_s": ("decode_tok_s", "tokens/s", False),
           "decode_tokens_per_s_depth0": ("decode_tok_s", "tokens/s", False),
           "decode_tokens_per_s_at_context": ("decode_tok_s", "tokens/s", False),
           "memory_mb": ("memory_mb", "MB", False)}
# speed parameter table -> the band it widens when the runtime has no calibration rows
SPREAD = {"decode_tok_s": "dec_rt", "prefill_tok_s": "pre_rt", "memory_mb": "mem_overhead_mb"}


def _model_bytes(art: Path, manifest) -> int:
    from pocketml.runtime.paths import contained_file
    mf = manifest.model_file
    return sum(contained_file(art, rel).stat().st_size for rel in manifest.checksums
               if rel == mf or rel.startswith(mf.rstrip("/") + "/"))


def workload(art: Path, manifest) -> Workload:
    """lm_model's Workload from a language-model manifest (runtime_hints.generation, source, quantization)."""
    gen = manifest.runtime_hints.get("generation") or {}
    layout = gen.get("layout") or {}
    params, vocab = manifest.source.get("parameter_count"), layout.get("vocab_size")
    kv, layers = gen.get("kv_bytes_per_token"), layout.get("num_layers")
    for name, v in (("source.parameter_count", params), ("runtime_hints.generation.layout.vocab_size", vocab),
                    ("runtime_hints.generation.kv_bytes_per_token", kv),
                    ("runtime_hints.generation.layout.num_layers", layers)):
        if not isinstance(v, (int, float)) or isinstance(v, bool) or v <= 0:
            raise UsageError(f"{art}: the language-model estimate needs manifest field {name} (got {v!r})")
    if manifest.precision not in PRECISION_BITS:
        raise UsageError(f"{art}: precision {manifest.precision!r} has no weight class "
                         f"(known: {', '.join(PRECISION_BITS)})")
    bits, hidden = PRECISION_BITS[manifest.precision], layout.get("hidden_size")
    untied = bool(manifest.quantization.get("untied"))
    resident, notes = float(_model_bytes(art, manifest)), []
    if isinstance(hidden, int) and hidden > 0:
        emb = float(vocab * hidden)
        body, gather = params - emb * (2 if untied else 1), emb * bits / 8 if untied else 0.0
    else:
        body, emb, gather = float(params), 0.0, 0.0
        notes.append("hidden size not in the manifest: embedding parameters counted as prefill compute "
                     "(prefill slightly pessimistic)")
    cap = formats.capability(manifest.format, manifest.precision, for_task(manifest.task).kind)
    compute = "fp32" if cap.weight_only or weight_class(bits) == "float" else "int8"
    return Workload(name=manifest.name, params=float(params), body_params=body, head_params=emb,
                    resident_bytes=resident, read_bytes=resident - gather, kv_bytes_per_token=float(kv),
                    wclass=weight_class(bits), compute=compute, vocab=int(vocab), layers=int(layers),
                    logits_all_positions=layout.get("prefill_logits", True) is not False,
                    context_length=gen.get("context_length") or layout.get("context_length"), notes=notes)


def spread(fit: dict, table: str) -> float:
    """sqrt(max / min) of a per-runtime parameter over the calibrated runtimes (>= 1)."""
    vals = [fit["params"][table][r] for r in RUNTIMES]
    return math.sqrt(max(vals) / min(vals))


def _band(fit: dict, metric: str, runtime: str | None) -> tuple[float, float, dict]:
    key, _, inverted = METRICS[metric]
    b = fit["validation"]["band"][key]
    lo, hi = b["ratio_low"], b["ratio_high"]
    if runtime is None and key != "memory_mb":   # an uncalibrated runtime: widen by the runtimes' spread
        s = spread(fit, SPREAD[key])
        lo, hi = lo / s, hi * s
    return (1 / hi, 1 / lo, b) if inverted else (lo, hi, b)


def _memory_range(fit: dict, w: Workload, mem_runtime: str | None, value_mb: float, *, context: int,
                  prompt: int) -> tuple[float, float]:
    """Memory low/high before the calibrated band: an uncalibrated runtime's overhead spans the calibrated
    runtimes' overheads (the weights and KV cache are known; only the overhead term is widened)."""
    if mem_runtime is not None:
        return value_mb, value_mb
    phys, s = physical_memory_bytes(w, context, prompt) / 1e6, spread(fit, "mem_overhead_mb")
    ovh = value_mb - phys
    return phys + ovh / s, phys + ovh * s


def estimate_lm(artifact, profile: dict, *, prompt: int, gen: int, context: int,
                threads: int | None = None, verify: bool = True) -> dict:
    """Every metric of the LM estimate with its band and method, for one artifact on one profile."""
    from pocketml.runtime.manifest import read_manifest, verify_checksums
    art = Path(artifact)
    manifest = read_manifest(art)
    if verify:
        verify_checksums(art, manifest)           # as the profiler does before reading anything else
    return estimate_workload(workload(art, manifest), manifest.format, profile, prompt=prompt, gen=gen,
                             context=context, threads=threads, artifact=str(art), precision=manifest.precision)


def estimate_workload(w: Workload, fmt: str, profile: dict, *, prompt: int, gen: int, context: int,
                      threads: int | None = None, artifact: str = "", precision: str = "") -> dict:
    fit, notes = fitted(), list(w.notes)
    threads = threads or DEFAULT_THREADS
    device_runtime = formats.get(fmt).device_runtime
    runtime = RUNTIME_CLASS.get(device_runtime)
    if w.context_length and context > w.context_length:
        notes.append(f"a context of {context} tokens (--context, or the device's lm_context_tokens) is beyond the "
                     f"artifact's {w.context_length}: memory and decode at context estimated at {w.context_length}")
        context = w.context_length
    mem_runtime = MEMORY_CLASS.get(device_runtime)
    if runtime is None:
        notes.append(f"no published LM measurement of {device_runtime}: the calibrated runtimes' geometric mean "
                     f"({' and '.join(RUNTIMES)}) is used and each band widened by their spread")
    if mem_runtime is None:
        notes.append("memory overhead of the runtime's process is not calibrated for this runtime: the geometric "
                     "mean of ExecuTorch's and llama.rn's measured overheads, band widened by their spread")
    c = central(w, profile, fit["params"], runtime, prompt=prompt, gen=gen, context=context, threads=threads,
                mem_runtime=mem_runtime)
    cal = fit["calibration"]
    out = {"kind": KIND, "artifact": artifact, "device": profile.get("name", "profile"),
           "format": fmt, "precision": precision, "threads": threads, "runtime_class": runtime or "uncalibrated",
           "lengths": {"prompt_tokens": prompt, "gen_tokens": gen, "context": context},
           "runs_on_device": device_runtime in profile.get("runtimes", {}).get("available", []),
           "workload": {"weights_mb": round(w.resident_bytes / 1e6, 2),
                        "read_per_token_mb": round(w.read_bytes / 1e6, 2),
                        "kv_bytes_per_token": int(w.kv_bytes_per_token), "weight_class": w.wclass,
                        "prefill_kernels": w.compute, "layers": w.layers,
                        "prefill_gflops": round(prefill_flops(w, prompt) / 1e9, 3)},
           "memory_bandwidth_gbps": profile["memory"]["bandwidth_gbps"], "ram_gb": profile["memory"]["ram_gb"]}
    for metric, value in c.items():
        rt = mem_runtime if metric == "memory_mb" else runtime
        lo, hi, b = _band(fit, metric, rt)
        flag = ", uncalibrated runtime" if rt is None else ""
        v_lo, v_hi = (_memory_range(fit, w, rt, value, context=context, prompt=prompt) if metric == "memory_mb"
                      else (value, value))
        out[metric] = {"value": round(value, 3), "low": round(v_lo * lo, 3), "high": round(v_hi * hi, 3),
                       "unit": METRICS[metric][1],
                       "method": METHOD.format(n=cal["fit_rows"], m=len(cal["fit_sources"]),
                                               err=100 * b["median_ape_loso"], flag=flag),
                       "band": {"factor_low": round(v_lo * lo / value, 4), "factor_high": round(v_hi * hi / value, 4),
                                "coverage_loso": b["coverage_loso"], "calibration_rows": b["rows"]}}
    if out["memory_mb"]["high"] > profile["memory"]["ram_gb"] * 1e3:
        notes.append(f"peak memory may exceed the device's {profile['memory']['ram_gb']:g} GB of RAM")
    if not out["runs_on_device"]:
        notes.append(f"no {device_runtime} runtime is listed for this device (runtimes.available)")
    out["notes"] = notes + [NOT_MODELLED]
    return out


NOT_MODELLED = ("not modelled: thermal throttling, big.LITTLE scheduling, GPU/NPU delegates, runtime start-up "
                "and model load; decode assumes the runtime's threads keep DRAM busy")
