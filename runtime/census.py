"""What a model file actually contains: its weights and weight-carrying ops counted by stored dtype.

Measured from the graph, never taken from the request, so a manifest can say what the file holds
(`manifest.quantization["measured"]`, docs/MANIFEST.md) and the converter can refuse an artifact
whose requested precision is not in it (`missing_precision`). Torch-free; reads ONNX with `onnx`,
TFLite with the flatbuffer schema ai-edge-litert ships, Core ML with coremltools' protobuf modules.

Definitions, the same for every format:
- a **weight** is a constant tensor with at least 2 dimensions (biases, norms, scales and zero
  points are not counted), by the dtype it is *stored* in (int4 packed in bytes counts as int4);
- a **weight op** is an op with a weight among its inputs, directly or through a dequantize / cast
  (ONNX `DequantizeLinear`, TFLite `DEQUANTIZE`, Core ML `constexpr_*`); it is counted under the
  lowest-precision weight it uses. Quantize/dequantize ops themselves are counted apart.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

QUANTIZED = ("int8", "uint8", "int4", "uint4")
FLOAT = ("float32", "float16", "bfloat16", "float64")
BITS = {"int4": 4, "uint4": 4, "int8": 8, "uint8": 8, "float16": 16, "bfloat16": 16, "float32": 32, "float64": 64}

# what each requested precision must leave in the graph: (stored dtypes of which some weight must exist,
# in words, whether some op must compute with such a weight)
REQUIRED = {
    "int8": (("int8", "uint8"), "8-bit weights", True),
    "int8w": (("int8", "uint8"), "8-bit weights", True),
    "int4": (("int4", "uint4"), "4-bit weights", True),
    "fp16": (("float16",), "float16 weights", False),
}


def _weight_dtype(dtype: str) -> bool:
    return dtype in QUANTIZED or dtype in FLOAT


class _Tally:
    def __init__(self):
        self.weights: dict[str, list[int]] = {}       # dtype -> [tensors, elements]
        self.weight_ops: Counter = Counter()
        self.quantize_ops: Counter = Counter()
        self.activations: Counter | None = None

    def weight(self, dtype: str, elements: int) -> None:
        entry = self.weights.setdefault(dtype, [0, 0])
        entry[0] += 1
        entry[1] += int(elements)

    def op(self, dtypes) -> None:
        """One op using weights of these stored dtypes (nothing when it uses none)."""
        dtypes = [d for d in dtypes if d]
        if dtypes:
            self.weight_ops[min(dtypes, key=lambda d: BITS.get(d, 99))] += 1

    def result(self, basis: str) -> dict:
        weights = {d: {"tensors": n, "elements": e} for d, (n, e) in sorted(self.weights.items())}
        out = {"weights": weights, "weight_ops": dict(sorted(self.weight_ops.items())),
               "quantize_ops": dict(sorted(self.quantize_ops.items())),
               "summary": {"quantized_weights": sum(w["tensors"] for d, w in weights.items() if d in QUANTIZED),
                           "float_weights": sum(w["tensors"] for d, w in weights.items() if d in FLOAT),
                           "quantized_ops": sum(n for d, n in self.weight_ops.items() if d in QUANTIZED),
                           "float_ops": sum(n for d, n in self.weight_ops.items() if d in FLOAT)},
               "basis": basis}
        if self.activations is not None:
            out["activations"] = dict(sorted(self.activations.items()))
        return out


def measure(path: Path, fmt: str) -> dict:
    """The census of one model file (or Core ML package) of format `fmt`."""
    from .formats import get
    return get(fmt).read_census(Path(path))


def missing_precision(precision: str, census: dict) -> str | None:
    """Why the census does not show `precision` (None when it does): e.g. int8 with no 8-bit weight."""
    s = census["summary"]
    if precision == "fp32":
        low = {d: w["tensors"] for d, w in census["weights"].items() if d in QUANTIZED or d in ("float16", "bfloat16")}
        return f"fp32 requested, but the graph stores weights in {_counts(low)}" if low else None
    dtypes, reading, needs_op = REQUIRED[precision]
    if any(census["weights"].get(d, {}).get("tensors") for d in dtypes) and (s["quantized_ops"] or not needs_op):
        return None
    return (f"{precision} requested, but the graph holds no {reading} — weight tensors: "
            f"{_counts({d: w['tensors'] for d, w in census['weights'].items()}) or 'none'}; ops with weights: "
            f"{_counts(census['weight_ops']) or 'none'}; quantize/dequantize ops: "
            f"{_counts(census['quantize_ops']) or 'none'}")


def _counts(table: dict) -> str:
    return ", ".join(f"{n} {k}" for k, n in table.items())


# ------------------------------------------------------------------------------------------ ONNX

ONNX_PASS_THROUGH = ("DequantizeLinear", "Cast", "Identity", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten")
ONNX_QUANTIZE_OPS = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear")
# inputs that are quantization parameters (scales, zero points, group indices), not weights
ONNX_QUANT_PARAMS = {"QuantizeLinear": (1, 2), "DequantizeLinear": (1, 2), "MatMulNBits": (2, 3, 4, 5),
                     "GatherBlockQuantized": (2, 3), "MatMulInteger": (2, 3), "ConvInteger": (2, 3),
                     "QLinearConv": (1, 2, 4, 5, 6, 7), "QLinearMatMul": (1, 2, 4, 5, 6, 7),
                     "DynamicQuantizeMatMul": (2, 3)}
# ops whose weight is packed sub-byte data in a uint8 tensor: op -> input index of the packed weight
ONNX_PACKED = {"MatMulNBits": 1, "GatherBlockQuantized": 0}


def _onnx_graphs(model):
    """The main graph, every subgraph (If / Loop / Scan bodies) and every function body."""
    from onnx import AttributeProto
    todo, graphs = [model.graph], []
    while todo:
        g = todo.pop()
        graphs.append(g)
        for node in g.node:
            for a in node.attribute:
                if a.type == AttributeProto.GRAPH:
                    todo.append(a.g)
                elif a.type == AttributeProto.GRAPHS:
                    todo.extend(a.graphs)
    return graphs, list(model.functions)


def _onnx_dtype(code: int) -> str:
    from onnx import TensorProto
    name = TensorProto.DataType.Name(code).lower()
    return {"float": "float32", "double": "float64"}.get(name, name)


def _onnx_consts(body) -> dict[str, tuple[str, list[int]]]:
    """name -> (dtype, dims) of the initializers and Constant-node tensors of one graph or function."""
    from onnx import AttributeProto
    consts = {t.name: (_onnx_dtype(t.data_type), list(t.dims)) for t in getattr(body, "initializer", [])}
    for node in body.node:
        if node.op_type == "Constant" and node.output:
            for a in node.attribute:
                if a.type == AttributeProto.TENSOR:
                    consts[node.output[0]] = (_onnx_dtype(a.t.data_type), list(a.t.dims))
    return consts


def _attr_int(node, name: str, default: int) -> int:
    return next((a.i for a in node.attribute if a.name == name), default)


def _elements(dims) -> int:
    n = 1
    for d in dims:
        n *= max(int(d), 1)
    return n


def _onnx_body(body, tally: _Tally) -> None:
    consts = _onnx_consts(body)
    producer = {o: n for n in body.node for o in n.output}
    params, uses, packed = set(), set(), {}
    for node in body.node:
        for k, name in enumerate(node.input):
            (params if k in ONNX_QUANT_PARAMS.get(node.op_type, ()) else uses).add(name)
        if node.op_type in ONNX_PACKED and len(node.input) > ONNX_PACKED[node.op_type]:
            packed[node.input[ONNX_PACKED[node.op_type]]] = f"int{_attr_int(node, 'bits', 4)}"

    def weight_dtype(name: str) -> str | None:
        """The stored dtype of constant `name` if it is a weight (≥ 2 dims, not only a scale / zero point)."""
        dtype, dims = consts[name]
        dtype = packed.get(name, dtype)
        only_param = name in params and name not in uses
        return dtype if len(dims) >= 2 and _weight_dtype(dtype) and not only_param else None

    def stored(name: str, hops: int = 0) -> str | None:
        """The stored dtype of the weight `name` is, or is derived from through pass-through ops; else None."""
        if name in consts:
            return weight_dtype(name)
        node = producer.get(name)
        if node is None or node.op_type not in ONNX_PASS_THROUGH or not node.input or hops > 8:
            return None
        return stored(node.input[0], hops + 1)

    for name, (_, dims) in consts.items():
        if dtype := weight_dtype(name):
            tally.weight(dtype, _elements(dims) * 8 // BITS[dtype] if name in packed else _elements(dims))
    for node in body.node:
        if node.op_type in ONNX_QUANTIZE_OPS:
            tally.quantize_ops[node.op_type] += 1
        if node.op_type not in ONNX_PASS_THROUGH and node.op_type != "Constant":
            tally.op([stored(x) for x in node.input if x])


def onnx_census(path: Path) -> dict:
    import onnx
    model = onnx.load(str(path), load_external_data=False)
    tally = _Tally()
    graphs, functions = _onnx_graphs(model)
    for body in graphs + functions:
        _onnx_body(body, tally)
    return tally.result(f"measured from {path.name}: initializers and Constant tensors of ≥ 2 dims by stored "
                        "dtype; ops by the stored dtype of the weight they use (through DequantizeLinear/Cast)")


# ------------------------------------------------------------------------------------------ TFLite

def _tflite_schema():
    try:
        from ai_edge_litert import schema_py_generated as schema
    except ImportError:                     # older tflite-runtime layouts
        from tflite_runtime import schema_py_generated as schema  # type: ignore
    return schema


def tflite_census(path: Path) -> dict:
    s = _tflite_schema()
    model = s.Model.GetRootAs(Path(path).read_bytes(), 0)
    op_names = {v: k for k, v in vars(s.BuiltinOperator).items() if not k.startswith("_")}
    type_names = {v: k.lower() for k, v in vars(s.TensorType).items() if not k.startswith("_")}
    codes = []
    for i in range(model.OperatorCodesLength()):
        c = model.OperatorCodes(i)
        codes.append(op_names.get(max(c.BuiltinCode(), c.DeprecatedBuiltinCode()), "CUSTOM"))
    tally = _Tally()
    tally.activations = Counter()
    seen_buffers: set[int] = set()         # signatures (prefill, decode) share weight buffers: count each once
    for g in (model.Subgraphs(i) for i in range(model.SubgraphsLength())):
        _tflite_subgraph(model, g, codes, type_names, tally, seen_buffers)
    return tally.result(f"measured from {path.name}: constant tensors of ≥ 2 dims by stored type, each weight "
                        "buffer once (subgraphs share them); ops of every subgraph by the stored type of the "
                        "weight they use (through DEQUANTIZE); activations = other tensors")


def _tflite_subgraph(model, g, codes, type_names, tally: _Tally, seen_buffers: set) -> None:
    def is_const(t) -> bool:
        b = g.Tensors(t).Buffer()
        if b <= 0 or b >= model.BuffersLength():
            return False
        buf = model.Buffers(b)
        return buf.DataLength() > 0 or buf.Offset() > 1

    def dims(t) -> list[int]:
        tensor = g.Tensors(t)
        return [int(x) for x in tensor.ShapeAsNumpy()] if tensor.ShapeLength() else []

    def dtype(t) -> str:
        return type_names.get(g.Tensors(t).Type(), "unknown")

    ops = [g.Operators(k) for k in range(g.OperatorsLength())]
    inputs = [[int(i) for i in op.InputsAsNumpy() if i >= 0] if op.InputsLength() else [] for op in ops]
    producer = {int(o): k for k, op in enumerate(ops) if op.OutputsLength() for o in op.OutputsAsNumpy()}

    def stored(t: int) -> str | None:
        if is_const(t):
            return dtype(t) if len(dims(t)) >= 2 and _weight_dtype(dtype(t)) else None
        k = producer.get(t)
        if k is not None and codes[ops[k].OpcodeIndex()] == "DEQUANTIZE" and inputs[k]:
            return stored(inputs[k][0])
        return None

    used = {t for ins in inputs for t in ins}     # blockwise scales are referenced by quantization details only
    for t in range(g.TensorsLength()):
        if is_const(t):
            buffer = g.Tensors(t).Buffer()
            if t in used and len(dims(t)) >= 2 and _weight_dtype(dtype(t)) and buffer not in seen_buffers:
                seen_buffers.add(buffer)
                tally.weight(dtype(t), _elements(dims(t)))
        elif not (t in producer and codes[ops[producer[t]].OpcodeIndex()] == "DEQUANTIZE"
                  and all(is_const(i) for i in inputs[producer[t]])):
            tally.activations[dtype(t)] += 1
    for k, op in enumerate(ops):
        name = codes[op.OpcodeIndex()]
        if name in ("QUANTIZE", "DEQUANTIZE"):
            tally.quantize_ops[name] += 1
            continue
        tally.op([stored(t) for t in inputs[k]])


# ------------------------------------------------------------------------------------------ Core ML

def coreml_census(path: Path) -> dict:
    # the protobuf modules coremltools ships, loaded without importing coremltools (which imports torch)
    from .coreml_spec import proto as coreml_proto, spec_file
    proto = coreml_proto()
    spec = proto.Model.FromString(spec_file(path).read_bytes())
    names = {v.number: v.name.lower() for v in proto.MIL__pb2.DataType.DESCRIPTOR.values}
    tally = _Tally()
    tally.activations = Counter()
    for fn in spec.mlProgram.functions.values():
        for block in fn.block_specializations.values():
            _coreml_block(block, names, tally)
    return tally.result(f"measured from {path.name}: const / constexpr_* outputs of ≥ 2 dims by stored dtype "
                        "(palettized indices as uint<bits>); ops by the stored dtype of the weight they use; "
                        "activations = other op outputs")


def coreml_value_type(op, key: str):
    """The tensor type of a const / constexpr_* op's `key`: an attribute (iOS 16/17 constexpr ops) or an
    inline input value (iOS 18 ops, e.g. constexpr_blockwise_shift_scale's data and scale); None if neither."""
    if key in op.attributes:
        return op.attributes[key].type.tensorType
    if key in op.inputs:
        args = op.inputs[key].arguments
        if args and args[0].WhichOneof("binding") == "value":
            return args[0].value.type.tensorType
    return None


def _coreml_stored(op, names) -> str:
    """The stored dtype of a const / constexpr_* op's data."""
    attrs = op.attributes
    if op.type == "const":
        return names.get(attrs["val"].type.tensorType.dataType, "unknown")
    if op.type == "constexpr_lut_to_dense" and "lut" in attrs:         # iOS 16: packed indices, size from the lut
        entries = attrs["lut"].type.tensorType.dimensions
        size = entries[-1].constant.size if entries else 0
        return f"uint{max(size - 1, 1).bit_length()}"
    for key in ("quantized_data", "data", "indices"):
        if (t := coreml_value_type(op, key)) is not None:
            return names.get(t.dataType, "unknown")
    return "unknown"


def _coreml_block(block, names, tally: _Tally) -> None:
    stored: dict[str, str | None] = {}
    for op in block.operations:
        outs = op.outputs
        if op.type == "const" or op.type.startswith("constexpr_"):
            if op.type.startswith("constexpr_"):
                tally.quantize_ops[op.type] += 1
            for o in outs:
                dims = [d.constant.size for d in o.type.tensorType.dimensions]
                dtype = _coreml_stored(op, names)
                weight = len(dims) >= 2 and _weight_dtype(dtype)
                stored[o.name] = dtype if weight else None
                if weight:
                    tally.weight(dtype, _elements(dims))
            continue
        tally.op([stored.get(a.name) for arg in op.inputs.values() for a in arg.arguments if a.name])
        for o in outs:
            if o.type.HasField("tensorType"):
                tally.activations[names.get(o.type.tensorType.dataType, "unknown")] += 1


