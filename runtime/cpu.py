"""What this CPU offers the int8 / int4 kernels (torch-free): family / model and the SIMD extensions they
dispatch on, read from /proc/cpuinfo. Used to label measurements (profiler/host.py) and to say when a host's
int8 kernels compute less exactly than a phone's (convert/validate.py)."""
from __future__ import annotations

import platform
from functools import lru_cache

# the SIMD extensions int8 / int4 kernels dispatch on (XNNPACK, MLAS, ggml): the same "AMD EPYC" measured
# TFLite int4 decode 2.5x apart on two hosts of this project, one of them AVX2-only (docs/PERFORMANCE.md)
SIMD_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm", "sve", "sme")
# x86 extensions with exact int8 dot products; without them AVX2's vpmaddubsw adds pairs of uint8 × int8
# products in int16 with saturation
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


@lru_cache(maxsize=1)
def cpu_id() -> dict:
    """CPU family / model / stepping (ARM: implementer / part) and the SIMD_FLAGS present (empty off Linux)."""
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


def int8_pairs_saturate() -> bool:
    """True on an x86 host without VNNI: uint8 × int8 kernels there may saturate int16 pair sums."""
    return platform.machine().lower() in ("x86_64", "amd64") and not set(cpu_id()["simd"]) & set(VNNI_FLAGS)
