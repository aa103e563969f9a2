"""TFLite flatbuffer -> OpCost list, parsed with the schema module ai-edge-litert ships
(no interpreter, no TensorFlow). Static int8 (int8/uint8 activations) and dynamic-range
(fp32 activations, int8 weights: XNNPACK runs them as QD8 int8 kernels) ops are int8;
fp16 weights behind a constant DEQUANTIZE run in fp32 (LiteRT dequantizes at load)."""
from __future__ import annotations

from pathlib import Path

from .graph_cost import FREE, OpCost, _conv_category, _nbytes, _prod, simple_op

DTYPES = {0: "fp32", 1: "fp16", 2: "int32", 3: "uint8", 4: "int64", 6: "bool", 7: "int16", 9: "int8",
          10: "fp64", 12: "uint64", 15: "uint32", 16: "uint16", 17: "int4", 18: "fp16", 20: "int4"}
NAMES = {"CONCATENATION": "concat", "FULLY_CONNECTED": "fc", "RESHAPE": "reshape"}


def _schema():
    try:
        from ai_edge_litert import schema_py_generated as schema
    except ImportError:                     # older tflite-runtime layouts
        from tflite_runtime import schema_py_generated as schema  # type: ignore
    return schema


def _conv(g, op, ins, out):
    w = g.shape(ins[1])
    k = _prod(w[1:3])
    return _conv_category(k, w[3], 1), _prod(g.shape(out)) * k * w[3]


def _dwconv(g, op, ins, out):
    w = g.shape(ins[1])
    return "depthwise", _prod(g.shape(out)) * _prod(w[1:3])


def _tconv(g, op, ins, out):
    w, x = g.shape(ins[1]), g.shape(ins[2])
    return "convkxk", _prod(x) * _prod(w[:3])


def _fc(g, op, ins, out):
    w = g.shape(ins[1])
    return ("fc" if g.is_const(ins[1]) else "attention"), _prod(g.shape(out)) * w[-1]


def _bmm(g, op, ins, out):
    a = g.shape(ins[0])
    opts = g.schema.BatchMatMulOptions()
    table = op.BuiltinOptions()
    adj_x = False
    if table is not None:
        opts.Init(table.Bytes, table.Pos)
        adj_x = bool(opts.AdjX())
    k = a[-2] if adj_x else a[-1]
    return ("fc" if g.is_const(ins[1]) else "attention"), _prod(g.shape(out)) * k


MAC_OPS = {"CONV_2D": _conv, "DEPTHWISE_CONV_2D": _dwconv, "TRANSPOSE_CONV": _tconv,
           "FULLY_CONNECTED": _fc, "BATCH_MATMUL": _bmm}
WEIGHT_INPUT = {"CONV_2D": 1, "DEPTHWISE_CONV_2D": 1, "TRANSPOSE_CONV": 1, "FULLY_CONNECTED": 1,
                "BATCH_MATMUL": 1}


class _Graph:
    def __init__(self, data: bytes):
        self.schema = s = _schema()
        self.model = s.Model.GetRootAs(data, 0)
        if self.model.SubgraphsLength() == 0:
            raise ValueError("no subgraph")
        self.sub = self.model.Subgraphs(0)
        names = {v: k for k, v in vars(s.BuiltinOperator).items() if not k.startswith("_")}
        self.codes = []
        for i in range(self.model.OperatorCodesLength()):
            c = self.model.OperatorCodes(i)
            code = max(c.BuiltinCode(), c.DeprecatedBuiltinCode())
            self.codes.append(names.get(code, "CUSTOM") if code != 32 else
                              "CUSTOM:" + (c.CustomCode() or b"?").decode("utf-8", "replace"))
        self.const = set()
        for t in range(self.sub.TensorsLength()):
            b = self.sub.Tensors(t).Buffer()
            if b > 0 and b < self.model.BuffersLength():
                buf = self.model.Buffers(b)
                if buf.DataLength() > 0 or buf.Offset() > 1:
                    self.const.add(t)

    def tensor(self, i):
        return self.sub.Tensors(i)

    def shape(self, i):
        t = self.tensor(i)
        return [max(int(x), 1) for x in t.ShapeAsNumpy()] if t.ShapeLength() else []

    def dtype(self, i):
        return DTYPES.get(self.tensor(i).Type(), "fp32")

    def is_const(self, i):
        return i in self.const


def _precision(g, op_name, acts, ins):
    a = [g.dtype(i) for i in acts]
    if any(d in ("int8", "uint8", "int16") for d in a[:1]):
        return "int8"
    if op_name in WEIGHT_INPUT and len(ins) > 1 and g.dtype(ins[1]) in ("int8", "uint8", "int4"):
        return "int8"                       # dynamic-range (hybrid) kernel
    return next((d for d in a if d in ("fp32", "fp16")), "fp32")


def _op_cost(g, k, op):
    name = g.codes[op.OpcodeIndex()]
    ins = [int(i) for i in op.InputsAsNumpy()] if op.InputsLength() else []
    ins = [i for i in ins if i >= 0]
    outs = [int(i) for i in op.OutputsAsNumpy()] if op.OutputsLength() else []
    acts = [i for i in ins if not g.is_const(i)]
    prec = _precision(g, name, acts, ins)
    label = f"{name.lower()}_{k}"
    out = outs[0] if outs else None
    if name in MAC_OPS:
        cat, macs = MAC_OPS[name](g, op, ins, out)
        dt = (lambda i: "int8" if prec == "int8" and g.dtype(i) == "fp32" else g.dtype(i))
        return OpCost(label, name, cat, prec, int(macs), 0,
                      sum(_nbytes(g.shape(i), g.dtype(i)) for i in ins if g.is_const(i)),
                      sum(_nbytes(g.shape(i), dt(i)) for i in acts),
                      _nbytes(g.shape(out), dt(out)), inputs=acts, outputs=outs)
    key = NAMES.get(name, name.lower())
    cost = simple_op(label, key, [g.shape(i) for i in ins], [g.dtype(i) for i in ins],
                     [g.is_const(i) for i in ins], g.shape(out) if out is not None else None,
                     g.dtype(out) if out is not None else "fp32", acts, outs)
    cost.op, cost.precision = name, prec
    if name == "DEQUANTIZE" and not acts:
        cost.fused = True                   # fp16/int8 weights expanded once at load
    if key in FREE or (ins and not acts and name != "DEQUANTIZE"):
        cost.fused = True
    return cost


def tflite_ops(path: Path, manifest=None):
    data = Path(path).read_bytes()
    g = _Graph(data)
    notes = []
    if g.model.SubgraphsLength() > 1:
        notes.append(f"{g.model.SubgraphsLength() - 1} extra subgraph(s) (control flow / signatures) not costed")
    ops = []
    for k in range(g.sub.OperatorsLength()):
        cost = _op_cost(g, k, g.sub.Operators(k))
        for t in cost.outputs:
            if cost.fused:
                g.const.add(t)
        ops.append(cost)
    if any(o.op.startswith("CUSTOM") for o in ops):
        notes.append("custom ops are costed as 'other' (bytes only)")
    return ops, notes
