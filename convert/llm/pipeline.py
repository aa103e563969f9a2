"""Causal LM → validated artifacts: per format × precision, export → validate on the artifact's own runtime
→ census → manifest → atomic publish (the same contract as convert/pipeline.py, for the causal-lm family).

Validation runs the artifact through pocketml's torch-free runtime (runtime/lm/, the backend the format
registry names) and compares it with the fp32 torch reference (`reference.TorchLM`) on held-out text:
next-token top-1 agreement, KL divergence, perplexity and its relative change, and greedy-generation
agreement on fixed prompts. Tolerances per precision: the family registry's `perplexity` metric.
`reference/` keeps the held-out token ids and the reference's per-position log-likelihood and argmax,
so the profiler measures quality without torch.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

from pocketml.runtime import formats
from pocketml.runtime.atomic import TMP_MARK, publish, staging_dir, write_file_atomic
from pocketml.runtime.errors import PocketmlError, UnsupportedError, ValidationFailed
from pocketml.runtime.families import family, tolerance
from pocketml.runtime.lm.metrics import compare, log_softmax
from pocketml.runtime.manifest import Manifest, TensorSpec, hash_tree
from pocketml.runtime.paths import output_dir

from .reference import TEXT_SOURCE, TorchLM, held_out_sequences, prompt_ids

EVAL_SEQUENCES, EVAL_LENGTH, GREEDY_TOKENS = 4, 128, 16
REFERENCE_SCHEMA = "pocketml.lm-reference/1"


def run(recipe, out_dir: Path, log=print) -> list:
    """`convert.pipeline.run` for a causal LM reference (built-in, .gguf, or HF dir with --task text-generation)."""
    from ..pipeline import Outcome, check_extras, quiet_torch
    from .sources import load_causal_lm
    recipe.check(generative=True)
    check_extras(recipe.formats)
    quiet_torch()
    out_dir = output_dir(Path(out_dir), recipe.options.get("allow_symlinked_output", False))
    work = out_dir / f".work{TMP_MARK}{os.getpid()}-convert"
    outcomes = []
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        work.mkdir(exist_ok=True)
        spec = load_causal_lm(recipe.model, recipe.trust_remote_code, work_dir=work)
        log(f"  {spec.name}: {spec.parameter_count / 1e6:.1f} M parameters, context {spec.context}, "
            f"reference {spec.source.get('reference', 'torch fp32')}")
        ref = Reference.build(spec)
        write_reference(out_dir, spec, ref)
        for fmt in recipe.formats:
            for precision in recipe.precisions:
                name = formats.artifact_name(fmt, precision)
                try:
                    o = export_one(spec, recipe, fmt, precision, out_dir, work, ref, log)
                    log(f"  ✓ {name:<14} {o.seconds:5.1f}s  {describe(o.manifest.validation)}")
                except PocketmlError as exc:
                    o = Outcome(name, None, error=exc)
                    log(f"  ✗ {name:<14} exit {exc.exit_code}: {exc}")
                outcomes.append(o)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return outcomes


class Reference:
    """The fp32 reference's scores on the held-out sequences and its greedy generations, computed once."""

    def __init__(self, lm: TorchLM, sequences, logits, prompts, greedy):
        self.lm, self.sequences, self.logits, self.prompts, self.greedy = lm, sequences, logits, prompts, greedy

    @classmethod
    def build(cls, spec) -> "Reference":
        lm = TorchLM(spec)
        length = min(EVAL_LENGTH, spec.context)
        sequences = held_out_sequences(lm.tokenizer, EVAL_SEQUENCES, length)
        prompts = [p for p in prompt_ids(lm.tokenizer) if len(p) + GREEDY_TOKENS <= spec.context]
        return cls(lm, sequences, [lm.score(s) for s in sequences], prompts,
                   [lm.generate_ids(p, GREEDY_TOKENS) for p in prompts])

    def score(self, ids):                       # compare() asks the reference for the same sequences, in order
        return self.logits[next(i for i, s in enumerate(self.sequences) if np.array_equal(s, ids))]

    def generate_ids(self, ids, max_new_tokens):
        return self.greedy[self.prompts.index(ids)]


def write_reference(out_dir: Path, spec, ref: Reference) -> None:
    """reference/: token ids, the reference's next-token log-likelihoods and argmax per position."""
    with staging_dir(out_dir / formats.REFERENCE_DIR) as tmp:
        ids = np.stack(ref.sequences)
        logp = [log_softmax(lg) for lg in ref.logits]
        nll = np.stack([-lp[np.arange(len(s) - 1), s[1:]] for lp, s in zip(logp, ref.sequences)])
        np.savez(tmp / "inputs.npz", input_ids=ids)
        np.savez(tmp / "outputs.npz", nll=nll.astype(np.float32),
                 argmax=np.stack([lg.argmax(-1) for lg in ref.logits]).astype(np.int64))
        meta = {"schema": REFERENCE_SCHEMA, "model": spec.name, "reference": spec.source.get("reference",
                "torch fp32 (eager)"), "data": TEXT_SOURCE, "samples": len(ref.sequences), "metric": "perplexity",
                "inputs": [{"name": "input_ids", "shape": list(ids.shape[1:]), "dtype": "int64", "layout": "S"}],
                "outputs": ["nll", "argmax"], "preprocessing": {"kind": "text", "tokenizer": "tokenizer.json"}}
        meta["checksums"] = hash_tree(tmp)
        (tmp / "manifest.json").write_text(json.dumps(meta, indent=2) + "\n")
        publish(tmp, out_dir / formats.REFERENCE_DIR)


def export_one(spec, recipe, fmt: str, precision: str, out_dir: Path, work: Path, ref: Reference, log):
    from ..pipeline import Outcome, tool_versions
    t0 = time.perf_counter()
    entry, cap = formats.get(fmt), formats.capability(fmt, precision, family(spec.family).kind)
    if cap.refused:
        raise UnsupportedError(f"{spec.name}: {fmt} {precision} is not available for causal LMs: {cap.refused}")
    name = formats.artifact_name(fmt, precision)
    options = exporter_options(recipe, precision, fmt)
    mixed = None
    if precision == "int4" and recipe.options.get("max_drop") is not None:
        from .mixed import search
        mixed = search(spec, entry, ref.lm, recipe.options["max_drop"], work, log, **options)
        options["keep_int8"] = mixed["int8_groups"]
    with staging_dir(out_dir / name) as tmp:
        result = entry.lm_export()(spec, tmp, precision, work=work, **options)
        if mixed is not None:
            result.setdefault("quantization", {})["mixed_precision"] = mixed
        validation, generation = checked(entry, spec, tmp, result, ref, precision, f"{spec.name} {name}")
        from pocketml.runtime import census
        measured = census.measure(tmp / entry.model_file, fmt)
        if why := census.missing_precision(precision, measured):
            raise ValidationFailed(f"{spec.name} {name}: {why}; not published", measured=measured)
        io = result.get("io") or {}             # what an exporter declares where no IO reader reads the file
        ins, outs = entry.read_io(tmp / entry.model_file) if entry.io_reader else (
            [TensorSpec.from_dict(t) for t in io.get("inputs", [])], [TensorSpec.from_dict(t) for t in io.get("outputs", [])])
        manifest = Manifest(
            name=spec.name, format=fmt, precision=precision, model_file=entry.model_file,
            inputs=[TensorSpec(t.name, t.shape, t.dtype) for t in ins],
            outputs=[TensorSpec(t.name, t.shape, t.dtype) for t in outs], task=spec.task, metric="perplexity",
            quantization={"method": cap.method, **result.get("quantization", {}), "measured": measured},
            tokenizer="tokenizer.json" if (tmp / "tokenizer.json").is_file() else None,
            source={**spec.describe()["source"], "parameter_count": spec.parameter_count},
            recipe=recipe.as_dict(), tools=tool_versions(), validation=validation,
            runtime_hints={"settings": {**entry.settings, "num_threads": 1}, "generation": generation,
                           "notes": list(result.get("notes", []))},
            created=time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()))
        manifest.checksums = hash_tree(tmp)
        write_file_atomic(tmp / "manifest.json", manifest.to_json().encode())
        path = publish(tmp, out_dir / name)
    return Outcome(name, path, manifest, seconds=time.perf_counter() - t0)


# --gguf-weights → the LM exporter's `weights_from` (convert/llm/onnx_export.gguf_weights), for formats whose
# registry entry says `lm_carries_gguf` (ONNX; TFLite and Core ML int4 re-quantize: symmetric blocks, no offsets)
GGUF_WEIGHTS = {"carry": "gguf", "requantize": "requantize"}


def carries_gguf() -> list[str]:
    return [f for f in formats.FORMAT_NAMES if formats.get(f).lm_carries_gguf]


def exporter_options(recipe, precision: str, fmt: str) -> dict:
    """What the recipe asks of a language-model exporter, as its keyword arguments."""
    options = {}
    if precision == "int4":
        options["block_size"] = int(recipe.options.get("int4_block", 32))
    if (choice := recipe.options.get("gguf_weights")) and formats.get(fmt).lm_carries_gguf \
            and precision in ("int4", "int8"):
        options["weights_from"] = GGUF_WEIGHTS[choice]
    return options


def checked(entry, spec, tmp: Path, result: dict, ref: Reference, precision: str, where: str) -> tuple[dict, dict]:
    """(validation, generation facts) of a staged artifact: on the artifact's own runtime against the fp32
    reference; where the format cannot run on this host (`host_support`, Core ML off macOS) the registry's
    structural check instead, which never reports a number it did not measure. Artifacts whose activations
    are fp16 on the device also get the fp16 range check of the reference (convert/fp16_range.py)."""
    generation = {"layout": result.get("layout"), "tokens": result.get("tokens"), "context_length": spec.context}
    if (why := entry.host_support()) is not None:
        declared = {**(result.get("io") or {}), "block_size": result.get("quantization", {}).get("block_size")}
        validation = {**entry.lm_check_structure()(tmp, declared, precision), "host": why}
        generation.update(backend=None, kv_bytes_per_token=(result.get("layout") or {}).get("kv_bytes_per_token"))
    else:
        lm = entry.lm_load()(tmp)
        try:
            validation = validate(lm, ref, precision, where)
            generation.update(backend=lm.backend, kv_bytes_per_token=kv_bytes_per_token(lm))
        finally:
            lm.close()
    if (fp16 := fp16_range_check(spec, ref, entry.name, precision, where)) is not None:
        validation["fp16_range"] = fp16
    return validation, generation


def fp16_range_check(spec, ref: Reference, fmt: str, precision: str, where: str) -> dict | None:
    """The fp16 range report (None where activations are not fp16: format registry), over the reference's
    module outputs on the held-out sequences, measured once per model; exit 5 beyond ±65504."""
    from .. import fp16_range
    if not fp16_range.has_fp16_activations(fmt, precision, family(spec.family).kind):
        return None
    if getattr(ref, "fp16_ranges", None) is None:
        ref.fp16_ranges = fp16_range.activation_ranges(spec.module, [[s[None]] for s in ref.sequences])
    return fp16_range.check(ref.fp16_ranges, where, f"{TEXT_SOURCE} ({len(ref.sequences)} sequences)")


def kv_bytes_per_token(lm) -> int | None:
    value = getattr(lm, "kv_bytes_per_token", None)
    value = value() if callable(value) else value
    return int(value) if value is not None else None


def validate(lm, ref: Reference, precision: str, where: str) -> dict:
    """The artifact (through its runtime) vs the fp32 reference; exit 5 beyond the precision's tolerance."""
    from ..validate import check
    stats = compare(ref, lm, ref.sequences, ref.prompts, GREEDY_TOKENS)
    tol = tolerance("perplexity", precision)
    failures = check(stats, tol)
    report = {"status": "failed" if failures else "passed", "reference": ref.lm.backend, "data": TEXT_SOURCE,
              "samples": len(ref.sequences), "tokens_per_sample": int(len(ref.sequences[0])) if ref.sequences else 0,
              "stats": stats, "tolerance": {k: f"{op} {b}" for k, (op, b) in tol.items()}}
    if failures:
        raise ValidationFailed(f"{where}: validation against the fp32 reference failed on {TEXT_SOURCE}: "
                               + "; ".join(failures), validation=report)
    return report


def describe(v: dict) -> str:
    if "stats" not in v:                        # checked structurally (the format does not run here)
        return f"{v['status']} check passed ({len(v.get('checked', []))} checks); numerics {v.get('numerics')}"
    s = v["stats"]
    greedy = s.get("greedy", {})
    return (f"validated on {v['samples']}×{v['tokens_per_sample']} tokens: next-token agree "
            f"{s['top1_agreement']:.3f}, KL {s['kl_mean']:.4f}, ppl {s['perplexity_ref']:.2f} → {s['perplexity']:.2f} "
            f"({s['perplexity_change']:+.1%})" + (f", greedy identical {greedy['identical']}/{greedy['prompts']}"
                                                   if greedy else ""))
