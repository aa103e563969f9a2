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


def describe(threads: int) -> str:
    return f"measured (host: {cpu_model()}, {threads} thread{'s' if threads != 1 else ''})"


def info() -> dict:
    return {"cpu": cpu_model(), "logical_cpus": os.cpu_count(), "machine": platform.machine(),
            "system": platform.system(), "python": platform.python_version()}
