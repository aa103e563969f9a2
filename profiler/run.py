"""`profile(paths, ...)`: discover artifacts, measure each in a child process, judge, return a report dict."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pocketml.runtime import formats
from pocketml.runtime.errors import EnvironmentMissing, UsageError
from pocketml.runtime.manifest import Manifest, read_manifest

from . import devices, host, verdict
from . import lm as lm_rows

REPORT_SCHEMA = "pocketml.report/1"
CHILD_TIMEOUT_S = 600


def discover(paths: list[Path]) -> list[tuple[Path, bool]]:
    """(artifact_dir, named_explicitly). A directory of artifacts expands to its children. A bare model
    file (no manifest: `runtime.model_file`) is itself the entry; its path is checked here, first."""
    from pocketml.runtime.model_file import artifact_dir_of, bare_format, check_bare_path, not_a_model
    from pocketml.runtime.session import resolve_artifact
    found = []
    for p in map(Path, paths):
        if bare_format(p) is not None:
            check_bare_path(p)             # a symlink or special file: refused before anything runs
            found.append((p, True))
        elif p.is_dir() and not (p / "manifest.json").exists():
            kids = sorted((k for k in p.iterdir() if k.is_dir() and not k.name.startswith(".")
                           and (k / formats.MANIFEST_FILE).exists() and k.name != formats.REFERENCE_DIR),
                          key=lambda k: formats.artifact_order(k.name))
            if not kids:
                raise UsageError(f"{p}: no pocketml artifacts in it (no */manifest.json)")
            found += [(k, False) for k in kids]
        elif artifact_dir_of(p) is None:
            raise not_a_model(p)
        else:
            found.append((resolve_artifact(p), True))
    return found


def reference_for(art: Path) -> Path | None:
    ref = art.parent / formats.REFERENCE_DIR
    return ref if (ref / "manifest.json").is_file() else None


def reference_meta(ref: Path) -> dict:
    """reference/manifest.json through the path validator, its fields type-checked (exit 4 when not)."""
    from pocketml.runtime.errors import UnsafeInputError
    from pocketml.runtime.manifest import MAX_MANIFEST_BYTES, TensorSpec, parse_json
    from pocketml.runtime.paths import open_contained
    where = f"{ref}/manifest.json"
    with open_contained(ref, "manifest.json") as fh:
        meta = parse_json(fh.read(MAX_MANIFEST_BYTES + 1), where)
    if not (isinstance(meta, dict) and isinstance(meta.get("inputs"), list)
            and all(isinstance(meta.get(k), str) for k in ("reference", "data"))):
        raise UnsafeInputError(f"{where}: not a reference-set manifest (needs inputs, reference, data)")
    for i, t in enumerate(meta["inputs"]):
        TensorSpec.from_dict(t, f"{where}: inputs[{i}]")
    return meta


def prepare_user_data(data_dir: Path, manifest: Manifest, art: Path, tmp: Path) -> tuple[Path, str, list[dict], int]:
    """Preprocess the user's data once per model into canonical inputs (npz)."""
    ref_meta = reference_meta(reference_for(art)) if reference_for(art) else None
    canonical = ref_meta["inputs"] if ref_meta else [
        {"name": t.name, "shape": t.shape, "dtype": t.dtype, "layout": t.layout} for t in manifest.inputs]
    pre = dict(manifest.preprocessing)
    if manifest.tokenizer:
        from pocketml.runtime.manifest import verify_checksums
        from pocketml.runtime.paths import contained_file
        verify_checksums(art, manifest)    # the tokenizer is read here, in this process
        pre["tokenizer_file"] = str(contained_file(art, manifest.tokenizer))
    path, source, n = save_user_data(Path(data_dir), canonical, pre, tmp / f"data-{manifest.name}.npz")
    return path, source, canonical, n


def save_user_data(data_dir: Path, canonical: list[dict], pre: dict, path: Path) -> tuple[Path, str, int]:
    """The user's samples, checked against the canonical inputs and preprocessed, saved as one npz:
    (path, "user data DIR (N samples)", N)."""
    from pocketml.runtime.data import load_data_dir
    samples = load_data_dir(Path(data_dir), canonical, pre)
    np.savez(path, **{c["name"]: np.concatenate([s[k] for s in samples]) for k, c in enumerate(canonical)})
    return path, f"user data {data_dir} ({len(samples)} samples)", len(samples)


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


@dataclass
class RunSettings:
    """What every artifact of one `profile` run is measured with."""
    threads: int
    warmup: int
    runs: int
    timeout: float
    tmp: Path
    data: str | None = None
    reference: str | None = None          # the user's reference outputs for --data (.npz / .npy)
    graph_cost: bool = False              # the child also reads the graph for the estimator (--device)
    user_refs: dict = field(default_factory=dict)
    lm: lm_rows.LMSettings = field(default_factory=lm_rows.LMSettings)   # language models' lengths


def profile(paths, device: str | None = None, data: str | None = None, threads: int = 1, warmup: int = 10,
            runs: int = 50, overrides: dict | None = None, timeout: float = CHILD_TIMEOUT_S,
            reference: str | None = None, lm: lm_rows.LMSettings | None = None) -> dict:
    from pocketml.runtime.model_file import bare_format

    from .bare import profile_bare
    if runs < 2 or warmup < 0 or threads < 1:
        raise UsageError("--runs must be ≥ 2, --warmup ≥ 0, --threads ≥ 1")
    if reference and not data:
        raise UsageError("--reference needs --data: the inputs its outputs belong to")
    prof = devices.load(device) if device else None
    targets = verdict.targets(prof, overrides or {})
    timeout = child_timeout(timeout)
    child_memory_mb()                      # a bad $POCKETML_CHILD_MEMORY_MB is a usage error up front
    lm = (lm or lm_rows.LMSettings()).resolved(targets)
    found = discover(paths)
    check_lm_lengths(found, lm)            # a prompt beyond a model's context: exit 2 before anything runs
    rows = []
    with tempfile.TemporaryDirectory(prefix="pocketml-profile-") as tmpdir:
        s = RunSettings(threads, warmup, runs, timeout, Path(tmpdir), data, reference, graph_cost=bool(prof), lm=lm)
        for art, explicit in found:
            rows.append(profile_bare(art, s) if bare_format(art) else profile_one(art, explicit, s))
    for row in rows:
        if prof and lm_rows.is_lm_row(row):
            row["estimate"] = lm_rows.phone_estimate(row, prof, lm)      # manifest only (profiler/lm.py)
        elif prof and row.get("status") != "error":     # a refused artifact gets no estimate
            add_estimate(row, prof, threads, timeout)
        row["verdict"] = verdict.judge(row, targets, prof)
    return {"schema": REPORT_SCHEMA, "host": host.info(), "device": device_block(prof),
            "settings": {"threads": threads, "warmup": warmup, "runs": runs, "data": data,
                         **({"reference": reference} if reference else {}),
                         **({"lm": {**lm_rows.child_args(lm), "label": lm.label()}}
                            if any(lm_rows.is_lm_row(r) for r in rows) else {})},
            "targets": targets, "artifacts": rows, "overall": verdict.overall(rows)}


def check_lm_lengths(found, lm: lm_rows.LMSettings) -> None:
    from pocketml.runtime.model_file import bare_format
    for art, _ in found:
        if not bare_format(art):
            manifest = read_manifest(art)
            if lm_rows.is_lm(manifest):
                lm_rows.check_lengths(art, manifest, lm)


def device_block(prof) -> dict | None:
    if not prof:
        return None
    return {"name": prof["name"], "display_name": prof["display_name"], "soc": prof["soc"]["name"],
            "cpu": devices.cpu_summary(prof),
            "latency_basis": "no phone is attached: the latency verdict uses the phone-class estimate for this "
                             "device (graph cost × roofline model fitted on published phone measurements; see "
                             "docs/ESTIMATE.md) with its error band; a band that crosses the budget is UNCERTAIN. "
                             "Host measurements are shown beside it and are not phone numbers"}


def add_estimate(row: dict, prof: dict, threads: int, timeout: float = CHILD_TIMEOUT_S) -> None:
    """The phone-class estimate from the graph cost the measuring child read, or (nothing ran: Core ML
    off macOS) from a cost-only child; this process never parses the model's bytes."""
    from pocketml.runtime.errors import PocketmlError

    from .estimate import estimate
    from .estimate.graph_cost import GraphCost
    cost, cost_error = row.pop("graph_cost", None), row.pop("graph_cost_error", None)
    try:
        if cost_error:
            raise error_from(cost_error)
        cost = GraphCost.from_dict(cost) if cost else graph_cost_in_child(row["artifact"], timeout)
        row["estimate"] = estimate(row["artifact"], prof, threads, cost=cost)
    except PocketmlError as exc:
        if exc.exit_code == 4 and row.get("status") == "not measured":   # nothing else read it: refused
            row.update(status="error", error=exc.as_dict())
        else:
            row["estimate"] = {"error": str(exc)}
        return
    if row.get("status") == "measured":       # second opinion: this host's measurement, scaled
        from .estimate.emulate import emulate
        row["emulated"] = emulate(row["latency_ms"]["p50"], row["estimate"], prof, threads)


def graph_cost_in_child(artifact, timeout: float = CHILD_TIMEOUT_S):
    """The estimator's GraphCost of an artifact or bare model file, read in a sandboxed child (through the
    model gate there); the child's refusal is raised here as the same kind of error."""
    from .estimate.graph_cost import GraphCost
    res = run_child({"artifact": str(artifact), "cost_only": True}, child_timeout(timeout), child_memory_mb())
    if not res.get("ok"):
        raise error_from(res["error"])
    return GraphCost.from_dict(res["graph_cost"])


def error_from(err: dict):
    """A child's error dict as the PocketmlError of its exit code (unsafe input when unknown)."""
    from pocketml.runtime import errors
    kinds = {cls.exit_code: cls for cls in (errors.UsageError, errors.UnsupportedError, errors.UnsafeInputError,
                                            errors.EnvironmentMissing)}
    return kinds.get(err.get("exit_code"), errors.UnsafeInputError)(err.get("message", "profiling child failed"))


def measure(row: dict, args: dict, s: RunSettings) -> dict:
    """Run the child on `args`: the row becomes measured, or that artifact's error."""
    res = run_child({**args, "graph_cost": s.graph_cost}, s.timeout, child_memory_mb(int(row["size_mb"] * 1e6)))
    if not res.get("ok"):
        row.update(status="error", error=res["error"])
        return row
    res.pop("ok")
    row.update(status="measured", measured=host.describe(s.threads), **res)
    return row


def profile_one(art, explicit, s: RunSettings) -> dict:
    manifest = read_manifest(art)
    row = {"artifact": str(art), "name": manifest.name, "format": manifest.format, "precision": manifest.precision,
           "quantization": manifest.quantization.get("method"), "size_mb": artifact_size_mb(art, manifest),
           "metric": manifest.metric, "validation": manifest.validation.get("status"),
           **(lm_rows.row_fields(manifest) if lm_rows.is_lm(manifest) else {})}
    if (why := formats.get(manifest.format).host_support()) is not None:
        if explicit:
            raise EnvironmentMissing(f"{art}: cannot be profiled here: {why}", needs=formats.get(manifest.format).needs_os)
        row["status"] = "not measured"
        row["reason"] = f"{why}; measured nothing on this host"
        return row
    ref = reference_for(art)
    if lm_rows.is_lm_row(row):
        return profile_lm(row, art, ref, s)
    args = {"artifact": str(art), "threads": s.threads, "warmup": s.warmup, "runs": s.runs, "metric": manifest.metric}
    if s.data:
        key = str(art.parent)
        if key not in s.user_refs:
            s.user_refs[key] = user_reference(art, manifest, s)
        inputs_npz, ref_npz, source, canonical = s.user_refs[key]
        args.update(inputs_npz=str(inputs_npz), reference_npz=str(ref_npz) if ref_npz else None,
                    canonical_inputs=canonical, layouts=[c.get("layout") for c in canonical])
        stand_in = formats.fp32_reference_artifact()
        row["accuracy_reference"] = (f"your reference outputs {s.reference} on {source}" if s.reference else
                                     f"{stand_in} artifact (validated against torch fp32) on {source}"
                                     if ref_npz else f"none: no {stand_in} artifact beside it")
    elif ref:
        meta = reference_meta(ref)
        args.update(inputs_npz=str(ref / "inputs.npz"), reference_npz=str(ref / "outputs.npz"),
                    reference_dir=str(ref),
                    canonical_inputs=meta["inputs"], layouts=[c.get("layout") for c in meta["inputs"]])
        row["accuracy_reference"] = f"{meta['reference']} on {meta['data']}"
    else:
        raise UsageError(f"{art}: no reference/ data beside it; pass --data DIR to profile on your own inputs")
    return measure(row, args, s)


def profile_lm(row: dict, art: Path, ref: Path | None, s: RunSettings) -> dict:
    """A language model: measured on its reference set's token ids (profiler/lm_child.py)."""
    if s.data:
        raise UsageError(f"{art}: --data is for tensor models; a language model is measured on the token ids "
                         "of the reference/ set written by convert")
    if ref is None:
        raise UsageError(f"{art}: no reference/ set beside it (convert writes one): it holds the prompt tokens "
                         "and the fp32 reference's scores")
    meta = reference_meta(ref)
    row.update(lengths=lm_rows.child_args(s.lm), accuracy_reference=lm_rows.accuracy_reference(meta))
    args = {"artifact": str(art), "threads": s.threads, "reference_dir": str(ref), **lm_rows.child_args(s.lm)}
    return measure(row, args, s)


def user_reference(art, manifest, s: RunSettings):
    """(inputs npz, reference outputs npz or None, source, canonical inputs) for --data: the reference is
    --reference when given, else the outputs of the onnx-fp32 artifact beside it on the same inputs."""
    from .bare import reference_outputs
    inputs_npz, source, canonical, n = prepare_user_data(Path(s.data), manifest, art, s.tmp)
    if s.reference:
        return inputs_npz, reference_outputs(s.reference, manifest.outputs[0].name, n, s.tmp), source, canonical
    ref_art = art.parent / formats.fp32_reference_artifact()
    ref_npz = None
    if (ref_art / "manifest.json").is_file():
        ref_npz = s.tmp / f"ref-{manifest.name}.npz"
        res = run_child({"artifact": str(ref_art), "threads": s.threads, "warmup": 0, "runs": 2,
                         "metric": manifest.metric, "inputs_npz": str(inputs_npz), "canonical_inputs": canonical,
                         "layouts": [c.get("layout") for c in canonical], "save_outputs": str(ref_npz)}, s.timeout,
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
