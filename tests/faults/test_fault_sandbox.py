"""Untrusted model bytes are parsed only inside the sandboxed child, after verification and pre-checks.

`pocketml profile ART --device D` once had the child refuse a hostile ONNX file and then parsed the same
file in the parent for the phone-latency estimate (a traceback, exit 1). Now the estimator reads the
graph in the child that measured the artifact (or, for an artifact nothing can run here — Core ML off
macOS — in a cost-only child), through the model gate (`runtime.model_file.checked_model`); a refused
artifact gets no estimate. The tests make every graph reader and ONNX parser of the parent process raise,
so any parent-side parse would fail them.
"""
from __future__ import annotations

import shutil

import numpy as np
import pytest
from conftest import assert_no_partial, run_cli
from faultkit import one_line, onnx_with_external, report_rows, write_artifact, write_reference

from pocketml.runtime.manifest import hash_tree, read_manifest

def add_model() -> bytes:
    from onnx import TensorProto as T
    from onnx import helper, numpy_helper
    g = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", T.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", T.FLOAT, [1, 4])],
                          [numpy_helper.from_array(np.ones((1, 4), np.float32), "w")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=9).SerializeToString()


HOSTILE = {
    "external data ../../etc/passwd": (lambda: onnx_with_external("initializer", "../../etc/passwd"),
                                       "leaves the artifact directory"),
    "external data /etc/passwd": (lambda: onnx_with_external("initializer", "/etc/passwd"), "is absolute"),
    "corrupt protobuf": (lambda: b"\x08" + np.random.default_rng(5).bytes(256), "cannot read the ONNX protobuf"),
}


@pytest.fixture
def no_parent_parsing(monkeypatch):
    """Every way this process could read a model graph now fails loudly."""
    from pocketml.runtime import formats, onnx_checks

    def refuse(*a, **k):
        raise AssertionError("model bytes parsed in the parent process")
    monkeypatch.setattr(formats.Format, "read_graph", refuse)
    monkeypatch.setattr(onnx_checks, "check_onnx", refuse)


def _arts(tmp_path, hostile: bytes | None = None):
    root = tmp_path / "arts"
    write_reference(root)
    write_artifact(root / "onnx-fp32", add_model())
    if hostile is not None:
        write_artifact(root / "onnx-fp16", hostile)
    return root


def test_estimates_come_from_the_child(tmp_path, no_parent_parsing):
    root = _arts(tmp_path)
    reports = tmp_path / "rep"
    r = run_cli("profile", root, "--device", "pixel-7", "--runs", "3", "--warmup", "0", "--max-drop", "100%",
                "-o", reports)
    assert r.exit_code == 0, r.output
    row = report_rows(reports)["onnx-fp32"]
    assert row["status"] == "measured" and row["estimate"]["latency_ms"] > 0
    assert row["verdict"]["checks"][0]["name"] == "p90 latency on device (ms)"
    assert "graph_cost" not in row                       # used, not reported


@pytest.mark.parametrize("case", HOSTILE)
def test_hostile_artifact_is_refused_and_never_estimated(tmp_path, no_parent_parsing, case):
    make, reason = HOSTILE[case]
    root = _arts(tmp_path, make())
    before = {p: hash_tree(root / p) for p in ("onnx-fp16", "onnx-fp32", "reference")}
    reports = tmp_path / "rep"
    r = run_cli("profile", root, "--device", "pixel-7", "--runs", "3", "--warmup", "0", "--max-drop", "100%",
                "-o", reports)
    assert r.exit_code == 4, r.output
    assert "Traceback" not in r.output
    assert f"{root / 'onnx-fp16' / 'model.onnx'}: " in one_line(r.output) and reason in one_line(r.output)
    rows = report_rows(reports)
    assert rows["onnx-fp16"]["status"] == "error" and "estimate" not in rows["onnx-fp16"]
    assert "emulated" not in rows["onnx-fp16"]
    assert rows["onnx-fp32"]["status"] == "measured" and rows["onnx-fp32"]["estimate"]["latency_ms"] > 0
    assert {p: hash_tree(root / p) for p in before} == before        # nothing written into the inputs
    assert_no_partial(reports)


@pytest.mark.parametrize("case", HOSTILE)
def test_estimate_refuses_the_hostile_artifact(tmp_path, no_parent_parsing, case):
    make, reason = HOSTILE[case]
    root = _arts(tmp_path, make())
    r = run_cli("estimate", root / "onnx-fp16", "--device", "pixel-7")
    assert r.exit_code == 4, r.output
    assert "Traceback" not in r.output and reason in one_line(r.output)
    assert run_cli("estimate", root / "onnx-fp32", "--device", "pixel-7").exit_code == 0     # the control


def test_unmeasured_coreml_is_estimated_in_a_child(cnn_out, tmp_path, no_parent_parsing):
    """Core ML cannot run on Linux, so no measuring child vouches for it: a cost-only child verifies,
    pre-checks and reads it."""
    if not (cnn_out / "coreml-fp32").is_dir():
        pytest.skip("no Core ML artifact (coremltools missing)")
    root = tmp_path / "arts"
    for name in ("reference", "onnx-fp32", "coreml-fp32"):
        shutil.copytree(cnn_out / name, root / name)
    reports = tmp_path / "rep"
    r = run_cli("profile", root, "--device", "pixel-7", "--runs", "3", "--warmup", "0", "--max-drop", "100%",
                "-o", reports)
    rows = report_rows(reports)
    if rows["coreml-fp32"]["status"] == "measured":
        pytest.skip("this host runs Core ML")
    assert rows["coreml-fp32"]["status"] == "not measured", r.output
    assert rows["coreml-fp32"]["estimate"]["latency_ms"] > 0 and rows["onnx-fp32"]["estimate"]["latency_ms"] > 0
    read_manifest(root / "coreml-fp32")


def test_tampered_coreml_is_refused_not_estimated(cnn_out, tmp_path, no_parent_parsing):
    """The cost-only child verifies checksums first: a tampered Core ML artifact becomes an error row."""
    if not (cnn_out / "coreml-fp32").is_dir():
        pytest.skip("no Core ML artifact (coremltools missing)")
    root = tmp_path / "arts"
    for name in ("reference", "coreml-fp32"):
        shutil.copytree(cnn_out / name, root / name)
    spec = next((root / "coreml-fp32").rglob("*.mlmodel"))
    data = bytearray(spec.read_bytes())
    data[-1] ^= 0xFF
    spec.write_bytes(bytes(data))
    reports = tmp_path / "rep"
    r = run_cli("profile", root, "--device", "pixel-7", "-o", reports)
    assert r.exit_code == 4, r.output
    row = report_rows(reports)["coreml-fp32"]
    assert row["status"] == "error" and "SHA-256 mismatch" in row["error"]["message"] and "estimate" not in row
