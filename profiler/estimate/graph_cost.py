"""Per-op cost of an artifact's graph: MACs, FLOPs, bytes moved and an op category.

Reads ONNX (the `onnx` package + shape inference), TFLite (the flatbuffer schema shipped
with ai-edge-litert) and Core ML ML Programs (the MIL spec via coremltools, no model load).
No torch. Every op becomes one `OpCost`; ops a runtime folds away (constant subgraphs,
weight dequantization, an activation fused into its producer, Q/DQ pairs of a QDQ graph)
are kept with `fused=True` so the breakdown still shows them but they cost nothing.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from pocketml.runtime.errors import UnsupportedError

CATEGORIES = ("conv1x1", "convkxk", "depthwise", "fc", "attention", "elementwise", "pooling",
              "reshape", "other")
COMPUTE = ("conv1x1", "convkxk", "depthwise", "fc", "attention")
BYTES = {"fp32": 4, "fp16": 2, "int8": 1, "uint8": 1, "int16": 2, "int32": 4, "int64": 8,
         "bool": 1, "fp64": 8, "int4": 0.5, "uint16": 2, "uint32": 4, "uint64": 8}
FLOAT_PREC = {"fp32": "fp32", "fp64": "fp32", "fp16": "fp16", "int8": "int8", "uint8": "int8"}

# Op type (lower case, all three formats) -> category, for ops that are not MAC ops.
ELEMENTWISE = set("""add sub mul div real_div relu relu6 clip leakyrelu leaky_relu prelu sigmoid logistic
hardsigmoid sigmoid_hard hardswish hard_swish silu gelu tanh exp log sqrt rsqrt pow erf neg abs max min
maximum minimum where cast quantize dequantize quantizelinear dequantizelinear dynamicquantizelinear
batchnormalization batch_norm layernormalization layer_norm instancenormalization instance_norm
skiplayernormalization simplifiedlayernormalization rmsnormalization squared_difference equal less greater
not and or floor ceil round sin cos reciprocal softplus elu mish biasgelu fastgelu quickgelu select
logical_and logical_or logical_not square""".split())
POOLING = set("""averagepool maxpool globalaveragepool globalmaxpool average_pool_2d max_pool_2d avg_pool
max_pool reducemean reducesum reducemax reducemin reduce_mean reduce_sum reduce_max reduce_min mean sum
reduce_prod argmax arg_max argmin arg_min""".split())
VIEW = set("""reshape squeeze unsqueeze flatten identity expand_dims""".split())   # no data moved
COPY = set("""transpose concat concatenation split split_v slice strided_slice slice_by_index slice_by_size
gather gather_nd pad padv2 mirror_pad pack unpack tile expand broadcast_to depthtospace spacetodepth
depth_to_space space_to_depth pixel_shuffle gatherelements scatternd""".split())
GATHER = {"gather", "gather_nd", "embedding_lookup", "gatherelements"}
ATTENTION = {"softmax", "log_softmax", "logsoftmax"}
FREE = set("""shape constant constantofshape const size range""".split())             # folded at load
FUSABLE_ACT = {"relu", "relu6", "clip", "leakyrelu", "leaky_relu", "batchnormalization", "batch_norm"}
FUSE_INTO = {"conv1x1", "convkxk", "depthwise", "fc"}
# Non-MAC arithmetic per output element.
FLOPS_PER_ELEM = {"sigmoid": 4, "logistic": 4, "tanh": 4, "gelu": 8, "erf": 6, "exp": 4, "silu": 5,
                  "hardswish": 3, "hard_swish": 3, "hardsigmoid": 2, "sigmoid_hard": 2, "softmax": 5,
                  "layernormalization": 8, "layer_norm": 8, "skiplayernormalization": 9,
                  "batchnormalization": 2, "batch_norm": 2, "dynamicquantizelinear": 4}


@dataclass
class OpCost:
    name: str
    op: str
    category: str
    precision: str              # compute precision as stored in the graph: fp32 | fp16 | int8
    macs: int = 0
    flops: int = 0              # non-MAC arithmetic (elementwise, pooling, softmax)
    weight_bytes: int = 0       # constant inputs
    in_bytes: int = 0           # activation inputs
    out_bytes: int = 0
    fused: bool = False         # folded at load time or into its producer: no time, no dispatch
    inputs: list = field(default_factory=list, repr=False)
    outputs: list = field(default_factory=list, repr=False)

    @property
    def bytes(self) -> int:
        return self.weight_bytes + self.in_bytes + self.out_bytes


@dataclass
class GraphCost:
    format: str
    ops: list[OpCost]
    notes: list[str] = field(default_factory=list)

    @property
    def precision(self) -> str:
        """The precision that carries most MACs (fp32 when the graph has none)."""
        by = {}
        for op in self.live():
            by[op.precision] = by.get(op.precision, 0) + op.macs
        return max(by, key=by.get) if by and max(by.values()) > 0 else "fp32"

    def live(self) -> list[OpCost]:
        return [op for op in self.ops if not op.fused]

    def totals(self) -> dict:
        live = self.live()
        return {"ops": len(live), "macs": sum(o.macs for o in live), "flops": sum(o.flops for o in live),
                "weight_bytes": sum(o.weight_bytes for o in live),
                "activation_bytes": sum(o.in_bytes + o.out_bytes for o in live)}

    def to_dict(self) -> dict:
        keys = ("name", "op", "category", "precision", "macs", "flops", "weight_bytes", "in_bytes",
                "out_bytes", "fused")
        return {"format": self.format, "notes": self.notes, "columns": list(keys),
                "ops": [[getattr(o, k) for k in keys] for o in self.ops]}

    @classmethod
    def from_dict(cls, d: dict) -> "GraphCost":
        return cls(d["format"], [OpCost(**dict(zip(d["columns"], row))) for row in d["ops"]], d.get("notes", []))


def _prod(shape) -> int:
    return int(math.prod(int(s) for s in shape)) if shape is not None else 0


def _nbytes(shape, dtype) -> int:
    return int(_prod(shape) * BYTES.get(dtype, 4)) if shape is not None else 0


def _conv_category(kernel_elems: int, in_per_group: int, groups: int) -> str:
    if groups > 1 and in_per_group == 1:
        return "depthwise"
    return "conv1x1" if kernel_elems == 1 else "convkxk"


def _simple_category(op: str) -> str:
    for names, cat in ((ELEMENTWISE, "elementwise"), (POOLING, "pooling"), (VIEW, "reshape"),
                       (COPY, "reshape"), (ATTENTION, "attention")):
        if op in names:
            return cat
    return "other"


def simple_op(name, op, shapes_in, dtypes_in, consts, shape_out, dtype_out, inputs, outputs) -> OpCost:
    """Cost of a non-MAC op from its tensor shapes. `consts` flags constant inputs."""
    key = op.lower()
    cat = _simple_category(key)
    w = sum(_nbytes(s, d) for s, d, c in zip(shapes_in, dtypes_in, consts) if c)
    a_in = sum(_nbytes(s, d) for s, d, c in zip(shapes_in, dtypes_in, consts) if not c)
    out = _nbytes(shape_out, dtype_out)
    if key in VIEW:
        w = a_in = out = 0
    if key in GATHER:
        w = min(w, out)                     # a lookup reads the rows it returns, not the table
    elems = _prod(shape_out) if shape_out is not None else 0
    if cat == "pooling":
        elems = max(elems, max((_prod(s) for s in shapes_in if s is not None), default=0))
    flops = elems * FLOPS_PER_ELEM.get(key, 1) if cat in ("elementwise", "pooling", "attention") else 0
    prec = next((FLOAT_PREC[d] for d, c in zip(dtypes_in, consts) if not c and d in FLOAT_PREC), "fp32")
    return OpCost(name, op, cat, prec, 0, flops, w, a_in, out, inputs=list(inputs), outputs=list(outputs))


def mark_fusions(ops: list[OpCost]) -> None:
    """Fold a ReLU/Clip/BatchNorm into a conv/fc producer that has no other consumer (XNNPACK,
    ORT, BNNS all fuse these); fold ops whose inputs are all constant (done once at load)."""
    producer = {t: op for op in ops for t in op.outputs}
    consumers: dict[str, int] = {}
    for op in ops:
        for t in op.inputs:
            consumers[t] = consumers.get(t, 0) + 1
    for op in ops:
        if op.op.lower() not in FUSABLE_ACT or not op.inputs:
            continue
        src = producer.get(op.inputs[0])
        if src is not None and src.category in FUSE_INTO and consumers.get(op.inputs[0], 0) == 1:
            op.fused = True


def load(artifact: str | Path):
    """(model path, format, manifest or None) of an artifact or a bare model file, through the gate every
    model file passes before a parser reads it: checksums verified (artifacts), path and pre-checks
    (`runtime.model_file.checked_model`)."""
    from pocketml.runtime.model_file import checked_model
    checked = checked_model(artifact)
    return checked.path, checked.format, checked.manifest


def graph_cost(artifact: str | Path) -> GraphCost:
    """Cost table of the artifact's main graph (the format registry names each format's reader). A
    library's error on the file is a refusal naming it (runtime/parsing.py)."""
    from pocketml.runtime import formats
    from pocketml.runtime.parsing import reading
    path, fmt, manifest = load(artifact)
    if fmt not in formats.REGISTRY:
        raise UnsupportedError(f"{artifact}: no cost model for format {fmt!r}")
    with reading(path, f"the {formats.get(fmt).title} graph"):
        ops, notes = formats.get(fmt).read_graph(path, manifest)
    mark_fusions(ops)
    return GraphCost(fmt, ops, notes)


def summary(cost: GraphCost) -> dict:
    """Per category: op count, MACs, bytes (fused ops excluded)."""
    out = {}
    for op in cost.live():
        row = out.setdefault(op.category, {"count": 0, "macs": 0, "bytes": 0})
        row["count"] += 1
        row["macs"] += op.macs
        row["bytes"] += op.bytes
    return out
