"""`profile(paths, ...)`: discover artifacts, measure each in a child process, judge, return a report dict."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from pocketml.runtime.errors import EnvironmentMissing, UsageError
from pocketml.runtime.manifest import Manifest, read_manifest

from . import devices, host, verdict

REPORT_SCHEMA = "pocketml.report/1"
CHILD_TIMEOUT_S = 600


def discover(paths: list[Path]) -> list[tuple[Path, bool]]:
    """(artifact_dir, named_explicitly). A directory of artifacts expands to its children."""
    from pocketml.runtime.session import resolve_artifact
    found = []
    for p in map(Path, paths):
        if p.is_dir() and not (p / "manifest.json").exists():
            kids = sorted((k for k in p.iterdir() if k.is_dir() and not k.name.startswith(".")
                           and (k / "manifest.json").exists() and k.name != "reference"), key=_order)
            if not kids:
                raise UsageError(f"{p}: no pocketml artifacts in it (no */manifest.json)")
            found += [(k, False) for k in kids]
        else:
            found.append((resolve_artifact(p), True))
    return found


def _order(path: Path) -> tuple:
    fmt, _, prec = path.name.partition("-")
    rank = {"onnx": 0, "tflite": 1, "coreml": 2, "fp32": 0, "fp16": 1, "int8": 2}
    return rank.get(fmt, 9), rank.get(prec, 9), path.name


def reference_for(art: Path) -> Path | None:
    ref = art.parent / "reference"
    return ref if (ref / "manifest.json").is_file() else None


def prepare_user_data(data_dir: Path, manifest: Manifest, art: Path, tmp: Path) -> tuple[Path, str, list[dict]]:
    """Preprocess the user's data once per model into canonical inputs (npz)."""
    from pocketml.runtime.data import load_data_dir

    ref_meta = json.loads((reference_for(art) / "manifest.json").read_text()) if reference_for(art) else None
    canonical = ref_meta["inputs"] if ref_meta else [
        {"name": t.name, "shape": t.shape, "dtype": t.dtype, "layout": t.layout} for t in manifest.inputs]
    pre = dict(manifest.preprocessing)
    if manifest.tokenizer:
        pre["tokenizer_file"] = str(art / manifest.tokenizer)
    samples = load_data_dir(Path(data_dir), canonical, pre)
    path = tmp / f"data-{manifest.name}.npz"
    np.savez(path, **{c["name"]: np.concatenate([s[k] for s in samples]) for k, c in enumerate(canonical)})
    return path, f"user data {data_dir} ({len(samples)} samples)", canonical


def run_child(args: dict, timeout: float) -> dict:
    cmd = [sys.executable, "-m", "pocketml.profiler.child", json.dumps(args)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": {"kind": "unsafe-input", "exit_code": 4,
                                       "message": f"{args['artifact']}: profiling timed out after {timeout:.0f} s (child killed)"}}
    for line in proc.stdout.splitlines()[::-1]:
        if line.startswith("POCKETML-RESULT "):
            return json.loads(line.split(" ", 1)[1])
    if proc.returncode < 0:
        sig = signal.Signals(-proc.returncode).name
        msg = f"{args['artifact']}: the runtime crashed with {sig} while loading or running the artifact"
    else:
        msg = f"{args['artifact']}: profiling child exited {proc.returncode}: {proc.stderr.strip().splitlines()[-1:] or ''}"
    return {"ok": False, "error": {"kind": "unsafe-input", "exit_code": 4, "message": msg,
                                   "stderr_tail": proc.stderr[-2000:]}}


def profile(paths, device: str | None = None, data: str | None = None, threads: int = 1, warmup: int = 10,
            runs: int = 50, overrides: dict | None = None, timeout: float = CHILD_TIMEOUT_S) -> dict:
    if runs < 2 or warmup < 0 or threads < 1:
        raise UsageError("--runs must be ≥ 2, --warmup ≥ 0, --threads ≥ 1")
    prof = devices.load(device) if device else None
    targets = verdict.targets(prof, overrides or {})
    rows = []
    with tempfile.TemporaryDirectory(prefix="pocketml-profile-") as tmpdir:
        tmp = Path(tmpdir)
        user_refs: dict[str, tuple] = {}
        for art, explicit in discover(paths):
            rows.append(profile_one(art, explicit, data, threads, warmup, runs, timeout, tmp, user_refs))
    for row in rows:
        row["verdict"] = verdict.judge(row, targets, prof)
    return {"schema": REPORT_SCHEMA, "host": host.info(), "device": device_block(prof),
            "settings": {"threads": threads, "warmup": warmup, "runs": runs, "data": data},
            "targets": targets, "artifacts": rows, "overall": verdict.overall(rows)}


def device_block(prof) -> dict | None:
    if not prof:
        return None
    return {"name": prof["name"], "display_name": prof["display_name"], "soc": prof["soc"]["name"],
            "cpu": devices.cpu_summary(prof),
            "latency_basis": "host measurement, not a phone measurement: no phone is attached and phone-class "
                             "estimation is not available yet; the verdict compares this host's latency "
                             "with the phone's budget"}


def profile_one(art, explicit, data, threads, warmup, runs, timeout, tmp, user_refs) -> dict:
    manifest = read_manifest(art)
    row = {"artifact": str(art), "name": manifest.name, "format": manifest.format, "precision": manifest.precision,
           "quantization": manifest.quantization.get("method"), "size_mb": artifact_size_mb(art, manifest),
           "metric": manifest.metric, "validation": manifest.validation.get("status")}
    if manifest.format == "coreml" and sys.platform != "darwin":
        if explicit:
            raise EnvironmentMissing(f"{art}: Core ML artifacts can only be profiled on macOS/iOS "
                                     "(the Core ML runtime is part of Apple's OS)", needs="macOS")
        row["status"] = "not measured"
        row["reason"] = "Core ML runs only on macOS/iOS; measured nothing on this Linux host"
        return row
    ref = reference_for(art)
    args = {"artifact": str(art), "threads": threads, "warmup": warmup, "runs": runs, "metric": manifest.metric}
    if data:
        key = str(art.parent)
        if key not in user_refs:
            user_refs[key] = user_reference(art, manifest, data, tmp, threads, timeout)
        inputs_npz, ref_npz, source, canonical = user_refs[key]
        args.update(inputs_npz=str(inputs_npz), reference_npz=str(ref_npz) if ref_npz else None,
                    canonical_inputs=canonical, layouts=[c.get("layout") for c in canonical])
        row["accuracy_reference"] = (f"onnx-fp32 artifact (validated against torch fp32) on {source}"
                                     if ref_npz else "none: no onnx-fp32 artifact beside it")
    elif ref:
        meta = json.loads((ref / "manifest.json").read_text())
        args.update(inputs_npz=str(ref / "inputs.npz"), reference_npz=str(ref / "outputs.npz"),
                    canonical_inputs=meta["inputs"], layouts=[c.get("layout") for c in meta["inputs"]])
        row["accuracy_reference"] = f"{meta['reference']} on {meta['data']}"
    else:
        raise UsageError(f"{art}: no reference/ data beside it; pass --data DIR to profile on your own inputs")
    res = run_child(args, timeout)
    if not res.get("ok"):
        row.update(status="error", error=res["error"])
        return row
    res.pop("ok")
    row.update(status="measured", measured=host.describe(threads), **res)
    return row


def user_reference(art, manifest, data, tmp, threads, timeout):
    inputs_npz, source, canonical = prepare_user_data(Path(data), manifest, art, tmp)
    ref_art = art.parent / "onnx-fp32"
    ref_npz = None
    if (ref_art / "manifest.json").is_file():
        ref_npz = tmp / f"ref-{manifest.name}.npz"
        res = run_child({"artifact": str(ref_art), "threads": threads, "warmup": 0, "runs": 2,
                         "metric": manifest.metric, "inputs_npz": str(inputs_npz), "canonical_inputs": canonical,
                         "layouts": [c.get("layout") for c in canonical], "save_outputs": str(ref_npz)}, timeout)
        if not res.get("ok"):
            ref_npz = None
    return inputs_npz, ref_npz, source, canonical


def artifact_size_mb(art: Path, manifest: Manifest) -> float:
    mf = manifest.model_file
    total = sum((art / rel).stat().st_size for rel in manifest.checksums
                if rel == mf or rel.startswith(mf.rstrip("/") + "/"))
    return total / 1e6
