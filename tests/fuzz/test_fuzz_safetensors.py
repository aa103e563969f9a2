"""Fuzz target: the safetensors header walk (`prechecks.precheck_safetensors`) and the bare-file IO
readers (`model_file.bare_manifest`) on arbitrary and mutated bytes may only refuse (PocketmlError)."""
from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from fuzzkit import FUZZ, only_pocketml_errors, tiny_tflite
from hypothesis import given
from hypothesis import strategies as st

from pocketml.runtime.model_file import bare_manifest
from pocketml.runtime.prechecks import precheck_safetensors


def seed_safetensors() -> bytes:
    """Two F32 tensors, contiguous: a file the walk accepts (and the safetensors library loads)."""
    header = {"a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
              "b": {"dtype": "F32", "shape": [4], "data_offsets": [16, 32]}, "__metadata__": {"format": "pt"}}
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + np.arange(8, dtype=np.float32).tobytes()


def test_seed_passes_and_loads(tmp_path):
    safetensors = pytest.importorskip("safetensors.numpy")
    path = tmp_path / "m.safetensors"
    path.write_bytes(seed_safetensors())
    precheck_safetensors(path)
    assert sorted(safetensors.load_file(str(path))) == ["a", "b"]


@given(st.binary(max_size=2048))
@FUZZ
def test_random_bytes(tmp_path, data):
    path = tmp_path / "m.safetensors"
    path.write_bytes(data)
    only_pocketml_errors(precheck_safetensors, path)


@given(st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), min_size=1, max_size=8))
@FUZZ
def test_mutated_header(tmp_path, flips):
    data = bytearray(seed_safetensors())
    for pos, value in flips:
        data[pos % len(data)] = value
    path = tmp_path / "m.safetensors"
    path.write_bytes(bytes(data))
    only_pocketml_errors(precheck_safetensors, path)


@given(st.lists(st.tuples(st.integers(0, 4096), st.integers(0, 255)), min_size=1, max_size=8))
@FUZZ
def test_bare_tflite_io_on_mutations(tmp_path, flips):
    data = bytearray(tiny_tflite())
    for pos, value in flips:
        data[pos % len(data)] = value
    path = tmp_path / "m.tflite"
    path.write_bytes(bytes(data))
    only_pocketml_errors(bare_manifest, path)
