"""fp16 range check: activations of the torch fp32 reference that fp16 arithmetic cannot hold.

Host runtimes validate fp16 artifacts in fp32 arithmetic (onnxruntime's CPU provider inserts Casts,
LiteRT dequantizes fp16 weights at load, Core ML cannot run off macOS), so a value beyond the fp16
range (|x| > 65504) passes the numeric check here and becomes inf on a phone GPU/NPU or any fp16
kernel. So pocketml measures every module's output range in the torch fp32 reference pass over the
validation data and refuses (exit 5) an artifact with fp16 activations whose reference leaves that
range — the same check and message for every format (docs/COMPRESSION.md, "fp16 range").
"""
from __future__ import annotations

import numpy as np

from pocketml.runtime.errors import ValidationFailed

FP16_MAX = 65504.0                 # largest finite float16
FP16_MIN_NORMAL = 6.103515625e-05  # smallest normal float16: below it values lose precision, < 6e-8 become 0

def has_fp16_activations(fmt: str, precision: str, kind: str) -> bool:
    """Whether the artifact computes in fp16 on the device (format registry: `Capability.fp16_activations`)."""
    from pocketml.runtime.formats import capability
    return capability(fmt, precision, kind).fp16_activations


def _max_abs(value) -> float:
    """Largest |x| over the floating-point tensors in a module output (tensor, tuple, list, dict)."""
    import torch
    if isinstance(value, torch.Tensor):
        return float(value.detach().abs().max()) if value.is_floating_point() and value.numel() else 0.0
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (tuple, list)):
        return max((_max_abs(v) for v in value), default=0.0)
    return 0.0


def activation_ranges(module, samples) -> dict[str, dict]:
    """module name ('' for the whole model) → {type, max_abs} of its outputs over `samples`, plus the
    model inputs ('input 0', …) and float parameters ('param <name>'), in execution order."""
    import torch
    ranges: dict[str, dict] = {}

    def record(name: str, kind: str, value: float) -> None:
        entry = ranges.setdefault(name, {"type": kind, "max_abs": 0.0})
        entry["max_abs"] = max(entry["max_abs"], value)

    hooks = [m.register_forward_hook(lambda mod, args, out, name=name: record(name, type(mod).__name__, _max_abs(out)))
             for name, m in module.named_modules()]
    try:
        with torch.no_grad():
            for sample in samples:
                xs = [torch.from_numpy(np.ascontiguousarray(x)) for x in sample]
                for k, x in enumerate(xs):
                    record(f"input {k}", "input", _max_abs(x))
                module(*xs)
    finally:
        for h in hooks:
            h.remove()
    for name, p in list(module.named_parameters()) + list(module.named_buffers()):
        record(f"param {name}", "parameter", _max_abs(p))
    return ranges


def _is_module(name: str) -> bool:
    return not name.startswith(("input ", "param "))


def _module_of(name: str) -> str:
    """The module a range belongs to: a parameter 'param 0.weight' to module '0'."""
    return name[len("param "):].rpartition(".")[0] if name.startswith("param ") else name


def _inside(child: str, parent: str) -> bool:
    return child == parent or parent == "" or child.startswith(parent + ".")


def _innermost(names: list[str]) -> list[str]:
    """Drop a module when one of its submodules is also listed: report where the value first appears."""
    modules = [n for n in names if _is_module(n)]
    return [n for n in names
            if not (_is_module(n) and any(o != n and _inside(o, n) for o in modules))]


def _label(name: str, entry: dict) -> str:
    if name.startswith(("input ", "param ")):
        return f"{name} max |x| {entry['max_abs']:.4g}"
    return f"layer {name or '(model output)'!r} ({entry['type']}) max |x| {entry['max_abs']:.4g}"


def check(ranges: dict[str, dict], where: str, data: str, kept_fp32=()) -> dict:
    """The fp16 range report of one artifact; ValidationFailed (exit 5) naming every layer whose reference
    values exceed FP16_MAX, unless the exporter kept it fp32 (`kept_fp32`, module names, in the manifest)."""
    def kept(name: str) -> bool:
        return not name.startswith("input ") and any(_inside(_module_of(name), k) for k in kept_fp32)

    over = _innermost([n for n, e in ranges.items() if e["max_abs"] > FP16_MAX])
    failing = [n for n in over if not kept(n)]
    tiny = [n for n, e in ranges.items() if 0 < e["max_abs"] < FP16_MIN_NORMAL and not n.startswith("param ")]
    top = max(ranges, key=lambda n: ranges[n]["max_abs"]) if ranges else None
    report = {"limit": FP16_MAX, "data": data, "checked": len(ranges),
              "max_abs": float(f"{ranges[top]['max_abs']:.6g}") if top is not None else 0.0,
              "max_abs_at": top, "kept_fp32": list(kept_fp32), "over_limit_kept_fp32": [n for n in over if kept(n)],
              "underflow": [_label(n, ranges[n]) for n in _innermost(tiny)]}
    if failing:
        raise ValidationFailed(
            f"{where}: values outside the fp16 range (|x| ≤ {FP16_MAX:g}) in the torch fp32 reference on {data}: "
            + "; ".join(_label(n, ranges[n]) for n in failing)
            + " — fp16 arithmetic makes them inf (the host check runs fp16 graphs in fp32 and cannot see it). "
              "Rescale those layers, or convert fp32",
            fp16_range={**report, "over_limit": failing})
    return report


def check_artifact(spec, data, fmt: str, precision: str, quantization: dict, cache: dict) -> dict | None:
    """The fp16 range check for one artifact (None when its activations are not fp16). The ranges are
    measured once per model and conversion (`cache`) and shared by every format."""
    if not has_fp16_activations(fmt, precision, spec.kind):
        return None
    key = ("fp16_ranges", id(spec.module), data.source)
    if key not in cache:
        cache[key] = activation_ranges(spec.module, data.samples)
    return check(cache[key], f"{spec.name} {fmt} {precision}", f"{data.source} ({len(data)} samples)",
                 quantization.get("fp32_layers", ()))
