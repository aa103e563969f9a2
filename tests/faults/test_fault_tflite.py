"""Crafted TFLite files: sizes and indices the flatbuffer declares are checked before LiteRT sees them.

Truncated (half, 4 bytes) and random-byte .tflite/.onnx files are covered, with exit code, message
and no-partial assertions, by tests/test_corrupt_artifacts.py::test_profile_refuses_damaged_model.
Here: well-formed flatbuffers whose declared shapes, buffer indices, tensor indices and vector
lengths are hostile. Profiled (in the child) so that a miss could not take pytest down with it.
"""
from __future__ import annotations

import struct
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_no_partial, run_cli
from faultkit import copy_artifact, one_line, report_rows, rerecord, write_artifact, write_reference

import pocketml.runtime as rt
from pocketml.runtime.prechecks import MAX_TENSOR_ELEMENTS, _FlatBuffer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fuzz"))
from fuzzkit import tiny_tflite  # noqa: E402  (the generated 1×4 Add model, shared with the fuzzers)


def _walk(data: bytes):
    fb = _FlatBuffer("model.tflite", data, len(data))
    model = fb.table(fb.u32(0))
    _, sub = next(model.tables(2))
    return fb, model, sub


def _tensor_with_shape(sub, rank_at_least: int):
    for k, t in sub.tables(0):
        start, n = t.vector(0, 4)
        if n >= rank_at_least:
            return k, t, start, n
    raise AssertionError("no such tensor")


def huge_shape(data: bytearray) -> tuple[str, int]:
    _, _, sub = _walk(bytes(data))
    k, _, start, n = _tensor_with_shape(sub, 2)
    struct.pack_into("<ii", data, start, 0x7FFFFFFF, 0x7FFFFFFF)
    return f"subgraph 0 tensor {k}: more than {MAX_TENSOR_ELEMENTS} elements", k


def negative_dim(data: bytearray) -> tuple[str, int]:
    _, _, sub = _walk(bytes(data))
    k, _, start, _ = _tensor_with_shape(sub, 1)
    struct.pack_into("<i", data, start, -5)
    return f"subgraph 0 tensor {k}: negative dimension -5", k


def buffer_index(data: bytearray) -> tuple[str, int]:
    _, _, sub = _walk(bytes(data))
    k, t = next(iter(sub.tables(0)))
    struct.pack_into("<I", data, t.field(2, 4), 0x00FFFFFF)
    return f"subgraph 0 tensor {k} refers to buffer {0x00FFFFFF} of", k


def input_index(data: bytearray) -> tuple[str, int]:
    _, _, sub = _walk(bytes(data))
    start, _ = sub.vector(1, 4)
    struct.pack_into("<i", data, start, 9999)
    return "subgraph 0 inputs refer to tensor 9999 of", 0


def vector_length(data: bytearray) -> tuple[str, int]:
    fb, _, sub = _walk(bytes(data))
    pos = fb.deref(sub.field(0, 4))        # the tensors vector's length word
    struct.pack_into("<I", data, pos, 0x3FFFFFFF)
    return f"truncated or corrupt TFLite file: vector at {pos} declares {0x3FFFFFFF} elements", 0


@pytest.mark.parametrize("damage", [huge_shape, negative_dim, buffer_index, input_index, vector_length],
                         ids=lambda f: f.__name__)
def test_hostile_flatbuffer_is_refused_before_litert(cnn_out, tmp_path, damage):
    art = copy_artifact(cnn_out, "tflite-fp32", tmp_path / "arts")
    model = art / "model.tflite"
    data = bytearray(model.read_bytes())
    reason, _ = damage(data)
    model.write_bytes(bytes(data))
    rerecord(art)
    reports = tmp_path / "reports"
    r = run_cli("profile", art, "--runs", "2", "--warmup", "0", "-o", reports)
    assert r.exit_code == 4, r.output
    assert f"{model}: " in one_line(r.output) and reason in one_line(r.output), r.output
    row = report_rows(reports)["tflite-fp32"]
    assert row["error"]["exit_code"] == 4 and "LiteRT" not in row["error"]["message"]
    assert_no_partial(reports)
    assert not [p for p in art.parent.rglob("*") if ".tmp-" in p.name]


# ------------------------------------------------- TFLite external buffer groups are file references

def _tiny_tflite_artifact(root, group: str | None, extra=None):
    write_reference(root)
    return write_artifact(root / "tflite-fp32", tiny_tflite(group), fmt="tflite", extra=extra)


def test_control_contained_external_buffer_group_loads(tmp_path):
    art = _tiny_tflite_artifact(tmp_path / "arts", "w.bin", extra={"w.bin": b"\0" * 16})
    y = rt.load(art).run(np.zeros((1, 4), np.float32))["y"]
    assert y.tolist() == [[1, 2, 3, 4]]


@pytest.mark.parametrize("group, reason", [("../../etc/passwd", "leaves the artifact directory"),
                                           ("/etc/passwd", "is absolute"),
                                           ("missing.bin", "does not exist")])
def test_external_buffer_group_outside_the_artifact(tmp_path, group, reason):
    art = _tiny_tflite_artifact(tmp_path / "arts", group)
    reports = tmp_path / "reports"
    r = run_cli("profile", art, "--runs", "2", "--warmup", "0", "-o", reports)
    assert r.exit_code == 4, r.output
    text = one_line(r.output)
    assert f"{art.resolve() / 'model.tflite'}: external buffer group 0: " in text and repr(group) in text
    assert reason in text
    assert_no_partial(reports)
