"""ONNX graph -> OpCost list, with shape inference. Handles QDQ, QLinear*, ConvInteger,
MatMulInteger, DynamicQuantizeLinear (+ MatMulNBits) graphs: the quantized op's MACs are
counted and the op is marked int8; weight dequantization and Q/DQ pairs are folded."""
from __future__ import annotations

from .graph_cost import FREE, OpCost, _conv_category, _nbytes, _prod, simple_op

DTYPES = {1: "fp32", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 7: "int64", 9: "bool",
          10: "fp16", 11: "fp64", 12: "uint32", 13: "uint64", 16: "fp16", 21: "int4", 22: "int4"}
INT8_OPS = {"ConvInteger", "QLinearConv", "MatMulInteger", "QLinearMatMul", "MatMulIntegerToFloat",
            "DynamicQuantizeMatMul", "MatMulNBits", "QGemm", "QAttention"}
QDQ = {"QuantizeLinear", "DequantizeLinear"}


def _attr(node, name, default):
    import onnx
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


class _Ctx:
    def __init__(self, model, notes):
        g = model.graph
        self.info, self.const, self.notes, self.unknown = {}, {}, notes, 0
        for vi in [*g.input, *g.value_info, *g.output]:
            t = vi.type.tensor_type
            if t.HasField("shape"):
                self.info[vi.name] = ([self._dim(d) for d in t.shape.dim], DTYPES.get(t.elem_type, "fp32"))
        for init in g.initializer:
            dt = DTYPES.get(init.data_type, "fp32")
            self.info[init.name] = (list(init.dims), dt)
            self.const[init.name] = _nbytes(init.dims, dt)
        self.producer = {}

    def _dim(self, d):
        if d.HasField("dim_value") and d.dim_value > 0:
            return d.dim_value
        self.unknown += 1
        return 1

    def shape(self, name):
        return self.info.get(name, (None, "fp32"))[0]

    def dtype(self, name):
        return self.info.get(name, (None, "fp32"))[1]


def _conv(node, ctx, wi):
    w, out = ctx.shape(node.input[wi]), ctx.shape(node.output[0])
    if w is None or out is None:
        return "convkxk", 0
    k = _prod(w[2:])
    return _conv_category(k, w[1], int(_attr(node, "group", 1))), _prod(out) * w[1] * k


def _conv_t(node, ctx, wi):
    w, x = ctx.shape(node.input[wi]), ctx.shape(node.input[0])
    return "convkxk", (_prod(x) * w[1] * _prod(w[2:])) if w and x else 0


def _matmul(node, ctx, bi):
    a, out = ctx.shape(node.input[0]), ctx.shape(node.output[0])
    if node.op_type == "MatMulNBits":
        k = int(_attr(node, "K", 0))
    elif node.op_type == "Gemm" and _attr(node, "transA", 0):
        k = a[0] if a else 0
    else:
        k = a[-1] if a else 0
    cat = "fc" if node.input[bi] in ctx.const else "attention"
    return cat, (_prod(out) * k) if out else 0


MAC_OPS = {"Conv": (_conv, 1), "ConvInteger": (_conv, 1), "QLinearConv": (_conv, 3),
           "ConvTranspose": (_conv_t, 1), "MatMul": (_matmul, 1), "Gemm": (_matmul, 1),
           "FusedMatMul": (_matmul, 1), "MatMulInteger": (_matmul, 1), "QLinearMatMul": (_matmul, 3),
           "MatMulIntegerToFloat": (_matmul, 1), "DynamicQuantizeMatMul": (_matmul, 1),
           "MatMulNBits": (_matmul, 1), "QGemm": (_matmul, 3)}


def _pin_inputs(model, manifest) -> None:
    """Give dynamic graph inputs the concrete shapes the manifest records."""
    if manifest is None:
        return
    inits = {i.name for i in model.graph.initializer}
    graph_inputs = [i for i in model.graph.input if i.name not in inits]
    specs = {t.name: t for t in manifest.inputs}
    for pos, gi in enumerate(graph_inputs):
        spec = specs.get(gi.name) or (manifest.inputs[pos] if pos < len(manifest.inputs) else None)
        dims = gi.type.tensor_type.shape.dim
        if spec is None or len(spec.shape) != len(dims):
            continue
        for d, s in zip(dims, spec.shape):
            if isinstance(s, int) and s > 0:
                d.dim_value = s


def _precision(node, ctx, act_inputs, qdq_inputs):
    if node.op_type in INT8_OPS or node.op_type.startswith("QLinear") or qdq_inputs:
        return "int8"
    for t in act_inputs:
        if ctx.dtype(t) in ("fp16", "fp32"):
            return ctx.dtype(t)
    return "fp32"


def _node_cost(node, ctx, dq_outputs) -> OpCost:
    ins = [t for t in node.input if t]
    acts = [t for t in ins if t not in ctx.const]
    qdq_in = [t for t in acts if t in dq_outputs]
    prec = _precision(node, ctx, acts, qdq_in)
    name = node.name or (node.output[0] if node.output else node.op_type)
    act_dt = (lambda t: "int8" if ctx.dtype(t) in ("fp32", "fp16") else ctx.dtype(t)) if prec == "int8" \
        else ctx.dtype
    if node.op_type in MAC_OPS:
        fn, wi = MAC_OPS[node.op_type]
        cat, macs = fn(node, ctx, wi)
        return OpCost(name, node.op_type, cat, prec, int(macs), 0,
                      sum(ctx.const.get(t, 0) for t in ins),
                      sum(_nbytes(ctx.shape(t), act_dt(t)) for t in acts[:1 if cat != "attention" else 2]),
                      _nbytes(ctx.shape(node.output[0]), act_dt(node.output[0])),
                      inputs=acts, outputs=list(node.output))
    op = node.op_type[len("QLinear"):] if node.op_type.startswith("QLinear") else node.op_type
    cost = simple_op(name, op, [ctx.shape(t) for t in ins], [act_dt(t) for t in ins],
                     [t in ctx.const for t in ins], ctx.shape(node.output[0]) if node.output else None,
                     act_dt(node.output[0]) if node.output else "fp32", acts, node.output)
    cost.precision = prec
    return cost


def _infer(model, notes):
    import onnx
    try:
        return onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception as exc:        # noqa: BLE001 - partial shapes still give a partial cost
        notes.append(f"ONNX shape inference failed ({type(exc).__name__}); costs may be incomplete")
        return model


def _ort_folded(model):
    """Constant-fold shape subgraphs with onnxruntime (basic level), so that shapes become static."""
    import os
    import tempfile

    import onnx
    import onnxruntime as ort
    if any(i.data_location == onnx.TensorProto.EXTERNAL for i in model.graph.initializer):
        return None
    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        opts.optimized_model_filepath = os.path.join(tmp, "folded.onnx")
        ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        return onnx.load(opts.optimized_model_filepath)


def _context(path, manifest, notes):
    import onnx
    model = onnx.load(str(path), load_external_data=False)
    _pin_inputs(model, manifest)
    ctx = _Ctx(_infer(model, notes), notes)
    if ctx.unknown:
        try:
            folded = _ort_folded(model)
        except Exception:           # noqa: BLE001 - keep the partial shapes
            folded = None
        if folded is not None:
            model = _infer(folded, notes)
            ctx = _Ctx(model, notes)
            notes.append("shapes resolved after onnxruntime constant folding")
    if ctx.unknown:
        notes.append(f"{ctx.unknown} dynamic dimension(s) taken as 1")
    return model, ctx


def onnx_ops(path, manifest=None):
    notes: list[str] = []
    model, ctx = _context(path, manifest, notes)
    if any(n.op_type in ("If", "Loop", "Scan") for n in model.graph.node):
        notes.append("control-flow subgraphs (If/Loop/Scan) are not costed")
    ops, dq_outputs = [], set()
    for node in model.graph.node:
        ins = [t for t in node.input if t]
        folded = node.op_type.lower() in FREE or (ins and all(t in ctx.const for t in ins))
        cost = _node_cost(node, ctx, dq_outputs)
        if folded:
            cost.fused = True
            for t in node.output:
                ctx.const[t] = sum(ctx.const.get(i, 0) for i in ins)
        elif node.op_type in QDQ:
            cost.fused = True           # a QDQ pair around a quantizable op runs as one int8 kernel
            cost.precision = "int8"
            if node.op_type == "DequantizeLinear":
                dq_outputs.update(node.output)
        ops.append(cost)
    return ops, sorted(set(notes))
