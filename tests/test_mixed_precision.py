"""Automatic mixed precision (--max-drop): the most sensitive layers stay float until the budget is met."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from conftest import CNN, assert_no_partial, run_cli, save_samples
from pocketml.convert.exporters.mixed import measure, proxy_error


@pytest.fixture(scope="module")
def mlp_calib(tmp_path_factory):
    rng = np.random.default_rng(3)
    return save_samples(tmp_path_factory.mktemp("mlp") / "calib",
                        [rng.standard_normal((1, 8)).astype(np.float32) for _ in range(16)])


def ops(path) -> dict:
    counts = {}
    for n in onnx.load(str(path)).graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return counts


def convert_mlp(out, calib, max_drop):
    return run_cli("convert", "models:tiny_mlp", "--to", "onnx", "--precision", "int8", "--calib", calib,
                   "--max-drop", max_drop, "-o", out)


def test_tight_budget_keeps_the_sensitive_layers_float(tmp_path, mlp_calib):
    r = convert_mlp(tmp_path / "out", mlp_calib, "0.0000001")
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "out" / "onnx-int8" / "manifest.json").read_text())
    mp = m["quantization"]["mixed_precision"]
    assert mp["all_quantized_drop"] > 1e-7 >= mp["drop"]            # int8 everywhere misses, the result meets
    assert 1 <= len(mp["float_layers"]) <= mp["candidates"] == 2     # two Linear layers
    assert [k for k, _ in mp["trials"]][0] == 0 and mp["trials"][0][1] == mp["all_quantized_drop"]
    assert [name for name, _ in mp["sensitivity"]][:len(mp["float_layers"])] == mp["float_layers"]
    assert all(v > 0 for v in mp["cost"]["size_mb"] + mp["cost"]["host_p50_ms"])   # [all int8, mixed]
    assert "calibration samples" in mp["data"] and "cosine" in mp["drop_definition"]
    assert ops(tmp_path / "out" / "onnx-int8" / "model.onnx").get("MatMulInteger", 0) == 2 - len(mp["float_layers"])
    assert "mixed precision" in r.output


def test_loose_budget_keeps_everything_int8(tmp_path, mlp_calib):
    r = convert_mlp(tmp_path / "out", mlp_calib, "50%")
    assert r.exit_code == 0, r.output
    mp = json.loads((tmp_path / "out" / "onnx-int8" / "manifest.json").read_text())["quantization"]["mixed_precision"]
    assert mp["float_layers"] == [] and mp["drop"] == mp["all_quantized_drop"] <= 0.5
    assert ops(tmp_path / "out" / "onnx-int8" / "model.onnx")["MatMulInteger"] == 2


def test_static_cnn_search_keeps_the_float_stem(tmp_path, calib_dir):
    r = run_cli("convert", CNN, "--task", "image-classification", "--to", "onnx", "--precision", "int8",
                "--calib", calib_dir, "--max-drop", "0", "-o", tmp_path / "out")
    assert r.exit_code == 0, r.output
    q = json.loads((tmp_path / "out" / "onnx-int8" / "manifest.json").read_text())["quantization"]
    mp = q["mixed_precision"]
    assert mp["drop"] == 0 and set(mp["float_layers"]) <= set(q["calibration"]["float_layers"])
    assert len(q["calibration"]["float_layers"]) > len(mp["float_layers"])   # the stem is float on top


@pytest.mark.parametrize("args, text", [
    (("--to", "onnx,tflite", "--precision", "int8", "--max-drop", "1%"), "ONNX int8 only, not tflite"),
    (("--to", "onnx", "--precision", "fp16", "--max-drop", "1%"), "needs --precision int8"),
    (("--to", "onnx", "--precision", "int8", "--max-drop", "150%"), "outside [0, 1)"),
    (("--to", "onnx", "--precision", "int8", "--max-drop", "lots"), "expected a fraction or a percentage"),
])
def test_bad_max_drop_is_a_usage_error(tmp_path, args, text):
    r = run_cli("convert", "models:tiny_mlp", *args, "-o", tmp_path / "out")
    assert r.exit_code == 2 and text in r.output
    assert_no_partial(tmp_path / "out")


def test_max_drop_needs_data_to_measure_on(tmp_path):
    r = run_cli("convert", "models:tiny_mlp", "--to", "onnx", "--precision", "int8", "--max-drop", "1%",
                "-o", tmp_path / "out")
    assert r.exit_code == 2 and "--calib" in r.output


def test_proxy_and_drop_values():
    ref = np.array([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0]])
    assert proxy_error(ref, ref, "top1") == pytest.approx(0.0, abs=1e-12)
    flipped = ref[:, [1, 0, 2]]
    m = measure(flipped, ref, "top1")
    assert m.drop == 1.0 and m.proxy > 1.0                       # both predictions change
    assert measure(ref * 2, ref, "cosine").drop == pytest.approx(0.0, abs=1e-12)   # cosine ignores scale
    nan = ref.copy()
    nan[0, 0] = np.nan
    assert measure(nan, ref, "cosine").drop == 1.0                # a NaN output is never "within budget"
