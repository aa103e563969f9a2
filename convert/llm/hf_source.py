"""A local Hugging Face causal-LM directory → CausalLMSpec (safetensors only; remote code refused unless
flagged). The chat template and generation config are read as capped JSON side files."""
from __future__ import annotations

import json
import time
from pathlib import Path

from pocketml.runtime.errors import UnsafeInputError, UnsupportedError, UsageError, require_extra
from pocketml.runtime.parsing import reading
from pocketml.runtime.paths import open_regular

from .sources import MAX_SIDE_FILE_BYTES, _context, _dtype_kwargs, _first, _ids, _param_count
from .spec import FAMILY, CausalLMSpec

def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    from pocketml.runtime.manifest import read_json_object
    return read_json_object(path, MAX_SIDE_FILE_BYTES, open_regular)


def chat_template_of(model_dir: Path) -> str | None:
    """The chat template of a Hugging Face directory: chat_template.jinja, chat_template.json, or
    tokenizer_config.json's `chat_template` (a string, or a list of {name, template}: "default")."""
    jinja = model_dir / "chat_template.jinja"
    if jinja.is_file():
        with reading(jinja, "chat_template.jinja"), open_regular(jinja) as fh:
            raw = fh.read(MAX_SIDE_FILE_BYTES + 1)
        if len(raw) > MAX_SIDE_FILE_BYTES:
            raise UnsafeInputError(f"{jinja}: larger than {MAX_SIDE_FILE_BYTES} bytes", file=str(jinja))
        with reading(jinja, "chat_template.jinja"):
            return raw.decode("utf-8")
    for name in ("chat_template.json", "tokenizer_config.json"):
        data = _read_json(model_dir / name)
        if data is None or "chat_template" not in data:
            continue
        t = data["chat_template"]
        if isinstance(t, list):
            named = {d.get("name"): d.get("template") for d in t if isinstance(d, dict)}
            t = named.get("default", next(iter(named.values()), None))
        if t is None:
            return None
        if not isinstance(t, str):
            raise UnsafeInputError(f"{model_dir / name}: chat_template is {type(t).__name__}, expected a string",
                                   file=str(model_dir / name), field="chat_template")
        return t
    return None


def load_hf_causal_lm(model_dir: Path, trust_remote_code: bool, context: int | None) -> CausalLMSpec:
    from pocketml.convert.sources import check_remote_code, read_config, weights_digest
    from pocketml.runtime.prechecks import precheck_safetensors
    from pocketml.runtime.text import load_tokenizer

    model_dir = Path(model_dir)
    remote = check_remote_code(model_dir, trust_remote_code)
    weights = sorted(model_dir.glob("*.safetensors"))
    if not weights:
        other = sorted(p.name for p in model_dir.glob("*") if p.suffix in (".bin", ".pt", ".pth", ".ckpt", ".pkl"))
        raise UsageError(f"{model_dir}: causal LMs load from safetensors only (no *.safetensors"
                         f"{'; found ' + ', '.join(other) + ', pickles, refused' if other else ''}); "
                         "save the model with save_pretrained(safe_serialization=True)")
    cfg = read_config(model_dir / "config.json")
    torch = require_extra("torch", "convert", "loading a Hugging Face causal LM")
    transformers = require_extra("transformers", "convert", "loading a Hugging Face causal LM")
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    model_type = cfg.get("model_type")
    if not remote and model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise UnsupportedError(f"{model_dir}: model_type {model_type!r} is not a causal language model transformers "
                               f"{transformers.__version__} knows (AutoModelForCausalLM has no class for it)",
                               file=str(model_dir / "config.json"), field="model_type")
    if isinstance(cfg.get("max_position_embeddings"), int):
        _context(model_dir, cfg["max_position_embeddings"], context)     # refused before the load
    for w in weights:
        precheck_safetensors(w)
    digest, names = weights_digest(model_dir)
    tok_path = model_dir / "tokenizer.json"
    if not tok_path.is_file():
        raise UsageError(f"{model_dir}: causal LMs need tokenizer.json (a fast tokenizer)")
    load_tokenizer(tok_path, 8)                       # a corrupt tokenizer.json is refused now
    template = chat_template_of(model_dir)
    gen_cfg = _read_json(model_dir / "generation_config.json") or {}
    t0 = time.perf_counter()
    with reading(model_dir, "the Hugging Face causal LM (config.json and weights)"):
        model, info = transformers.AutoModelForCausalLM.from_pretrained(
            str(model_dir), local_files_only=True, use_safetensors=True, trust_remote_code=trust_remote_code,
            attn_implementation="eager", output_loading_info=True, **_dtype_kwargs(torch))
    load_s = time.perf_counter() - t0
    missing = list(info.get("missing_keys") or []) + [str(k[0]) if isinstance(k, tuple) else str(k)
                                                       for k in info.get("mismatched_keys") or []]
    if missing:      # transformers would initialise them randomly: refuse instead of guessing
        raise UnsafeInputError(f"{model_dir}: the safetensors weights do not match config.json: {len(missing)} "
                               f"tensor(s) missing or of another shape ({', '.join(missing[:3])}"
                               f"{', …' if len(missing) > 3 else ''}); transformers would fill them with random "
                               "values", file=str(model_dir), missing=missing[:20])
    model.eval()
    model.requires_grad_(False)
    config = model.config
    text_cfg = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    context, max_ctx = _context(model_dir, getattr(text_cfg, "max_position_embeddings", None), context)
    return CausalLMSpec(
        name=model_dir.name, module=model, config=config, tokenizer_json=tok_path, chat_template=template,
        bos_token_id=_first(gen_cfg.get("bos_token_id"), getattr(text_cfg, "bos_token_id", None)),
        eos_token_ids=_ids(gen_cfg.get("eos_token_id"), getattr(text_cfg, "eos_token_id", None)),
        pad_token_id=_first(gen_cfg.get("pad_token_id"), getattr(text_cfg, "pad_token_id", None)),
        context=context, max_context=max_ctx,
        parameter_count=_param_count(model),
        source={"kind": "hf-dir", "id": str(model_dir), "sha256": digest, "weights": names, "format": "safetensors",
                "reference": "fp32 (the directory's safetensors weights)" if _all_fp32(model_dir, names)
                else "fp32 (up-cast from the directory's safetensors weights)",
                "trust_remote_code": bool(remote and trust_remote_code), "load_seconds": round(load_s, 1),
                "loader": f"transformers {transformers.__version__} AutoModelForCausalLM (safetensors)"},
        family=FAMILY, hf_dir=model_dir)


def _all_fp32(model_dir: Path, names: list[str]) -> bool:
    """Whether every weight in the safetensors headers is F32 (headers were bounds-checked already)."""
    import struct
    for n in names:
        with open_regular(model_dir / n) as fh:
            (hlen,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(hlen))
        if any(isinstance(v, dict) and v.get("dtype") != "F32" for k, v in header.items() if k != "__metadata__"):
            return False
    return True
