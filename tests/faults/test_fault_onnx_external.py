"""ONNX external data that points outside the artifact: refused (exit 4) whichever tensor carries it.

Each model is otherwise valid — the control test loads and runs every carrier with a contained
external file — so the refusal is the path validator's (`runtime/paths.py`), not a parse error.
"""
from __future__ import annotations

import os

import numpy as np
import pytest
from conftest import assert_no_partial, run_cli
from faultkit import CARRIERS, W, one_line, onnx_with_external, report_rows, write_artifact, write_reference

import pocketml.runtime as rt


def _profile_refuses(tmp_path, art, location: str, reason: str):
    reports = tmp_path / "reports"
    r = run_cli("profile", art, "--runs", "2", "--warmup", "0", "-o", reports)
    assert r.exit_code == 4, r.output
    out = one_line(r.output)
    assert f"{art.resolve() / 'model.onnx'}: " in out and repr(location) in out and reason in out, r.output
    row = report_rows(reports)[art.name]
    assert row["status"] == "error" and row["error"]["exit_code"] == 4 and reason in row["error"]["message"]
    assert_no_partial(reports)
    assert not [p for p in art.parent.rglob("*") if ".tmp-" in p.name]


@pytest.fixture
def arts(tmp_path):
    root = tmp_path / "a" / "b" / "arts"
    write_reference(root)
    # Real files where the escaping references land, so following them would succeed.
    (tmp_path / "a" / "etc").mkdir()
    (tmp_path / "a" / "etc" / "passwd").write_bytes(W.tobytes())
    (root / "x").write_bytes(W.tobytes())
    return root


@pytest.mark.parametrize("carrier", CARRIERS)
def test_control_contained_external_data_loads(tmp_path, carrier):
    art = write_artifact(tmp_path / "onnx-fp32", onnx_with_external(carrier, "weights/w.bin"),
                         extra={"weights/w.bin": W.tobytes()})
    y = rt.load(art).run(np.zeros((1, 4), np.float32))["y"]
    np.testing.assert_array_equal(y, W)


@pytest.mark.parametrize("location, reason", [
    ("../../etc/passwd", "leaves the artifact directory"),
    ("/etc/passwd", "is absolute"),
    ("sub/../../x", "leaves the artifact directory"),
])
def test_initializer_escaping_the_artifact(arts, tmp_path, location, reason):
    art = write_artifact(arts / "onnx-fp32", onnx_with_external("initializer", location))
    _profile_refuses(tmp_path, art, location, reason)


@pytest.mark.parametrize("carrier", [c for c in CARRIERS if c != "initializer"])
def test_traversal_via_every_carrier(arts, tmp_path, carrier):
    art = write_artifact(arts / "onnx-fp32", onnx_with_external(carrier, "../../etc/passwd"))
    _profile_refuses(tmp_path, art, "../../etc/passwd", "leaves the artifact directory")


def test_symlinked_external_file(arts, tmp_path):
    art = write_artifact(arts / "onnx-fp32", onnx_with_external("initializer", "w.bin"))
    os.symlink(tmp_path / "a" / "etc" / "passwd", art / "w.bin")      # added after the checksums
    _profile_refuses(tmp_path, art, "w.bin", "goes through a symlink")


def test_symlinked_directory_component(arts, tmp_path):
    art = write_artifact(arts / "onnx-fp32", onnx_with_external("Loop body", "sub/passwd"))
    os.symlink(tmp_path / "a" / "etc", art / "sub")
    _profile_refuses(tmp_path, art, "sub/passwd", "goes through a symlink")


def test_hard_linked_external_file(arts, tmp_path):
    art = write_artifact(arts / "onnx-fp32", onnx_with_external("sparse initializer", "w.bin"))
    os.link(tmp_path / "a" / "etc" / "passwd", art / "w.bin")
    reports = tmp_path / "reports"
    r = run_cli("profile", art, "--runs", "2", "--warmup", "0", "-o", reports)
    assert r.exit_code == 4, r.output
    assert "'w.bin' is hard-linked (2 links)" in one_line(r.output)
    assert_no_partial(reports)


@pytest.mark.parametrize("offset, length, reason", [
    ("8", "16", "exceeds file size 16"),
    ("0", "99999999999999999999999", r"out-of-range length \(23 digits"),
    ("-1", "16", r"negative offset \(-1\)"),
    ("0", "-16", r"negative length \(-16\)"),
    ("0x8", "16", "non-integer offset"),
    ("0", "8", "declares 16 bytes but its external data has 8"),
])
def test_external_range_is_bounded(tmp_path, offset, length, reason):
    import onnx
    model = onnx.ModelProto.FromString(onnx_with_external("initializer", "w.bin"))
    entries = {e.key: e for e in model.graph.initializer[0].external_data}
    entries["offset"].value, entries["length"].value = offset, length
    art = write_artifact(tmp_path / "onnx-fp32", model.SerializeToString(), extra={"w.bin": W.tobytes()})
    with pytest.raises(rt.UnsafeInputError, match=reason) as err:
        rt.load(art)
    assert err.value.exit_code == 4 and str(art / "model.onnx") in str(err.value)
