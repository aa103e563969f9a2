"""litert-torch's generative layers for a Hugging Face config: importing litert-torch without TensorFlow,
the layer configuration derived from the config (LLaMA-architecture and Gemma 3 text models), and the
re-authored module loaded from a safetensors checkpoint (convert/llm/tflite_export.py converts it)."""
from __future__ import annotations

import contextlib
import os
import sys
import types
from pathlib import Path

SUPPORTED = ("llama", "gemma3_text")
SCHEMA_ALIAS = "tensorflow.lite.python.schema_py_generated"


# ---------------------------------------------------------------- importing litert-torch without TensorFlow

@contextlib.contextmanager
def _tflite_schema_alias():
    """While the block runs, `import tensorflow.lite.python.schema_py_generated` yields
    `ai_edge_litert.schema_py_generated` (the same flatc output). Only names not already imported
    are added, and all of them are removed on exit; a real TensorFlow, if present, is used as is."""
    try:
        import tensorflow.lite.python.schema_py_generated  # noqa: F401
        yield
        return
    except ImportError:
        pass
    from ai_edge_litert import schema_py_generated
    added = []
    for name in ("tensorflow", "tensorflow.lite", "tensorflow.lite.python"):
        if name not in sys.modules:
            sys.modules[name] = types.ModuleType(name)
            added.append(name)
    sys.modules[SCHEMA_ALIAS] = schema_py_generated
    added.append(SCHEMA_ALIAS)
    try:
        yield
    finally:
        for name in added:
            sys.modules.pop(name, None)


def _generative():
    """litert-torch's generative modules. Only the one module that wants the schema imports under the
    alias, after everything it imports itself: other code that probes for TensorFlow meanwhile
    (torch._dynamo's trace rules, transformers' availability checks call importlib.util.find_spec)
    would trip over a module without a spec."""
    import importlib

    import torch._dynamo  # noqa: F401
    import litert_torch  # noqa: F401
    from litert_torch.generative.layers import model_config  # noqa: F401
    if "litert_torch.generative.layers.lora" not in sys.modules:
        with _tflite_schema_alias():
            importlib.import_module("litert_torch.generative.layers.lora")
    from litert_torch.generative.examples.gemma3 import decoder as gemma3
    from litert_torch.generative.layers import model_config as cfg
    from litert_torch.generative.utilities import converter, export_config, loader, model_builder
    from litert_torch.quantize import translate_recipe as tr
    return types.SimpleNamespace(cfg=cfg, converter=converter, export_config=export_config, loader=loader,
                                 model_builder=model_builder, gemma3=gemma3, translate=tr)


@contextlib.contextmanager
def _quiet_progress():
    """litert-torch prints a line per conversion stage unless LITERT_TORCH_SHOW_PROGRESS=n."""
    old = os.environ.get("LITERT_TORCH_SHOW_PROGRESS")
    os.environ["LITERT_TORCH_SHOW_PROGRESS"] = "n"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("LITERT_TORCH_SHOW_PROGRESS", None)
        else:
            os.environ["LITERT_TORCH_SHOW_PROGRESS"] = old


# ---------------------------------------------------------------- the litert-torch layer configuration

def _text_config(config):
    return config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config


def _refuse(model_type: str, why: str):
    from pocketml.runtime.errors import UnsupportedError
    return UnsupportedError(f"TFLite export of {model_type}: {why}", model_type=model_type)


def _rope_theta(c, default: float = 10_000.0) -> float:
    scaling = getattr(c, "rope_scaling", None)
    if scaling and scaling.get("rope_type", scaling.get("type", "default")) != "default":
        raise _refuse(c.model_type, f"rope scaling {scaling} (litert-torch's generic builder has plain RoPE only)")
    return float(getattr(c, "rope_theta", None) or default)


def _llama(g, c):
    cfg = g.cfg
    if getattr(c, "hidden_act", "silu") != "silu":
        raise _refuse(c.model_type, f"activation {c.hidden_act!r} (LLaMA builder: silu)")
    bias = bool(getattr(c, "attention_bias", False))
    norm = cfg.NormalizationConfig(type=cfg.NormalizationType.RMS_NORM, epsilon=float(c.rms_norm_eps))
    attn = cfg.AttentionConfig(num_heads=c.num_attention_heads, head_dim=_head_dim(c),
                               num_query_groups=c.num_key_value_heads or c.num_attention_heads,
                               rotary_base=_rope_theta(c), rotary_percentage=1.0, qkv_use_bias=bias,
                               output_proj_use_bias=bias)
    ff = cfg.FeedForwardConfig(type=cfg.FeedForwardType.GATED, activation=cfg.ActivationConfig(cfg.ActivationType.SILU),
                               intermediate_size=c.intermediate_size, use_bias=bool(getattr(c, "mlp_bias", False)))
    block = cfg.TransformerBlockConfig(attn_config=attn, ff_config=ff, pre_attention_norm_config=norm,
                                       post_attention_norm_config=norm)
    return cfg.ModelConfig(vocab_size=c.vocab_size, num_layers=c.num_hidden_layers,
                           max_seq_len=c.max_position_embeddings, embedding_dim=c.hidden_size, block_configs=block,
                           final_norm_config=norm,
                           lm_head_share_weight_with_embedding=bool(getattr(c, "tie_word_embeddings", True)))


def _gemma3(g, c):
    cfg = g.cfg
    head_dim = _head_dim(c)
    if getattr(c, "query_pre_attn_scalar", head_dim) != head_dim:
        raise _refuse(c.model_type, f"query_pre_attn_scalar {c.query_pre_attn_scalar} ≠ head_dim {head_dim} "
                                    "(litert-torch scales attention by 1/sqrt(head_dim))")
    if getattr(c, "hidden_activation", "gelu_pytorch_tanh") not in ("gelu_pytorch_tanh", "gelu_tanh"):
        raise _refuse(c.model_type, f"activation {c.hidden_activation!r} (Gemma 3 builder: tanh GELU)")
    norm = cfg.NormalizationConfig(type=cfg.NormalizationType.RMS_NORM, epsilon=float(c.rms_norm_eps),
                                   zero_centered=True)
    ff = cfg.FeedForwardConfig(type=cfg.FeedForwardType.GATED,
                               activation=cfg.ActivationConfig(cfg.ActivationType.GELU_TANH),
                               intermediate_size=c.intermediate_size, pre_ff_norm_config=norm, post_ff_norm_config=norm)
    types_ = list(getattr(c, "layer_types", None) or ["full_attention"] * c.num_hidden_layers)
    theta, local = _rope_theta(c, 1_000_000.0), float(getattr(c, "rope_local_base_freq", 10_000.0))

    def block(kind: str):
        sliding = kind == "sliding_attention"
        attn = cfg.AttentionConfig(
            num_heads=c.num_attention_heads, head_dim=head_dim, num_query_groups=c.num_key_value_heads,
            rotary_base=local if sliding else theta, rotary_percentage=1.0,
            # the example builder's split (all q heads, then k, then v) needs the loader to concatenate
            # q, k, v plainly; its default interleaving per kv group is the same only for one kv head
            qkv_transpose_before_split=True, qkv_fused_interleaved=False,
            query_norm_config=norm, key_norm_config=norm, logit_softcap=getattr(c, "attn_logit_softcapping", None),
            sliding_window_size=c.sliding_window,
            attn_type=cfg.AttentionType.LOCAL_SLIDING if sliding else cfg.AttentionType.GLOBAL)
        return cfg.TransformerBlockConfig(attn_config=attn, ff_config=ff, pre_attention_norm_config=norm,
                                          post_attention_norm_config=norm)

    return cfg.ModelConfig(vocab_size=c.vocab_size, num_layers=c.num_hidden_layers,
                           max_seq_len=c.max_position_embeddings, embedding_dim=c.hidden_size,
                           embedding_scale=c.hidden_size ** 0.5, block_configs=[block(t) for t in types_],
                           final_norm_config=norm, lm_head_use_bias=False,
                           final_logit_softcap=getattr(c, "final_logit_softcapping", None))


def _head_dim(c) -> int:
    return getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads


BUILDERS = {"llama": _llama, "gemma3_text": _gemma3}


def model_config(config):
    """litert-torch's `ModelConfig` for a Hugging Face config (UnsupportedError, exit 3, otherwise)."""
    c = _text_config(config)
    if c.model_type not in BUILDERS:
        raise _refuse(c.model_type, f"no litert-torch layer mapping (supported: {', '.join(SUPPORTED)})")
    return BUILDERS[c.model_type](_generative(), c)


def _tensor_names(g, c, mcfg):
    if c.model_type == "gemma3_text":
        return g.gemma3.TENSOR_NAMES_SEP_QKV
    mb = g.model_builder
    return mb.TENSOR_NAMES if mcfg.lm_head_share_weight_with_embedding else mb.TENSOR_NAMES_WITH_SEPARATE_LM_HEAD


def build(checkpoint_dir: Path, config, context: int):
    """The litert-torch module for `config` with the weights of `checkpoint_dir` (safetensors), its
    causal mask cache sized to `context`. Every checkpoint tensor must map onto the module and every
    module weight must come from the checkpoint (a tied LM head is the embedding)."""
    g, c = _generative(), _text_config(config)
    mcfg = model_config(config)
    if context > mcfg.max_seq_len:
        raise _refuse(c.model_type, f"context {context} beyond the model's {mcfg.max_seq_len} positions")
    cls = g.gemma3.Decoder if c.model_type == "gemma3_text" else g.model_builder.DecoderOnlyModel
    module = cls(mcfg, mask_cache_size=context)
    state: dict = {}

    def read(path):                    # the loader pops what it maps: what is left was not mapped
        state.update(g.loader.load_safetensors(path))
        return state

    loader = g.loader.ModelLoader(str(checkpoint_dir), _tensor_names(g, c, mcfg), custom_loader=read)
    try:
        missing, unexpected = loader.load(module, strict=False)
    except KeyError as exc:          # a tensor the layer mapping expects is not in the checkpoint
        raise _refuse(c.model_type, f"checkpoint {checkpoint_dir} lacks tensor {exc}") from None
    tied = {"lm_head.weight"} if mcfg.lm_head_share_weight_with_embedding else set()
    missing = sorted(set(missing) - tied)
    left = sorted(k for k in state if k not in tied and not k.endswith("rotary_emb.inv_freq"))
    if missing or unexpected or left:
        raise _refuse(c.model_type, f"checkpoint does not match the layer mapping (module weights missing "
                                    f"{missing[:5]}, checkpoint tensors unused {left[:5]}, "
                                    f"unexpected {list(unexpected)[:5]})")
    return module.eval(), mcfg
