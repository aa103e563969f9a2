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
        from pocketml.runtime.manifest import verify_checksums
        from pocketml.runtime.paths import contained_file
        verify_checksums(art, manifest)    # the tokenizer is read here, in this process
        pre["tokenizer_file"] = str(contained_file(art, manifest.tokenizer))
    samples = load_data_dir(Path(data_dir), canonical, pre)
    path = tmp / f"data-{manifest.name}.npz"
    np.savez(path, **{c["name"]: np.concatenate([s[k] for s in samples]) for k, c in enumerate(canonical)})
    return path, f"user data {data_dir} ({len(samples)} samples)", canonical


CHILD_MEMORY_ENV = "POCKETML_CHILD_MEMORY_MB"
CHILD_TIMEOUT_ENV = "POCKETML_CHILD_TIMEOUT_S"
DEFAULT_CHILD_MEMORY_MB = 8192
MIN_CHILD_MEMORY_MB = 256


def child_memory_mb(model_bytes: int = 0) -> int | None:
    """The child's address-space cap in MB: $POCKETML_CHILD_MEMORY_MB (0 = no cap), else
    max(8192, 4 × model size + 2048) — room for a runtime's arenas and thread stacks."""
    raw = os.environ.get(CHILD_MEMORY_ENV, "").strip()
    if not raw:
        return max(DEFAULT_CHILD_MEMORY_MB, 4 * (model_bytes >> 20) + 2048)
    try:
        value = int(raw)
    except ValueError:
        raise UsageError(f"{CHILD_MEMORY_ENV}={raw!r}: expected megabytes (an integer; 0 for no cap)") from None
    if value == 0:
        return None
    if value < MIN_CHILD_MEMORY_MB:
        raise UsageError(f"{CHILD_MEMORY_ENV}={value}: at least {MIN_CHILD_MEMORY_MB} MB (or 0 for no cap)")
    return value


def child_timeout(default: float) -> float:
    raw = os.environ.get(CHILD_TIMEOUT_ENV, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1
    if not value > 0:
        raise UsageError(f"{CHILD_TIMEOUT_ENV}={raw!r}: expected seconds > 0")
    return value


def _child_error(kind: str, message: str, **extra) -> dict:
    return {"ok": False, "error": {"kind": kind, "exit_code": 4, "message": message, **extra}}


def run_child(args: dict, timeout: float, memory_mb: int | None = None) -> dict:
    """Run `profiler.child` on one artifact, contained: its own session (process group), an
    address-space cap, no core files, a wall-clock timeout. A crash, hang or memory blow-up
    becomes this artifact's error (exit 4) and the caller carries on with the next one."""
    args = {**args, "memory_mb": memory_mb}
    cmd = [sys.executable, "-m", "pocketml.profiler.child", json.dumps(args)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        proc.communicate()
        return _child_error("timeout", f"{args['artifact']}: profiling timed out after {timeout:g} s "
                                       "(child killed)", timeout_s=timeout)
    except BaseException:          # Ctrl-C or any error here: never leave the child running
        _kill_group(proc)
        proc.communicate()
        raise
    for line in stdout.splitlines()[::-1]:
        if line.startswith("POCKETML-RESULT "):
            return json.loads(line.split(" ", 1)[1])
    cap = f"{memory_mb} MB" if memory_mb else "none"
    if proc.returncode < 0:
        try:
            sig = signal.Signals(-proc.returncode).name
        except ValueError:
            sig = f"signal {-proc.returncode}"
        return _child_error("crash", f"{args['artifact']}: the runtime crashed with {sig} while loading or "
                                     f"running the artifact (child memory cap: {cap})",
                            signal=sig, stderr_tail=stderr[-2000:])
    last = stderr.strip().splitlines()[-1:] or [""]
    return _child_error("crash", f"{args['artifact']}: profiling child exited {proc.returncode}: {last[0][:300]}",
                        returncode=proc.returncode, stderr_tail=stderr[-2000:])


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def profile(paths, device: str | None = None, data: str | None = None, threads: int = 1, warmup: int = 10,
            runs: int = 50, overrides: dict | None = None, timeout: float = CHILD_TIMEOUT_S) -> dict:
    if runs < 2 or warmup < 0 or threads < 1:
        raise UsageError("--runs must be ≥ 2, --warmup ≥ 0, --threads ≥ 1")
    prof = devices.load(device) if device else None
    targets = verdict.targets(prof, overrides or {})
    timeout = child_timeout(timeout)
    child_memory_mb()                      # a bad $POCKETML_CHILD_MEMORY_MB is a usage error up front
    rows = []
    with tempfile.TemporaryDirectory(prefix="pocketml-profile-") as tmpdir:
        tmp = Path(tmpdir)
        user_refs: dict[str, tuple] = {}
        for art, explicit in discover(paths):
            rows.append(profile_one(art, explicit, data, threads, warmup, runs, timeout, tmp, user_refs))
    for row in rows:
        if prof:
            add_estimate(row, prof, threads)
        row["verdict"] = verdict.judge(row, targets, prof)
    return {"schema": REPORT_SCHEMA, "host": host.info(), "device": device_block(prof),
            "settings": {"threads": threads, "warmup": warmup, "runs": runs, "data": data},
            "targets": targets, "artifacts": rows, "overall": verdict.overall(rows)}


def device_block(prof) -> dict | None:
    if not prof:
        return None
    return {"name": prof["name"], "display_name": prof["display_name"], "soc": prof["soc"]["name"],
            "cpu": devices.cpu_summary(prof),
            "latency_basis": "no phone is attached: the latency verdict uses the phone-class estimate for this "
                             "device (graph cost × roofline model fitted on published phone measurements; see "
                             "docs/ESTIMATE.md) with its error band; a band that crosses the budget is UNCERTAIN. "
                             "Host measurements are shown beside it and are not phone numbers"}


def add_estimate(row: dict, prof: dict, threads: int) -> None:
    from pocketml.runtime.errors import PocketmlError

    from .estimate import estimate
    try:
        row["estimate"] = estimate(row["artifact"], prof, threads)
    except PocketmlError as exc:
        row["estimate"] = {"error": str(exc)}
        return
    if row.get("status") == "measured":       # second opinion: this host's measurement, scaled
        from .estimate.emulate import emulate
        row["emulated"] = emulate(row["latency_ms"]["p50"], row["estimate"], prof, threads)


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
                    reference_dir=str(ref),
                    canonical_inputs=meta["inputs"], layouts=[c.get("layout") for c in meta["inputs"]])
        row["accuracy_reference"] = f"{meta['reference']} on {meta['data']}"
    else:
        raise UsageError(f"{art}: no reference/ data beside it; pass --data DIR to profile on your own inputs")
    res = run_child(args, timeout, child_memory_mb(int(row["size_mb"] * 1e6)))
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
                         "layouts": [c.get("layout") for c in canonical], "save_outputs": str(ref_npz)}, timeout,
                        child_memory_mb())
        if not res.get("ok"):
            ref_npz = None
    return inputs_npz, ref_npz, source, canonical


def artifact_size_mb(art: Path, manifest: Manifest) -> float:
    mf = manifest.model_file
    from pocketml.runtime.paths import contained_file
    total = sum(contained_file(art, rel).stat().st_size for rel in manifest.checksums
                if rel == mf or rel.startswith(mf.rstrip("/") + "/"))
    return total / 1e6
