"""Conversion of tiny synthetic models through the CLI: artifacts, manifests, numerics, refusals."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import CNN, FORMATS, PRECISIONS, artifact_names, assert_no_partial, cnn_samples, run_cli, save_samples

import pocketml.runtime as rt
from pocketml.runtime.manifest import SCHEMA, read_manifest, verify_checksums

ALL = [f"{f}-{p}" for f in FORMATS for p in PRECISIONS]
MEASURABLE = [a for a in ALL if not a.startswith("coreml")]


def torch_ref(module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module(torch.from_numpy(x)).numpy()


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(-1).astype(np.float64), b.reshape(-1).astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# ------------------------------------------------------------------------------------ 2. the happy path

def test_cnn_converts_to_every_format_and_precision(cnn_conversion):
    out, result = cnn_conversion
    assert result.exit_code == 0, result.output
    assert "9 artifacts published" in result.output
    assert artifact_names(out) == set(ALL) | {"reference"}
    assert_no_partial(out)


@pytest.mark.parametrize("name", ALL)
def test_manifest_parses_and_checksums_verify(cnn_out, name):
    art = cnn_out / name
    m = read_manifest(art)
    verify_checksums(art, m)                       # raises on any mismatch
    fmt, precision = name.split("-")
    assert (m.schema, m.format, m.precision, m.name, m.task, m.metric) == \
        (SCHEMA, fmt, precision, "tiny_cnn", "image-classification", "top1")
    assert m.model_file == {"onnx": "model.onnx", "tflite": "model.tflite", "coreml": "model.mlpackage"}[fmt]
    assert any(k == m.model_file or k.startswith(m.model_file + "/") for k in m.checksums)
    assert [t.name for t in m.inputs] == ["input_0"] and [t.name for t in m.outputs] == ["output_0"]
    assert sorted(m.inputs[0].shape) == [1, 3, 16, 16]
    assert m.outputs[0].shape == [1, 10]
    assert m.source["kind"] == "factory" and m.source["id"] == CNN and len(m.source["sha256"]) == 64
    assert m.quantization["method"]


@pytest.mark.parametrize("precision", PRECISIONS)
def test_tflite_image_input_is_nhwc(cnn_out, precision):
    m = read_manifest(cnn_out / f"tflite-{precision}")
    assert m.inputs[0].layout == "NHWC"
    assert m.inputs[0].shape == [1, 16, 16, 3]
    onnx = read_manifest(cnn_out / f"onnx-{precision}")
    assert onnx.inputs[0].layout == "NCHW" and onnx.inputs[0].shape == [1, 3, 16, 16]


def test_tflite_int8_has_int8_io_with_quantization_params(cnn_out):
    m = read_manifest(cnn_out / "tflite-int8")
    # The CNN recipe keeps a float stem (cnn_int8.py): the input stays float32 exactly when it does.
    float_stem = m.quantization["calibration"]["float_leading_convs"] > 0
    assert m.inputs[0].dtype == ("float32" if float_stem else "int8")
    for t in ([] if float_stem else [*m.inputs]) + [*m.outputs]:
        assert t.dtype == "int8", t
        assert set(t.quantization) == {"scale", "zero_point"}
        assert t.quantization["scale"] > 0 and isinstance(t.quantization["zero_point"], int)
        assert -128 <= t.quantization["zero_point"] <= 127
    assert m.quantization["calibration"]["samples"] == 16
    assert "static int8" in m.quantization["method"]
    for name in ("tflite-fp32", "tflite-fp16"):
        assert read_manifest(cnn_out / name).inputs[0].dtype == "float32"


def test_onnx_int8_is_calibrated_on_the_user_data(cnn_out, calib_dir):
    q = read_manifest(cnn_out / "onnx-int8").quantization
    assert "static int8" in q["method"]
    assert q["calibration"]["samples"] == 16 and str(calib_dir) in q["calibration"]["source"]


@pytest.mark.parametrize("name", MEASURABLE)
def test_validation_passed_and_recorded(cnn_out, name):
    v = read_manifest(cnn_out / name).validation
    assert v["status"] == "passed"
    assert v["samples"] >= 1 and v["stats"]["nan_count"] == 0 and v["stats"]["collapsed"] is False
    assert v["stats"]["top1_agreement"] == 1.0


# Tolerances on a fresh input (not in the calibration set), relative to the output's range.
TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2, "int8": 0.1}


@pytest.mark.parametrize("name", MEASURABLE)
def test_runtime_output_matches_torch(cnn_out, torch_cnn, name):
    precision = name.split("-")[1]
    session = rt.load(cnn_out / name)
    for x in cnn_samples(3, seed=123):
        ref = torch_ref(torch_cnn, x)
        feed = x.transpose(0, 2, 3, 1).copy() if session.manifest.inputs[0].layout == "NHWC" else x
        got = session.run([feed])["output_0"]
        assert got.shape == ref.shape == (1, 10) and got.dtype == np.float32
        err = np.abs(got - ref).max() / np.abs(ref).max()
        assert err <= TOLERANCE[precision], f"{name}: relative max error {err:.3g}"
        assert cosine(got, ref) >= (0.98 if precision == "int8" else 0.9999)
        assert got.argmax() == ref.argmax()


@pytest.mark.parametrize("precision", PRECISIONS)
def test_coreml_validation_is_structural_only(cnn_out, precision):
    m = read_manifest(cnn_out / f"coreml-{precision}")
    assert m.validation["status"] == "structural-only"
    assert "needs macOS" in m.validation["numeric"]
    assert (cnn_out / f"coreml-{precision}" / "model.mlpackage" / "Manifest.json").is_file()
    assert any("macOS" in n for n in m.runtime_hints["notes"])


def test_reference_set_written_for_the_profiler(cnn_out):
    ref = cnn_out / "reference"
    meta = json.loads((ref / "manifest.json").read_text())
    assert meta["schema"] == "pocketml.reference/1"
    with np.load(ref / "inputs.npz") as z:
        assert z["input_0"].shape[1:] == (3, 16, 16)
    with np.load(ref / "outputs.npz") as z:
        assert z["output_0"].shape[1:] == (10,)


def test_generic_model_int8_needs_no_calibration(tmp_path):
    out = tmp_path / "out"
    r = run_cli("convert", "models:tiny_mlp", "--to", "onnx,tflite", "--precision", "int8", "-o", out)
    assert r.exit_code == 0, r.output
    assert artifact_names(out) == {"onnx-int8", "tflite-int8", "reference"}
    assert "dynamic int8" in read_manifest(out / "onnx-int8").quantization["method"]
    assert_no_partial(out)


# ------------------------------------------------------------------- 3. static int8 without --calib

def test_static_int8_without_calib_is_refused(tmp_path):
    out = tmp_path / "out"
    r = run_cli("convert", CNN, "--task", "image-classification", "--to", "onnx,tflite",
                "--precision", "fp32,int8", "-o", out)
    assert r.exit_code == 2, r.output
    assert "--calib" in r.output and "tiny_cnn" in r.output
    assert not any(out.glob("*int8*"))
    assert_no_partial(out)


# --------------------------------------------------------------------------------- 4. bad calibration

def _bad(kind: str):
    if kind == "shape":
        return np.zeros((1, 3, 8, 8), np.float32), ["[1, 3, 8, 8]", "expected [1, 3, 16, 16]"]
    if kind == "dtype":
        return np.zeros((1, 3, 16, 16), np.float64), ["dtype float64", "expected float32"]
    if kind == "nhwc":
        return np.zeros((1, 16, 16, 3), np.float32), ["[1, 16, 16, 3]", "expected [1, 3, 16, 16]", "NHWC"]
    if kind == "nan":
        x = np.zeros((1, 3, 16, 16), np.float32)
        x[0, 1, 2, 3] = np.nan
        return x, ["1 NaN"]
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["shape", "dtype", "nhwc", "nan"])
def test_bad_calibration_sample_is_named(tmp_path, kind):
    calib = save_samples(tmp_path / "calib", cnn_samples(2, seed=5))
    bad, expected_text = _bad(kind)
    np.save(calib / "bad_sample.npy", bad)
    out = tmp_path / "out"
    r = run_cli("convert", CNN, "--task", "image-classification", "--to", "onnx,tflite", "--precision", "int8",
                "--calib", calib, "-o", out)
    assert r.exit_code == 2, r.output
    assert "bad_sample.npy" in r.output
    for text in expected_text:
        assert text in r.output
    assert not out.exists() or not artifact_names(out)
    assert_no_partial(out)


def test_empty_calibration_dir_is_refused(tmp_path):
    calib = tmp_path / "empty_calib"
    calib.mkdir()
    out = tmp_path / "out"
    r = run_cli("convert", CNN, "--to", "onnx", "--precision", "int8", "--calib", calib, "-o", out)
    assert r.exit_code == 2, r.output
    assert str(calib) in r.output and "empty" in r.output
    assert not out.exists() or not artifact_names(out)
    assert_no_partial(out)


def test_image_files_for_a_model_without_image_preprocessing_are_refused(tmp_path):
    from PIL import Image
    calib = tmp_path / "calib"
    calib.mkdir()
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(calib / "photo.png")
    out = tmp_path / "out"
    r = run_cli("convert", CNN, "--task", "image-classification", "--to", "onnx", "--precision", "int8",
                "--calib", calib, "-o", out)
    assert r.exit_code == 2, r.output
    assert "photo.png" in r.output and ".npy" in r.output
    assert_no_partial(out)


# -------------------------------------------------------------------------------- 6. unsupported op

def test_op_a_target_cannot_take_is_named(tmp_path):
    out = tmp_path / "out"
    r = run_cli("convert", "models:det_model", "--to", "onnx,tflite,coreml", "-o", out)
    assert r.exit_code == 3, r.output
    # litert-torch has no lowering for aten._linalg_det; coremltools has no rule for linalg_det.
    assert "tflite cannot take op(s) aten._linalg_det" in r.output
    assert "rejected ops" in r.output
    assert "linalg_det" in r.output.split("coreml-fp32", 1)[1]
    assert "2 of 3 artifacts not published" in r.output
    # ONNX takes det, so it is published; nothing for the formats that refused it.
    assert artifact_names(out) == {"onnx-fp32", "reference"}
    assert_no_partial(out)


# ------------------------------------------------------------------------------- misc usage errors

@pytest.mark.parametrize("args, text", [
    (["--to", "onnx,tensorrt"], "tensorrt"),
    (["--precision", "int2"], "int2"),
])
def test_unknown_format_or_precision(tmp_path, args, text):
    r = run_cli("convert", CNN, *args, "-o", tmp_path / "out")
    assert r.exit_code == 2, r.output
    assert text in r.output
    assert_no_partial(tmp_path / "out")


def test_unknown_model_reference(tmp_path):
    r = run_cli("convert", "no-such-model", "--to", "onnx", "-o", tmp_path / "out")
    assert r.exit_code == 2
    assert "no-such-model" in r.output and "efficientnet-lite0" in r.output
    assert_no_partial(tmp_path / "out")


def test_bare_checkpoint_is_refused(tmp_path):
    ckpt = tmp_path / "weights.pt"
    ckpt.write_bytes(b"\x80\x04not really")
    r = run_cli("convert", ckpt, "--to", "onnx", "-o", tmp_path / "out")
    assert r.exit_code == 2
    assert "weights.pt" in r.output and "factory" in r.output
    assert_no_partial(tmp_path / "out")


def test_rerun_is_copyable_elsewhere(cnn_out, tmp_path):
    """A published artifact directory is self-contained: copied elsewhere it still loads and verifies."""
    dst = tmp_path / "copy"
    shutil.copytree(cnn_out / "onnx-fp32", dst)
    x = cnn_samples(1, seed=9)[0]
    assert np.array_equal(rt.load(dst).run(x)["output_0"], rt.load(cnn_out / "onnx-fp32").run(x)["output_0"])
