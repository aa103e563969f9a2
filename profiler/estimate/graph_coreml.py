"""Core ML ML Program -> OpCost list, from the MIL spec (op types, const shapes, typed outputs).

The spec is parsed with the protobuf modules coremltools ships, loaded under a private
package name so that `import coremltools` (which imports torch when present, ~4 s) is
never triggered. Weight-only int8 (constexpr_* ops) is expanded at load: the conv/linear
then computes in the activation precision (fp16), while its weight bytes are int8.
"""
from __future__ import annotations

from pathlib import Path

from pocketml.runtime.coreml_spec import proto, spec_file
from pocketml.runtime.errors import UnsupportedError

from .graph_cost import FREE, OpCost, _conv_category, _nbytes, _prod, simple_op

DTYPES = {1: "bool", 10: "fp16", 11: "fp32", 12: "fp64", 13: "fp16", 21: "int8", 22: "int16", 23: "int32",
          24: "int64", 25: "int4", 31: "uint8", 32: "uint16", 33: "uint32", 34: "uint64", 35: "int4"}
def _ttype(t):
    tt = t.tensorType
    dims = [d.constant.size if d.WhichOneof("dimension") == "constant" else 1 for d in tt.dimensions]
    return dims, DTYPES.get(tt.dataType, "fp32")


class _Block:
    def __init__(self, block, fn_inputs):
        self.info = {v.name: _ttype(v.type) for v in fn_inputs}
        self.const, self.values = {}, {}
        self.block = block

    def arg(self, op, key):
        a = op.inputs.get(key)
        return a.arguments[0].name if a is not None and a.arguments and a.arguments[0].name else None

    def shape(self, name):
        return self.info.get(name, (None, "fp32"))[0]

    def dtype(self, name):
        return self.info.get(name, (None, "fp32"))[1]

    def int_value(self, name, default):
        v = self.values.get(name)
        return int(v[0]) if v else default


def _conv(b, op, out):
    w = b.shape(b.arg(op, "weight"))
    k = _prod(w[2:])
    groups = b.int_value(b.arg(op, "groups"), 1)
    return _conv_category(k, w[1], groups), _prod(out) * w[1] * k


def _conv_t(b, op, out):
    w, x = b.shape(b.arg(op, "weight")), b.shape(b.arg(op, "x"))
    return "convkxk", _prod(x) * w[1] * _prod(w[2:])


def _linear(b, op, out):
    return "fc", _prod(out) * b.shape(b.arg(op, "weight"))[-1]


def _matmul(b, op, out):
    x, y = b.arg(op, "x"), b.arg(op, "y")
    xs = b.shape(x)
    k = xs[-2] if b.int_value(b.arg(op, "transpose_x"), 0) else xs[-1]
    return ("fc" if y in b.const else "attention"), _prod(out) * k


MAC_OPS = {"conv": _conv, "conv_transpose": _conv_t, "linear": _linear, "matmul": _matmul}


def _record_const(b, op):
    out = op.outputs[0]
    b.info[out.name] = _ttype(out.type)
    nbytes = 0
    for key, val in op.attributes.items():
        if key == "name" or not val.type.HasField("tensorType"):
            continue
        dims, dt = _ttype(val.type)
        nbytes += _nbytes(dims, dt)
        imm = val.immediateValue.tensor if val.WhichOneof("value") == "immediateValue" else None
        if imm is not None and imm.WhichOneof("value") in ("ints", "bools"):
            b.values[out.name] = list(getattr(imm, imm.WhichOneof("value")).values)
    nbytes += sum(b.const.get(a.name, 0) for arg in op.inputs.values() for a in arg.arguments if a.name)
    b.const[out.name] = nbytes


def _op_cost(b, k, op) -> OpCost:
    names = [a.name for arg in op.inputs.values() for a in arg.arguments if a.name]
    acts = [n for n in names if n not in b.const]
    for o in op.outputs:
        b.info[o.name] = _ttype(o.type)
    out = op.outputs[0].name if op.outputs else None
    prec = next((b.dtype(n) for n in acts if b.dtype(n) in ("fp16", "fp32")), "fp32")
    label = f"{op.type}_{k}"
    if op.type in MAC_OPS:
        cat, macs = MAC_OPS[op.type](b, op, b.shape(out))
        return OpCost(label, op.type, cat, prec, int(macs), 0, sum(b.const.get(n, 0) for n in names),
                      sum(_nbytes(b.shape(n), b.dtype(n)) for n in acts),
                      _nbytes(b.shape(out), b.dtype(out)), inputs=acts, outputs=[o.name for o in op.outputs])
    # parameters (pad amounts, axes, ...) are consts too: drop them from the byte count
    data = [n for n in names if n not in b.const or _prod(b.shape(n)) > 64]
    cost = simple_op(label, op.type, [b.shape(n) for n in data], [b.dtype(n) for n in data],
                     [n in b.const for n in data], b.shape(out), b.dtype(out) if out else "fp32",
                     acts, [o.name for o in op.outputs])
    cost.precision = prec
    return cost


def coreml_ops(path: Path, manifest=None):
    model = proto().Model()
    model.ParseFromString(spec_file(Path(path)).read_bytes())
    if model.WhichOneof("Type") != "mlProgram":
        raise UnsupportedError(f"{path}: only Core ML ML Programs can be estimated "
                               f"(this is a {model.WhichOneof('Type')})")
    fn = model.mlProgram.functions["main"]
    b = _Block(fn.block_specializations[fn.opset], fn.inputs)
    ops = []
    for k, op in enumerate(b.block.operations):
        if op.type in FREE or op.type.startswith("constexpr_"):
            _record_const(b, op)
            ops.append(OpCost(f"{op.type}_{k}", op.type, "other", "fp32", weight_bytes=b.const[op.outputs[0].name],
                              fused=True, outputs=[op.outputs[0].name]))
            continue
        ops.append(_op_cost(b, k, op))
    notes = [] if not any(o.op in ("cond", "while_loop") for o in ops) else \
        ["control flow (cond / while_loop) bodies are not costed"]
    return ops, notes
