"""Fusions of the torch.onnx decoder graph into onnxruntime's LLM ops (what ONNX Runtime GenAI's builder emits).

torch.onnx's dynamo graph of a LLaMA layer is ~70 small nodes: RMSNorm as Pow → ReduceMean → Add →
Sqrt → Reciprocal → Mul → Mul, and attention as reshapes, the rotary embedding written out (Slice,
Neg, Concat, Mul, Add per tensor), the KV concatenation, repeat_kv (Unsqueeze, Expand, Reshape),
MatMul, scale, mask, Softmax, MatMul. On a CPU at one token per step those nodes cost more than the
weights: onnxruntime runs each one (the executor's per-node cost is microseconds), and none of them
is fused by its level-2 optimizer (its SimplifiedLayerNorm fusion expects a Div, not Reciprocal·Mul).

    rms_norm   the seven RMSNorm nodes → SimplifiedLayerNormalization (onnxruntime's, default domain)
    attention  everything from the q/k/v projections to the attention output → com.microsoft
               GroupQueryAttention (rotary inside, do_rotary=1, with cos/sin caches evaluated from the
               graph's own rotary subgraph; present = concat(past, new) as before; the causal mask from
               the attention mask's row sums: `seqlens_k`, so padding may only trail a sequence)

Each pattern is matched exactly (operators, constants, axes, the rotary halves, the scale) and a layer that
differs in any way is left as it is; the caller checks the fused graph against the unfused one. Torch-free.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np

DOMAIN = "com.microsoft"


class Graph:
    """Producer / consumer / constant lookups over an onnx ModelProto's main graph."""

    def __init__(self, model):
        from onnx import numpy_helper
        self.model, self.graph = model, model.graph
        self._np = numpy_helper
        self.inits = {i.name: i for i in self.graph.initializer}
        self.refresh()

    def refresh(self) -> None:
        self.nodes = list(self.graph.node)          # the wrappers, held: lookups by index stay valid
        self.producer = {o: n for n in self.nodes for o in n.output}
        self.consumers: dict[str, list] = defaultdict(list)
        for n in self.nodes:
            for x in n.input:
                self.consumers[x].append(n)

    def const(self, name: str):
        if name in self.inits:
            return self._np.to_array(self.inits[name])
        p = self.producer.get(name)
        if p is not None and p.op_type == "Constant":
            return self._np.to_array(p.attribute[0].t)
        return None

    def prod(self, name: str, op: str):
        p = self.producer.get(name)
        return p if p is not None and p.op_type == op else None

    def only(self, name: str, op: str):
        """The single consumer of `name`, if it is an `op`."""
        cs = self.consumers.get(name, [])
        return cs[0] if len(cs) == 1 and cs[0].op_type == op else None

    def scalar(self, name: str):
        v = self.const(name)
        return None if v is None or v.size != 1 else float(v.reshape(-1)[0])


def _attr(node, name, default=None):
    from onnx import helper
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _other(node, name: str) -> str | None:
    """The other input of a binary node that has `name` as one input."""
    if len(node.input) != 2 or name not in node.input:
        return None
    return node.input[1] if node.input[0] == name else node.input[0]


# ---------------------------------------------------------------- RMSNorm

def _rms_norm(g: Graph, mul):
    """Mul(weight, Mul(x, Reciprocal(Sqrt(Add(ReduceMean(Pow(x, 2), [-1]), eps))))) → (x, weight, eps)."""
    for w_name, inner_name in ((mul.input[0], mul.input[1]), (mul.input[1], mul.input[0])):
        w = g.const(w_name)
        inner = g.prod(inner_name, "Mul")
        if w is None or w.ndim != 1 or inner is None:
            continue
        for x, r_name in ((inner.input[0], inner.input[1]), (inner.input[1], inner.input[0])):
            r = g.prod(r_name, "Reciprocal")
            s = r and g.prod(r.input[0], "Sqrt")
            a = s and g.prod(s.input[0], "Add")
            if a is None:
                continue
            for mean_name in a.input:
                mean = g.prod(mean_name, "ReduceMean")
                eps = g.scalar(_other(a, mean_name) or "")
                p = mean and g.prod(mean.input[0], "Pow")
                axes = g.const(mean.input[1]) if mean is not None and len(mean.input) > 1 else \
                    (np.array(_attr(mean, "axes", [])) if mean is not None else None)
                if (p is None or eps is None or p.input[0] != x or g.scalar(p.input[1]) != 2.0 or axes is None
                        or list(axes.reshape(-1)) != [-1] or _attr(mean, "keepdims", 1) != 1):
                    continue
                return x, w_name, eps
    return None


def fuse_rms_norms(model) -> int:
    """Every RMSNorm → SimplifiedLayerNormalization. Returns the number fused."""
    from onnx import helper
    g = Graph(model)
    new, fused = {}, 0
    for i, n in enumerate(g.nodes):
        if n.op_type == "Mul" and (m := _rms_norm(g, n)) is not None:
            x, w, eps = m
            new[i] = helper.make_node("SimplifiedLayerNormalization", [x, w], list(n.output), name=n.name + "_rms",
                                          axis=-1, epsilon=eps, stash_type=1)
            fused += 1
    _replace(model, new, g.nodes)
    return fused


def fuse_skip_norms(model) -> int:
    """Residual Add + SimplifiedLayerNormalization → com.microsoft SkipSimplifiedLayerNormalization (its
    fourth output is the sum, which the next residual reads). Returns the number fused."""
    from onnx import helper
    g = Graph(model)
    at = {o: k for k, n in enumerate(g.nodes) for o in n.output}
    new, fused = {}, 0
    for i, n in enumerate(g.nodes):
        add = g.prod(n.input[0], "Add") if n.op_type == "SimplifiedLayerNormalization" else None
        if add is None or any(g.const(x) is not None for x in add.input) or at[add.output[0]] in new:
            continue
        new[at[add.output[0]]] = None
        new[i] = helper.make_node("SkipSimplifiedLayerNormalization", [*add.input, n.input[1]],
                                  [n.output[0], "", "", add.output[0]], name=n.name + "_skip", domain=DOMAIN,
                                  epsilon=_attr(n, "epsilon", 1e-5))
        fused += 1
    if fused:
        _replace(model, new, g.nodes)
        _domain(model)
    return fused


def _domain(model) -> None:
    from onnx import helper
    if not any(o.domain == DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(DOMAIN, 1))


# ---------------------------------------------------------------- attention

def _split_heads(g: Graph, t: str):
    """Transpose(Reshape(x, [B, S, heads, D]), [0, 2, 1, 3]) → (x, D)."""
    tr = g.prod(t, "Transpose")
    rs = tr and g.prod(tr.input[0], "Reshape")
    if rs is None or list(_attr(tr, "perm", [])) != [0, 2, 1, 3]:
        return None
    shape, cat = g.const(rs.input[1]), g.prod(rs.input[1], "Concat")
    if shape is None and cat is not None:          # [batch, seq, -1, D] built from Shape slices and constants
        shape = g.const(cat.input[-1])
    head_dim = int(shape.reshape(-1)[-1]) if shape is not None and shape.size >= 1 else None
    return (rs.input[0], head_dim) if head_dim and head_dim > 0 else None


def _rotary(g: Graph, name: str, half: int | None = None):
    """Add(Mul(t, cos), Mul(Concat(Neg(Slice(t, h:)), Slice(t, :h)), sin)) → (t, cos, sin): HF's rotate_half."""
    add = g.prod(name, "Add")
    if add is None:
        return None
    muls = [g.prod(x, "Mul") for x in add.input]
    if None in muls:
        return None
    for m_cos, m_sin in (muls, muls[::-1]):
        for t, cos in ((m_cos.input[0], m_cos.input[1]), (m_cos.input[1], m_cos.input[0])):
            for rot, sin in ((m_sin.input[0], m_sin.input[1]), (m_sin.input[1], m_sin.input[0])):
                cat = g.prod(rot, "Concat")
                if cat is None or len(cat.input) != 2 or _attr(cat, "axis") not in (-1, 3):
                    continue
                neg, first = g.prod(cat.input[0], "Neg"), g.prod(cat.input[1], "Slice")
                second = neg and g.prod(neg.input[0], "Slice")
                if first is None or second is None or first.input[0] != t or second.input[0] != t:
                    continue
                starts = [g.const(first.input[1]), g.const(second.input[1])]
                ends = [g.const(first.input[2]), g.const(second.input[2])]
                if any(v is None for v in (*starts, *ends)):
                    continue
                h = int(starts[1].reshape(-1)[0])
                if int(starts[0].reshape(-1)[0]) == 0 and int(ends[0].reshape(-1)[0]) == h and (half in (None, h)):
                    return t, cos, sin, h
    return None


def _repeated(g: Graph, name: str, present: str) -> bool:
    """Reshape(Expand(Unsqueeze(present, 2))) — repeat_kv — or the present tensor itself."""
    if name == present:
        return True
    rs = g.prod(name, "Reshape")
    ex = rs and g.prod(rs.input[0], "Expand")
    un = ex and g.prod(ex.input[0], "Unsqueeze")
    return un is not None and un.input[0] == present


def _attention(g: Graph, layer: int, lay):
    """The tensors and nodes of layer `layer`'s attention, or None when its pattern differs."""
    from .onnx_export import PAST_KEY, PAST_VALUE, PRESENT_KEY, PRESENT_VALUE
    pk, pv, ok, ov = PAST_KEY % layer, PAST_VALUE % layer, PRESENT_KEY % layer, PRESENT_VALUE % layer
    cat_k, cat_v = g.prod(ok, "Concat"), g.prod(ov, "Concat")
    if cat_k is None or cat_v is None or list(cat_k.input[:1]) != [pk] or list(cat_v.input[:1]) != [pv]:
        return None
    k_rot = _rotary(g, cat_k.input[1])
    v = _split_heads(g, cat_v.input[1])
    if k_rot is None or v is None:
        return None
    k = _split_heads(g, k_rot[0])
    # scores = MatMul(q_rot, Transpose(repeat(present.k))): find it among present.k's users' chain
    qk = None
    for mm in (n for n in g.nodes if n.op_type == "MatMul"):
        tr = g.prod(mm.input[1], "Transpose")
        if tr is not None and list(_attr(tr, "perm", [])) == [0, 1, 3, 2] and _repeated(g, tr.input[0], ok):
            qk = mm
            break
    if k is None or qk is None:
        return None
    q_rot = _rotary(g, qk.input[0], k_rot[3])
    q = q_rot and _split_heads(g, q_rot[0])
    if q is None or q_rot[1:3] != k_rot[1:3] or not (q[1] == k[1] == v[1] == lay.head_dim):
        return None
    scale_mul = g.only(qk.output[0], "Mul")
    scale = g.scalar(_other(scale_mul, qk.output[0]) or "") if scale_mul is not None else None
    masked = scale_mul and g.only(scale_mul.output[0], "Add")
    soft = masked and g.only(masked.output[0], "Softmax")
    pv_mm = soft and g.only(soft.output[0], "MatMul")
    if scale is None or pv_mm is None or pv_mm.input[0] != soft.output[0] or not _repeated(g, pv_mm.input[1], ov):
        return None
    tr = g.only(pv_mm.output[0], "Transpose")
    out = tr and list(_attr(tr, "perm", [])) == [0, 2, 1, 3] and g.only(tr.output[0], "Reshape")
    if not out:
        return None
    qkv = [q[0], k[0], v[0]]
    split = g.prod(q[0], "Split")
    if split is not None and list(split.output) == qkv and _attr(split, "axis") in (-1, 2):
        qkv = [split.input[0], "", ""]                 # packed QKV (gguf_carry's one MatMulNBits): GQA splits it
    return {"qkv": qkv, "past": (pk, pv), "present": (ok, ov), "out": out.output[0],
            "cos": k_rot[1], "sin": k_rot[2], "scale": scale, "half": k_rot[3]}


def _table(g: Graph, name: str) -> str:
    """The shared [batch, seq, D] cos / sin table a layer's Unsqueeze reads."""
    un = g.prod(name, "Unsqueeze")
    return un.input[0] if un is not None else name


def _rotary_caches(model, cos: str, sin: str, positions: int, half: int) -> tuple[np.ndarray, np.ndarray]:
    """cos / sin caches [positions, half], evaluated by onnxruntime from the graph's own rotary subgraph
    (position_ids → cos, sin), so rope scaling and the frequencies are exactly the graph's."""
    import onnxruntime as ort
    from onnx import TensorProto, helper
    g = Graph(model)
    names = [_table(g, cos), _table(g, sin)]
    needed, todo = [], list(names)
    seen: set[str] = set()
    while todo:
        x = todo.pop()
        if x in seen or x in g.inits or x not in g.producer:
            continue
        seen.add(x)
        node = g.producer[x]
        if node not in needed:
            needed.append(node)
            todo += [i for i in node.input if i]
    reads = {i for n in needed for i in n.input}
    inputs = [vi for vi in g.graph.input if vi.name in reads]
    order = {n.output[0]: k for k, n in enumerate(g.nodes)}
    sub = helper.make_graph(sorted(needed, key=lambda n: order[n.output[0]]), "rotary", inputs,
                            [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names],
                            [g.inits[i] for i in sorted(reads) if i in g.inits])
    sess = ort.InferenceSession(helper.make_model(sub, opset_imports=model.opset_import).SerializeToString(),
                                providers=["CPUExecutionProvider"])
    feeds = {}
    for vi in inputs:                  # position_ids: 0 … positions − 1; anything else: batch 1, empty
        dims = [d.dim_value if d.HasField("dim_value") else 1 if k == 0 else 0
                for k, d in enumerate(vi.type.tensor_type.shape.dim)]
        dtype = {TensorProto.INT64: np.int64, TensorProto.FLOAT: np.float32}[vi.type.tensor_type.elem_type]
        feeds[vi.name] = (np.arange(positions, dtype=np.int64)[None] if vi.name == "position_ids"
                          else np.zeros(dims, dtype))
    c, s = sess.run(names, feeds)
    c, s = c.reshape(positions, -1), s.reshape(positions, -1)
    if c.shape[1] != 2 * half or not (np.array_equal(c[:, :half], c[:, half:]) and np.array_equal(s[:, :half], s[:, half:])):
        raise ValueError("rotary tables are not two equal halves")
    return np.ascontiguousarray(c[:, :half]), np.ascontiguousarray(s[:, :half])


def fuse_attention(model, lay, positions: int) -> int:
    """Each layer's attention → GroupQueryAttention (module docstring). Returns the layers fused (all or
    none: a graph half-fused would still carry the unfused mask and rotary subgraphs)."""
    from onnx import TensorProto, helper, numpy_helper
    if lay.head_dim % 16 or lay.num_heads % lay.num_kv_heads:
        return 0                          # onnxruntime's CPU GroupQueryAttention: head size a multiple of 16
    g = Graph(model)
    found = [_attention(g, i, lay) for i in range(lay.num_layers)]
    if not found or any(f is None for f in found) or len({(_table(g, f["cos"]), _table(g, f["sin"]))
                                                           for f in found}) != 1:
        return 0
    try:
        cos, sin = _rotary_caches(model, found[0]["cos"], found[0]["sin"], positions, found[0]["half"])
    except (ValueError, RuntimeError, KeyError):
        return 0
    pre = [helper.make_node("ReduceSum", ["attention_mask", "gqa.axis1"], ["gqa.mask_sum"], keepdims=0, name="gqa_sum"),
           helper.make_node("Sub", ["gqa.mask_sum", "gqa.one"], ["gqa.seqlens_k64"], name="gqa_sub"),
           helper.make_node("Cast", ["gqa.seqlens_k64"], ["gqa.seqlens_k"], to=TensorProto.INT32, name="gqa_cast"),
           helper.make_node("Shape", ["attention_mask"], ["gqa.mask_shape"], start=1, end=2, name="gqa_shape"),
           helper.make_node("Squeeze", ["gqa.mask_shape"], ["gqa.total64"], name="gqa_squeeze"),
           helper.make_node("Cast", ["gqa.total64"], ["gqa.total"], to=TensorProto.INT32, name="gqa_cast_total")]
    model.graph.initializer.extend([numpy_helper.from_array(np.array([1], np.int64), "gqa.axis1"),
                                    numpy_helper.from_array(np.array(1, np.int64), "gqa.one"),
                                    numpy_helper.from_array(cos, "gqa.cos_cache"),
                                    numpy_helper.from_array(sin, "gqa.sin_cache")])
    new = {}
    at = {o: k for k, n in enumerate(g.nodes) for o in n.output}
    for i, f in enumerate(found):
        new[at[f["out"]]] = helper.make_node(
            "GroupQueryAttention", [*f["qkv"], *f["past"], "gqa.seqlens_k", "gqa.total",
                                    "gqa.cos_cache", "gqa.sin_cache"], [f["out"], *f["present"]],
            name=f"gqa_{i}", domain=DOMAIN, num_heads=lay.num_heads, kv_num_heads=lay.num_kv_heads,
            do_rotary=1, rotary_interleaved=0, scale=f["scale"])
    for name in [p for f in found for p in f["present"]]:            # the old Concats go (dead code)
        g.producer[name].output[0] = g.producer[name].output[0] + ".unfused"
    _replace(model, new, g.nodes, first=pre)
    if not any(o.domain == DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(DOMAIN, 1))
    return len(found)


# ---------------------------------------------------------------- rewriting

def _replace(model, new: dict, nodes: list, first=()) -> None:
    """Swap the nodes whose index in `nodes` (the graph's, in order) keys `new`, put `first` at the front,
    drop dead nodes and initializers."""
    graph = model.graph
    nodes = [*first, *[new.get(i, n) for i, n in enumerate(nodes) if new.get(i, n) is not None]]
    outputs = {o.name for o in graph.output}
    while True:
        used = {x for n in nodes for x in n.input} | outputs
        alive = [n for n in nodes if any(o in used for o in n.output if o)]
        if len(alive) == len(nodes):
            break
        nodes = alive
    del graph.node[:]
    graph.node.extend(nodes)
    used = {x for n in nodes for x in n.input}
    keep = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)


def fuse(model, lay, positions: int) -> dict:
    """All fusions, in place; returns what was fused (for the quantization record)."""
    return {"rms_norm": fuse_rms_norms(model), "skip_rms_norm": fuse_skip_norms(model),
            "attention": fuse_attention(model, lay, positions)}


def float_compute(model) -> bytes:
    """The graph with every MatMulNBits at accuracy_level 0 (float activations), serialized: int8
    activation rounding amplifies any reordering of float arithmetic, which is not what a check of the
    fusions should measure."""
    import copy
    model = copy.deepcopy(model)
    for n in model.graph.node:
        for a in n.attribute:
            if n.op_type == "MatMulNBits" and a.name == "accuracy_level":
                a.i = 0
    return model.SerializeToString()


def logit_difference(before, after, lay, tokens: int = 8, seed: int = 0) -> float:
    """max |logits(after) − logits(before)| / max |logits(before)| over a `tokens`-token prefill from an
    empty cache and one decode step on the prefill's cache (two onnx ModelProtos, `float_compute`,
    onnxruntime, 1 thread)."""
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    ids = np.random.default_rng(seed).integers(0, lay.vocab_size, (1, tokens + 1), dtype=np.int64)
    outs = []
    for graph in (before, after):
        sess = ort.InferenceSession(float_compute(graph), opts, providers=["CPUExecutionProvider"])
        kv_type = {i.name: i.type for i in sess.get_inputs()}
        dtype = np.float16 if "float16" in kv_type.get(lay.past_names()[0], "") else np.float32
        past = [np.zeros((1, lay.num_kv_heads, 0, lay.head_dim), dtype) for _ in lay.past_names()]
        logits = []
        for start, stop in ((0, tokens), (tokens, tokens + 1)):
            feeds = {"input_ids": ids[:, start:stop], "attention_mask": np.ones((1, stop), np.int64),
                     "position_ids": np.arange(start, stop, dtype=np.int64)[None], **dict(zip(lay.past_names(), past))}
            res = sess.run(lay.output_names(), {k: v for k, v in feeds.items() if k in kv_type})
            logits.append(res[0][0].astype(np.float32))
            past = res[1:]
        outs.append(np.concatenate(logits))
    ref = outs[0]
    return float(np.abs(outs[1] - ref).max() / max(float(np.abs(ref).max()), 1e-30))
