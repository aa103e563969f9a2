"""Fuzz the manifest parser: Manifest.from_dict on arbitrary JSON values and on mutated valid
manifests, read_manifest on arbitrary bytes. Only a PocketmlError may come out; anything else
(TypeError, KeyError, RecursionError, …) or a hang past the deadline is a failure."""
from __future__ import annotations

import json

from fuzzkit import FUZZ, only_pocketml_errors
from hypothesis import given
from hypothesis import strategies as st

from pocketml.runtime.manifest import Manifest, TensorSpec, read_manifest

VALID = json.loads(Manifest(
    name="m", format="onnx", precision="fp32", model_file="model.onnx",
    inputs=[TensorSpec("x", [1, 3, 16, 16], "float32", "NCHW")], outputs=[TensorSpec("y", [1, 10], "float32")],
    task="image-classification", metric="top1", checksums={"model.onnx": "0" * 64}).to_json())

scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=20)
keys = st.sampled_from(sorted(VALID) + ["inputs.0", "outputs.0", "checksums.*"])


@FUZZ
@given(json_values)
def test_from_dict_on_arbitrary_json(value):
    only_pocketml_errors(Manifest.from_dict, value)


@FUZZ
@given(st.lists(st.tuples(keys, json_values), min_size=1, max_size=4))
def test_from_dict_on_mutated_valid_manifest(edits):
    d = json.loads(json.dumps(VALID))
    for key, value in edits:
        if key == "inputs.0":
            d["inputs"][0] = value
        elif key == "outputs.0":
            d["outputs"] = [value]
        elif key == "checksums.*":
            d["checksums"] = {str(value)[:50]: value} if not isinstance(value, dict) else value
        else:
            d[key] = value
    m = only_pocketml_errors(Manifest.from_dict, d)
    if m is not None:                                  # accepted: then it is well-typed
        assert isinstance(m.model_file, str) and isinstance(m.checksums, dict)
        assert all(isinstance(t.name, str) and isinstance(t.shape, list) for t in m.inputs + m.outputs)


@FUZZ
@given(st.binary(max_size=2048) | json_values.map(lambda v: json.dumps(v).encode())
       | st.integers(1, 20000).map(lambda n: b"[" * n + b"]" * n)
       | st.integers(4300, 6000).map(lambda n: b'{"schema": ' + b"9" * n + b"}"))
def test_read_manifest_on_arbitrary_bytes(tmp_path_factory, raw):
    art = tmp_path_factory.mktemp("art")
    (art / "manifest.json").write_bytes(raw)
    only_pocketml_errors(read_manifest, art)
