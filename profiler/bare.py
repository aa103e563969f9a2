"""Profiling a bare model file — a `.onnx` / `.tflite` / `.mlpackage` / `.mlmodel` from anywhere, no manifest.

The same path validation (`model_file.check_bare_path`, then O_NOFOLLOW reads), pre-checks and
sandboxed child as an artifact; latency, memory and size are measured on random inputs
(`model_file.RANDOM_INPUTS`) or on `--data`; accuracy only with `--data` and `--reference` (the
reference outputs, `.npz` / `.npy`). The row says `manifest: none (bare file: no checksums verified)`.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from pocketml.runtime import formats
from pocketml.runtime.errors import UsageError
from pocketml.runtime.model_file import BARE_MANIFEST, BARE_METRIC, RANDOM_INPUTS, bare_format, bare_manifest
from pocketml.runtime.parsing import reading

NO_ACCURACY = "not measured: a bare file has no reference set; pass --data DIR and --reference OUTPUTS.npz"


def profile_bare(path: Path, s) -> dict:
    """One report row for a bare model file (`s`: run.RunSettings)."""
    from .run import measure, save_user_data
    fmt = bare_format(path)
    row = {"artifact": str(path), "name": path.name, "format": fmt, "precision": "unknown", "quantization": None,
           "size_mb": bare_size_mb(path), "metric": BARE_METRIC, "validation": None, "manifest": BARE_MANIFEST}
    why = formats.get(fmt).host_support() or (None if formats.get(fmt).io_reader else
                                              f"the inputs of a bare {formats.get(fmt).title} file are not read yet")
    if why:
        return {**row, "status": "not measured", "reason": why}
    args = {"artifact": str(path), "bare": True, "threads": s.threads, "warmup": s.warmup, "runs": s.runs,
            "metric": BARE_METRIC}
    if not s.data:
        row.update(inputs=RANDOM_INPUTS, accuracy_reference=NO_ACCURACY)
        return measure(row, args, s)
    manifest = bare_manifest(path)          # IO read from the graph after the gate; no runtime in this process
    canonical = [{"name": t.name, "shape": t.shape, "dtype": t.dtype, "layout": None} for t in manifest.inputs]
    inputs_npz, source, n = save_user_data(Path(s.data), canonical, {"kind": "tensor"},
                                           s.tmp / f"data-{len(os.listdir(s.tmp))}.npz")
    args.update(inputs_npz=str(inputs_npz), canonical_inputs=canonical)
    row["inputs"] = source
    if s.reference:
        args["reference_npz"] = str(reference_outputs(s.reference, manifest.outputs[0].name, n, s.tmp))
        row["accuracy_reference"] = f"your reference outputs {s.reference} on {source}"
    else:
        row["accuracy_reference"] = NO_ACCURACY
    return measure(row, args, s)


def bare_size_mb(path: Path) -> float:
    """The file's size; for a package directory, its regular files' (links not followed)."""
    if not path.is_dir():
        return os.lstat(path).st_size / 1e6
    total = sum(os.lstat(os.path.join(d, f)).st_size for d, _, files in os.walk(path) for f in files)
    return total / 1e6


def reference_outputs(reference, out_name: str, n: int, tmp: Path) -> Path:
    """--reference: the reference outputs for the `n` --data samples (a `.npy`, or an `.npz` holding
    `out_name` or a single array), checked (no pickles, n rows, finite) and saved for the child."""
    p = Path(reference)
    if not p.is_file():
        raise UsageError(f"--reference {p}: no such file")
    with reading(p, "reference outputs (.npz / .npy without pickles)", error=UsageError):
        if p.suffix.lower() == ".npy":
            arr = np.load(p, allow_pickle=False)
        else:
            with np.load(p, allow_pickle=False) as z:
                if out_name not in z.files and len(z.files) != 1:
                    raise UsageError(f"{p}: holds {z.files}; expected the model's output {out_name!r} "
                                     "(or a single array)", sample=str(p))
                arr = z[out_name if out_name in z.files else z.files[0]]
    if arr.ndim == 0 or arr.shape[0] != n:
        raise UsageError(f"{p}: {arr.shape[0] if arr.ndim else 0} reference output row(s) for {n} --data sample(s)",
                         sample=str(p))
    if arr.dtype.kind not in "fiub" or (arr.dtype.kind == "f" and not np.isfinite(arr).all()):
        raise UsageError(f"{p}: reference outputs must be finite numbers (dtype {arr.dtype})", sample=str(p))
    out = tmp / f"reference-{len(os.listdir(tmp))}.npz"
    np.savez(out, **{out_name: arr})
    return out
