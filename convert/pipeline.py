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

from pocketml.runtime.atomic import TMP_MARK, open_lock, publish, staging_dir, write_file_atomic
from pocketml.runtime.paths import output_dir
from pocketml.runtime.errors import EnvironmentMissing, PocketmlError, UnsupportedError, UsageError
from pocketml.runtime.manifest import Manifest, TensorSpec, hash_tree
from pocketml.runtime.session import DEFAULT_THREADS
from pocketml.runtime import formats

from . import exporters, fp16_range
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
    steps: list = field(default_factory=list)   # compression steps before export (convert/compress): Steps

    def __post_init__(self) -> None:
        from .compress.recipe import parse_steps
        self.steps = parse_steps(self.steps)      # parsed once: a dict handed in becomes a typed Step here

    def check(self, generative: bool = False) -> None:
        """`generative`: the recipe converts a language model (--max-drop keeps int8 groups in int4 there)."""
        if problems := formats.check_names(self.formats, self.precisions):
            raise UsageError("unknown " + "; ".join(problems))
        if generative:
            self.check_lm_options()
        else:
            self.check_max_drop()
        self.check_observer()
        if self.options.get("int4_block") is not None and not generative:
            raise UsageError("--int4-block applies to language models (ONNX MatMulNBits / TFLite int4 blocks); "
                             "other models' int4 uses blocks of 32")
        if self.options.get("gguf_weights") is not None and not generative:
            raise UsageError("--gguf-weights applies to language models loaded from a GGUF file")

    def check_lm_options(self) -> None:
        """--max-drop for a language model: the largest relative perplexity increase an int4 artifact may
        have; the most sensitive weight groups are kept at int8 to meet it (convert/llm/mixed.py)."""
        block = self.options.get("int4_block")
        if block is not None and int(block) not in (32, 128):
            raise UsageError(f"--int4-block {block}: int4 blocks are 32 or 128 weights")
        self.check_gguf_weights()
        max_drop = self.options.get("max_drop")
        if max_drop is None:
            return
        if not 0 <= max_drop < 1:
            raise UsageError(f"--max-drop {max_drop:g} is outside [0, 1) (a fraction, or a percentage like 5%)")
        if "int4" not in self.precisions:
            raise UsageError("--max-drop for a language model keeps weight groups of an int4 artifact at int8: "
                             "it needs --precision int4")
        unmeasurable = [f for f in self.formats if formats.get(f).host_support()]
        if unmeasurable:
            raise UsageError(f"--max-drop measures each trial on its own runtime, which cannot run "
                             f"{', '.join(unmeasurable)} here ({formats.get(unmeasurable[0]).host_support()}); "
                             "convert those formats in a separate command without --max-drop")

    def check_gguf_weights(self) -> None:
        """--gguf-weights carry|requantize: where an int4 / int8 ONNX decoder's weights come from when the
        source is a GGUF (default: carried when every matrix is a carried block type)."""
        from .llm.pipeline import GGUF_WEIGHTS, carries_gguf
        choice = self.options.get("gguf_weights")
        if choice is None:
            return
        if choice not in GGUF_WEIGHTS:
            raise UsageError(f"--gguf-weights {choice}: choose from {', '.join(GGUF_WEIGHTS)}")
        if not {"int4", "int8"} & set(self.precisions):
            raise UsageError("--gguf-weights chooses the weights of int4 / int8 artifacts: add --precision int4 or int8")
        if choice == "carry" and (other := [f for f in self.formats if f not in carries_gguf()]):
            raise UsageError(f"--gguf-weights carry: only {', '.join(carries_gguf())} carries a GGUF's own blocks; "
                             f"{', '.join(other)} re-quantize (convert them in a separate command without it)")

    def check_max_drop(self) -> None:
        """--max-drop drives the mixed-precision search, implemented for ONNX int8 (exporters/mixed.py)."""
        max_drop = self.options.get("max_drop")
        if max_drop is None:
            return
        if not 0 <= max_drop < 1:
            raise UsageError(f"--max-drop {max_drop:g} is outside [0, 1) (a fraction, or a percentage like 1%)")
        if "int8" not in self.precisions:
            raise UsageError("--max-drop keeps sensitive layers out of int8: it needs --precision int8")
        other = [f for f in self.formats if not formats.get(f).mixed_precision]
        if other:
            raise UsageError(f"--max-drop (automatic mixed precision) is implemented for "
                             f"{', '.join(f.title.split()[0] for f in formats.REGISTRY.values() if f.mixed_precision)} int8 only, not "
                             f"{', '.join(other)}: convert those formats in a separate command without --max-drop")

    def check_observer(self) -> None:
        """--observer names how static int8 sets activation ranges; each format has its own set."""
        name = self.options.get("observer")
        if name is None:
            return
        if "int8" not in self.precisions:
            raise UsageError(f"--observer {name} sets the activation ranges of static int8: it needs --precision int8")
        calibrated = [f for f in self.formats if formats.get(f).observers]
        if not calibrated:
            raise UsageError(f"--observer applies to static int8 in {', '.join(formats.with_observers())}; "
                             f"{', '.join(self.formats)} int8 has no calibrated activations")
        wrong = [f for f in calibrated if name not in formats.get(f).observers]
        if wrong:
            choices = "; ".join(f"{f}: {', '.join(formats.get(f).observers)}" for f in wrong)
            raise UsageError(f"--observer {name} is not available for {', '.join(wrong)} (observers — {choices})",
                             observer=name, formats=wrong)

    def as_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["steps"] = [s.as_dict() for s in self.steps]
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


def check_extras(names) -> None:
    """Before any work: torch (every conversion starts from a torch module) and each format's converters,
    else exit 7 naming the 'convert' extra. Nothing is imported (a runtime-only install has no torch)."""
    for what, modules in (("converting a model", ("torch",)),
                          *((f"--to {fmt}", formats.get(fmt).convert_extras) for fmt in names)):
        missing = [m for m in modules if not _installed(m)]
        if missing:
            raise EnvironmentMissing(f"{what} needs {', '.join(missing)} (the 'convert' extra): "
                                     "pip install 'pocketml[convert]'", extra="convert", missing=missing)


def _installed(module: str) -> bool:
    import importlib.util
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):     # blocked, or a broken install: not usable either
        return False


def calibration_set(recipe: Recipe, spec: ModelSpec) -> DataSet | None:
    from pocketml.runtime.data import check_calibration, load_data_dir

    needs = [f for f in recipe.formats if "int8" in recipe.precisions
             and exporters.needs_calibration(f, "int8", spec)]
    if recipe.options.get("observer") and not needs:
        raise UsageError(f"--observer {recipe.options['observer']}: {spec.name}'s int8 in "
                         f"{', '.join(recipe.formats)} has no calibrated activations (dynamic or weight-only "
                         "quantization sets ranges at run time): drop --observer")
    if recipe.calib:
        pre = dict(spec.preprocessing)
        if spec.tokenizer_file:
            pre["tokenizer_file"] = str(spec.tokenizer_file)
        samples = load_data_dir(Path(recipe.calib), spec.inputs, pre)
        check_calibration(samples, spec.inputs, f"--calib {recipe.calib}")     # before any conversion work
        return DataSet(samples, f"user data {recipe.calib}")
    if needs and spec.calib is None:
        raise UsageError(f"static int8 for {spec.name} ({', '.join(needs)}) needs calibration data: pass "
                         "--calib DIR with representative inputs. pocketml does not substitute a default set.")
    if spec.calib is not None:
        check_calibration(spec.calib.samples, spec.inputs, spec.calib.source)
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
    with staging_dir(out_dir / "reference") as tmp, open_lock(out_dir / ".reference.lock") as lock:
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
        runtime_hints={"settings": {**formats.get(fmt).settings, "num_threads": DEFAULT_THREADS},
                       "settings_basis": "the session settings this artifact was validated with (pocketml.runtime); "
                                         "`pocketml profile --record` adds the measured thread count",
                       **result.runtime_hints, "notes": result.notes},
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"))


def measured_contents(spec, fmt: str, precision: str, model_path: Path, result) -> dict:
    """What the exported file holds, counted from its graph (runtime/census.py): the manifest's
    `quantization.measured`. An artifact whose requested precision is not in the graph (int8 with no
    8-bit weight, fp16 with no fp16 weight, …) is refused here, for every format (exit 5) — unless
    mixed precision (--max-drop) kept those layers float on purpose, which is then said in the manifest."""
    from pocketml.runtime import census
    from pocketml.runtime.errors import ValidationFailed
    measured = census.measure(model_path, fmt)
    why = census.missing_precision(precision, measured)
    kept_float = (result.quantization.get("mixed_precision") or {}).get("float_layers")
    if why and kept_float:
        measured["note"] = (f"no quantized weight left: mixed precision kept {len(kept_float)} layer(s) float on "
                            "purpose to meet --max-drop (quantization.mixed_precision.float_layers)")
        result.notes.append(measured["note"])
    elif why:
        raise ValidationFailed(f"{spec.name} {fmt} {precision}: {why} (counted in {model_path.name}); not published",
                               measured=measured)
    return measured


def validate_artifact(tmp: Path, manifest: Manifest, spec, refs, data, precision) -> dict:
    from . import validate
    fmt = formats.get(manifest.format)
    if (why := fmt.host_support()) is not None:      # cannot run here: the exporter checks what it can
        report = fmt.exporter_module().structural_validation(tmp, manifest, precision)
        return {**report, "status": "structural-only", "numeric": f"not run: {why}",
                "reference": "torch fp32 (eager)", "data": data.source, "samples": len(data)}
    session = fmt.session()(tmp, manifest, threads=DEFAULT_THREADS)
    report = validate.validate(session, spec, refs, data, precision)
    if (why := validate.saturating_host(fmt, manifest.quantization)) is not None:
        exact = fmt.session()(tmp, manifest, threads=DEFAULT_THREADS, fuse_quantized=False)
        report["without_host_int8_kernels"] = {**validate.validate(exact, spec, refs, data, precision)["stats"],
                                               "why": why}
    return report


# pocketml packages whose code can shape an artifact: everything but the command line (whose choices
# reach the artifact as the Recipe, which the key hashes itself). tests/test_registry_guard.py checks that
# every pocketml module a conversion imports is covered, and that a change in any of them changes the key.
DIGEST_PACKAGES = ("convert", "runtime", "profiler", "profiles")


def digest_files() -> dict[str, Path]:
    """Module label (package/relative path) -> source file, for every file the reuse digest covers."""
    import importlib
    files = {}
    for name in DIGEST_PACKAGES:
        root = Path(importlib.import_module(f"pocketml.{name}").__file__).resolve().parent
        files.update({f"{name}/{p.relative_to(root).as_posix()}": p for p in sorted(root.rglob("*.py"))})
    return files


@functools.lru_cache(maxsize=1)
def code_digest() -> str:
    """pocketml's own code that artifacts depend on: an artifact built by a changed exporter, validator,
    metric or registry is not reused, even where the version number did not change (a development checkout)."""
    return digest_of({label: path.read_bytes() for label, path in digest_files().items()})


def digest_of(sources: dict[str, bytes]) -> str:
    h = hashlib.sha256()
    for label, data in sources.items():
        h.update(label.encode())
        h.update(data)
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
    name = formats.artifact_name(fmt, precision)
    key = artifact_key(spec, recipe, fmt, precision, calib, data)
    if recipe.options.get("reuse", True) and (old := reusable(out_dir / name, key)):
        return Outcome(name, out_dir / name, old, seconds=time.perf_counter() - t0, reused=True)
    if why := exporters.refusal(fmt, precision, spec):
        raise UnsupportedError(f"{spec.name}: {fmt} {precision} is not available for {spec.family} models: {why}")
    exporter = exporters.get_exporter(fmt)
    with staging_dir(out_dir / name) as tmp:
        result = exporter.export(spec, precision, tmp, cache, work, calib=calib, options=recipe.options, log=log)
        result.quantization["measured"] = measured_contents(spec, fmt, precision, tmp / result.model_file, result)
        fp16 = fp16_range.check_artifact(spec, data, fmt, precision, result.quantization, cache)
        manifest = build_manifest(spec, recipe, fmt, precision, result, {})
        manifest.recipe["artifact_key"] = key
        manifest.validation = validate_artifact(tmp, manifest, spec, refs, data, precision)
        if fp16 is not None:
            manifest.validation["fp16_range"] = fp16
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
    from .llm.sources import is_causal_lm_ref
    if spec is None and is_causal_lm_ref(recipe.model, recipe.task):     # the causal-lm family's own pipeline
        from .llm.pipeline import run as run_causal_lm
        return run_causal_lm(recipe, out_dir, log)
    recipe.check()
    check_extras(recipe.formats)
    quiet_torch()
    # checked here (a symlink on the way: exit 4); created by the first write, so a refusal leaves nothing
    out_dir = output_dir(Path(out_dir), recipe.options.get("allow_symlinked_output", False))
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
    work = output_dir(out_dir / f".work{TMP_MARK}{os.getpid()}-convert")    # not through a planted symlink
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
