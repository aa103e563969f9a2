"""ONNX-specific checks before onnxruntime sees a file: external-data references and tensor sizes.

Every tensor that can carry external data is visited — initializers, sparse initializers (values and
indices), attribute tensors (`t`, `tensors`, `sparse_tensor`, `sparse_tensors`), the same inside every
subgraph (If/Loop/Scan bodies, at any depth) and inside model-local functions — and each `location`
goes through the one path validator (`paths.open_contained`: no absolute paths, no `..`, no symlink in
any component, no hard links, O_NOFOLLOW), with offset/length bounded by the real file size.
Declared tensor sizes are computed in checked arithmetic against explicit caps
(`prechecks.checked_nbytes`), and inline `raw_data` must match the declared size.
"""
from __future__ import annotations

import os
from pathlib import Path

from .errors import UnsafeInputError, require_dependency
from .parsing import reading
from .paths import check_range, open_contained
from .prechecks import MAX_DIMS, MAX_TENSOR_BYTES, MAX_TENSOR_ELEMENTS, checked_nbytes  # noqa: F401 (re-exported)

# TensorProto.DataType → bytes per element for fixed-width types. Others (STRING, 4-bit packed, …)
# are counted at 8 bytes for the caps and skip the exact raw_data size check.
ELEM_BYTES = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8, 14: 8, 15: 16, 16: 2,
              17: 1, 18: 1, 19: 1, 20: 1}
MAX_GRAPH_DEPTH = 64
EXTERNAL_KEYS = {"location", "offset", "length", "checksum", "basepath"}


def iter_tensors(graph, depth: int = 0):
    """Yield (where, TensorProto) for every tensor reachable from `graph`, subgraphs included."""
    if depth > MAX_GRAPH_DEPTH:
        raise UnsafeInputError(f"subgraphs nested deeper than {MAX_GRAPH_DEPTH}")
    for t in graph.initializer:
        yield f"initializer {t.name!r}", t
    for s in graph.sparse_initializer:
        yield from _sparse(f"sparse initializer {s.values.name!r}", s)
    yield from _iter_nodes(graph.node, depth)


def _iter_nodes(nodes, depth: int):
    for node in nodes:
        for attr in node.attribute:
            where = f"node {node.name or node.op_type!r} attribute {attr.name!r}"
            if attr.HasField("t"):
                yield where, attr.t
            for t in attr.tensors:
                yield where, t
            sparse = ([attr.sparse_tensor] if attr.HasField("sparse_tensor") else []) + list(attr.sparse_tensors)
            for st in sparse:
                yield from _sparse(f"{where} sparse tensor", st)
            subgraphs = ([attr.g] if attr.HasField("g") else []) + list(attr.graphs)
            for g in subgraphs:
                for sub_where, t in iter_tensors(g, depth + 1):
                    yield f"{where} subgraph {g.name!r}: {sub_where}", t


class _Dense:
    """The dense shape of a sparse tensor: onnxruntime densifies sparse initializers, so it is capped too."""

    def __init__(self, sparse):
        self.dims, self.data_type = list(sparse.dims), sparse.values.data_type
        self.data_location, self.external_data, self.raw_data = 0, (), b""


def _sparse(where: str, st):
    yield f"{where} values", st.values
    yield f"{where} indices", st.indices
    yield f"{where} dense shape", _Dense(st)


def iter_model_tensors(model):
    yield from iter_tensors(model.graph)
    for fn in model.functions:
        for where, t in _iter_nodes(fn.node, 1):
            yield f"function {fn.name!r} {where}", t


def checked_size(where: str, dims, data_type: int) -> int:
    return checked_nbytes(where, dims, ELEM_BYTES.get(data_type, 8))


def check_external(model_path: Path, where: str, tensor, nbytes: int | None = None) -> None:
    entries = {}
    for e in tensor.external_data:
        if not (isinstance(e.key, str) and isinstance(e.value, str)):   # protobuf hands back bytes for bad UTF-8
            raise UnsafeInputError(f"{model_path}: {where} has an external-data entry that is not UTF-8 text")
        if e.key in entries:
            raise UnsafeInputError(f"{model_path}: {where} repeats external-data key {e.key!r}")
        entries[e.key] = e.value
    unknown = sorted(set(entries) - EXTERNAL_KEYS)
    if unknown:
        raise UnsafeInputError(f"{model_path}: {where} has unknown external-data key(s) {unknown}")
    location = entries.get("location")
    if not location:
        raise UnsafeInputError(f"{model_path}: {where} is external but names no location")
    try:
        with open_contained(model_path.parent, location) as fh:
            size = os.fstat(fh.fileno()).st_size
    except UnsafeInputError as exc:
        raise UnsafeInputError(f"{model_path}: {where}: external data refused: {exc}", location=location) from None
    path = model_path.parent / location
    try:
        offset = _int("offset", entries.get("offset", "0"))
        length = _int("length", entries["length"]) if "length" in entries else size - offset
    except ValueError as exc:
        raise UnsafeInputError(f"{model_path}: {where} has {exc}") from None
    try:
        check_range(path, offset, length, size=size)
    except UnsafeInputError as exc:
        raise UnsafeInputError(f"{model_path}: {where}: {exc}") from None
    if nbytes is not None and (length != nbytes if "length" in entries else length < nbytes):
        raise UnsafeInputError(f"{model_path}: {where} declares {nbytes} bytes but its external data "
                               f"has {length}")


def _int(name: str, text: str) -> int:
    """A non-negative decimal external-data offset/length; ValueError says what is wrong with it."""
    if text[:1] == "-" and text[1:].isascii() and text[1:].isdigit():
        raise ValueError(f"a negative {name} ({text[:24]})")
    if not (text.isascii() and text.isdigit()):
        raise ValueError(f"a non-integer {name} ({text[:40]!r})")
    if len(text) > 20:
        raise ValueError(f"an out-of-range {name} ({len(text)} digits, at most 20)")
    return int(text)


def check_onnx(model_path: Path, data: bytes | None = None) -> None:
    """`data`: the file's bytes when the caller has read them already (through the validator)."""
    onnx = require_dependency("onnx", "onnx", "checking ONNX files")
    model_path = Path(model_path)
    if data is None:
        from .paths import open_regular
        with open_regular(model_path) as fh:
            data = fh.read()
    with reading(model_path, "the ONNX protobuf"):     # DecodeError, incl. protobuf's nesting-depth limit
        model = onnx.ModelProto.FromString(data)
    try:
        tensors = list(iter_model_tensors(model))
    except RecursionError:
        raise UnsafeInputError(f"{model_path}: subgraphs nested too deeply") from None
    for where, tensor in tensors:
        exact = tensor.data_type in ELEM_BYTES and not isinstance(tensor, _Dense)
        nbytes = checked_size(f"{model_path}: {where}", list(tensor.dims), tensor.data_type)
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            check_external(model_path, where, tensor, nbytes if exact else None)
        elif tensor.external_data:
            raise UnsafeInputError(f"{model_path}: {where} carries external-data entries but is not marked "
                                   "external; refusing to guess which applies")
        elif exact and tensor.raw_data and len(tensor.raw_data) != nbytes:
            raise UnsafeInputError(f"{model_path}: {where} declares {nbytes} bytes but holds "
                                   f"{len(tensor.raw_data)} bytes of raw_data")
