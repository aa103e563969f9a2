"""Hugging Face causal LM → TFLite (LiteRT) with litert-torch 0.10's generative API, and the
`.litertlm` bundle Google's on-device LLM runtime (LiteRT-LM) loads.

The file (one flatbuffer, the layout LiteRT-LM runs):

    prefill_<N>  tokens [1, N] int32, input_pos [N] int32, kv_cache_k_<i> [1, kv_heads, context, head_dim],
                 kv_cache_v_<i> [1, kv_heads, head_dim, context]
                   → kv_cache_{k,v}_<i> (and logits [1, N, vocab] when exported with prefill_logits)
    decode       tokens [1, 1] int32, input_pos [1] int32, kv_cache_* → logits [1, 1, vocab], kv_cache_*

The cache is a fixed `context`-slot buffer that each call rewrites at `input_pos` (dynamic_update_slice);
the causal (and, for Gemma 3, sliding-window) mask is built inside the graph from `input_pos`, so
stale slots beyond the current position are never read. A runtime binds the same buffers as input
and output of every call (runtime/lm/tflite_lm.py). The layout is litert-torch's "transposed" one
(K as BNTH, V as BNHT) because LiteRT-LM 0.18 reads the cache length from dimension 2: on its
default BTNH layout LiteRT-LM takes the number of KV heads for the context and refuses every
prompt ("Exceeding the maximum number of tokens allowed: 20 >= 3"). `kv_layout="btnh"` remains
for pocketml's own runtime.

How the model is built (`convert/llm/litert_model.py`): litert-torch re-authors the network from its
own layers and reads a checkpoint directory (safetensors). `model_config()` derives that layer configuration from the
Hugging Face config for LLaMA-architecture models (SmolLM2 and any `llama` config: the same values
`examples.smollm.smollm.get_model_config_v2()` hard-codes for SmolLM2-135M) and for Gemma 3 text
models (`examples.gemma3.decoder.get_decoder_config_270m()` for Gemma-3-270M), so tiny test configs
and other sizes convert too; the example builders only know their one size. A GGUF source has no
checkpoint directory: `export_spec` saves the de-quantized fp32 reference (`CausalLMSpec.save_hf`)
into the work directory first.

Precisions: the fp32 flatbuffer is converted once; every other precision is derived from its bytes
with litert-torch's own recipes (`utilities.converter.get_quant_recipe_from_flag`, translated to an
ai-edge-quantizer recipe exactly as `convert_to_tflite(quantize=...)` does internally):

    fp32   none                    fp16   fp16 weights
    int8w  weight_only_int8        int8   dynamic_int8 (int8 weights per channel, int8 activations at run time)
    int4   dynamic_int4_block32 / dynamic_int4_block128 (every weight's input width a multiple of the
           block: SmolLM2-135M's hidden size 576 takes 32, not 128; refused up front, exit 3)

`keep_int8` (groups "embedding", "attention.<i>", "feedforward.<i>") keeps those at dynamic int8 in an
int4 file: the mixed-precision policy's choice. The KV cache stays float32 at every precision.

TensorFlow: `litert_torch.generative.layers.lora` imports `tensorflow.lite.python.schema_py_generated`
for the flatbuffer schema only. `ai_edge_litert.schema_py_generated` is that same generated module;
`litert_model._tflite_schema_alias()` maps the name to it while litert-torch's generative modules import (and
removes every alias afterwards, so nothing else sees a fake `tensorflow`). TensorFlow is not needed.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .litert_model import _generative, _head_dim, _quiet_progress, _text_config, build, model_config

RECIPES = {"fp32": "none", "fp16": "fp16", "int8w": "weight_only_int8", "int8": "dynamic_int8",
           "int4": {32: "dynamic_int4_block32", 128: "dynamic_int4_block128"}}
PRECISIONS = tuple(RECIPES)
INT4_BLOCKS = (32, 128)
PREFILL_LEN = 128
MODEL_FILE, BUNDLE_FILE, CONFIG_FILE = "model.tflite", "model.litertlm", "litert_config.json"
KV_PREFIX = "kv_cache_"
# KV-cache layouts (B batch, T token slot, N kv head, H head dim) → litert-torch's names. LiteRT-LM
# 0.18 takes dimension 2 of the cache as its length: it runs only "transposed" files (a "btnh" file
# loads but refuses every prompt: "Exceeding the maximum number of tokens allowed: 20 >= <kv heads>").
KV_LAYOUTS = {"transposed": ("BNTH", "BNHT"), "btnh": ("BTNH", "BTNH")}
LITERTLM_MODEL_TYPES = {"gemma3_text": "gemma3"}          # LiteRT-LM's llm_model_type; others "generic"


# ---------------------------------------------------------------- conversion

def convert_fp32(module, mcfg, dst: Path, *, context: int, prefill_lengths=(PREFILL_LEN,),
                 prefill_logits: bool = False, kv_layout: str = "transposed") -> Path:
    """litert-torch `convert_to_tflite(quantize="none")`: prefill_<N> signatures for each N and decode,
    the KV cache `context` slots long in `kv_layout`. `prefill_logits`: prefill signatures also return
    logits (faster scoring; LiteRT-LM's files have none, and prefill then skips the LM head)."""
    g = _generative()
    from litert_torch.generative.layers import kv_cache as kv_utils
    layouts = {"transposed": kv_utils.KV_LAYOUT_TRANSPOSED, "btnh": kv_utils.KV_LAYOUT_DEFAULT}
    dst = Path(dst)
    lens = sorted({int(n) for n in prefill_lengths})
    if not lens or lens[0] < 1 or lens[-1] > context:
        from pocketml.runtime.errors import UsageError
        raise UsageError(f"prefill lengths {lens}: each between 1 and the context ({context})")
    stage = dst.parent / f".{dst.name}.convert"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    try:
        with _quiet_progress():
            out = g.converter.convert_to_tflite(
                module, str(stage), "model", prefill_seq_len=lens, kv_cache_max_len=context, quantize="none",
                config=mcfg, export_config=g.export_config.ExportConfig(
                    output_logits_on_prefill=prefill_logits, kvcache_layout=layouts[kv_layout]))
        os.replace(out, dst)
    except Exception as exc:          # the converter raises many types; all mean "cannot take this model"
        from pocketml.runtime.errors import UnsupportedError
        raise UnsupportedError(f"litert-torch conversion failed: {type(exc).__name__}: {str(exc)[:400]}") from exc
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return dst


def recipe_name(precision: str, block_size: int = 32) -> str:
    from pocketml.runtime.errors import UsageError
    if precision not in RECIPES:
        raise UsageError(f"TFLite LM precision {precision!r}: choose from {', '.join(PRECISIONS)}")
    name = RECIPES[precision]
    if isinstance(name, dict):
        if block_size not in name:
            raise UsageError(f"int4 block size {block_size}: choose from {INT4_BLOCKS}")
        name = name[block_size]
    return name


def _recipe(g, name: str, mcfg, keep_int8=()):
    """litert-torch's generative recipe for `name`, with the `keep_int8` groups at dynamic int8."""
    from litert_torch.generative.quantize import quant_attrs, quant_recipe_utils
    qc = g.converter.get_quant_recipe_from_flag(name, mcfg)
    if qc is None or not keep_int8:
        return qc
    int8 = quant_recipe_utils.create_layer_quant_dynamic(quant_attrs.Dtype.INT8, quant_attrs.Granularity.CHANNELWISE)
    rec = qc.generative_recipe
    for group in keep_int8:
        kind, _, idx = group.partition(".")
        if kind == "embedding" and not idx:
            rec.embedding = int8
        elif kind in ("attention", "feedforward") and idx.isdigit() and int(idx) < mcfg.num_layers:
            table = getattr(rec, kind) or {}
            table[int(idx)] = int8
            setattr(rec, kind, table)
        else:
            from pocketml.runtime.errors import UsageError
            raise UsageError(f"keep_int8 group {group!r}: 'embedding', 'attention.<i>' or 'feedforward.<i>' "
                             f"(i < {mcfg.num_layers})")
    return qc


def derive(fp32: Path, dst: Path, precision: str, mcfg, *, block_size: int = 32, keep_int8=()) -> dict:
    """`precision` from the fp32 flatbuffer's bytes (the quantizer step `convert_to_tflite` runs after
    lowering). Returns the quantization record for the manifest."""
    g = _generative()
    name = recipe_name(precision, block_size)
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    qc = _recipe(g, name, mcfg, keep_int8)
    if precision == "int4":
        _check_blocks(mcfg, block_size)
    if qc is None:
        shutil.copyfile(fp32, dst)
    else:
        recipe = _layer_regexes(g.translate.translate_to_ai_edge_recipe(qc.generative_recipe))
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                data = g.translate.quantize_model(Path(fp32).read_bytes(), recipe)      # (its prints and bars)
        except Exception as exc:      # ai-edge-quantizer raises ValueError and others for what it cannot do
            from pocketml.runtime.errors import UnsupportedError
            raise UnsupportedError(f"ai-edge-quantizer, recipe {name}: {type(exc).__name__}: {str(exc)[:300]}") from exc
        dst.write_bytes(bytes(data))
    return {"method": f"litert-torch recipe {name}", "recipe": name, "kv_cache": "float32",
            **({"block_size": block_size} if precision == "int4" else {}), "keep_int8": list(keep_int8),
            "weights": _weights(dst)}


# litert-torch 0.10 names a layer's rules `transformer_blocks\[i\]/litert_torch.generative.layers.attention`
# (or `.feed_forward`), but its converter names the ops `…TransformerBlock_i/litert_torch.generative.layers.
# attention.CausalSelfAttention_atten_func/…` (Gemma 3: `DecoderBlock_i`), so per-layer rules matched
# nothing and an int4 file with "attention.3" kept at int8 came out all int4. Rewritten to the names the
# file has (checked by tests/test_lm_tflite.py::test_recipes_derived_from_the_fp32_file).
_UPSTREAM_LAYER_RULE = re.compile(r"^transformer_blocks\\\[(\d+)\\\]/(litert_torch\.generative\.layers\.\w+)$")


# Its LM-head rule (for a head tied to the embedding) names `StatefulPartitionedCall`, a TensorFlow-era op
# name this converter never writes: the head is the FULLY_CONNECTED whose output is the signature's logits
# (`decode_logits_output`; rules match an op's output names). pocketml's "embedding" group is the table and
# the head (as in ONNX), tied or not, so the head gets the embedding rule's config here.
_UPSTREAM_HEAD_RULE, _EMBEDDING_RULE, HEAD_REGEX = "StatefulPartitionedCall", "Embedding_tok_embedding", ".*logits"


def _layer_regexes(recipe: list) -> list:
    out = []
    for rule in recipe:
        regex = rule.get("regex", "")
        if regex == _UPSTREAM_HEAD_RULE:
            continue
        m = _UPSTREAM_LAYER_RULE.match(regex)
        if m:
            rule["regex"] = rf".*Block_{m.group(1)}/{re.escape(m.group(2))}[./]"
        out.append(rule)
        if regex == _EMBEDDING_RULE:
            from ai_edge_quantizer.qtyping import TFLOperationName
            out.append({**rule, "regex": HEAD_REGEX, "operation": TFLOperationName.FULLY_CONNECTED})
    return out


def _check_blocks(mcfg, block: int) -> None:
    """Blockwise int4 splits each weight's input dimension into blocks: every one must divide
    (SmolLM2-135M's hidden size 576 takes blocks of 32, not 128)."""
    attn = mcfg.block_config(0).attn_config
    dims = {"hidden size": mcfg.embedding_dim, "attention width": attn.num_heads * attn.head_dim,
            "intermediate size": mcfg.block_config(0).ff_config.intermediate_size}
    bad = {k: v for k, v in dims.items() if v % block}
    if bad:
        from pocketml.runtime.errors import UnsupportedError
        raise UnsupportedError(f"int4 blocks of {block}: {', '.join(f'{k} {v}' for k, v in bad.items())} not a "
                               f"multiple of {block} (choose block size {min(INT4_BLOCKS)})", block_size=block)


def _weights(path: Path) -> dict:
    """Stored weight types, measured from the file (runtime/census.py)."""
    from pocketml.runtime.census import measure
    try:
        return measure(path, "tflite")
    except Exception as exc:         # the census is a report, never a reason to fail a conversion
        return {"error": f"{type(exc).__name__}: {exc}"}


# ---------------------------------------------------------------- the layout a runtime drives

@dataclass(frozen=True)
class LiteRTLayout:
    """Signatures and KV cache of an exported file (what the manifest states as the KV-cache layout)."""
    model_type: str
    num_layers: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    context_length: int
    prefill_lengths: tuple[int, ...]
    prefill_logits: bool
    sliding_window: int | None
    layer_types: tuple[str, ...]
    kv_layout: str = "transposed"      # KV_LAYOUTS

    def kv_names(self) -> list[str]:
        return [f"{KV_PREFIX}{kv}_{i}" for i in range(self.num_layers) for kv in ("k", "v")]

    @property
    def kv_shape(self) -> dict[str, list[int]]:
        dims = {"B": 1, "T": self.context_length, "N": self.num_kv_heads, "H": self.head_dim}
        k, v = KV_LAYOUTS[self.kv_layout]
        return {"k": [dims[d] for d in k], "v": [dims[d] for d in v]}

    def kv_bytes_per_token(self, itemsize: int = 4) -> int:
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * itemsize

    def signatures(self) -> dict:
        kv = self.kv_names()
        sigs = {f"prefill_{n}": {"inputs": ["tokens", "input_pos", *kv],
                                 "outputs": (["logits"] if self.prefill_logits else []) + kv}
                for n in self.prefill_lengths}
        sigs["decode"] = {"inputs": ["tokens", "input_pos", *kv], "outputs": ["logits", *kv]}
        return sigs

    def as_dict(self) -> dict:
        return {**asdict(self), "prefill_lengths": list(self.prefill_lengths), "layer_types": list(self.layer_types),
                "kv_shape": self.kv_shape, "kv_dims": dict(zip("kv", KV_LAYOUTS[self.kv_layout])),
                "kv_dtype": "float32", "kv_names": self.kv_names(),
                "signatures": self.signatures()}


def layout(config, context: int, prefill_lengths=(PREFILL_LEN,), prefill_logits: bool = False,
           kv_layout: str = "transposed") -> LiteRTLayout:
    if kv_layout not in KV_LAYOUTS:
        from pocketml.runtime.errors import UsageError
        raise UsageError(f"KV-cache layout {kv_layout!r}: choose from {', '.join(KV_LAYOUTS)}")
    c = _text_config(config)
    types_ = tuple(getattr(c, "layer_types", None) or ["full_attention"] * c.num_hidden_layers)
    return LiteRTLayout(model_type=c.model_type, num_layers=c.num_hidden_layers,
                        num_kv_heads=getattr(c, "num_key_value_heads", None) or c.num_attention_heads,
                        head_dim=_head_dim(c), vocab_size=c.vocab_size, context_length=int(context),
                        prefill_lengths=tuple(sorted({int(n) for n in prefill_lengths})),
                        prefill_logits=bool(prefill_logits),
                        sliding_window=getattr(c, "sliding_window", None) if "sliding_attention" in types_ else None,
                        layer_types=types_, kv_layout=kv_layout)


def file_signatures(path: Path) -> dict:
    """{signature: {"inputs": [...], "outputs": [...]}} as stored in the flatbuffer."""
    from ai_edge_litert import schema_py_generated as s
    model = s.Model.GetRootAs(Path(path).read_bytes(), 0)
    sigs = {}
    for i in range(model.SignatureDefsLength()):
        d = model.SignatureDefs(i)
        sigs[d.SignatureKey().decode()] = {
            "inputs": [d.Inputs(j).Name().decode() for j in range(d.InputsLength())],
            "outputs": [d.Outputs(j).Name().decode() for j in range(d.OutputsLength())]}
    return sigs


def check_signatures(path: Path, lay: LiteRTLayout) -> None:
    """The file has exactly the layout's signatures, inputs and outputs (any order)."""
    got, want = file_signatures(path), lay.signatures()
    same = set(got) == set(want) and all(sorted(got[k]["inputs"]) == sorted(want[k]["inputs"]) and
                                         sorted(got[k]["outputs"]) == sorted(want[k]["outputs"]) for k in want)
    if not same:
        from pocketml.runtime.errors import UnsupportedError
        raise UnsupportedError(f"{path.name}: signatures {sorted(got)} do not match the expected KV-cache layout "
                               f"{sorted(want)}")


# ---------------------------------------------------------------- files next to the model

def write_sidecars(out_dir: Path, lay: LiteRTLayout, tokenizer_json: Path, facts: dict, record: dict, *,
                   chat_template: str | None = None, bundle: str | None = None) -> dict:
    """tokenizer.json (copied), tokenizer_config.json (bos/eos, chat template) and litert_config.json
    (what runtime/lm/tflite_lm.load_dir reads). Returns the litert_config content."""
    out_dir = Path(out_dir)
    shutil.copyfile(tokenizer_json, out_dir / "tokenizer.json")
    tokcfg = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": facts["bos_token"],
              "eos_token": facts["eos_token"], "model_max_length": lay.context_length,
              "add_bos_token": facts["add_bos_token"], "clean_up_tokenization_spaces": False}
    if chat_template:
        tokcfg["chat_template"] = chat_template
    (out_dir / "tokenizer_config.json").write_text(json.dumps(tokcfg, indent=1, ensure_ascii=False), encoding="utf-8")
    cfg = {"model": MODEL_FILE, "bundle": bundle, "context_length": lay.context_length,
           "bos_token_id": facts["bos_token_id"], "eos_token_ids": facts["eos_token_ids"],
           "pad_token_id": facts["pad_token_id"], "layout": lay.as_dict(),
           "quantization": {k: v for k, v in record.items() if k != "weights"}}
    (out_dir / CONFIG_FILE).write_text(json.dumps(cfg, indent=1), encoding="utf-8")
    return cfg


def build_bundle(tflite: Path, out_dir: Path, lay: LiteRTLayout, tokenizer_json: Path, facts: dict, *,
                 work: Path, chat_template: str | None = None) -> Path:
    """`model.litertlm`: LiteRT-LM's bundle (LLM metadata, the Hugging Face tokenizer.json, the
    prefill/decode flatbuffer) built with litert-lm-builder through litert-torch's helper."""
    from pocketml.runtime.errors import EnvironmentMissing
    _generative()                      # the package imports under the schema alias
    from litert_torch.generative.utilities import litertlm_builder
    if not litertlm_builder.is_litertlm_builder_available():
        raise EnvironmentMissing("building a .litertlm bundle needs the litert-lm-builder package")
    meta = Path(work) / ".litertlm-meta"
    shutil.rmtree(meta, ignore_errors=True)
    meta.mkdir(parents=True)
    stage = Path(out_dir) / f".{BUNDLE_FILE}.stage"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    try:
        litertlm_builder.build_litertlm(
            tflite_model_path=str(tflite), workdir=str(meta), output_path=str(stage), context_length=lay.context_length,
            hf_tokenizer_model_path=str(tokenizer_json),
            # LiteRT-LM puts the start token before every prompt: only where the tokenizer itself adds BOS
            start_token_id=facts["bos_token_id"] if facts["add_bos_token"] else None,
            stop_token_ids=list(facts["eos_token_ids"]) or None,
            llm_model_type=LITERTLM_MODEL_TYPES.get(lay.model_type, "generic"), jinja_prompt_template=chat_template)
        built = stage / (Path(tflite).stem + ".litertlm")
        dst = Path(out_dir) / BUNDLE_FILE
        os.replace(built, dst)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        shutil.rmtree(meta, ignore_errors=True)
    return dst


# ---------------------------------------------------------------- one call

def _fp32_name(lay: LiteRTLayout) -> str:
    lens = "-".join(map(str, lay.prefill_lengths))
    return (f"litert-fp32-ctx{lay.context_length}-p{lens}-{lay.kv_layout}"
            f"{'-logits' if lay.prefill_logits else ''}.tflite")


def export(checkpoint_dir: Path, config, tokenizer_json: Path, out_dir: Path, precision: str = "fp32", *,
           context: int, work: Path | None = None, block_size: int = 32, keep_int8=(),
           prefill_lengths=(PREFILL_LEN,), prefill_logits: bool = False, kv_layout: str = "transposed",
           chat_template: str | None = None,
           bos_token_id=None, eos_token_ids=None, pad_token_id=None, bundle: bool = True) -> dict:
    """Convert the checkpoint directory (safetensors + its HF `config`) at `precision` into `out_dir`:
    model.tflite, model.litertlm (when `bundle`), tokenizer.json, tokenizer_config.json and
    litert_config.json. `work` caches the fp32 flatbuffer between precisions. Token ids not given
    come from the config. Returns {layout, quantization, tokens, files, timings}."""
    from .onnx_export import token_facts
    recipe_name(precision, block_size)                  # refuse a bad precision before minutes of work
    out_dir, work = Path(out_dir), Path(work) if work is not None else Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    lay = layout(config, context, prefill_lengths, prefill_logits, kv_layout)
    timings: dict[str, float] = {}
    base = work / _fp32_name(lay)
    t = time.perf_counter()
    module, mcfg = build(checkpoint_dir, config, context) if not base.exists() else (None, model_config(config))
    if module is not None:
        convert_fp32(module, mcfg, base, context=context, prefill_lengths=lay.prefill_lengths,
                     prefill_logits=prefill_logits, kv_layout=kv_layout)
        timings["convert_fp32_s"] = round(time.perf_counter() - t, 2)
        del module
    check_signatures(base, lay)
    t = time.perf_counter()
    record = derive(base, out_dir / MODEL_FILE, precision, mcfg, block_size=block_size, keep_int8=keep_int8)
    timings["derive_s"] = round(time.perf_counter() - t, 2)
    if work == out_dir:
        base.unlink()
    facts = token_facts(config, tokenizer_json, bos_token_id=bos_token_id, eos_token_ids=eos_token_ids,
                        pad_token_id=pad_token_id)
    name = None
    if bundle:
        t = time.perf_counter()
        name = build_bundle(out_dir / MODEL_FILE, out_dir, lay, tokenizer_json, facts, work=work,
                            chat_template=chat_template).name
        timings["bundle_s"] = round(time.perf_counter() - t, 2)
    write_sidecars(out_dir, lay, tokenizer_json, facts, record, chat_template=chat_template, bundle=name)
    files = {p.name: p.stat().st_size for p in sorted(out_dir.iterdir()) if p.is_file()}
    return {"layout": lay.as_dict(), "quantization": record, "tokens": facts, "files": files, "timings": timings}


def export_spec(spec, out_dir: Path, precision: str = "fp32", *, work: Path, block_size: int = 32, keep_int8=(),
                prefill_lengths=(PREFILL_LEN,), prefill_logits: bool = False, kv_layout: str = "transposed",
                bundle: bool = True) -> dict:
    """`export` for a `convert.llm.spec.CausalLMSpec`. The checkpoint litert-torch reads is the spec's
    fp32 reference saved once as safetensors in `work/hf-fp32` (for a GGUF source: its de-quantized
    weights; for a Hugging Face directory: the weights as loaded, whatever dtype they were stored in)."""
    work = Path(work)
    ckpt = work / "hf-fp32"
    if not (ckpt / "config.json").exists():
        shutil.rmtree(ckpt, ignore_errors=True)
        spec.save_hf(ckpt)
    return export(ckpt, spec.config, spec.tokenizer_json, out_dir, precision, context=spec.context, work=work,
                  block_size=block_size, keep_int8=keep_int8, prefill_lengths=prefill_lengths,
                  prefill_logits=prefill_logits, kv_layout=kv_layout, chat_template=spec.chat_template,
                  bos_token_id=spec.bos_token_id,
                  eos_token_ids=list(spec.eos_token_ids), pad_token_id=spec.pad_token_id, bundle=bundle)
