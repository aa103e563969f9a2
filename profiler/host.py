"""Facts about the machine a measurement was taken on, so every number can say where it came from."""
from __future__ import annotations

import os
import platform
from functools import lru_cache


@lru_cache(maxsize=1)
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# the SIMD extensions int8 / int4 kernels dispatch on (XNNPACK, MLAS, ggml): the same "AMD EPYC" measured
# TFLite int4 decode 2.5x apart on two hosts of this project, one of them AVX2-only (docs/PERFORMANCE.md)
SIMD_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm", "sve", "sme")


@lru_cache(maxsize=1)
def cpu_id() -> dict:
    """CPU family / model / stepping and the SIMD_FLAGS present, from /proc/cpuinfo (empty off Linux)."""
    fields, flags = {}, set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                if key in ("cpu family", "model", "stepping", "cpu implementer", "cpu part") and key not in fields:
                    fields[key] = value.strip()
                elif key in ("flags", "features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return {**fields, "simd": [f for f in SIMD_FLAGS if f in flags]}


def cpu_line() -> str:
    """"AMD EPYC (family 25 model 1; avx2)": the model name with what tells two such hosts apart."""
    ident = cpu_id()
    parts = [f"{k.replace('cpu ', '')} {ident[k]}" for k in ("cpu family", "model", "cpu implementer", "cpu part")
             if k in ident]
    return f"{cpu_model()} ({' '.join(parts)}; {', '.join(ident['simd']) or 'no listed SIMD'})"


def describe(threads: int) -> str:
    return f"measured (host: {cpu_model()}, {threads} thread{'s' if threads != 1 else ''})"


def info() -> dict:
    return {"cpu": cpu_model(), "cpu_id": cpu_id(), "logical_cpus": os.cpu_count(), "machine": platform.machine(),
            "system": platform.system(), "python": platform.python_version()}
