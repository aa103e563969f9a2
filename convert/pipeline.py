"""One recipe → validated artifacts. model → (export → validate → manifest → publish) per format × precision."""
from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from pocketml.runtime.atomic import TMP_MARK, ensure_writable_dir, publish, staging_dir, write_file_atomic
from pocketml.runtime.errors import EnvironmentMissing, PocketmlError, UnsupportedError, UsageError
from pocketml.runtime.manifest import FORMATS, PRECISIONS, Manifest, TensorSpec, hash_tree, sha256_file
from pocketml.runtime.session import BACKENDS, DEFAULT_THREADS, SESSION_SETTINGS
from pocketml import runtime as runtime_package

from . import exporters
from .spec import DataSet, ModelSpec

REFERENCE_SCHEMA = "pocketml.reference/1"


@dataclass
class Recipe:
    model: str
    formats: list[str]
    precisions: list[str]
    calib: str | None = None
    task: str | None = None
    trust_remote_code: bool = False
    seq_len: int = 128
    options: dict = field(default_factory=dict)
    steps: list[dict] = field(default_factory=list)   # compression steps before export (convert/compress)

    def check(self) -> None:
        bad_f = [f for f in self.formats if f not in FORMATS]
        bad_p = [p for p in self.precisions if p not in PRECISIONS]
        if bad_f or bad_p or not self.formats or not self.precisions:
            raise UsageError(f"unknown format(s) {bad_f or ''} precision(s) {bad_p or ''}: formats are "
                             f"{', '.join(FORMATS)}; precisions are {', '.join(PRECISIONS)}")
        self.check_max_drop()
        self.check_observer()

    def check_max_drop(self) -> None:
        """--max-drop drives the mixed-precision search, implemented for ONNX int8 (exporters/mixed.py)."""
        max_drop = self.options.get("max_drop")
        if max_drop is None:
            return
        if not 0 <= max_drop < 1:
            raise UsageError(f"--max-drop {max_drop:g} is outside [0, 1) (a fraction, or a percentage like 1%)")
        if "int8" not in self.precisions:
            raise UsageError("--max-drop keeps sensitive layers out of int8: it needs --precision int8")
        other = [f for f in self.formats if f != "onnx"]
        if other:
            raise UsageError(f"--max-drop (automatic mixed precision) is implemented for ONNX int8 only, not "
                             f"{', '.join(other)}: convert those formats in a separate command without --max-drop")

    def check_observer(self) -> None:
        """--observer names how static int8 sets activation ranges; each format has its own set."""
        name = self.options.get("observer")
        if name is None:
            return
        if "int8" not in self.precisions:
            raise UsageError(f"--observer {name} sets the activation ranges of static int8: it needs --precision int8")
        calibrated = [f for f in self.formats if f in exporters.OBSERVERS]
        if not calibrated:
            raise UsageError(f"--observer applies to static int8 in {', '.join(exporters.OBSERVERS)}; "
                             f"{', '.join(self.formats)} int8 has no calibrated activations")
        wrong = [f for f in calibrated if name not in exporters.OBSERVERS[f]]
        if wrong:
            choices = "; ".join(f"{f}: {', '.join(exporters.OBSERVERS[f])}" for f in wrong)
            raise UsageError(f"--observer {name} is not available for {', '.join(wrong)} (observers — {choices})",
                             observer=name, formats=wrong)

    def as_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["hash"] = hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]
        return d


@dataclass
class Outcome:
    name: str
    path: Path | None
    manifest: Manifest | None = None
    error: PocketmlError | None = None
    seconds: float = 0.0
    reused: bool = False


def tool_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version
    out = {}
    for pkg in ("pocketml", "torch", "onnx", "onnxscript", "onnxruntime", "litert-torch", "ai-edge-litert",
                "ai-edge-quantizer", "coremltools", "transformers", "numpy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def check_extras(formats) -> None:
    import importlib.util
    for fmt in formats:
        missing = [m for m in exporters.EXTRAS[fmt] if importlib.util.find_spec(m) is None]
        if missing:
            raise EnvironmentMissing(f"--to {fmt} needs {', '.join(missing)} (the 'convert' extra): "
                                     "pip install 'pocketml[convert]'", extra="convert", missing=missing)


def calibration_set(recipe: Recipe, spec: ModelSpec) -> DataSet | None:
    from pocketml.runtime.data import load_data_dir

    needs = [f for f in recipe.formats if "int8" in recipe.precisions
             and exporters.needs_calibration(f, "int8", spec.family)]
    if recipe.options.get("observer") and not needs:
        raise UsageError(f"--observer {recipe.options['observer']}: {spec.name}'s int8 in "
                         f"{', '.join(recipe.formats)} has no calibrated activations (dynamic or weight-only "
                         "quantization sets ranges at run time): drop --observer")
    if recipe.calib:
        pre = dict(spec.preprocessing)
        if spec.tokenizer_file:
            pre["tokenizer_file"] = str(spec.tokenizer_file)
        return DataSet(load_data_dir(Path(recipe.calib), spec.inputs, pre), f"user data {recipe.calib}")
    if needs and spec.calib is None:
        raise UsageError(f"static int8 for {spec.name} ({', '.join(needs)}) needs calibration data: pass "
                         "--calib DIR with representative inputs. pocketml does not substitute a default set.")
    return spec.calib


def reference_outputs(spec: ModelSpec, data: DataSet) -> list[list[np.ndarray]]:
    import torch
    with torch.no_grad():
        outs = []
        for sample in data.samples:
            y = spec.module(*[torch.from_numpy(np.ascontiguousarray(x)) for x in sample])
            y = y if isinstance(y, (tuple, list)) else [y]
            outs.append([t.detach().numpy().astype(np.float32) for t in y])
    return outs


def write_reference(out_dir: Path, spec: ModelSpec, data: DataSet, refs) -> None:
    """`reference/`: the evaluation inputs and torch fp32 outputs, for profiling without torch.

    Skipped when an identical reference is already published; serialised by a lock so parallel
    conversions of one model (e.g. `pocketml demo`) do not race on it."""
    import fcntl
    with staging_dir(out_dir / "reference") as tmp, open(out_dir / ".reference.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        np.savez(tmp / "inputs.npz", **{i["name"]: np.concatenate([s[k] for s in data.samples])
                                        for k, i in enumerate(spec.inputs)})
        np.savez(tmp / "outputs.npz", **{o: np.concatenate([r[k] for r in refs]) for k, o in enumerate(spec.outputs)})
        meta = {"schema": REFERENCE_SCHEMA, "model": spec.name, "reference": "torch fp32 (eager)",
                "data": data.source, "samples": len(data), "metric": spec.metric, "inputs": spec.inputs,
                "outputs": spec.outputs, "preprocessing": spec.preprocessing}
        meta["checksums"] = hash_tree(tmp)
        old = out_dir / "reference" / "manifest.json"
        if old.is_file() and json.loads(old.read_text()).get("checksums") == meta["checksums"]:
            return
        (tmp / "manifest.json").write_text(json.dumps(meta, indent=2) + "\n")
        publish(tmp, out_dir / "reference")


def build_manifest(spec, recipe, fmt, precision, result, validation) -> Manifest:
    pre = dict(spec.preprocessing)
    return Manifest(
        name=spec.name, format=fmt, precision=precision, model_file=result.model_file,
        inputs=[TensorSpec(**{k: v for k, v in t.items() if k in TensorSpec.__dataclass_fields__}) for t in result.inputs],
        outputs=[TensorSpec(**{k: v for k, v in t.items() if k in TensorSpec.__dataclass_fields__}) for t in result.outputs],
        task=spec.task, metric=spec.metric, preprocessing=pre, quantization=result.quantization,
        labels=None, tokenizer="tokenizer.json" if spec.tokenizer_file else None, source=spec.source,
        recipe=recipe.as_dict(), tools=tool_versions(), validation=validation,
        runtime_hints={"settings": {**SESSION_SETTINGS[fmt], "num_threads": DEFAULT_THREADS},
                       "settings_basis": "the session settings this artifact was validated with (pocketml.runtime); "
                                         "`pocketml profile --record` adds the measured thread count",
                       **result.runtime_hints, "notes": result.notes},
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"))


def validate_artifact(tmp: Path, manifest: Manifest, spec, refs, data, precision) -> dict:
    from . import validate
    if manifest.format == "coreml":
        from .exporters.coreml import structural_check
        structural_check(tmp / manifest.model_file, [vars(t) for t in manifest.inputs],
                         [vars(t) for t in manifest.outputs], precision)
        return {"status": "structural-only", "numeric": "not run: needs macOS (Core ML predictions)",
                "checked": ["spec loads", "IO names/shapes/dtypes match manifest", "weight precision"],
                "reference": "torch fp32 (eager)", "data": data.source, "samples": len(data)}
    session = BACKENDS[manifest.format](tmp, manifest, threads=DEFAULT_THREADS)
    return validate.validate(session, spec, refs, data, precision)


@functools.lru_cache(maxsize=1)
def code_digest() -> str:
    """pocketml's own conversion and runtime code: an artifact built by a changed exporter is not reused,
    even where the version number did not change (a development checkout)."""
    h = hashlib.sha256()
    for root in (Path(__file__).resolve().parent, Path(runtime_package.__file__).resolve().parent):
        for path in sorted(root.rglob("*.py")):
            h.update(path.relative_to(root).as_posix().encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


def artifact_key(spec: ModelSpec, recipe: Recipe, fmt: str, precision: str, calib: DataSet | None,
                 data: DataSet) -> str:
    """Everything that determines an artifact and its validation: reuse a published one when this matches."""
    opts = {k: v for k, v in recipe.options.items() if k != "reuse"}
    h = hashlib.sha256(json.dumps([spec.source.get("sha256"), spec.name, fmt, precision, recipe.task,
                                   recipe.seq_len, opts, tool_versions(), code_digest()], sort_keys=True).encode())
    sets = [data] + ([calib] if calib is not None and precision == "int8" else [])
    for ds in sets:
        for sample in ds.samples:
            for x in sample:
                h.update(np.ascontiguousarray(x).tobytes())
    return h.hexdigest()


def reusable(path: Path, key: str) -> Manifest | None:
    from pocketml.runtime.manifest import read_manifest, verify_checksums
    if not (path / "manifest.json").is_file():
        return None
    try:
        manifest = read_manifest(path)
        if manifest.recipe.get("artifact_key") != key:
            return None
        verify_checksums(path, manifest)
    except PocketmlError:
        return None
    return manifest


def export_one(spec, recipe, fmt, precision, out_dir, cache, work, calib, data, refs, log=print) -> Outcome:
    t0 = time.perf_counter()
    name = f"{fmt}-{precision}"
    key = artifact_key(spec, recipe, fmt, precision, calib, data)
    if recipe.options.get("reuse", True) and (old := reusable(out_dir / name, key)):
        return Outcome(name, out_dir / name, old, seconds=time.perf_counter() - t0, reused=True)
    if why := exporters.refusal(fmt, precision, spec.family):
        raise UnsupportedError(f"{spec.name}: {fmt} {precision} is not available for {spec.family} models: {why}")
    exporter = exporters.get_exporter(fmt)
    with staging_dir(out_dir / name) as tmp:
        result = exporter.export(spec, precision, tmp, cache, work, calib=calib, options=recipe.options, log=log)
        manifest = build_manifest(spec, recipe, fmt, precision, result, {})
        manifest.recipe["artifact_key"] = key
        manifest.validation = validate_artifact(tmp, manifest, spec, refs, data, precision)
        if spec.tokenizer_file:
            shutil.copyfile(spec.tokenizer_file, tmp / "tokenizer.json")
        manifest.checksums = hash_tree(tmp)
        write_file_atomic(tmp / "manifest.json", manifest.to_json().encode())   # last
        path = publish(tmp, out_dir / name)
    return Outcome(name, path, manifest, seconds=time.perf_counter() - t0)


def quiet_torch() -> None:
    """torch re-configures its loggers on import; silence them again when the CLI asked for quiet."""
    import logging
    import os
    if os.environ.get("POCKETML_QUIET") == "1":
        import torch  # noqa: F401
        for name in ("torch", "torch.onnx", "torch.export", "torch.utils._pytree", "torch._dynamo"):
            logging.getLogger(name).setLevel(logging.ERROR)


def run(recipe: Recipe, out_dir: Path, log=print, spec: ModelSpec | None = None) -> list[Outcome]:
    recipe.check()
    quiet_torch()
    check_extras(recipe.formats)
    out_dir = ensure_writable_dir(Path(out_dir))
    from .sources import load_model
    spec = spec or load_model(recipe.model, recipe.task, recipe.trust_remote_code, recipe.seq_len)
    calib = calibration_set(recipe, spec) if "int8" in recipe.precisions else None
    data = spec.eval or calib or DataSet([spec.example()], "the model's example input")
    refs = reference_outputs(spec, data)
    write_reference(out_dir, spec, data, refs)     # the profiler's accuracy is always against the original model
    if recipe.steps:
        from .compress import apply_steps
        spec = apply_steps(spec, recipe, calib, log, out_dir=out_dir)   # a spec whose module is the compressed student
        refs = reference_outputs(spec, data)           # conversion is validated against the student
    outcomes, cache = [], {}
    work = out_dir / f".work{TMP_MARK}{os.getpid()}-convert"
    work.mkdir(exist_ok=True)
    try:
        for fmt in recipe.formats:
            for precision in recipe.precisions:
                try:
                    o = export_one(spec, recipe, fmt, precision, out_dir, cache, work, calib, data, refs, log)
                    how = "unchanged, reused" if o.reused else f"{o.seconds:5.1f}s"
                    log(f"  ✓ {o.name:<14} {how}  {describe_validation(o.manifest.validation)}")
                except PocketmlError as exc:
                    o = Outcome(f"{fmt}-{precision}", None, error=exc)
                    log(f"  ✗ {o.name:<14} exit {exc.exit_code}: {exc}")
                outcomes.append(o)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return outcomes


def describe_validation(v: dict) -> str:
    if v.get("status") != "passed":
        return f"validation: {v.get('status')} ({v.get('numeric', '')})"
    s = v["stats"]
    parts = [f"cos min {s['cosine_min']:.4f}"]
    if "top1_agreement" in s:
        parts.append(f"top-1 agree {s['top1_agreement']:.3f}")
    parts.append(f"max|Δ| {s['max_abs']:.3g}")
    return f"validated on {v['samples']} samples: " + ", ".join(parts)
