"""ONNX-specific checks before onnxruntime sees a file: external-data references and tensor sizes.

Every tensor that can carry external data is visited — initializers, sparse initializers (values and
indices), attribute tensors, and the same inside every subgraph — and each `location` goes through
the one path validator (`paths.contained_file`), with offset/length bounded by the real file size.
Declared tensor sizes are computed in checked arithmetic against explicit caps.
"""
from __future__ import annotations

from pathlib import Path

from .errors import UnsafeInputError, require_extra
from .paths import check_range, contained_file

MAX_TENSOR_ELEMENTS = 1 << 34          # 16 Gi elements
MAX_TENSOR_BYTES = 8 << 30             # 8 GiB
MAX_DIMS = 16
ELEM_BYTES = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8, 14: 8, 15: 16, 16: 2}


def iter_tensors(graph):
    """Yield (where, TensorProto) for every tensor reachable from `graph`, subgraphs included."""
    for t in graph.initializer:
        yield f"initializer {t.name!r}", t
    for s in graph.sparse_initializer:
        yield f"sparse initializer {s.values.name!r} values", s.values
        yield f"sparse initializer {s.values.name!r} indices", s.indices
    for node in graph.node:
        for attr in node.attribute:
            where = f"node {node.name or node.op_type!r} attribute {attr.name!r}"
            if attr.HasField("t"):
                yield where, attr.t
            if attr.HasField("sparse_tensor"):
                yield where, attr.sparse_tensor.values
                yield where, attr.sparse_tensor.indices
            for t in attr.tensors:
                yield where, t
            subgraphs = ([attr.g] if attr.HasField("g") else []) + list(attr.graphs)
            for g in subgraphs:
                yield from iter_tensors(g)


def checked_size(where: str, dims, data_type: int) -> int:
    if len(dims) > MAX_DIMS:
        raise UnsafeInputError(f"{where}: {len(dims)} dimensions (cap {MAX_DIMS})")
    n = 1
    for d in dims:
        if d < 0:
            raise UnsafeInputError(f"{where}: negative dimension {d}")
        n *= d
        if n > MAX_TENSOR_ELEMENTS:
            raise UnsafeInputError(f"{where}: more than {MAX_TENSOR_ELEMENTS} elements")
    nbytes = n * ELEM_BYTES.get(data_type, 8)
    if nbytes > MAX_TENSOR_BYTES:
        raise UnsafeInputError(f"{where}: {nbytes} bytes exceeds the {MAX_TENSOR_BYTES}-byte cap")
    return nbytes


def check_external(model_path: Path, where: str, tensor) -> None:
    entries = {e.key: e.value for e in tensor.external_data}
    location = entries.get("location")
    if not location:
        raise UnsafeInputError(f"{model_path}: {where} is external but names no location")
    path = contained_file(model_path.parent, location)
    try:
        offset, length = int(entries.get("offset", 0)), int(entries.get("length", path.stat().st_size))
    except ValueError:
        raise UnsafeInputError(f"{model_path}: {where} has a non-integer offset/length") from None
    check_range(path, offset, length)


def check_onnx(model_path: Path) -> None:
    onnx = require_extra("onnx", "runtime", "checking ONNX files")
    try:
        model = onnx.load(str(model_path), load_external_data=False)
    except Exception as exc:  # protobuf DecodeError and friends
        raise UnsafeInputError(f"{model_path}: not a valid ONNX protobuf ({type(exc).__name__})") from exc
    for where, tensor in iter_tensors(model.graph):
        checked_size(f"{model_path}: {where}", list(tensor.dims), tensor.data_type)
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            check_external(Path(model_path), where, tensor)
