"""Roofline device model: per-op time from a profile's CPU facts and fitted efficiencies.

    t_op = max(compute, memory) / (eff[precision][category] * family[core]) + dispatch + sync

compute = (MACs + other FLOPs) / MAC-rate of the fastest core, divided by the thread
speed-up S(n) = 1 + par_eff * (sum of relative speeds of cores 2..n)^par_exp over the
profile's fastest cores first (par_exp < 1: each added core helps less).
memory = bytes / rate, where an op whose working set (weights + inputs +
outputs) fits the caches the threads can use (L2 + L3 + system cache) streams at
cache_bpc bytes/cycle/core * S(n), and a larger one at DRAM peak * mem_eff * S(n)^mem_par
(capped at the peak). Rates per core: fp32 MAC/s = GHz * fp32_fma_per_cycle *
simd_width_bits/32; fp16 twice that with fp16_arith (else fp32); int8 4x with int8_dot,
8x with i8mm, 2x without dot (and 2x under runtimes whose int8 kernels predate SDOT).
dispatch = dispatch_us * (2 GHz / clock); sync = sync_us for each op when threads > 1.
Everything here is numpy + dicts; the parameters come from data/fitted.json.
"""
from __future__ import annotations

import numpy as np

from pocketml.runtime.errors import UsageError

from .graph_cost import CATEGORIES

PRECISIONS = ("fp32", "fp16", "int8")
CLUSTER_FIELDS = ("count", "max_clock_ghz", "simd_width_bits", "fp32_fma_per_cycle", "fp16_arith",
                  "int8_dot", "i8mm", "arm_core", "l2_kb", "l2_scope")
CPU_FIELDS = ("l3_kb", "system_cache_kb")
# Core microarchitecture -> family whose efficiency factor applies. Unlisted Arm cores are "big".
FAMILY = {**{c: "little" for c in ("Cortex-A53", "Cortex-A55", "Cortex-A510", "Cortex-A520", "Kryo-Silver")},
          **{c: "xseries" for c in ("Cortex-X1", "Cortex-X2", "Cortex-X3", "Cortex-X4", "Cortex-X925")},
          **{c: "apple" for c in ("Hurricane", "Monsoon", "Vortex", "Lightning", "Firestorm", "Avalanche",
                                  "Everest")},
          **{c: "apple-e" for c in ("Zephyr", "Mistral", "Tempest", "Thunder", "Icestorm", "Blizzard",
                                    "Sawtooth")}}
INT8_GAIN = ((lambda c: c["i8mm"], 8.0), (lambda c: c["int8_dot"], 4.0), (lambda c: True, 2.0))
# Runtime a measurement was taken with -> do its int8 kernels use SDOT/SMMLA. Estimates are for
# the current default (XNNPACK); "tflite-2018" = TF Lite 1.x built-in kernels (gemmlowp era),
# "tflite-2020" = TF Lite 2.x default CPU kernels (ruy), treated like the current default.
RUNTIMES = {"xnnpack": True, "tflite-2018": False, "tflite-2020": True}


def core_family(cluster: dict) -> str:
    name = str(cluster["arm_core"]).split("#")[0].strip()
    return FAMILY.get(name, "big")


def _require(profile: dict) -> list[dict]:
    where = profile.get("name", "profile")
    clusters = profile.get("cpu", {}).get("clusters")
    if not clusters:
        raise UsageError(f"{where}: the estimator needs field 'cpu.clusters'", field="cpu.clusters")
    for i, c in enumerate(clusters):
        for f in CLUSTER_FIELDS:
            if f not in c:
                raise UsageError(f"{where}: the estimator needs field 'cpu.clusters[{i}].{f}'", field=f)
    for f in CPU_FIELDS:
        if not isinstance(profile.get("cpu", {}).get(f), (int, float)):
            raise UsageError(f"{where}: the estimator needs field 'cpu.{f}'", field=f)
    if not isinstance(profile.get("memory", {}).get("bandwidth_gbps"), (int, float)):
        raise UsageError(f"{where}: the estimator needs field 'memory.bandwidth_gbps'",
                         field="memory.bandwidth_gbps")
    return clusters


def mac_rate(cluster: dict, precision: str) -> float:
    """Peak MACs per second of one core."""
    fp32 = cluster["max_clock_ghz"] * 1e9 * cluster["fp32_fma_per_cycle"] * cluster["simd_width_bits"] / 32
    if precision == "fp16":
        return fp32 * (2.0 if cluster["fp16_arith"] else 1.0)
    if precision == "int8":
        return fp32 * next(g for test, g in INT8_GAIN if test(cluster))
    return fp32


def exec_precision(precision: str, cluster: dict) -> str:
    """fp16 ops run in fp32 on cores without Armv8.2 FP16 arithmetic."""
    return "fp32" if precision == "fp16" and not cluster["fp16_arith"] else precision


def cores(profile: dict) -> list[dict]:
    """One entry per physical core, fastest (fp32 peak) first."""
    out = [c for c in _require(profile) for _ in range(int(c["count"]))]
    return sorted(out, key=lambda c: -mac_rate(c, "fp32"))


def speedup(profile: dict, threads: int, par_eff: float, par_exp: float = 1.0) -> float:
    cs = cores(profile)[:max(1, int(threads))]
    top = mac_rate(cs[0], "fp32")
    return 1.0 + par_eff * sum(mac_rate(c, "fp32") / top for c in cs[1:]) ** par_exp


def cache_bytes(profile: dict, used: list[dict]) -> float:
    """L2 reachable by the used cores (per core or once per shared cluster) + L3 + system cache."""
    l2, seen = 0.0, set()
    for c in used:
        if c["l2_scope"] == "core" or id(c) not in seen:
            l2 += c["l2_kb"]
        seen.add(id(c))
    return (l2 + profile["cpu"]["l3_kb"] + profile["cpu"]["system_cache_kb"]) * 1024.0


def device_terms(profile: dict, threads: int) -> dict:
    """The per-device numbers the op model needs (independent of fitted parameters)."""
    cs = cores(profile)
    lead = cs[0]
    used = cs[:max(1, int(threads))]
    top = mac_rate(lead, "fp32")
    return {"name": profile.get("name", "?"), "threads": len(used), "family": core_family(lead),
            "clock_ghz": float(lead["max_clock_ghz"]),
            "mac_rate": {p: mac_rate(lead, exec_precision(p, lead)) for p in PRECISIONS},
            "int8_nodot_rate": min(mac_rate(lead, "int8"), 2.0 * top),
            "exec": {p: exec_precision(p, lead) for p in PRECISIONS},
            "rel_speed": [mac_rate(c, "fp32") / top for c in used[1:]],
            "cache_bytes": cache_bytes(profile, used),
            "bandwidth": float(profile["memory"]["bandwidth_gbps"]) * 1e9}


def op_arrays(ops) -> dict:
    """Column arrays of the live ops of a GraphCost (or of cached rows)."""
    live = [o for o in ops if not o.fused]
    cat = np.array([CATEGORIES.index(o.category) for o in live], dtype=np.int64)
    prec = np.array([PRECISIONS.index(o.precision) for o in live], dtype=np.int64)
    col = lambda f: np.array([float(getattr(o, f)) for o in live])   # noqa: E731
    return {"cat": cat, "prec": prec, "macs": col("macs"), "flops": col("flops"),
            "bytes": col("weight_bytes") + col("in_bytes") + col("out_bytes")}


def eff_table(params: dict) -> np.ndarray:
    """[precision, category] efficiency matrix from the fitted parameters."""
    return np.array([[params["eff"][p][c] for c in CATEGORIES] for p in PRECISIONS])


def op_times(arr: dict, dev: dict, params: dict, runtime: str = "xnnpack") -> np.ndarray:
    """Seconds per live op."""
    s = 1.0 + params["par_eff"] * sum(dev["rel_speed"]) ** params["par_exp"]
    exec_idx = np.array([PRECISIONS.index(dev["exec"][p]) for p in PRECISIONS])[arr["prec"]]
    if runtime not in RUNTIMES:
        raise UsageError(f"unknown runtime {runtime!r}; known: {', '.join(RUNTIMES)}")
    table = dict(dev["mac_rate"], int8=dev["mac_rate"]["int8"] if RUNTIMES[runtime] else dev["int8_nodot_rate"])
    rates = np.array([table[p] for p in PRECISIONS])[arr["prec"]]
    compute = (arr["macs"] + arr["flops"]) / rates / s
    dram = dev["bandwidth"] * min(1.0, params["mem_eff"] * s ** params["mem_par"])
    cache = params["cache_bpc"] * dev["clock_ghz"] * 1e9 * s
    memory = arr["bytes"] / np.where(arr["bytes"] <= dev["cache_bytes"], cache, dram)
    eff = eff_table(params)[exec_idx, arr["cat"]] * params["family"].get(dev["family"], 1.0)
    eff = eff / params["runtime"].get(runtime, 1.0)
    return np.maximum(compute, memory) / eff + fixed_time(dev, params)


def fixed_time(dev: dict, params: dict) -> float:
    """Seconds every live op costs whatever its size: dispatch, plus thread sync when threads > 1."""
    fixed = params["dispatch_us"] * 1e-6 * 2.0 / dev["clock_ghz"]
    return fixed + (params["sync_us"] * 1e-6 if dev["threads"] > 1 else 0.0)


def latency_ms(arr: dict, dev: dict, params: dict, runtime: str = "xnnpack") -> float:
    return float(op_times(arr, dev, params, runtime).sum() * 1e3)
