"""Weight-only precisions: int8w (int8 weights, float compute) and int4 (4-bit weights) in every format."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from conftest import CNN, assert_no_partial, run_cli
from pocketml.runtime import formats

MLP = "models:mlp64"


@pytest.fixture(scope="module")
def mlp_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("weights") / "out"
    r = run_cli("convert", MLP, "--to", "onnx,tflite,coreml", "--precision", "fp32,int8w,int4", "-o", out)
    assert r.exit_code == 0, r.output
    return out


def manifest(out, name) -> dict:
    return json.loads((out / name / "manifest.json").read_text())


@pytest.mark.parametrize("fmt", ["onnx", "tflite", "coreml"])
@pytest.mark.parametrize("precision", ["int8w", "int4"])
def test_weight_only_artifacts_are_validated_and_described(mlp_out, fmt, precision):
    m = manifest(mlp_out, f"{fmt}-{precision}")
    assert m["precision"] == precision
    assert m["quantization"]["method"] == formats.capability(fmt, precision, "generic").method
    assert m["validation"]["status"] in ("passed", "structural-only")
    if fmt != "coreml":
        assert m["validation"]["stats"]["cosine_min"] >= (0.99 if precision == "int8w" else 0.85)


def test_onnx_int8w_stores_int8_weights_and_dequantizes(mlp_out):
    graph = onnx.load(str(mlp_out / "onnx-int8w" / "model.onnx")).graph
    dq = [n for n in graph.node if n.op_type == "DequantizeLinear"]
    int8 = [i for i in graph.initializer if i.data_type == onnx.TensorProto.INT8 and i.name.endswith("_int8")]
    assert len(dq) == len(int8) == 2                       # both Linear weights (4096 and 2048 elements)
    assert not any(n.op_type in ("MatMulInteger", "DynamicQuantizeLinear") for n in graph.node)   # float compute


def test_onnx_int4_uses_4bit_blocks(mlp_out):
    graph = onnx.load(str(mlp_out / "onnx-int4" / "model.onnx")).graph
    nbits = [n for n in graph.node if n.op_type == "MatMulNBits"]
    assert nbits and all(next(a.i for a in n.attribute if a.name == "bits") == 4 for n in nbits)


def test_weight_only_files_are_smaller_than_fp32(mlp_out):
    for fmt, f in (("onnx", "model.onnx"), ("tflite", "model.tflite")):
        sizes = {p: (mlp_out / f"{fmt}-{p}" / f).stat().st_size for p in ("fp32", "int8w", "int4")}
        assert sizes["int4"] <= sizes["int8w"] < sizes["fp32"], (fmt, sizes)


def test_onnx_int4_refuses_a_cnn_with_the_reason(tmp_path):
    r = run_cli("convert", CNN, "--to", "onnx", "--precision", "int4", "-o", tmp_path / "out")
    assert r.exit_code == 3
    assert "int4" in r.output and "no int4 convolution kernel" in r.output
    assert_no_partial(tmp_path / "out")
    assert formats.capability("onnx", "int4", "cnn").refused
    assert formats.capability("onnx", "int4", "transformer").refused is None


def test_tflite_int4_names_a_tensor_the_blocks_do_not_fit(tmp_path):
    r = run_cli("convert", "models:tiny_mlp", "--to", "tflite", "--precision", "int4", "-o", tmp_path / "out")
    assert r.exit_code == 3
    assert "(16, 8)" in r.output and "32" in r.output
    assert_no_partial(tmp_path / "out")
