"""An "int8" artifact must hold int8: the manifest states what the file contains, counted from its graph
(runtime/census.py), and an artifact whose requested precision is not in the graph is refused (exit 5).

`models.two_conv_cnn` reproduces the case seen: two small convs and no classifier layer, so ONNX and
TFLite static int8 keep both convs float (the float stem) and Core ML quantizes neither (tensors of at
most 256 elements stay float) — before this check, all three were published as "static int8".
"""
from __future__ import annotations

import json
import os

import pytest
from conftest import artifact_names, assert_no_partial, run_cli
from faultkit import one_line

from pocketml.runtime import census

FORMATS = ("onnx", "tflite", "coreml")


@pytest.fixture(scope="module")
def float_int8_run(tmp_path_factory, calib_dir):
    root = tmp_path_factory.mktemp("census")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        r = run_cli("convert", "models:two_conv_cnn", "--task", "image-classification", "--to", ",".join(FORMATS),
                    "--precision", "int8", "--calib", calib_dir, "-o", "out")
    finally:
        os.chdir(cwd)
    return r, root


def test_int8_artifact_without_int8_weights_is_refused(float_int8_run):
    r, root = float_int8_run
    assert r.exit_code == 5, r.output
    text = one_line(r.output)
    stored = {"onnx": "2 float32", "tflite": "2 float32", "coreml": "2 float16"}
    for fmt in FORMATS:
        assert (f"two_conv_cnn {fmt} int8: int8 requested, but the graph holds no 8-bit weights — weight tensors: "
                f"{stored[fmt]}; ops with weights: {stored[fmt]}") in text, text
    assert "3 of 3 artifacts not published" in text


def test_refused_int8_leaves_nothing(float_int8_run):
    r, root = float_int8_run
    assert artifact_names(root / "out") == {"reference"}
    assert_no_partial(root / "out")
    assert sorted(os.listdir(root)) == ["out"]


@pytest.mark.parametrize("name", [f"{f}-{p}" for f in FORMATS for p in ("fp32", "fp16", "int8")])
def test_manifest_states_what_the_file_holds(cnn_out, name):
    m = json.loads((cnn_out / name / "manifest.json").read_text())
    measured = m["quantization"]["measured"]
    fmt, precision = name.split("-")
    model = cnn_out / name / m["model_file"]
    assert measured == census.measure(model, fmt)             # the manifest describes this very file
    weights, s = measured["weights"], measured["summary"]
    if precision == "fp32":
        assert set(weights) == {"float32"} and s["quantized_ops"] == 0
    elif precision == "fp16":
        assert "float16" in weights and s["quantized_weights"] == 0
    else:
        assert s["quantized_weights"] >= 1 and s["quantized_ops"] >= 1, measured


def test_tiny_cnn_int8_counts(cnn_out):
    """The tiny CNN's static int8: the two leading convs stay float (float stem), the classifier is int8."""
    for fmt in ("onnx", "tflite"):
        m = json.loads((cnn_out / f"{fmt}-int8" / "manifest.json").read_text())["quantization"]["measured"]
        assert m["weight_ops"] == {"float32": 2, "int8": 1}, m
        assert m["weights"]["int8"] == {"tensors": 1, "elements": 160}


# ---------------------------------------------------------------- the census itself, on hand-built graphs

def _two_convs(path, qdq: bool):
    """Two 3×3 convs; with `qdq`, the second one's weight is int8 behind a DequantizeLinear."""
    import numpy as np
    import onnx
    from onnx import TensorProto as T
    from onnx import helper as h
    from onnx import numpy_helper as nh

    w = np.ones((4, 4, 3, 3), np.float32)
    nodes = [h.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1])]
    inits = [nh.from_array(w, "w1")]
    if qdq:
        inits += [nh.from_array(w.astype(np.int8), "w2_q"), nh.from_array(np.float32(0.1), "w2_s"),
                  nh.from_array(np.int8(0), "w2_z")]
        nodes += [h.make_node("DequantizeLinear", ["w2_q", "w2_s", "w2_z"], ["w2"])]
    else:
        inits += [nh.from_array(w, "w2")]
    nodes += [h.make_node("Conv", ["a", "w2"], ["y"], pads=[1, 1, 1, 1])]
    graph = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, [1, 4, 8, 8])],
                         [h.make_tensor_value_info("y", T.FLOAT, [1, 4, 8, 8])], inits)
    onnx.save(h.make_model(graph, opset_imports=[h.make_opsetid("", 18)]), str(path))
    return path


def test_census_of_a_float_graph_refuses_int8(tmp_path):
    c = census.measure(_two_convs(tmp_path / "f.onnx", qdq=False), "onnx")
    assert c["weights"] == {"float32": {"tensors": 2, "elements": 288}} and c["weight_ops"] == {"float32": 2}
    why = census.missing_precision("int8", c)
    assert why and "no 8-bit weights" in why and "quantize/dequantize ops: none" in why
    assert census.missing_precision("fp32", c) is None
    assert "no float16 weights" in census.missing_precision("fp16", c)


def test_census_counts_a_qdq_weight(tmp_path):
    c = census.measure(_two_convs(tmp_path / "q.onnx", qdq=True), "onnx")
    assert c["weight_ops"] == {"float32": 1, "int8": 1}
    assert c["weights"]["int8"] == {"tensors": 1, "elements": 144}       # scale and zero point are not weights
    assert c["quantize_ops"] == {"DequantizeLinear": 1}
    assert census.missing_precision("int8", c) is None
    assert "fp32 requested" in census.missing_precision("fp32", c)


def test_one_check_in_the_pipeline_and_its_mixed_precision_label(tmp_path):
    """The pipeline's check refuses a float "int8" file — unless mixed precision kept the layers float
    on purpose, which the manifest then says (quantization.measured.note and the notes)."""
    from pocketml.convert.exporters import ExportResult
    from pocketml.convert.pipeline import measured_contents
    from pocketml.convert.spec import ModelSpec
    from pocketml.runtime.errors import ValidationFailed

    model = _two_convs(tmp_path / "model.onnx", qdq=False)
    spec = ModelSpec("two", None, [], ["y"], "generic", "max-abs", "generic")
    plain = ExportResult("model.onnx", [], [], {"method": "static int8"})
    with pytest.raises(ValidationFailed, match="two onnx int8: int8 requested, but the graph holds no 8-bit"):
        measured_contents(spec, "onnx", "int8", model, plain)
    mixed = ExportResult("model.onnx", [], [], {"method": "static int8",
                                                "mixed_precision": {"float_layers": ["conv_a", "conv_b"]}})
    measured = measured_contents(spec, "onnx", "int8", model, mixed)
    assert "mixed precision kept 2 layer(s) float on purpose" in measured["note"]
    assert measured["note"] in mixed.notes
