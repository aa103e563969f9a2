"""Corrupt, truncated and tampered artifacts: `pocketml profile` refuses them with exit 4 naming the file."""
from __future__ import annotations

import hashlib
import json
import re
import shutil

import numpy as np

import pytest
from conftest import assert_no_partial, run_cli

import pocketml.runtime as rt
from pocketml.runtime.errors import UnsafeInputError


def _damaged_copy(cnn_out, tmp_path, name: str, damage: str):
    """Copy artifact `name` (and the reference set) to tmp_path; damage its model file. Unless the
    damage is a flipped byte, re-record the checksum so the bytes reach the parser."""
    root = tmp_path / "arts"
    shutil.copytree(cnn_out / "reference", root / "reference")
    art = shutil.copytree(cnn_out / name, root / name)
    manifest = json.loads((art / "manifest.json").read_text())
    model = art / manifest["model_file"]
    data = model.read_bytes()
    if damage == "half":
        data = data[: len(data) // 2]
    elif damage == "4 bytes":
        data = data[:4]
    elif damage == "random":
        data = np.random.default_rng(7).bytes(len(data))
    elif damage == "flip":
        data = bytearray(data)
        data[len(data) // 2] ^= 0xFF
        data = bytes(data)
    model.write_bytes(data)
    if damage != "flip":
        manifest["checksums"][manifest["model_file"]] = hashlib.sha256(data).hexdigest()
        (art / "manifest.json").write_text(json.dumps(manifest))
    return art, model


@pytest.mark.parametrize("name, damage, reason", [
    ("tflite-fp32", "half", "(cannot read the model with LiteRT|truncated or corrupt TFLite file)"),
    ("tflite-fp32", "4 bytes", "not a TFLite flatbuffer"),
    ("tflite-fp32", "random", "not a TFLite flatbuffer"),
    ("onnx-fp32", "random", "(not an ONNX protobuf|cannot read the ONNX protobuf|cannot read the model with onnxruntime)"),
    ("tflite-int8", "flip", "SHA-256 mismatch"),
    ("onnx-fp32", "flip", "SHA-256 mismatch"),
])
def test_profile_refuses_damaged_model(cnn_out, tmp_path, name, damage, reason):
    art, model = _damaged_copy(cnn_out, tmp_path, name, damage)
    reports = tmp_path / "reports"
    r = run_cli("profile", art, "--runs", "2", "--warmup", "0", "-o", reports)
    assert r.exit_code == 4, r.output
    assert re.search(re.escape(f"{model}: ") + reason, " ".join(r.output.split())), r.output  # rich may wrap
    report = json.loads((reports / "report.json").read_text())
    assert report["overall"] == "ERROR"
    row, = report["artifacts"]
    assert row["status"] == "error" and row["error"]["exit_code"] == 4
    assert row["error"]["message"].startswith(f"{model}: ") and re.search(reason, row["error"]["message"])
    assert_no_partial(reports)
    assert not [p for p in art.parent.rglob("*") if ".tmp-" in p.name]


def test_runtime_load_refuses_flipped_byte(cnn_out, tmp_path):
    art, model = _damaged_copy(cnn_out, tmp_path, "onnx-fp16", "flip")
    with pytest.raises(UnsafeInputError, match="SHA-256 mismatch") as err:
        rt.load(art)
    assert err.value.exit_code == 4 and err.value.details["file"] == str(model)


def test_manifest_listing_a_path_outside_the_artifact_is_refused(cnn_out, tmp_path):
    art, _ = _damaged_copy(cnn_out, tmp_path, "onnx-fp32", "none")
    manifest = json.loads((art / "manifest.json").read_text())
    manifest["checksums"]["../reference/inputs.npz"] = "0" * 64
    (art / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UnsafeInputError, match="leaves the artifact directory"):
        rt.load(art)


@pytest.mark.parametrize("text, message", [
    ("{not json", "not valid JSON"),
    (json.dumps({"schema": "other/9"}), "is not 'pocketml.manifest/1'"),
    (json.dumps({"schema": "pocketml.manifest/1", "name": "x"}), "missing field(s) format"),
])
def test_malformed_manifest_is_refused(cnn_out, tmp_path, text, message):
    art, _ = _damaged_copy(cnn_out, tmp_path, "onnx-fp32", "none")
    (art / "manifest.json").write_text(text)
    r = run_cli("profile", art, "--runs", "2", "--warmup", "0", "-o", tmp_path / "reports")
    assert r.exit_code == 4, r.output
    assert "manifest.json" in r.output and message in r.output
