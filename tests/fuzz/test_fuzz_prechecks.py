"""Fuzz the artifact loaders' pre-checks: precheck_model_file on random bytes and on mutated bytes of a
real tiny .tflite / .onnx (generated in fuzzkit, both load and run in LiteRT / onnxruntime). Only a
PocketmlError may come out, and each check must finish within the deadline (the TFLite reader's work
is bounded by the file size, however its offsets point)."""
from __future__ import annotations

import struct

import pytest
from fuzzkit import FUZZ, W, only_pocketml_errors, tiny_onnx, tiny_tflite
from hypothesis import given
from hypothesis import strategies as st

from pocketml.runtime.prechecks import precheck_model_file

SEEDS = {"tflite": tiny_tflite(), "onnx": tiny_onnx(), "tflite-ext": tiny_tflite("w.bin"),
         "onnx-ext": tiny_onnx("w.bin")}
INTERESTING = [0, 1, 2, 4, 8, 16, 0x7F, 0x80, 0xFF, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0xFFFFFFF0]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("pre")
    (d / "w.bin").write_bytes(W.tobytes())
    return d


def _run(workdir, data: bytes, fmt: str):
    path = workdir / f"model.{fmt}"
    path.write_bytes(data)
    only_pocketml_errors(precheck_model_file, path, fmt)


def test_seeds_pass(workdir):
    for name, data in SEEDS.items():
        path = workdir / f"model.{name.split('-')[0]}"
        path.write_bytes(data)
        precheck_model_file(path, name.split("-")[0])


@FUZZ
@given(st.sampled_from(["tflite", "onnx"]), st.binary(max_size=4096)
       | st.binary(max_size=4092).map(lambda b: b[:4].ljust(4, b"\0") + b"TFL3" + b[4:]))
def test_random_bytes(workdir, fmt, data):
    _run(workdir, data, fmt)


mutation = st.tuples(st.sampled_from(["byte", "u32", "truncate", "insert", "delete"]),
                     st.integers(0, 1 << 16), st.integers(0, 255), st.sampled_from(INTERESTING))


@FUZZ
@given(st.sampled_from(sorted(SEEDS)), st.lists(mutation, min_size=1, max_size=8))
def test_mutated_real_models(workdir, seed, mutations):
    data = bytearray(SEEDS[seed])
    for kind, pos, byte, word in mutations:
        if not data:
            break
        pos %= len(data)
        if kind == "byte":
            data[pos] = byte
        elif kind == "u32" and pos + 4 <= len(data):
            struct.pack_into("<I", data, pos & ~3, word)
        elif kind == "truncate":
            del data[pos:]
        elif kind == "insert":
            data[pos:pos] = bytes([byte]) * (word & 0xFF)
        elif kind == "delete":
            del data[pos:pos + (word & 0xFF) + 1]
    _run(workdir, bytes(data), seed.split("-")[0])


def test_external_data_key_that_is_not_utf8(workdir):
    """Found by the atheris harness: protobuf returns bytes for a string field holding bad UTF-8."""
    data = tiny_onnx("w.bin").replace(b"location", b"locat\xffon")
    path = workdir / "model.onnx"
    path.write_bytes(data)
    from pocketml.runtime.errors import UnsafeInputError
    with pytest.raises(UnsafeInputError, match="not UTF-8"):
        precheck_model_file(path, "onnx")
