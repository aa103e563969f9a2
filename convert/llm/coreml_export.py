"""Hugging Face causal LM → a stateful Core ML decoder (ML Program, iOS 18 / macOS 15): the KV cache is
model state, updated in place, so an app never copies it in or out.

The model (one .mlpackage, prefill and decode alike — the interface of coremltools' "Stateful Models"
guide, which Core ML LLM apps drive through `MLModel.makeState()` / `prediction(from:using:)`):

    input_ids   [1, sequence_length]                         int32    1 … context tokens
    causal_mask [1, 1, sequence_length, total_sequence_length] float16  0 where query i may attend key j,
                                                                       −inf elsewhere; total = past + new
      → logits  [1, sequence_length, vocab]                  float32
    states  key_cache, value_cache  [layers, 1, kv_heads, context, head_dim]  float16 (Core ML states are fp16)

Each call writes its keys and values at positions past … total − 1 of the state (past = the mask's last
dimension − the number of new tokens) and attends over positions 0 … total − 1 as the mask allows.
`_StatefulDecoder` wraps the HF module: the two caches are registered buffers, `_SliceCache` is a
transformers `Cache` whose layers slice-update them, and the caller's 4D mask goes to the model as is
(no transformers mask machinery in the graph). The wrapper is checked in torch against the plain module
before export (`wrapper_check`: prefill + decode through the buffers vs one full forward), exported with
torch.export (mutable buffers → Core ML states) and converted by coremltools.

Precisions (every one from one fp16- or fp32-compute conversion, cached in `work`):

    fp32   fp32 weights and compute (states fp16 all the same)     fp16   ML Program fp16 weights and compute
    int8 / int8w  weight-only int8, symmetric per output channel (coremltools linear_quantize_weights); fp16
           compute. Same file: Core ML int8 activations need calibration that runs Core ML (macOS only).
    int4   weight-only int4, symmetric, blocks of 32 along each weight's input dimension (linear_quantize_weights
           dtype int4, granularity per_block: iOS 18 constexpr_blockwise_shift_scale); fp16 compute.

Why per-block linear int4 and not 4-bit palettization: it is the scheme pocketml's ONNX and TFLite int4
decoders store (symmetric int4, a scale per 32 weights), so the three formats' int4 artifacts hold the same
numbers; it has a scale per block where a per-tensor 16-entry palette has 16 values for a whole matrix; and
it is deterministic and quick (palettization runs k-means over every tensor).

Nothing here runs Core ML (Linux cannot): the pipeline checks the package structurally
(runtime/lm/coreml_structure.py) and says numerics were not run.
"""
from __future__ import annotations

import contextlib
import io
import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from pocketml.runtime.errors import UnsupportedError, UsageError
from pocketml.runtime.lm.coreml_lm import CONFIG_FILE, causal_mask

PRECISIONS = ("fp32", "fp16", "int8", "int8w", "int4")
INT4_BLOCKS = (32, 128)
MIN_TARGET = "iOS18"                   # states (the KV cache) and blockwise int4 need iOS 18 / macOS 15
MODEL_FILE = "model.mlpackage"
STATES = ("key_cache", "value_cache")
SEQ, TOTAL = "sequence_length", "total_sequence_length"
WEIGHT_THRESHOLD = 256                 # quantize weights with more elements (coremltools' default 2048 skips tiny ones)
WRAPPED = "model"                      # the wrapper's attribute holding the HF module (parameter names: p_model_…)
WRAPPER_TOLERANCE = 1e-2               # wrapper_check: max |Δlogit| / max |logit| (fp16 cache rounding is ~1e-3)


@dataclass(frozen=True)
class StatefulLayout:
    """The package's interface (what the manifest states, what the structural check compares)."""
    model_type: str
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    context_length: int

    @property
    def state_shape(self) -> list[int]:
        return [self.num_layers, 1, self.num_kv_heads, self.context_length, self.head_dim]

    def kv_bytes_per_token(self) -> int:
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * 2          # fp16 keys and values

    def io(self) -> dict:
        """inputs / outputs as manifest tensors (named dims), the states, and each named dim's range."""
        return {"inputs": [{"name": "input_ids", "shape": [1, SEQ], "dtype": "int32"},
                           {"name": "causal_mask", "shape": [1, 1, SEQ, TOTAL], "dtype": "float16"}],
                "outputs": [{"name": "logits", "shape": [1, SEQ, self.vocab_size], "dtype": "float32"}],
                "states": [{"name": n, "shape": self.state_shape, "dtype": "float16"} for n in STATES],
                "dims": {SEQ: [1, self.context_length], TOTAL: [1, self.context_length]}}

    def as_dict(self) -> dict:
        return {**asdict(self), **self.io(), "kv_bytes_per_token": self.kv_bytes_per_token(),
                "minimum_deployment_target": MIN_TARGET,
                "mask": "causal_mask[0, 0, i, j] = 0 where new token i may attend position j (j ≤ past + i), "
                        "−inf elsewhere; past = total_sequence_length − sequence_length tokens already in the state"}


def layout(config, context: int) -> StatefulLayout:
    """The interface for a HF config at `context` tokens; sliding-window models whose window is shorter
    than the context are refused (exit 3): one mask input serves every layer."""
    from .onnx_export import layout as decoder_layout
    lay = decoder_layout(config)
    if lay.sliding_window is not None and lay.sliding_window < context:
        raise UnsupportedError(f"Core ML export of {lay.model_type}: sliding-window layers (window "
                               f"{lay.sliding_window}) with a context of {context} need a second mask input, which "
                               f"the stateful decoder does not have; convert with a context ≤ {lay.sliding_window}",
                               model_type=lay.model_type)
    if context > lay.context_length:
        raise UnsupportedError(f"Core ML export of {lay.model_type}: context {context} beyond the model's "
                               f"{lay.context_length} positions", model_type=lay.model_type)
    return StatefulLayout(model_type=lay.model_type, num_layers=lay.num_layers, num_heads=lay.num_heads,
                          num_kv_heads=lay.num_kv_heads, head_dim=lay.head_dim, vocab_size=lay.vocab_size,
                          context_length=int(context))


# ---------------------------------------------------------------- the stateful wrapper

def _wrapper(module, lay: StatefulLayout):
    import torch
    from transformers.cache_utils import Cache, CacheLayerMixin

    class _SliceLayer(CacheLayerMixin):
        """One layer's view of the shared state buffers: writes the new keys/values at past … total − 1."""

        def __init__(self, owner, index: int):
            super().__init__()
            self.owner, self.index, self.is_initialized = owner, index, True

        def lazy_initialization(self, key_states):
            pass

        def update(self, key_states, value_states, cache_kwargs=None):
            o, i = self.owner, self.index
            begin, end = o.past, o.past + key_states.shape[-2]
            o.key_cache[i, :, :, begin:end, :] = key_states.to(o.key_cache.dtype)
            o.value_cache[i, :, :, begin:end, :] = value_states.to(o.value_cache.dtype)
            return (o.key_cache[i, :, :, :end, :].to(key_states.dtype),
                    o.value_cache[i, :, :, :end, :].to(value_states.dtype))

        def get_seq_length(self):
            return self.owner.past

        def get_mask_sizes(self, cache_position):
            return self.owner.past + cache_position.shape[0], 0

        def get_max_cache_shape(self):
            return lay.context_length

    class _SliceCache(Cache):
        def __init__(self, owner):
            super().__init__(layers=[_SliceLayer(owner, i) for i in range(lay.num_layers)])

    class _StatefulDecoder(torch.nn.Module):
        """(input_ids [1, seq] int, causal_mask [1, 1, seq, past + seq] additive) → logits float32."""

        def __init__(self):
            super().__init__()
            setattr(self, WRAPPED, module)
            for name in STATES:
                self.register_buffer(name, torch.zeros(lay.state_shape, dtype=torch.float16))
            self.past = 0

        def forward(self, input_ids, causal_mask):
            seq = input_ids.shape[-1]
            self.past = causal_mask.shape[-1] - seq
            positions = torch.arange(self.past, self.past + seq, dtype=torch.int64)
            dtype = module.get_input_embeddings().weight.dtype
            out = module(input_ids=input_ids, attention_mask=causal_mask.to(dtype), position_ids=positions[None],
                         cache_position=positions, past_key_values=_SliceCache(self), use_cache=True,
                         return_dict=True)
            return out.logits.float()

    return _StatefulDecoder().eval()


def wrapper_check(wrapper, module, lay: StatefulLayout, tokens: int = 12) -> dict:
    """The wrapper in torch (the module that is converted) vs one plain forward of the HF module: a prefill of
    most tokens, then decode steps, through the fp16 state buffers. Refused (exit 3) beyond WRAPPER_TOLERANCE:
    a cache that writes or reads the wrong positions shows here, before any conversion. Not Core ML."""
    import torch
    n = max(3, min(tokens, lay.context_length))
    ids = torch.from_numpy(np.random.default_rng(0).integers(0, lay.vocab_size, (1, n)))
    split = n - 2
    with torch.no_grad():
        ref = module(input_ids=ids).logits[0].float()
        rows = [wrapper(ids[:, :split].int(), torch.from_numpy(causal_mask(0, split)).float())[0]]
        for t in range(split, n):
            rows.append(wrapper(ids[:, t:t + 1].int(), torch.from_numpy(causal_mask(t, 1)).float())[0])
        got = torch.cat(rows)
        for name in STATES:                                  # the state starts empty in Core ML too
            getattr(wrapper, name).zero_()
    diff = float((got - ref).abs().max()) / max(float(ref.abs().max()), 1e-6)
    agree = float((got.argmax(-1) == ref.argmax(-1)).float().mean())
    report = {"tokens": n, "prefill_tokens": split, "decode_steps": n - split,
              "max_abs_logit_diff_relative": float(f"{diff:.3g}"), "argmax_agreement": agree,
              "how": "torch eager: the stateful wrapper (fp16 state buffers) vs one full forward of the fp32 "
                     "module on random token ids; checks the cache logic that is converted, not Core ML"}
    if not np.isfinite(diff) or diff > WRAPPER_TOLERANCE:
        raise UnsupportedError(f"Core ML export of {lay.model_type}: the stateful wrapper does not reproduce the "
                               f"model (max |Δlogit| {diff:.3g} of the largest logit, > {WRAPPER_TOLERANCE}); "
                               "its attention does not take the state-buffer cache", wrapper_check=report)
    return report


# ---------------------------------------------------------------- export and conversion

def _exported(wrapper, lay: StatefulLayout):
    """torch.export with a dynamic sequence and total length; `aten.alias` nodes (HF's `logits_to_keep=0`
    slice), which coremltools 9 has no converter for, are replaced by their input (an alias is the same
    tensor)."""
    import torch
    from torch.export import Dim
    ids = torch.zeros((1, 3), dtype=torch.int32)
    mask = torch.from_numpy(causal_mask(4, 3)).float()
    dyn = Dim.DYNAMIC
    with torch.no_grad():
        prog = torch.export.export(wrapper, (ids, mask),
                                   dynamic_shapes={"input_ids": {1: dyn}, "causal_mask": {2: dyn, 3: dyn}})
        prog = prog.run_decompositions({})
    graph = prog.graph_module.graph
    for node in list(graph.nodes):
        if node.op == "call_function" and node.target is torch.ops.aten.alias.default:
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)
    prog.graph_module.recompile()
    return prog


def convert(module, lay: StatefulLayout, compute: str):
    """The stateful ML Program at `compute` precision ("fp16" or "fp32"), weights float."""
    import coremltools as ct
    wrapper = _wrapper(module, lay)
    check = wrapper_check(wrapper, module, lay)
    ctx = lay.context_length
    seq, total = ct.RangeDim(1, ctx, default=1), ct.RangeDim(1, ctx, default=1)
    try:
        prog = _exported(wrapper, lay)
        with contextlib.redirect_stderr(io.StringIO()):                  # per-pass progress bars
            model = ct.convert(
                prog, convert_to="mlprogram", minimum_deployment_target=getattr(ct.target, MIN_TARGET),
                inputs=[ct.TensorType(name="input_ids", shape=(1, seq), dtype=np.int32),
                        ct.TensorType(name="causal_mask", shape=(1, 1, seq, total), dtype=np.float16)],
                states=[ct.StateType(wrapped_type=ct.TensorType(shape=tuple(lay.state_shape), dtype=np.float16),
                                     name=n) for n in STATES],
                outputs=[ct.TensorType(name="logits", dtype=np.float32)],
                compute_precision=ct.precision.FLOAT16 if compute == "fp16" else ct.precision.FLOAT32,
                skip_model_load=True)
    except Exception as exc:          # torch.export and coremltools raise many types: "cannot take this model"
        raise UnsupportedError(f"Core ML export of {lay.model_type} failed: {type(exc).__name__}: "
                               f"{str(exc)[:400]}", model_type=lay.model_type) from exc
    return model, check


def _base(module, lay: StatefulLayout, compute: str, work: Path | None):
    """The float conversion at `compute`, kept in `work` between precisions (converted once per compute)."""
    import coremltools as ct
    from pocketml.convert.exporters.coreml import reproducible_package
    cached = Path(work) / f"coreml-{compute}-ctx{lay.context_length}.mlpackage" if work is not None else None
    meta = cached.with_suffix(".json") if cached is not None else None
    if cached is not None and cached.is_dir() and meta.is_file():
        return ct.models.MLModel(str(cached), skip_model_load=True), json.loads(meta.read_text())
    model, check = convert(module, lay, compute)
    if cached is not None:                          # the .json is written last: a half-saved package is redone
        shutil.rmtree(cached, ignore_errors=True)
        model.save(str(cached))
        reproducible_package(cached)
        meta.write_text(json.dumps(check))
        model = ct.models.MLModel(str(cached), skip_model_load=True)
    return model, check


def _int8_config():
    from coremltools.optimize.coreml import OpLinearQuantizerConfig
    return OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8", granularity="per_channel",
                                   weight_threshold=WEIGHT_THRESHOLD)


def quantize(model, precision: str, *, block_size: int = 32, keep: dict | None = None):
    """Weight-only int8 (per channel) or int4 (per block) of a float model; `keep`: group → const names kept
    at int8 in an int4 model. Returns (model, record)."""
    from coremltools.optimize.coreml import OpLinearQuantizerConfig, OptimizationConfig, linear_quantize_weights
    if precision in ("fp32", "fp16"):
        return model, {"weights": f"float{precision[2:]}", "compute": f"float{precision[2:]}"}
    if precision == "int4":
        cfg = OptimizationConfig(
            global_config=OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int4", granularity="per_block",
                                                  block_size=block_size, weight_threshold=WEIGHT_THRESHOLD),
            op_name_configs={name: _int8_config() for names in (keep or {}).values() for name in names} or None)
        record = {"weights": f"int4 block {block_size}", "block_size": block_size, "compute": "float16",
                  "scheme": "linear_symmetric per_block (constexpr_blockwise_shift_scale)"}
        if block_size != 32:
            record["method"] = (f"weight-only int4, symmetric blocks of {block_size} (coremltools linear_quantize_"
                                "weights per_block); fp16 activations, KV cache as float16 model state (iOS 18)")
        if keep:
            record["int8_groups"] = sorted(keep)
    else:
        cfg = OptimizationConfig(global_config=_int8_config())
        record = {"weights": "int8 per channel", "compute": "float16",
                  "scheme": "linear_symmetric per_channel (constexpr_blockwise_shift_scale)"}
    with np.errstate(divide="ignore", invalid="ignore"), contextlib.redirect_stderr(io.StringIO()):
        model = linear_quantize_weights(model, cfg)          # all-zero blocks (a padding row): scale 0, data 0
    return model, record


def _check_blocks(config, block: int) -> None:
    """Every weight's input width must split into whole blocks (SmolLM2-135M's 576 takes 32, not 128)."""
    cfg = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    widths = (cfg.hidden_size, cfg.num_attention_heads * head_dim, cfg.intermediate_size)
    bad = sorted({w for w in widths if w % block})
    if bad:
        raise UnsupportedError(f"int4 blocks of {block}: weight input width(s) {bad} not a multiple of {block} "
                               f"(choose block size {min(INT4_BLOCKS)})", block_size=block)


def kept_consts(model, module, config, groups) -> dict[str, list[str]]:
    """Weight groups (convert/llm/groups.py) → the model's weight const names (the exported parameter names:
    p_model_<module path>_weight[_to_fp16]). Refused (exit 3) when a group has none."""
    from coremltools.optimize.coreml import get_weights_metadata

    from .groups import check, torch_modules
    names = {id(m): n for n, m in module.named_modules()}
    with contextlib.redirect_stderr(io.StringIO()):                      # its progress bar
        consts = list(get_weights_metadata(model, weight_threshold=WEIGHT_THRESHOLD))
    table = torch_modules(module, config)
    out = {}
    for group in check(groups, config):
        stems = {f"p_{WRAPPED}_{names[id(m)].replace('.', '_')}_weight" for m in table[group]}
        found = sorted(c for c in consts if any(c == s or c.startswith(s + "_to_fp") for s in stems))
        if not found:
            raise UnsupportedError(f"weight group {group!r}: no Core ML weight constant named after "
                                   f"{sorted(stems)[:3]}: its weights cannot be kept int8")
        out[group] = found
    return out


# ---------------------------------------------------------------- one call

def export_spec(spec, out_dir: Path, precision: str = "fp16", *, work: Path | None = None, block_size: int = 32,
                keep_int8=(), **options) -> dict:
    """`precision` Core ML package of a `convert.llm.spec.CausalLMSpec` into `out_dir`: model.mlpackage,
    tokenizer.json, tokenizer_config.json and coreml_config.json. `work` keeps the float conversion between
    precisions. `block_size` applies to int4; `keep_int8` (weight groups) to int4 only. Any other option is
    refused (exit 2) rather than ignored. Returns {layout, io, quantization, tokens, files, notes, timings}."""
    from pocketml.convert.exporters.coreml import reproducible_package

    from .onnx_export import token_facts, write_tokenizer_files
    if options:
        raise UsageError(f"Core ML language-model export: option(s) {sorted(options)} not understood (it takes "
                         "block_size and keep_int8)")
    if precision not in PRECISIONS:
        raise UsageError(f"Core ML LM precision {precision!r}: choose from {', '.join(PRECISIONS)}")
    if keep_int8 and precision != "int4":
        raise UsageError(f"keep_int8 {list(keep_int8)} applies to int4 only, not {precision}")
    if precision == "int4":
        if block_size not in INT4_BLOCKS:
            raise UsageError(f"int4 block size {block_size}: choose from {INT4_BLOCKS}")
        _check_blocks(spec.config, block_size)
    lay = layout(spec.config, spec.context)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t = time.perf_counter()
    model, check = _base(spec.module.float().eval(), lay, "fp32" if precision == "fp32" else "fp16", work)
    timings["convert_s"] = round(time.perf_counter() - t, 2)
    t = time.perf_counter()
    keep = kept_consts(model, spec.module, spec.config, keep_int8) if keep_int8 else None
    model, record = quantize(model, precision, block_size=block_size, keep=keep)
    model.save(str(out_dir / MODEL_FILE))
    reproducible_package(out_dir / MODEL_FILE)
    timings["quantize_save_s"] = round(time.perf_counter() - t, 2)
    record = {**record, "kv_cache": "float16 (Core ML states are float16)", "minimum_deployment_target": MIN_TARGET,
              "wrapper_check": check}
    facts = token_facts(spec.config, spec.tokenizer_json, bos_token_id=spec.bos_token_id,
                        eos_token_ids=list(spec.eos_token_ids), pad_token_id=spec.pad_token_id)
    write_tokenizer_files(out_dir, spec.tokenizer_json, facts, lay.context_length, spec.chat_template)
    cfg = {"model": MODEL_FILE, "context_length": lay.context_length, "bos_token_id": facts["bos_token_id"],
           "eos_token_ids": facts["eos_token_ids"], "pad_token_id": facts["pad_token_id"], "layout": lay.as_dict(),
           "quantization": {k: v for k, v in record.items() if k != "wrapper_check"}}
    (out_dir / CONFIG_FILE).write_text(json.dumps(cfg, indent=1), encoding="utf-8")
    files = {p.name: _size(p) for p in sorted(out_dir.iterdir())}
    notes = ["Core ML numerics not run: Core ML predictions need macOS (or iOS); the package was checked "
             "structurally, and its torch wrapper against the reference (quantization.wrapper_check)"]
    return {"layout": lay.as_dict(), "io": lay.io(), "quantization": record, "tokens": facts, "files": files,
            "notes": notes, "timings": timings}


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size
