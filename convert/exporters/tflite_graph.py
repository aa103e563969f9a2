"""Graph clean-up of a converted .tflite file (flatbuffer level, after litert-torch).

fold_same_pads: TF-style "same" padding of a stride-2 conv is asymmetric (e.g. 0 before, 1 after), which
torch expresses as ZeroPad2d + conv(padding=0). In fp32 the converter folds the pad into the conv; in a
quantized graph the quantize/dequantize pair between them stops that, and the pad stays as
TRANSPOSE → PAD → [QUANTIZE] → TRANSPOSE in NCHW on the largest activations of the network
(EfficientNet-Lite0: 4 such chains, 112×112×96 the biggest). Where the pad equals what padding=SAME
does for that conv, the chain is removed and the conv reads the unpadded tensor with padding=SAME.
Quantized SAME convs pad with the input zero-point, i.e. real zeros, as PAD does.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

NHWC_TO_NCHW, NCHW_TO_NHWC = [0, 3, 1, 2], [0, 2, 3, 1]


def _same(n: int, k: int, stride: int) -> list[int]:
    total = max((math.ceil(n / stride) - 1) * stride + k - n, 0)
    return [total // 2, total - total // 2]


class _Graph:
    def __init__(self, model):
        from ai_edge_litert.tools import flatbuffer_utils as fu
        self.model, self.g = model, model.subgraphs[0]
        self.codes = [fu.get_builtin_code_from_operator_code(c) for c in model.operatorCodes]
        self.consumers: dict[int, list[int]] = {}
        for i, op in enumerate(self.g.operators):
            for t in op.inputs:
                self.consumers.setdefault(int(t), []).append(i)
        self.producer = {int(t): i for i, op in enumerate(self.g.operators) for t in op.outputs}

    def kind(self, op) -> int:
        return self.codes[op.opcodeIndex]

    def ints(self, tensor: int) -> list[int]:
        return np.frombuffer(bytes(self.model.buffers[self.g.tensors[tensor].buffer].data), np.int32).tolist()

    def sole_producer(self, tensor: int, kind: int) -> int | None:
        """The op of `kind` that produces `tensor`, when `tensor` has no other reader and is no graph output."""
        i = self.producer.get(int(tensor))
        if (i is None or self.kind(self.g.operators[i]) != kind or len(self.consumers.get(int(tensor), [])) != 1
                or int(tensor) in list(self.g.outputs)):
            return None
        return i


def _pad_chain(graph: _Graph, conv) -> tuple[list[int], int, list] | None:
    """(ops to remove, the unpadded NHWC tensor, NCHW paddings) when `conv` reads T→PAD→[Q]→T."""
    from ai_edge_litert import schema_py_generated as S
    B = S.BuiltinOperator
    ops = graph.g.operators
    t2 = graph.sole_producer(conv.inputs[0], B.TRANSPOSE)
    if t2 is None or graph.ints(ops[t2].inputs[1]) != NCHW_TO_NHWC:
        return None
    chain, tensor = [t2], ops[t2].inputs[0]
    if (q := graph.sole_producer(tensor, B.QUANTIZE)) is not None:        # a requantize of the pad's output
        chain.append(q)
        tensor = ops[q].inputs[0]
    p = graph.sole_producer(tensor, B.PAD)
    if p is None:
        return None
    t1 = graph.sole_producer(ops[p].inputs[0], B.TRANSPOSE)
    if t1 is None or graph.ints(ops[t1].inputs[1]) != NHWC_TO_NCHW:
        return None
    pads = np.array(graph.ints(ops[p].inputs[1])).reshape(-1, 2).tolist()
    return chain + [p, t1], ops[t1].inputs[0], pads


def fold_same_pads(src: Path, dst: Path) -> int:
    """Rewrite `src` into `dst` with every foldable pad chain removed. Returns how many were folded."""
    from ai_edge_litert import schema_py_generated as S
    from ai_edge_litert.tools import flatbuffer_utils as fu
    B = S.BuiltinOperator
    graph = _Graph(fu.read_model(str(src)))
    remove: set[int] = set()
    folded = 0
    for conv in graph.g.operators:
        opts = conv.builtinOptions
        if (graph.kind(conv) not in (B.CONV_2D, B.DEPTHWISE_CONV_2D) or opts.padding != S.Padding.VALID
                or (opts.dilationHFactor, opts.dilationWFactor) != (1, 1)):
            continue
        found = _pad_chain(graph, conv)
        if found is None:
            continue
        chain, unpadded, pads = found
        _, h, w, _ = graph.g.tensors[unpadded].shape
        kh, kw = graph.g.tensors[conv.inputs[1]].shape[1:3]
        if pads != [[0, 0], [0, 0], _same(h, kh, opts.strideH), _same(w, kw, opts.strideW)]:
            continue
        conv.inputs[0] = unpadded
        opts.padding = S.Padding.SAME
        remove.update(chain)
        folded += 1
    graph.g.operators = [op for i, op in enumerate(graph.g.operators) if i not in remove]
    fu.write_model(graph.model, str(dst))
    return folded
