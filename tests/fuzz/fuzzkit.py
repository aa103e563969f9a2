"""Shared by the hypothesis targets (test_fuzz_*.py) and the optional atheris harness: tiny generated
model files (built here in milliseconds, no converter) and the one property every target checks —
hostile input may only ever raise a PocketmlError subclass."""
from __future__ import annotations

import os
from datetime import timedelta

import numpy as np
from hypothesis import HealthCheck, settings

from pocketml.runtime.errors import PocketmlError

# ~100 examples per target keeps tests/fuzz under a minute; raise it for a longer campaign:
#   POCKETML_FUZZ_EXAMPLES=5000 pytest tests/fuzz
FUZZ = settings(max_examples=int(os.environ.get("POCKETML_FUZZ_EXAMPLES", "100")),
                deadline=timedelta(seconds=2), suppress_health_check=[HealthCheck.too_slow,
                                                                       HealthCheck.function_scoped_fixture])
W = np.array([[1, 2, 3, 4]], np.float32)


def only_pocketml_errors(fn, *args, **kwargs):
    """Run `fn`; a PocketmlError is a refusal (fine), anything else propagates as the fuzz failure."""
    try:
        return fn(*args, **kwargs)
    except PocketmlError:
        return None


def tiny_tflite(external_group: str | None = None) -> bytes:
    """y = x + w for a 1×4 float x, as a TFLite flatbuffer built with the schema module LiteRT ships.
    With `external_group`, also declares an external buffer group of that file name (16 bytes)."""
    from ai_edge_litert import schema_py_generated as s
    import flatbuffers

    def tensor(name, buffer):
        t = s.TensorT()
        t.shape, t.type, t.buffer, t.name = [1, 4], s.TensorType.FLOAT32, buffer, name
        return t

    sub = s.SubGraphT()
    sub.tensors = [tensor("x", 1), tensor("w", 2), tensor("y", 3)]
    sub.inputs, sub.outputs, sub.name = [0], [2], "main"
    op = s.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = 0, [0, 1], [2]
    op.builtinOptionsType = s.BuiltinOptions.AddOptions
    op.builtinOptions = s.AddOptionsT()
    sub.operators = [op]
    code = s.OperatorCodeT()
    code.builtinCode, code.deprecatedBuiltinCode, code.version = s.BuiltinOperator.ADD, 0, 1
    buffers = [s.BufferT() for _ in range(4)]
    buffers[2].data = list(W.tobytes())
    model = s.ModelT()
    model.version, model.operatorCodes, model.subgraphs, model.buffers = 3, [code], [sub], buffers
    model.description = "pocketml fuzz seed"
    if external_group is not None:
        group = s.ExternalBufferGroupT()
        group.name = external_group
        ext = s.ExternalBufferT()
        ext.id, ext.group, ext.offset, ext.length, ext.packing = 1, 0, 0, 16, "unpacked"
        model.externalBufferGroups, model.externalBuffers = [group], [ext]
    b = flatbuffers.Builder(1024)
    b.Finish(model.Pack(b), file_identifier=b"TFL3")
    return bytes(b.Output())


def tiny_onnx(external: str | None = None) -> bytes:
    """y = x + w, w inline or (with `external`) as external data at that location."""
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(W, "w")
    if external is not None:
        w = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[1, 4], data_location=TensorProto.EXTERNAL)
        for key, value in (("location", external), ("offset", "0"), ("length", "16")):
            entry = w.external_data.add()
            entry.key, entry.value = key, value
    x, y = (helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 4]) for n in ("x", "y"))
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g", [x], [y], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9).SerializeToString()
