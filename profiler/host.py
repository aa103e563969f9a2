"""Facts about the machine a measurement was taken on, so every number can say where it came from."""
from __future__ import annotations

import os
import platform
from functools import lru_cache

from pocketml.runtime.cpu import SIMD_FLAGS, cpu_id  # noqa: F401  (re-exported: host facts in one place)


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
