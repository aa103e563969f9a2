"""fp16 artifacts whose torch fp32 reference leaves the fp16 range (|x| > 65504): exit 5 naming the layer.

The host runtimes check fp16 graphs in fp32 arithmetic (onnxruntime's CPU provider casts, LiteRT
dequantizes fp16 weights, Core ML cannot run here), so the numeric check alone passed such a model
(cosine 1.0). One check (convert/fp16_range.py), run on every artifact with fp16 activations, gives
every format the same verdict and the same message. `models.fp16_overflow`: a Linear `loud` whose
output reaches ~2e5 on the example while every weight fits fp16.
"""
from __future__ import annotations

import json
import os
import re

import pytest
from conftest import artifact_names, assert_no_partial, run_cli
from faultkit import one_line

from pocketml.convert import fp16_range
from pocketml.runtime.errors import ValidationFailed

FORMATS = ("onnx", "tflite", "coreml")
MESSAGE = re.compile(r"fp16_overflow (\w+) fp16: (values outside the fp16 range .*?, or convert fp32)")


@pytest.fixture(scope="module")
def overflow_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("fp16")
    cwd = os.getcwd()
    os.chdir(root)              # anything written relative to the working directory lands here
    try:
        r = run_cli("convert", "models:fp16_overflow", "--to", ",".join(FORMATS), "--precision", "fp16", "-o", "out")
    finally:
        os.chdir(cwd)
    return r, root


def test_overflow_is_refused_in_every_format(overflow_run):
    r, root = overflow_run
    assert r.exit_code == 5, r.output
    found = dict(MESSAGE.findall(one_line(r.output)))
    assert set(found) == set(FORMATS), r.output
    assert len(set(found.values())) == 1, found          # same check, same message: only the format differs
    message = found["onnx"]
    assert "layer 'loud' (Linear) max |x| 2.055e+05" in message, message
    assert "'head'" not in message                        # the layer after it is in range
    assert "fp16 arithmetic makes them inf" in message


def test_nothing_published_or_written_outside(overflow_run):
    r, root = overflow_run
    out = root / "out"
    assert artifact_names(out) == {"reference"}, r.output      # the reference set only, no artifact
    assert_no_partial(out)
    assert sorted(os.listdir(root)) == ["out"]


def test_fp32_of_the_same_model_passes(tmp_path):
    r = run_cli("convert", "models:fp16_overflow", "--to", "onnx", "--precision", "fp32", "-o", tmp_path / "out")
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "out" / "onnx-fp32" / "manifest.json").read_text())
    assert "fp16_range" not in m["validation"]                  # fp32 activations: the range rule does not apply


def test_normal_model_passes_fp16_and_records_the_range(tmp_path):
    out = tmp_path / "out"
    r = run_cli("convert", "models:tiny_mlp", "--to", ",".join(FORMATS), "--precision", "fp16", "-o", out)
    assert r.exit_code == 0, r.output
    for fmt in FORMATS:
        rng = json.loads((out / f"{fmt}-fp16" / "manifest.json").read_text())["validation"]["fp16_range"]
        assert rng["limit"] == 65504.0 and 0 < rng["max_abs"] < 65504.0, rng
        assert rng["checked"] >= 4 and rng["kept_fp32"] == [] and rng["over_limit_kept_fp32"] == []


def _ranges(**max_abs):
    return {name.replace("__", "."): {"type": "Linear", "max_abs": v} for name, v in max_abs.items()}


def test_innermost_layer_is_named_not_its_parents():
    ranges = {"": {"type": "Net", "max_abs": 9e4}, "block": {"type": "Block", "max_abs": 9e4},
              "block.fc": {"type": "Linear", "max_abs": 9e4}, "head": {"type": "Linear", "max_abs": 3.0}}
    with pytest.raises(ValidationFailed) as exc:
        fp16_range.check(ranges, "m onnx fp16", "data")
    assert "layer 'block.fc' (Linear) max |x| 9e+04" in str(exc.value)
    assert "'block' (Block)" not in str(exc.value) and "(Net)" not in str(exc.value)
    assert exc.value.exit_code == 5


def test_layers_kept_fp32_on_purpose_are_exempt_and_recorded():
    ranges = _ranges(loud=2e5, head=10.0)
    ranges["param loud.weight"] = {"type": "parameter", "max_abs": 7e4}
    report = fp16_range.check(ranges, "m onnx fp16", "data", kept_fp32=["loud"])
    assert report["kept_fp32"] == ["loud"]
    assert report["over_limit_kept_fp32"] == ["loud", "param loud.weight"]


def test_weights_and_inputs_beyond_fp16_are_named_too():
    ranges = {"input 0": {"type": "input", "max_abs": 1e6}, "param fc.weight": {"type": "parameter", "max_abs": 7e4},
              "fc": {"type": "Linear", "max_abs": 10.0}}
    with pytest.raises(ValidationFailed) as exc:
        fp16_range.check(ranges, "m tflite fp16", "data")
    assert "input 0 max |x| 1e+06" in str(exc.value) and "param fc.weight max |x| 7e+04" in str(exc.value)


def test_which_artifacts_have_fp16_activations():
    assert all(fp16_range.has_fp16_activations(f, "fp16", "generic") for f in FORMATS)
    assert fp16_range.has_fp16_activations("coreml", "int8", "cnn")  # Core ML computes in fp16 at every precision but fp32
    assert not fp16_range.has_fp16_activations("onnx", "int8", "cnn")
    assert not any(fp16_range.has_fp16_activations(f, "fp32", "generic") for f in FORMATS)
