"""Hugging Face causal LM → ONNX decoder with the KV cache as explicit inputs and outputs.

The graph (one file, prefill and decode alike, the layout ONNX Runtime GenAI loads):

    input_ids [batch, seq] int64, attention_mask [batch, past + seq] int64, position_ids [batch, seq] int64,
    past_key_values.N.key / .value [batch, kv_heads, past, head_dim]
      → logits [batch, seq, vocab] float32, present.N.key / .value [batch, kv_heads, past + seq, head_dim]

`_FlatCacheDecoder` wraps the HF module: it rebuilds a `DynamicCache` from the flat past tensors and
hands the model ready-made 4D additive masks (a dict per attention type for models with sliding-window
layers, e.g. Gemma 3), so the exported graph holds no transformers mask machinery. The export is
torch.onnx's dynamo exporter; precisions derive from the fp32 file:

    fp16  onnxruntime float16 converter: weights, activations and the KV cache fp16; logits float32
    int8  MatMulNBits with 8-bit weights in blocks of 32, activations int8 per block at run time, the
          embedding table in 8-bit blocks (quantize_dynamic's per-tensor scheme is `int8_scheme="dynamic"`)
    int4  MatMulNBitsQuantizer: MatMul weights 4-bit symmetric in blocks of 32 (or 128), int8 compute
          (accuracy_level 4); the embedding table as GatherBlockQuantized (4-bit, same blocks)

A tied LM head (SmolLM2, Gemma 3) is untied for int8/int4 so the head is quantized too.

Next to the model: `genai_config.json` (ONNX Runtime GenAI's layout), `tokenizer.json`, and
`tokenizer_config.json` (bos/eos strings and the chat template, which the pocketml runtime renders).
"""
from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path

OPSET = 21
PRECISIONS = ("fp32", "fp16", "int8", "int4")
INT4_BLOCKS = (32, 128)
# the fused graph (convert/llm/onnx_fusions.py) against the unfused one, both with float compute, relative to the
# largest logit (the same arithmetic reordered: SmolLM2 int4 measured 5e-6). fp32 would fuse as exactly; it is
# left unfused (the reference-like artifact, and genai_config's share-buffer flag stays as it was); fp16 is not
# fused (onnxruntime's CPU kernels for the fused ops are float32)
FUSED_PRECISIONS = ("int8", "int4")
FUSION_TOLERANCE = 1e-4
WEIGHTS_FROM = ("gguf", "requantize")      # int4 / int8 of a GGUF source: its own blocks, or re-quantized (gguf_weights)
# int8 for LMs: blockwise activations survive the outliers of small LMs, per-tensor ones do not (SmolLM2-135M,
# 512 tokens of CPython docstrings, vs fp32: blocks +0.7 % perplexity, top-1 0.96; dynamic +92 %, top-1 0.58)
INT8_SCHEMES = {
    "blocks": "int8 weights in symmetric blocks of 32, activations int8 per block at run time (MatMulNBits "
              "bits=8, accuracy_level 4); embedding table int8 (GatherBlockQuantized bits=8)",
    "dynamic": "dynamic int8: weights int8 per output channel, activations int8 per tensor at run time "
               "(onnxruntime quantize_dynamic), embedding table int8",
}
PAST_KEY, PAST_VALUE = "past_key_values.%d.key", "past_key_values.%d.value"
PRESENT_KEY, PRESENT_VALUE = "present.%d.key", "present.%d.value"
# ONNX Runtime GenAI's model types for the architectures pocketml exports (its `model.type`)
GENAI_TYPES = {"llama": "llama", "gemma3_text": "gemma3_text", "qwen2": "qwen2", "mistral": "mistral"}
SINGLE_FILE_LIMIT = 1_800_000_000      # protobuf's 2 GiB cap, with room: larger models use external data


@dataclass(frozen=True)
class DecoderLayout:
    """What a runtime needs to drive the graph (and what the manifest states as the KV-cache layout)."""
    model_type: str
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int
    vocab_size: int
    context_length: int
    sliding_window: int | None
    layer_types: tuple[str, ...]

    @property
    def kv_shape(self) -> str:
        return f"[batch, {self.num_kv_heads}, past, {self.head_dim}]"

    def input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", "position_ids", *self.past_names()]

    def past_names(self) -> list[str]:
        return [n % i for i in range(self.num_layers) for n in (PAST_KEY, PAST_VALUE)]

    def output_names(self) -> list[str]:
        return ["logits", *[n % i for i in range(self.num_layers) for n in (PRESENT_KEY, PRESENT_VALUE)]]

    def kv_bytes_per_token(self, itemsize: int) -> int:
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * itemsize

    def as_dict(self) -> dict:
        return {**asdict(self), "layer_types": list(self.layer_types), "kv_shape": self.kv_shape,
                "inputs": self.input_names(), "outputs": self.output_names()}


def layout(config) -> DecoderLayout:
    """The decoder layout from a Hugging Face text config."""
    cfg = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    window = getattr(cfg, "sliding_window", None)
    types = tuple(getattr(cfg, "layer_types", None) or ["full_attention"] * cfg.num_hidden_layers)
    return DecoderLayout(model_type=cfg.model_type, num_layers=cfg.num_hidden_layers, num_heads=heads,
                         num_kv_heads=getattr(cfg, "num_key_value_heads", None) or heads, head_dim=head_dim,
                         hidden_size=cfg.hidden_size, vocab_size=cfg.vocab_size,
                         context_length=cfg.max_position_embeddings,
                         sliding_window=window if "sliding_attention" in types else None, layer_types=types)


# ---------------------------------------------------------------- the export wrapper

def _wrapper(module, lay: DecoderLayout):
    import torch
    from transformers.cache_utils import DynamicCache

    class _FlatCacheDecoder(torch.nn.Module):
        """(input_ids, attention_mask, position_ids, *flat past) → (logits, *flat present)."""

        def __init__(self):
            super().__init__()
            self.model = module

        def forward(self, input_ids, attention_mask, position_ids, *past):
            cache = DynamicCache()
            for i in range(lay.num_layers):
                cache.update(past[2 * i], past[2 * i + 1], i)
            dtype = self.model.get_input_embeddings().weight.dtype
            mask = _additive_mask(attention_mask, input_ids.shape[1], dtype, None)
            if lay.sliding_window is not None:
                mask = {"full_attention": mask,
                        "sliding_attention": _additive_mask(attention_mask, input_ids.shape[1], dtype,
                                                            lay.sliding_window)}
            out = self.model(input_ids=input_ids, attention_mask=mask, position_ids=position_ids,
                             past_key_values=cache, use_cache=True, return_dict=True)
            present = [t for layer in out.past_key_values.layers for t in (layer.keys, layer.values)]
            return (out.logits.float(), *present)

    return _FlatCacheDecoder().eval()


def _additive_mask(attention_mask, q_len, dtype, window):
    """[batch, 1, seq, past + seq]: 0 where a query may attend (causal, not padding, inside the window),
    the dtype's minimum elsewhere. Queries sit at the last `q_len` positions of the mask."""
    import torch
    total = attention_mask.shape[1]
    k = torch.arange(total, device=attention_mask.device)
    q = torch.arange(q_len, device=attention_mask.device) + (total - q_len)
    allowed = k[None, :] <= q[:, None]
    if window is not None:
        allowed = allowed & (k[None, :] > q[:, None] - window)
    allowed = allowed[None, None] & (attention_mask[:, None, None, :] > 0)
    zero = torch.zeros((), dtype=dtype)
    return torch.where(allowed, zero, torch.tensor(torch.finfo(dtype).min, dtype=dtype))


def _examples(lay: DecoderLayout, batch=2, past=3, seq=2):
    import torch
    ids = torch.randint(0, lay.vocab_size, (batch, seq), dtype=torch.int64)
    mask = torch.ones(batch, past + seq, dtype=torch.int64)
    pos = torch.arange(past, past + seq, dtype=torch.int64)[None].expand(batch, seq).contiguous()
    kv = [torch.randn(batch, lay.num_kv_heads, past, lay.head_dim) * 0.1 for _ in range(2 * lay.num_layers)]
    return (ids, mask, pos, *kv)


def export_fp32(module, config, dst: Path, *, opset: int = OPSET) -> DecoderLayout:
    """Export the fp32 decoder graph to `dst` (build-machine metadata stripped). Returns its layout."""
    import torch
    from torch.export import Dim

    from pocketml.runtime.errors import UnsupportedError

    lay = layout(config)
    module = module.float().eval()
    wrapper = _wrapper(module, lay)
    dyn = Dim.DYNAMIC
    shapes = ({0: dyn, 1: dyn}, {0: dyn, 1: dyn}, {0: dyn, 1: dyn},
              tuple({0: dyn, 2: dyn} for _ in range(2 * lay.num_layers)))      # *past arrives as one tuple
    dst = Path(dst)
    try:
        with torch.no_grad():
            prog = torch.onnx.export(wrapper, _examples(lay), dynamo=True, opset_version=opset,
                                     input_names=lay.input_names(), output_names=lay.output_names(),
                                     dynamic_shapes=shapes, verbose=False, optimize=True)
    except Exception as exc:          # the exporter raises many types; all mean "cannot take this model"
        raise UnsupportedError(f"ONNX export of {lay.model_type} failed: {type(exc).__name__}: "
                               f"{str(exc)[:400]}", model_type=lay.model_type) from exc
    model = prog.model_proto
    _name_dims(model, lay)
    _save(model, dst)
    strip(dst)
    return lay


def _name_dims(model, lay: DecoderLayout) -> None:
    """The exporter's symbols (s10, s69 + s70 …) → the names GenAI's own models use, on the graph's
    inputs and outputs; intermediate shape hints go (onnxruntime infers them again)."""
    b, s, t, p = "batch_size", "sequence_length", "total_sequence_length", "past_sequence_length"
    names = {"input_ids": [b, s], "attention_mask": [b, t], "position_ids": [b, s], "logits": [b, s, None]}
    names.update({n: [b, None, p, None] for n in lay.past_names()})
    names.update({n: [b, None, t, None] for n in lay.output_names()[1:]})
    for vi in [*model.graph.input, *model.graph.output]:
        for dim, name in zip(vi.type.tensor_type.shape.dim, names.get(vi.name, [])):
            if name is not None:
                dim.dim_param = name
    del model.graph.value_info[:]


def _save(model, dst: Path) -> None:
    """Save an ONNX model, with external data (`<name>.data`) only when one file cannot hold it."""
    import onnx
    large = model.ByteSize() > SINGLE_FILE_LIMIT if hasattr(model, "ByteSize") else False
    dst.parent.mkdir(parents=True, exist_ok=True)
    if large:
        onnx.save(model, str(dst), save_as_external_data=True, all_tensors_to_one_file=True,
                  location=dst.name + ".data", size_threshold=1024)
    else:
        onnx.save(model, str(dst))


def _copy(src: Path, dst: Path) -> None:
    """Copy an ONNX file; one with external data is re-saved so its data file is named after `dst`."""
    data = src.with_name(src.name + ".data")
    if data.exists():
        import onnx
        _save(onnx.load(str(src)), dst)
    else:
        shutil.copyfile(src, dst)


def strip(path: Path) -> int:
    """Build-machine metadata out (the ONNX exporter's shared function)."""
    from pocketml.convert.exporters.onnx import strip_build_metadata
    return strip_build_metadata(path)


# ---------------------------------------------------------------- precisions

def quantize(src: Path, dst: Path, precision: str, *, block_size: int = 32, keep_float=(), keep_int8=(),
             int8_scheme: str = "blocks", gguf: dict | None = None, accuracy_level: int = 4) -> dict:
    """Derive `precision` from the fp32 graph `src`; returns the quantization record for the manifest.
    `keep_float` / `keep_int8`: node names left float / kept at 8 bits in an int4 graph (a
    mixed-precision search's choice). `int8_scheme`: "blocks" (MatMulNBits 8-bit, the default) or
    "dynamic" (quantize_dynamic, per-tensor activations: measured far worse on SmolLM2, see INT8_SCHEMES).
    `gguf` ({path, sha256}: `gguf_weights`): int4 / int8 carry that GGUF's own blocks (gguf_carry.py) at
    MatMulNBits `accuracy_level` instead of re-quantizing the fp32 weights."""
    import onnx

    from pocketml.runtime.errors import UsageError
    if precision not in PRECISIONS:
        raise UsageError(f"ONNX LM precision {precision!r}: choose from {', '.join(PRECISIONS)}")
    if precision == "int4" and block_size not in INT4_BLOCKS:
        raise UsageError(f"int4 block size {block_size}: choose from {INT4_BLOCKS}")
    if int8_scheme not in INT8_SCHEMES:
        raise UsageError(f"int8 scheme {int8_scheme!r}: choose from {', '.join(INT8_SCHEMES)}")
    src, dst = Path(src), Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    if precision == "fp32":
        _copy(src, dst)
        record = {"method": "none", "weights": "float32", "kv_cache": "float32"}
    elif precision == "fp16":
        record = _fp16(onnx.load(str(src)), dst)
    else:
        model = onnx.load(str(src))
        untied = _untie_lm_head(model)
        if gguf is not None:
            record = _carried(model, dst, precision, gguf, list(keep_float), list(keep_int8), accuracy_level)
        elif precision == "int8" and int8_scheme == "dynamic":
            record = _int8_dynamic(model, dst, list(keep_float))
        else:
            bits = 8 if precision == "int8" else 4
            block = 32 if precision == "int8" else block_size
            record = _blocks(model, dst, bits, block, list(keep_float), list(keep_int8))
        record["untied"] = untied
    record["float_nodes"] = list(keep_float)
    record["stripped_metadata_entries"] = strip(dst)
    record["nodes"] = _op_counts(dst)
    return record


def _untie_lm_head(model) -> list[str]:
    """A tied LM head exports as MatMul(x, Transpose(embedding table)); the quantizers only take a
    MatMul whose weight is an initializer. Store the transposed table as the head's own weight (the
    quantized file then holds two quantized copies, each far smaller than the float table). Returns
    the tables untied."""
    from onnx import numpy_helper
    inits = {i.name: i for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    untied = []
    for node in model.graph.node:
        t = producer.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) > 1 else None
        if t is None or t.op_type != "Transpose" or t.input[0] not in inits:
            continue
        perm = next((list(a.ints) for a in t.attribute if a.name == "perm"), [1, 0])
        w = numpy_helper.to_array(inits[t.input[0]])
        if w.ndim != 2 or perm != [1, 0]:
            continue
        name = t.input[0] + ".T"
        model.graph.initializer.append(numpy_helper.from_array(w.T.copy(), name))
        node.input[1] = name
        untied.append(t.input[0])
    used = {x for n in model.graph.node for x in n.input}
    dead = [n for n in model.graph.node if n.op_type == "Transpose" and n.output[0] not in used]
    for n in dead:
        model.graph.node.remove(n)
    return untied


def _carried(model, dst: Path, precision: str, gguf: dict, keep_float: list[str], keep_int8: list[str],
             accuracy_level: int) -> dict:
    """The GGUF's own blocks in place of the MatMul weights and embedding tables holding its values
    (convert/llm/gguf_carry.py); a weight it does not hold is re-quantized as `_blocks` would."""
    from .gguf_carry import carry
    gathers = _embedding_gathers(model)
    record = carry(model, gguf["path"], precision, accuracy_level=accuracy_level,
                   expected_sha256=gguf.get("sha256"), skip=[*keep_float, *keep_int8])
    names = {n.name for n in model.graph.node}
    left = [n for n in record.pop("left") + [g for g in gathers if g in names] if n not in keep_float]
    bits = 8 if precision == "int8" else 4
    model = _matmul_nbits(model, 8, 32, [n for n in left if n in keep_int8 or bits == 8])
    model = _matmul_nbits(model, 4, 32, [n for n in left if n not in keep_int8 and bits == 4])
    _gather_8bit(model, [n for n in left if n in gathers], 32)
    _save(model, dst)
    if left:
        record["requantized_nodes"] = left
    if keep_int8:
        record["int8_nodes"] = sorted(set(keep_int8))
    return record


def gguf_weights(spec, precision: str, weights_from: str | None) -> tuple[dict | None, str | None]:
    """Where an int4 / int8 graph's weights come from: ({path, sha256} of the GGUF to carry, None), or
    (None, why not carried). `weights_from`: "gguf" (carry, or refuse with exit 3 naming each tensor that
    cannot be), "requantize" (from the fp32 weights), None (carry when the source is a GGUF whose matrices
    are all in types carried into `precision`: Q4_0 / Q4_1 (+ Q8_0) for int4, Q8_0 for int8)."""
    from pocketml.runtime.errors import UnsupportedError, UsageError
    from pocketml.runtime.gguf import read_gguf

    from . import gguf_carry
    if weights_from not in (None, *WEIGHTS_FROM):
        raise UsageError(f"weights_from {weights_from!r}: choose from {', '.join(WEIGHTS_FROM)}")
    if weights_from == "requantize" or precision not in gguf_carry.PRECISION_TYPES:
        return None, "re-quantized from the fp32 weights" + (" (asked)" if weights_from else "")
    path = gguf_carry.gguf_path(spec) if spec.gguf else None
    if path is None:
        if weights_from == "gguf":
            raise UnsupportedError(f"{spec.name}: weights_from='gguf' needs a GGUF source still on disk; the source "
                                   f"is {spec.source.get('kind')} {spec.source.get('id')}")
        return None, "re-quantized from the fp32 weights (the source is not a GGUF file on disk)"
    summary = read_gguf(path)
    if weights_from == "gguf":
        gguf_carry.check_carriable(summary, precision)
    elif why := gguf_carry.refusals(summary, precision):
        return None, ("re-quantized from the fp32 weights: the GGUF's blocks are not carried into "
                      f"{precision} ({why[0]['node']} is {why[0]['op']}: {why[0]['reason']})")
    return {"path": str(path), "sha256": spec.source.get("sha256")}, None


def _fuse(path: Path, lay: DecoderLayout) -> dict:
    """onnx_fusions (RMSNorm, residual + RMSNorm, attention → GroupQueryAttention) on the written graph,
    kept only when its logits match the unfused graph's with float compute (FUSION_TOLERANCE): the counts
    fused and the measured difference, or why the graph was left unfused."""
    import onnx

    from .onnx_fusions import fuse, logit_difference
    if path.with_name(path.name + ".data").exists():
        return {"kept": False, "why": "a graph with external data is not fused (the self-check needs it in memory)"}
    model = onnx.load(str(path))
    done = fuse(model, lay, lay.context_length)
    if not any(done.values()):
        return {**done, "kept": False, "why": "no pattern matched"}
    try:
        diff = logit_difference(onnx.load(str(path)), model, lay)
    except Exception as exc:              # onnxruntime refusing the fused graph: keep the unfused one
        return {**done, "kept": False, "why": f"onnxruntime: {type(exc).__name__}: {str(exc)[:200]}"}
    tol = FUSION_TOLERANCE
    if not diff <= tol:
        return {**done, "kept": False, "why": f"fused logits differ by {diff:.2e} (relative), more than {tol:.0e}"}
    _save(model, path)
    return {**done, "kept": True, "max_logit_difference": diff}


def _share_kv_buffer(genai_json: Path) -> None:
    """GroupQueryAttention writes the new keys and values into the cache in place when past and present
    are one buffer: say so to ONNX Runtime GenAI and the pocketml runtime (`past_present_share_buffer`)."""
    cfg = json.loads(genai_json.read_text(encoding="utf-8"))
    cfg["search"]["past_present_share_buffer"] = True
    genai_json.write_text(json.dumps(cfg, indent=1), encoding="utf-8")


def _fp16(model, dst: Path) -> dict:
    from onnxruntime.transformers.float16 import convert_float_to_float16
    model = convert_float_to_float16(model, keep_io_types=["logits"], disable_shape_infer=True)
    _save(model, dst)
    return {"method": "fp16 weights, activations and KV cache (onnxruntime float16 converter); logits float32",
            "weights": "float16", "kv_cache": "float16"}


def _int8_dynamic(model, dst: Path, keep_float: list[str]) -> dict:
    import logging
    import tempfile

    from onnxruntime.quantization import QuantType, quantize_dynamic
    with tempfile.TemporaryDirectory(prefix="pocketml-int8-") as tmp:
        src = Path(tmp) / "untied.onnx"
        _save(model, src)
        level = logging.getLogger().level
        logging.getLogger().setLevel(logging.ERROR)      # "consider pre-processing": shape inference, not needed here
        try:
            quantize_dynamic(str(src), str(dst), per_channel=True, weight_type=QuantType.QInt8,
                             op_types_to_quantize=["MatMul", "Gather"], nodes_to_exclude=keep_float)
        finally:
            logging.getLogger().setLevel(level)
    return {"method": INT8_SCHEMES["dynamic"], "scheme": "dynamic", "weights": "int8 per channel (MatMul, Gather)",
            "kv_cache": "float32"}


def _blocks(model, dst: Path, bits: int, block: int, keep_float: list[str], keep_int8: list[str]) -> dict:
    """Every MatMul weight and the embedding table in `bits`-bit symmetric blocks along the reduced
    axis; `keep_int8` nodes at 8 bits, `keep_float` untouched."""
    import logging
    matmuls = [n.name for n in model.graph.node if n.op_type == "MatMul" and n.name not in keep_float]
    gathers = [n for n in _embedding_gathers(model) if n not in keep_float]
    eight = set(keep_int8) | (set(matmuls) | set(gathers) if bits == 8 else set())
    logger = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")
    level = logger.level
    logger.setLevel(logging.ERROR)                       # per-node INFO lines
    try:
        model = _matmul_nbits(model, 8, 32, [m for m in matmuls if m in eight])
        if bits == 4:
            model = _matmul_nbits(model, 4, block, [m for m in matmuls + gathers if m not in eight])
    finally:
        logger.setLevel(level)
    tables = _gather_8bit(model, [g for g in gathers if g in eight], 32)
    _save(model, dst)
    what = {8: "int8 weights in symmetric blocks of 32, activations quantized to int8 per block at run time "
               "(MatMulNBits bits=8, accuracy_level 4); the embedding table int8 (GatherBlockQuantized bits=8)",
            4: f"int4 weights, symmetric, blocks of {block}: MatMulNBits (int8 compute, accuracy_level 4) and "
               "GatherBlockQuantized for the embedding table"}[bits]
    record = {"method": what, "weights": f"int{bits} block {block if bits == 4 else 32}", "kv_cache": "float32",
              "block_size": block if bits == 4 else 32}
    if bits == 8:
        record["scheme"] = "blocks"
    if bits == 4 and (keep_int8 or tables):
        record["int8_nodes"] = sorted(set(keep_int8))
    return record


def _embedding_gathers(model) -> list[str]:
    """Gather nodes reading a 2-D constant table (embeddings, not shape arithmetic)."""
    import numpy as np
    dims = {i.name: list(i.dims) for i in model.graph.initializer}
    return [n.name for n in model.graph.node if n.op_type == "Gather" and len(dims.get(n.input[0], [])) == 2
            and int(np.prod(dims[n.input[0]])) >= 1024]


def _matmul_nbits(model, bits: int, block: int, include: list[str]):
    """onnxruntime's MatMulNBitsQuantizer over the named MatMul / Gather nodes (Gather: 4-bit only)."""
    import numpy as np
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer
    if not include:
        return model
    cfg = DefaultWeightOnlyQuantConfig(block_size=block, is_symmetric=True, accuracy_level=4, bits=bits,
                                       op_types_to_quantize=("MatMul", "Gather") if bits == 4 else ("MatMul",),
                                       quant_axes=(("Gather", 1),))
    include = set(include)                  # the quantizer's nodes_to_include adds to its op types: exclude instead
    exclude = [n.name for n in model.graph.node if n.op_type in ("MatMul", "Gather") and n.name not in include]
    q = MatMulNBitsQuantizer(model, nodes_to_exclude=exclude, algo_config=cfg)
    with np.errstate(divide="ignore", invalid="ignore"):     # all-zero blocks (a padding row): scale 0, handled
        q.process()
    return q.model.model


def _gather_8bit(model, names: list[str], block: int) -> list[str]:
    """Embedding Gathers → GatherBlockQuantized with 8-bit blocks (uint8 data, zero point 128: symmetric),
    which onnxruntime's quantizer only writes at 4 bits. Returns the tables quantized."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper
    inits = {i.name: i for i in model.graph.initializer}
    done = []
    for node in [n for n in model.graph.node if n.name in names and n.input[0] in inits]:
        w = numpy_helper.to_array(inits[node.input[0]]).astype(np.float32)
        if w.ndim != 2 or w.shape[1] % block:
            continue
        blocks = w.reshape(w.shape[0], -1, block)
        scale = np.maximum(np.abs(blocks).max(-1), 1e-12) / 127.0
        q = (np.clip(np.round(blocks / scale[..., None]), -127, 127) + 128).astype(np.uint8).reshape(w.shape)
        base = node.input[0]
        model.graph.initializer.extend([
            helper.make_tensor(base + "_Q8", TensorProto.UINT8, q.shape, q.tobytes(), raw=True),
            numpy_helper.from_array(scale.astype(np.float32), base + "_scales8"),
            helper.make_tensor(base + "_zp8", TensorProto.UINT8, scale.shape, np.full(scale.shape, 128, np.uint8).tobytes(),
                               raw=True)])
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        new = helper.make_node("GatherBlockQuantized", [base + "_Q8", node.input[1], base + "_scales8", base + "_zp8"],
                               list(node.output), name=node.name + "_Q8", domain="com.microsoft", gather_axis=axis,
                               quantize_axis=1, block_size=block, bits=8)
        model.graph.node.insert(list(model.graph.node).index(node), new)
        model.graph.node.remove(node)
        done.append(base)
    used = {x for n in model.graph.node for x in n.input}
    keep = [i for i in model.graph.initializer if i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    if done and not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return done


def _op_counts(path: Path) -> dict:
    import onnx
    counts: dict[str, int] = {}
    for node in onnx.load(str(path), load_external_data=False).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))


# ---------------------------------------------------------------- files next to the model

def genai_config(lay: DecoderLayout, *, bos_token_id, eos_token_id, pad_token_id=None,
                 context_length: int | None = None, filename: str = "model.onnx", search: dict | None = None) -> dict:
    """The `genai_config.json` ONNX Runtime GenAI reads (its decoder-only layout, KV cache not shared
    between past and present: the graph concatenates)."""
    ctx = context_length or lay.context_length
    eos = eos_token_id if isinstance(eos_token_id, list) else [eos_token_id]
    return {
        "model": {
            "bos_token_id": bos_token_id,
            "context_length": ctx,
            "decoder": {
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "filename": filename,
                "head_size": lay.head_dim,
                "hidden_size": lay.hidden_size,
                "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask",
                           "position_ids": "position_ids", "past_key_names": PAST_KEY, "past_value_names": PAST_VALUE},
                "outputs": {"logits": "logits", "present_key_names": PRESENT_KEY, "present_value_names": PRESENT_VALUE},
                "num_attention_heads": lay.num_heads,
                "num_hidden_layers": lay.num_layers,
                "num_key_value_heads": lay.num_kv_heads,
            },
            "eos_token_id": eos if len(eos) > 1 else eos[0],
            "pad_token_id": pad_token_id if pad_token_id is not None else eos[0],
            "type": GENAI_TYPES.get(lay.model_type, lay.model_type),
            "vocab_size": lay.vocab_size,
        },
        "search": {"diversity_penalty": 0.0, "do_sample": False, "early_stopping": True, "length_penalty": 1.0,
                   "max_length": ctx, "min_length": 0, "no_repeat_ngram_size": 0, "num_beams": 1,
                   "num_return_sequences": 1, "past_present_share_buffer": False, "repetition_penalty": 1.0,
                   "temperature": 1.0, "top_k": 1, "top_p": 1.0, **(search or {})},
    }


def _token_text(tok: dict, token_id) -> str | None:
    if token_id is None:
        return None
    for added in tok.get("added_tokens", []):
        if added.get("id") == token_id:
            return added.get("content")
    vocab = tok.get("model", {}).get("vocab")
    if isinstance(vocab, dict):
        return next((t for t, i in vocab.items() if i == token_id), None)
    return None


def token_facts(config, tokenizer_json: Path, *, bos_token_id=None, eos_token_ids=None, pad_token_id=None) -> dict:
    """bos / eos / pad ids (given, else from the config and its generation config) and their strings."""
    tok = json.loads(Path(tokenizer_json).read_text(encoding="utf-8"))
    cfg = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    gen = getattr(config, "generation_config", None)
    bos = bos_token_id if bos_token_id is not None else getattr(cfg, "bos_token_id", None)
    eos = eos_token_ids if eos_token_ids is not None else getattr(gen, "eos_token_id", None) if gen else None
    eos = eos if eos is not None else getattr(cfg, "eos_token_id", None)
    eos = [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])]
    pad = pad_token_id if pad_token_id is not None else getattr(cfg, "pad_token_id", None)
    return {"bos_token_id": bos, "eos_token_ids": eos, "pad_token_id": pad, "bos_token": _token_text(tok, bos),
            "eos_token": _token_text(tok, eos[0] if eos else None), "add_bos_token": _adds_bos(tokenizer_json, bos)}


def write_sidecars(out_dir: Path, lay: DecoderLayout, tokenizer_json: Path, facts: dict, *,
                   chat_template: str | None = None, context_length: int | None = None) -> dict:
    """tokenizer.json (copied), tokenizer_config.json and genai_config.json into `out_dir`.
    Returns `facts` with the chat template and context length added."""
    out_dir = Path(out_dir)
    facts = {**facts, "chat_template": chat_template, "context_length": context_length or lay.context_length}
    write_tokenizer_files(out_dir, tokenizer_json, facts, facts["context_length"], chat_template)
    gcfg = genai_config(lay, bos_token_id=facts["bos_token_id"], eos_token_id=facts["eos_token_ids"] or [0],
                        pad_token_id=facts["pad_token_id"], context_length=facts["context_length"])
    (out_dir / "genai_config.json").write_text(json.dumps(gcfg, indent=1), encoding="utf-8")
    return facts


def write_tokenizer_files(out_dir: Path, tokenizer_json: Path, facts: dict, context_length: int,
                          chat_template: str | None = None) -> None:
    """tokenizer.json (copied) and tokenizer_config.json (bos/eos strings, the context length, the chat
    template the pocketml runtime renders): the tokenizer side files of an LM artifact (`token_facts`)."""
    out_dir = Path(out_dir)
    shutil.copyfile(tokenizer_json, out_dir / "tokenizer.json")
    tokcfg = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": facts["bos_token"],
              "eos_token": facts["eos_token"], "model_max_length": context_length,
              "add_bos_token": facts["add_bos_token"], "clean_up_tokenization_spaces": False}
    if chat_template:
        tokcfg["chat_template"] = chat_template
    (out_dir / "tokenizer_config.json").write_text(json.dumps(tokcfg, indent=1, ensure_ascii=False), encoding="utf-8")


def _adds_bos(tokenizer_json: Path, bos) -> bool:
    """Whether encoding a text (special tokens on) starts it with BOS."""
    from tokenizers import Tokenizer
    ids = Tokenizer.from_file(str(tokenizer_json)).encode("a", add_special_tokens=True).ids
    return bos is not None and bool(ids) and ids[0] == bos


# ---------------------------------------------------------------- one call

def export(module, config, tokenizer_json: Path, out_dir: Path, precision: str = "fp32", *,
           work: Path | None = None, block_size: int = 32, chat_template: str | None = None,
           context_length: int | None = None, bos_token_id=None, eos_token_ids=None, pad_token_id=None,
           **quant_options) -> dict:
    """Export `module` (a HF causal LM, eval mode, fp32) at `precision` into `out_dir`: model.onnx and
    its sidecars. `work`: a directory that keeps the fp32 graph between precisions
    (`work/decoder-fp32.onnx`, exported once); without it the graph is made in `out_dir` and removed.
    Token ids not given come from the config; `context_length` (default: the config's maximum) is what
    the sidecars declare. `quant_options`: `quantize`'s keep_float / keep_int8 / int8_scheme / gguf /
    accuracy_level, and `fuse` (default True: fp32 / int8 / int4 graphs get onnxruntime's LLM ops, `_fuse`).
    Returns {layout, quantization, tokens, files}."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    base = (Path(work) if work is not None else out_dir) / "decoder-fp32.onnx"
    lay = layout(config) if base.exists() else export_fp32(module, config, base)
    lay = replace(lay, context_length=context_length or lay.context_length)
    if groups := quant_options.pop("keep_int8_groups", ()):     # weight groups (convert/llm/groups.py) → nodes
        import onnx

        from .groups import onnx_nodes
        quant_options["keep_int8"] = onnx_nodes(onnx.load(str(base), load_external_data=False), config, groups)
    fuse = quant_options.pop("fuse", True)
    try:
        record = quantize(base, out_dir / "model.onnx", precision, block_size=block_size, **quant_options)
        if groups:
            record["int8_groups"] = list(groups)
        if fuse and precision in FUSED_PRECISIONS:
            record["fused"] = _fuse(out_dir / "model.onnx", lay)
            record["nodes"] = _op_counts(out_dir / "model.onnx")
    finally:
        if work is None:
            for p in (base, base.with_name(base.name + ".data")):
                p.unlink(missing_ok=True)
    facts = token_facts(config, tokenizer_json, bos_token_id=bos_token_id, eos_token_ids=eos_token_ids,
                        pad_token_id=pad_token_id)
    facts = write_sidecars(out_dir, lay, tokenizer_json, facts, chat_template=chat_template,
                           context_length=lay.context_length)
    if record.get("fused", {}).get("kept") and record["fused"].get("attention"):
        _share_kv_buffer(out_dir / "genai_config.json")
    files = sorted(p.name for p in out_dir.iterdir() if p.is_file())
    return {"layout": lay.as_dict(), "quantization": record, "tokens": facts, "files": files}


def export_spec(spec, out_dir: Path, precision: str = "fp32", *, work: Path | None = None, block_size: int = 32,
                keep_int8=(), weights_from: str | None = None, int4_source: str | None = None,
                accuracy_level: int = 4) -> dict:
    """`export` for a `convert.llm.spec.CausalLMSpec` (module, config, tokenizer.json, chat template,
    token ids and the context length it is built for). `keep_int8`: weight groups kept at int8 in an
    int4 graph ("embedding", "attention.<i>", "feedforward.<i>": convert/llm/groups.py).
    `weights_from` (or the recipe's name for it, `int4_source`): "gguf" | "requantize" | None (`gguf_weights`:
    a GGUF source's own blocks are carried into int4 / int8 by default); `accuracy_level`: MatMulNBits'
    compute of carried weights (4: int8 activations, the fastest; 0: float)."""
    carried, why = _carry_option(spec, precision, weights_from or int4_source, block_size, accuracy_level)
    return _noted(carried, why, export(
                  spec.module, spec.config, spec.tokenizer_json, out_dir, precision, work=work, block_size=block_size,
                  keep_int8_groups=tuple(keep_int8), **carried,
                  chat_template=spec.chat_template, context_length=spec.context, bos_token_id=spec.bos_token_id,
                  eos_token_ids=list(spec.eos_token_ids), pad_token_id=spec.pad_token_id))


def _noted(carried: dict, why: str | None, result: dict) -> dict:
    """The export's result with where its int4 / int8 weights came from (the record, and a note to log)."""
    record = result["quantization"]
    if carried:
        result["notes"] = [*result.get("notes", []), record["summary"]]
    elif why is not None:
        record.update(weights_from="requantize", not_carried=why)
    return result


def _carry_option(spec, precision: str, weights_from: str | None, block_size: int,
                  accuracy_level: int) -> tuple[dict, str | None]:
    """`quantize`'s gguf / accuracy_level keywords for `export_spec` (empty: re-quantize as before)."""
    from pocketml.runtime.errors import UsageError
    if precision not in ("int4", "int8") or weights_from == "requantize":
        _, why = gguf_weights(spec, precision, weights_from)          # checks the value
        return {}, why if spec.gguf and precision in ("int4", "int8") else None
    if block_size != 32:
        if weights_from == "gguf":
            raise UsageError(f"weights_from='gguf' carries the GGUF's blocks of 32; int4 block size {block_size} "
                             "means re-quantizing (weights_from='requantize')")
        return {}, f"re-quantized from the fp32 weights (int4 block size {block_size} asked)"
    gguf, why = gguf_weights(spec, precision, weights_from)
    return ({}, why) if gguf is None else ({"gguf": gguf, "accuracy_level": accuracy_level}, None)
