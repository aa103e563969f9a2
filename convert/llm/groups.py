"""Weight groups of a decoder: the unit a mixed-precision choice keeps at int8 in an int4 artifact.

One naming for every format: "embedding" (the token embedding table and the LM head, tied or not),
"attention.<i>" (layer i's q/k/v/o projections) and "feedforward.<i>" (its gate/up/down projections).
The TFLite exporter hands the names to litert-torch's generative recipe as they are; the ONNX exporter
maps them to graph nodes with `onnx_nodes` (the decoder graph's linear MatMuls in execution order,
seven per layer, each weight's reduced width checked against the config); `torch_modules` finds them in
the fp32 reference for the sensitivity pass (`convert/llm/mixed.py`).
"""
from __future__ import annotations

from pocketml.runtime.errors import UnsupportedError, UsageError

EMBEDDING = "embedding"
KINDS = ("attention", "feedforward")
ATTENTION_LINEARS, FEEDFORWARD_LINEARS = 4, 3          # q, k, v, o · gate, up, down (LLaMA, Gemma 3)


def text_config(config):
    return config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config


def all_groups(config) -> list[str]:
    layers = text_config(config).num_hidden_layers
    return [EMBEDDING] + [f"{kind}.{i}" for i in range(layers) for kind in KINDS]


def check(groups, config) -> list[str]:
    known = set(all_groups(config))
    bad = [g for g in groups if g not in known]
    if bad:
        layers = text_config(config).num_hidden_layers
        raise UsageError(f"weight group(s) {bad}: groups are 'embedding', 'attention.<i>', 'feedforward.<i>' "
                         f"(i < {layers})")
    return list(groups)


def _expected_widths(cfg) -> list[int]:
    """The reduced (input) width of each linear of one layer, in execution order."""
    heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    h = cfg.hidden_size
    return [h, h, h, heads * head_dim, h, h, cfg.intermediate_size]


def onnx_nodes(model, config, groups) -> list[str]:
    """The fp32 decoder graph's node names that hold `groups` (MatMul with a constant weight, and the
    embedding Gather). Refused (exit 3) when the graph's linears do not line up with the config."""
    cfg = text_config(config)
    dims = {i.name: list(i.dims) for i in model.graph.initializer}
    linears = [n for n in model.graph.node if n.op_type == "MatMul" and len(n.input) > 1
               and len(dims.get(n.input[1], [])) == 2]
    gathers = [n.name for n in model.graph.node if n.op_type == "Gather" and len(dims.get(n.input[0], [])) == 2
               and dims[n.input[0]][0] == cfg.vocab_size]
    per_layer = ATTENTION_LINEARS + FEEDFORWARD_LINEARS
    widths = _expected_widths(cfg)
    layers = cfg.num_hidden_layers
    if len(linears) != layers * per_layer + 1 or len(gathers) != 1:
        raise UnsupportedError(f"the decoder graph has {len(linears)} linear MatMuls and {len(gathers)} embedding "
                               f"Gathers; {layers} layers × {per_layer} + the LM head and one embedding were "
                               "expected: its weight groups cannot be mapped for mixed precision")
    for j, node in enumerate(linears[:-1]):
        if dims[node.input[1]][0] != widths[j % per_layer]:
            raise UnsupportedError(f"decoder graph node {node.name}: weight width {dims[node.input[1]][0]}, "
                                   f"expected {widths[j % per_layer]} for linear {j % per_layer} of layer "
                                   f"{j // per_layer}: its weight groups cannot be mapped for mixed precision")
    table = {EMBEDDING: gathers + [linears[-1].name]}
    for j, node in enumerate(linears[:-1]):
        kind = KINDS[0] if j % per_layer < ATTENTION_LINEARS else KINDS[1]
        table.setdefault(f"{kind}.{j // per_layer}", []).append(node.name)
    return [name for g in check(groups, config) for name in table[g]]


def torch_modules(module, config) -> dict[str, list]:
    """group → the fp32 reference's nn.Linear / nn.Embedding modules (tied weights appear once per module)."""
    import torch
    cfg = text_config(config)
    table: dict[str, list] = {g: [] for g in all_groups(config)}
    for name, sub in module.named_modules():
        parts = name.split(".")
        if isinstance(sub, torch.nn.Embedding) and parts[-1] == "embed_tokens" or parts[-1] == "lm_head":
            table[EMBEDDING].append(sub)
        elif isinstance(sub, torch.nn.Linear) and "layers" in parts:
            i = int(parts[parts.index("layers") + 1])
            kind = KINDS[0] if "self_attn" in parts else KINDS[1] if "mlp" in parts else None
            if kind is None or i >= cfg.num_hidden_layers:
                raise UnsupportedError(f"linear {name}: not an attention or feed-forward projection; the "
                                       "model's weight groups cannot be mapped for mixed precision")
            table[f"{kind}.{i}"].append(sub)
    empty = [g for g, mods in table.items() if not mods]
    if empty:
        raise UnsupportedError(f"weight group(s) {empty[:4]} not found in the model: its weight groups cannot be "
                               "mapped for mixed precision")
    return table
