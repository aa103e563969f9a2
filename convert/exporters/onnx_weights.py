"""ONNX weight-only quantization: int8w (per-channel int8 + DequantizeLinear) and int4 (MatMulNBits /
GatherBlockQuantized, blocks of 32). Activations stay float; the file gets smaller.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

MIN_ELEMENTS = 1024            # smaller tensors (biases, norms) stay float: no size to win
INT4_BLOCK = 32

# op -> (which input is the weight, axis of the output channel given the node)
WEIGHT_INPUT = {
    "Conv": (1, lambda node: 0),
    "ConvTranspose": (1, lambda node: 1),
    "MatMul": (1, lambda node: 1),
    "Gemm": (1, lambda node: 0 if _attr(node, "transB") else 1),
    "Gather": (0, lambda node: 0),
}


def _attr(node, name: str, default=0):
    return next((a.i for a in node.attribute if a.name == name), default)


def weight_uses(graph) -> dict[str, int]:
    """initializer name -> per-channel axis, for float initializers that only feed weight inputs with one axis."""
    from onnx import TensorProto
    inits = {i.name: i for i in graph.initializer}
    axes: dict[str, set] = {}
    other: set[str] = set()
    for node in graph.node:
        for k, name in enumerate(node.input):
            if name not in inits:
                continue
            w = WEIGHT_INPUT.get(node.op_type)
            if w and w[0] == k:
                axes.setdefault(name, set()).add(w[1](node))
            else:
                other.add(name)
    return {n: a.pop() for n, a in axes.items()
            if n not in other and len(a) == 1 and inits[n].data_type == TensorProto.FLOAT
            and int(np.prod(inits[n].dims)) >= MIN_ELEMENTS and len(inits[n].dims) >= 2}


def int8_weights(src: Path, dst: Path) -> list[str]:
    """Every eligible weight → int8 per output channel (symmetric) + DequantizeLinear. Returns their names."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    targets = weight_uses(graph)
    keep, added = [], []
    for init in graph.initializer:
        axis = targets.get(init.name)
        if axis is None:
            keep.append(init)
            continue
        w = numpy_helper.to_array(init).astype(np.float32)
        reduce = tuple(i for i in range(w.ndim) if i != axis)
        scale = np.maximum(np.abs(w).max(axis=reduce), 1e-12) / 127.0
        shape = [1] * w.ndim
        shape[axis] = -1
        q = np.clip(np.round(w / scale.reshape(shape)), -127, 127).astype(np.int8)
        added += [numpy_helper.from_array(q, f"{init.name}_int8"),
                  numpy_helper.from_array(scale.astype(np.float32), f"{init.name}_scale"),
                  numpy_helper.from_array(np.zeros_like(scale, dtype=np.int8), f"{init.name}_zero")]
        graph.node.insert(0, helper.make_node("DequantizeLinear", [f"{init.name}_int8", f"{init.name}_scale",
                                                                   f"{init.name}_zero"], [init.name],
                                              name=f"{init.name}_dequantize", axis=axis))
    del graph.initializer[:]
    graph.initializer.extend(keep + added)
    onnx.save(model, str(dst))
    return sorted(targets)


def int4_weights(src: Path, dst: Path) -> int:
    """MatMul weights and embedding tables → 4-bit blocks of 32 (onnxruntime's MatMulNBits quantizer).
    Returns how many nodes were quantized."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    cfg = DefaultWeightOnlyQuantConfig(block_size=INT4_BLOCK, is_symmetric=True, accuracy_level=4,
                                       op_types_to_quantize=("MatMul", "Gather"), quant_axes=(("Gather", 1),))
    from onnxruntime.quantization.onnx_model import ONNXModel

    model = ONNXModel(onnx.load(str(src)))
    model.replace_gemm_with_matmul()          # Linear layers often export as Gemm; MatMulNBits takes MatMul
    q = MatMulNBitsQuantizer(model.model, algo_config=cfg)
    q.process()
    q.model.save_model_to_file(str(dst), False)
    return sum(n.op_type in ("MatMulNBits", "GatherBlockQuantized") for n in q.model.model.graph.node)
