"""Phone-class speed and memory of a language model without a phone (docs/ESTIMATE.md, "Language models").

    decode s/token(depth) = (weight bytes read per token + KV bytes/token x depth)
                            / (DRAM bandwidth x dec_eff[weight class] x dec_rt[runtime])
                            + layers x layer_us[runtime] x 2 GHz / lead-core clock   (dispatch, sync)
    prefill s(P)          = FLOPs(P) / (2 x peak MAC/s of the threads' cores at the kernel precision
                                        x pre_eff[kernel precision] x pre_rt[runtime]) + the same per-layer cost
    TTFT                  = prefill s(prompt)                      (load-free: the model is already loaded)
    peak memory           = resident weights + KV bytes/token x context + logits buffer + mem_overhead[runtime]

FLOPs(P) = 2 x body params x P + 2 x LM-head params x (P when the artifact returns logits for every prompt
position, else 1). The weight class is what a decode step streams: q4 (<= 6 bits/weight), q8 (<= 10), float.
The fitted parameters (data/lm_fitted.json, `python -m pocketml.profiler.estimate.lm_fit`) are the few
efficiencies and overheads above; everything else is the profile's facts (memory.bandwidth_gbps, the CPU
clusters' MAC rates, memory.ram_gb) and the artifact's manifest. Nothing here runs or parses the model.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from pocketml.runtime.errors import UsageError

from .device_model import cores, mac_rate

FITTED = Path(__file__).with_name("data") / "lm_fitted.json"
CLASSES = ("q4", "q8", "float")
RUNTIMES = ("xnnpack", "llama.cpp")            # runtime classes with calibration rows
# Device-profile CPU runtime (format registry `device_runtime`) -> calibrated runtime class; None: no
# published LM measurement of that runtime, the calibrated classes' geometric mean is used and the band widened.
RUNTIME_CLASS = {"litert-cpu-xnnpack": "xnnpack", "onnxruntime-cpu": None, "coreml-cpu": None}
# The same for the memory overhead, which belongs to the runtime's process (arenas, packing, its own buffers),
# not to the kernel library: the calibration rows are ExecuTorch's adb runner and llama.rn, so no pocketml
# runtime is calibrated for it.
MEMORY_CLASS: dict[str, str | None] = {}
# Artifact precision -> bits per weight a decode step streams (blocks of 32 carry a 16-bit scale).
PRECISION_BITS = {"int4": 4.5, "int8": 8.5, "int8w": 8.5, "fp16": 16.0, "fp32": 32.0}
DEFAULT_THREADS = 4           # the calibration rows use 4-6 threads (runtime defaults on phones)
LOGIT_BYTES = 4               # float32 logits
REF_GHZ = 2.0                 # layer_us is quoted at a 2 GHz lead core (the CNN model's dispatch convention)


def weight_class(bits: float) -> str:
    return "q4" if bits <= 6 else "q8" if bits <= 10 else "float"


@dataclass
class Workload:
    """What the model needs to know about one language model (from a manifest or a calibration row)."""
    name: str
    params: float                   # total parameters
    body_params: float              # matmul parameters of the transformer blocks (no embedding, no LM head)
    head_params: float              # LM-head matmul parameters (vocab x hidden)
    resident_bytes: float           # weights held in memory
    read_bytes: float               # weight bytes streamed per decode step (a gather-only embedding excluded)
    kv_bytes_per_token: float
    wclass: str                     # q4 | q8 | float
    compute: str                    # prefill kernel precision: int8 | fp32
    vocab: int
    layers: int
    logits_all_positions: bool = False
    context_length: int | None = None
    notes: list = field(default_factory=list)


@lru_cache(maxsize=4)
def fitted(path: str = str(FITTED)) -> dict:
    if not Path(path).is_file():
        raise UsageError(f"{path} is missing: run `python -m pocketml.profiler.estimate.lm_fit`")
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _per_runtime(params: dict, key: str, runtime: str | None) -> float:
    table = params[key]
    if runtime is not None:
        return table[runtime]
    return math.exp(sum(math.log(table[r]) for r in RUNTIMES) / len(RUNTIMES))   # uncalibrated: geometric mean


def peak_macs(profile: dict, threads: int, compute: str) -> float:
    """Peak MAC/s of the `threads` fastest cores at the kernel precision (device_model.mac_rate)."""
    return sum(mac_rate(c, compute) for c in cores(profile)[:max(1, int(threads))])


def bandwidth(profile: dict) -> float:
    return float(profile["memory"]["bandwidth_gbps"]) * 1e9


def decode_s(w: Workload, profile: dict, params: dict, runtime: str | None, depth: float) -> float:
    eff = params["dec_eff"][w.wclass] * _per_runtime(params, "dec_rt", runtime)
    stream = (w.read_bytes + w.kv_bytes_per_token * max(0.0, depth)) / (bandwidth(profile) * eff)
    return stream + w.layers * layer_s(profile, params, runtime)


def layer_s(profile: dict, params: dict, runtime: str | None) -> float:
    """Fixed seconds per layer per call (dispatch, thread sync), scaled by the lead core's clock."""
    return _per_runtime(params, "layer_us", runtime) * 1e-6 * REF_GHZ / cores(profile)[0]["max_clock_ghz"]


def prefill_flops(w: Workload, tokens: int) -> float:
    return 2.0 * w.body_params * tokens + 2.0 * w.head_params * (tokens if w.logits_all_positions else 1)


def prefill_s(w: Workload, profile: dict, params: dict, runtime: str | None, tokens: int, threads: int) -> float:
    eff = params["pre_eff"][w.compute] * _per_runtime(params, "pre_rt", runtime)
    compute = prefill_flops(w, tokens) / (2.0 * peak_macs(profile, threads, w.compute) * eff)
    return compute + w.layers * layer_s(profile, params, runtime)


def physical_memory_bytes(w: Workload, context: int, prompt: int) -> float:
    """Weights + KV cache at `context` + the prefill's logits buffer (no runtime overhead)."""
    logits = (prompt if w.logits_all_positions else 1) * w.vocab * LOGIT_BYTES
    return w.resident_bytes + w.kv_bytes_per_token * context + logits


def memory_bytes(w: Workload, params: dict, runtime: str | None, context: int, prompt: int) -> float:
    return physical_memory_bytes(w, context, prompt) + _per_runtime(params, "mem_overhead_mb", runtime) * 1e6


def central(w: Workload, profile: dict, params: dict, runtime: str | None, *, prompt: int, gen: int,
            context: int, threads: int, mem_runtime: str | None = None) -> dict:
    """The central estimate of every metric (no band)."""
    pre = prefill_s(w, profile, params, runtime, prompt, threads)
    return {"ttft_ms": pre * 1e3, "prefill_tokens_per_s": prompt / pre,
            "decode_tokens_per_s": 1.0 / decode_s(w, profile, params, runtime, prompt + gen / 2),
            "decode_tokens_per_s_depth0": 1.0 / decode_s(w, profile, params, runtime, 0),
            "decode_tokens_per_s_at_context": 1.0 / decode_s(w, profile, params, runtime, context),
            "memory_mb": memory_bytes(w, params, mem_runtime, context, prompt) / 1e6}
