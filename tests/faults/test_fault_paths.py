"""The path validator (runtime/paths.py) on artifacts: symlinks in any component, hard links, special
files, and hostile references in manifests and Core ML packages are refused with exit 4 naming the
reference; reports and stale temporaries are never written or deleted through a symlink."""
from __future__ import annotations

import json
import os
import shutil

import pytest
from conftest import assert_no_partial, run_cli
from faultkit import copy_artifact, rerecord

import pocketml.runtime as rt
from pocketml.runtime import atomic, paths
from pocketml.runtime.errors import UnsafeInputError


def _listing(root):
    return sorted((str(p.relative_to(root)), p.is_symlink()) for p in root.rglob("*"))


def _refused(art, match: str):
    before = _listing(art.parent)
    with pytest.raises(UnsafeInputError, match=match) as err:
        rt.load(art)
    assert err.value.exit_code == 4
    assert _listing(art.parent) == before                 # nothing written, nothing removed
    return err.value


@pytest.fixture
def art(cnn_out, tmp_path):
    return copy_artifact(cnn_out, "onnx-fp32", tmp_path / "arts")


def test_symlinked_model_file(art, tmp_path):
    real = tmp_path / "elsewhere.onnx"
    shutil.move(art / "model.onnx", real)
    os.symlink(real, art / "model.onnx")
    _refused(art, r"file reference 'model.onnx' goes through a symlink")


def test_symlinked_manifest(art, tmp_path):
    shutil.move(art / "manifest.json", tmp_path / "m.json")
    os.symlink(tmp_path / "m.json", art / "manifest.json")
    _refused(art, r"file reference 'manifest.json' goes through a symlink")


def test_hard_linked_model_file(art, tmp_path):
    os.link(art / "model.onnx", tmp_path / "second-name.onnx")
    _refused(art, r"referenced file 'model.onnx' is hard-linked \(2 links\)")


def test_fifo_listed_in_checksums_does_not_hang(art):
    os.mkfifo(art / "pipe")
    m = json.loads((art / "manifest.json").read_text())
    m["checksums"]["pipe"] = "0" * 64
    (art / "manifest.json").write_text(json.dumps(m))
    _refused(art, r"'pipe': pipe is not a regular file or directory")


def test_directory_listed_in_checksums(art):
    (art / "sub").mkdir()
    m = json.loads((art / "manifest.json").read_text())
    m["checksums"]["sub"] = "0" * 64
    (art / "manifest.json").write_text(json.dumps(m))
    _refused(art, r"file reference 'sub' is a directory, expected a file")


@pytest.mark.parametrize("ref, match", [
    ("/etc/passwd", "is absolute"),
    ("C:/x", "names a drive/stream"),
    ("model.onnx:stream", "names a drive/stream"),
    ("..\\..\\etc\\passwd", "contains a backslash"),
    ("a/\x00/b", "contains a NUL byte"),
    ("sub/../../x", "leaves the artifact directory"),
    (".", "names the artifact directory itself"),
    ("", "empty file reference"),
    ("x" * 300, "too many or too long components"),
])
def test_hostile_checksum_keys(art, ref, match):
    m = json.loads((art / "manifest.json").read_text())
    m["checksums"][ref] = "0" * 64
    (art / "manifest.json").write_text(json.dumps(m))
    _refused(art, match)


@pytest.mark.parametrize("field, value, match", [
    ("model_file", "../reference/inputs.npz", "leaves the artifact directory"),
    ("checksums", ["model.onnx"], "field 'checksums' is list, expected dict"),
    ("inputs", [{"name": "x", "shape": "1x3", "dtype": "float32"}], "field 'shape' is str"),
    ("inputs", ["x"], r"inputs\[0\]: not a JSON object"),
    ("precision", "fp64", "precision 'fp64' is not one of"),
])
def test_malformed_manifest_fields(art, field, value, match):
    m = json.loads((art / "manifest.json").read_text())
    m[field] = value
    (art / "manifest.json").write_text(json.dumps(m))
    _refused(art, match)


def test_coreml_package_member_escaping(cnn_out, tmp_path):
    art = copy_artifact(cnn_out, "coreml-fp32", tmp_path / "arts")
    pkg_manifest = art / "model.mlpackage" / "Manifest.json"
    m = json.loads(pkg_manifest.read_text())
    next(iter(m["itemInfoEntries"].values()))["path"] = "../../../reference/inputs.npz"
    pkg_manifest.write_text(json.dumps(m))
    rerecord(art)
    err = _refused(art, r"file reference '../../../reference/inputs.npz' leaves the artifact directory")
    assert "model.mlpackage/Data" in str(err)


def test_report_is_never_written_through_a_symlink(cnn_out, tmp_path):
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    reports = tmp_path / "reports"
    reports.mkdir()
    os.symlink(target, reports / "report.json")
    r = run_cli("profile", cnn_out / "onnx-fp32", "--runs", "2", "--warmup", "0", "--max-latency", "10000ms",
                "--max-drop", "100%", "-o", reports)
    assert r.exit_code == 0, r.output
    assert target.read_text() == "keep me"
    assert not (reports / "report.json").is_symlink() and json.loads((reports / "report.json").read_text())
    assert_no_partial(reports)


def test_stale_temporary_that_is_a_symlink_is_unlinked_not_followed(tmp_path):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "data").write_text("keep me")
    out = tmp_path / "out"
    out.mkdir()
    os.symlink(precious, out / ".onnx-fp32.tmp-999999999-abcdef")     # no such pid
    assert atomic.clean_stale(out) == [out / ".onnx-fp32.tmp-999999999-abcdef"]
    assert (precious / "data").read_text() == "keep me" and list(out.iterdir()) == []


def test_open_contained_is_race_free_against_a_swapped_in_symlink(tmp_path, monkeypatch):
    """The check and the open are the same walk: a component swapped for a symlink between an
    earlier stat and the open is caught by O_NOFOLLOW (ELOOP/ENOTDIR), not followed."""
    root = tmp_path / "art"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "f").write_text("inside")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "f").write_text("outside")
    real_stat = os.stat

    def swap_after_stat(path, *args, **kwargs):
        st = real_stat(path, *args, **kwargs)
        if path == "sub" and kwargs.get("dir_fd") is not None:          # the walk's lstat of "sub"
            shutil.rmtree(root / "sub")
            os.symlink(outside, root / "sub")
        return st
    monkeypatch.setattr(paths.os, "stat", swap_after_stat)
    with pytest.raises(UnsafeInputError, match="cannot open sub without following links"):
        paths.open_contained(root, "sub/f")
