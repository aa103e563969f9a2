"""Device profiles (`profiles/*.toml`): load, check every field, list. A bad profile names the field."""
from __future__ import annotations

import difflib
import tomllib
from importlib import resources
from pathlib import Path

from pocketml.runtime.errors import UsageError

NUM = (int, float)
MAX_PROFILE_BYTES = 1 << 20
# dotted field -> accepted types. Every cluster is checked against CLUSTER.
REQUIRED = {
    "schema": int, "name": str, "display_name": str, "vendor": str, "os": str, "year": int, "tier": str,
    "sources": dict, "soc.name": str, "cpu.clusters": list, "memory.ram_gb": NUM, "memory.bandwidth_gbps": NUM,
    "runtimes.available": list, "targets.p90_latency_ms": NUM, "targets.max_accuracy_drop": NUM,
    "targets.max_size_mb": NUM, "targets.max_memory_mb": NUM,
}
# optional [targets] for language models (profiler/lm.py); checked when present
OPTIONAL_TARGETS = {"min_decode_tokens_per_s": NUM, "max_ttft_ms": NUM, "ttft_prompt_tokens": int,
                    "max_lm_memory_mb": NUM, "lm_context_tokens": int, "max_perplexity_increase": NUM}
CLUSTER = {"core": str, "arm_core": str, "count": int, "max_clock_ghz": NUM, "simd_width_bits": int,
           "fp32_fma_per_cycle": NUM, "fp16_arith": bool, "int8_dot": bool, "i8mm": bool}


def profiles_dir() -> Path:
    return Path(str(resources.files("pocketml.profiles")))


def available() -> list[str]:
    return sorted(p.stem for p in profiles_dir().glob("*.toml"))


def _get(d: dict, dotted: str):
    for part in dotted.split("."):
        if not isinstance(d, dict) or part not in d:
            return KeyError
        d = d[part]
    return d


def check(profile: dict, where: str) -> dict:
    for field, types in REQUIRED.items():
        value = _get(profile, field)
        if value is KeyError:
            raise UsageError(f"{where}: missing field '{field}'", field=field)
        if not isinstance(value, types) or isinstance(value, bool) and types is not bool:
            raise UsageError(f"{where}: field '{field}' is {type(value).__name__} {value!r}, "
                             f"expected {getattr(types, '__name__', 'number')}", field=field)
        if types is NUM and (value != value or value in (float("inf"), float("-inf"))):
            raise UsageError(f"{where}: field '{field}' is {value!r}, expected a finite number", field=field)
    for i, cluster in enumerate(profile["cpu"]["clusters"]):
        if not isinstance(cluster, dict):
            raise UsageError(f"{where}: field 'cpu.clusters[{i}]' is {type(cluster).__name__}, expected a table",
                             field="cpu.clusters")
        for field, types in CLUSTER.items():
            if field not in cluster:
                raise UsageError(f"{where}: missing field 'cpu.clusters[{i}].{field}'", field=field)
            if not isinstance(cluster[field], types):
                raise UsageError(f"{where}: field 'cpu.clusters[{i}].{field}' has type "
                                 f"{type(cluster[field]).__name__}", field=field)
    for key in ("p90_latency_ms", "max_size_mb", "max_memory_mb"):
        if profile["targets"][key] <= 0:
            raise UsageError(f"{where}: field 'targets.{key}' must be > 0")
    check_optional_targets(profile["targets"], where)
    return profile


def check_optional_targets(targets: dict, where: str) -> None:
    for key, types in OPTIONAL_TARGETS.items():
        if key not in targets:
            continue
        value = targets[key]
        if not isinstance(value, types) or isinstance(value, bool) or not value > 0 or value == float("inf"):
            raise UsageError(f"{where}: field 'targets.{key}' is {type(value).__name__} {value!r}, expected "
                             f"{'an integer' if types is int else 'a finite number'} > 0", field=f"targets.{key}")


def load(name_or_path: str) -> dict:
    path = Path(name_or_path)
    if not (path.suffix == ".toml" and path.is_file()):
        path = profiles_dir() / f"{name_or_path}.toml"
        if not path.is_file():
            close = difflib.get_close_matches(name_or_path, available(), n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise UsageError(f"unknown device profile {name_or_path!r}.{hint} "
                             f"`pocketml devices` lists them: {', '.join(available())}")
    if path.stat().st_size > MAX_PROFILE_BYTES:
        raise UsageError(f"{path}: larger than {MAX_PROFILE_BYTES} bytes; not a device profile")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise UsageError(f"{path}: not valid TOML ({type(exc).__name__}: {str(exc)[:200]})") from None
    return check(data, str(path))


def cpu_summary(profile: dict) -> str:
    return " + ".join(f"{c['count']}× {c['core']} @ {c['max_clock_ghz']:g} GHz" for c in profile["cpu"]["clusters"])
