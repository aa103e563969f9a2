"""Atomic publishing: artifacts appear whole or not at all; re-runs replace cleanly; stale temporaries go."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import CNN, artifact_names, assert_no_partial, run_cli

from pocketml.runtime import atomic
from pocketml.runtime.errors import UsageError
from pocketml.runtime.manifest import read_manifest, verify_checksums


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert not atomic._pid_alive(proc.pid)
    return proc.pid


def test_reconvert_replaces_artifacts_and_cleans_stale_temporaries(tmp_path):
    out = tmp_path / "out"
    first = run_cli("convert", CNN, "--to", "onnx", "-o", out)
    assert first.exit_code == 0, first.output
    old_manifest = read_manifest(out / "onnx-fp32")
    (out / "onnx-fp32" / "stray.txt").write_text("left by someone")   # not in the new artifact

    pid = dead_pid()
    stale = out / f".onnx-fp32.tmp-{pid}-abc123"
    stale.mkdir()
    (stale / "model.onnx").write_bytes(b"half-written")
    stale_work = out / f".work.tmp-{pid}-convert"
    stale_work.mkdir()

    second = run_cli("convert", CNN, "--to", "onnx", "--no-reuse", "-o", out)
    assert second.exit_code == 0, second.output
    assert not stale.exists() and not stale_work.exists()
    assert not (out / "onnx-fp32" / "stray.txt").exists()
    new_manifest = read_manifest(out / "onnx-fp32")
    verify_checksums(out / "onnx-fp32", new_manifest)
    assert new_manifest.checksums == old_manifest.checksums        # same model, same bytes
    assert sorted(p.name for p in (out / "onnx-fp32").iterdir()) == ["manifest.json", "model.onnx"]
    assert artifact_names(out) == {"onnx-fp32", "reference"}
    assert_no_partial(out)


def test_identical_reconvert_reuses_the_published_artifact(tmp_path):
    out = tmp_path / "out"
    assert run_cli("convert", CNN, "--to", "onnx", "-o", out).exit_code == 0
    mtime = (out / "onnx-fp32" / "model.onnx").stat().st_mtime_ns
    again = run_cli("convert", CNN, "--to", "onnx", "-o", out)
    assert again.exit_code == 0, again.output
    assert "reused" in again.output
    assert (out / "onnx-fp32" / "model.onnx").stat().st_mtime_ns == mtime
    assert_no_partial(out)


def test_reuse_after_a_no_reuse_run(tmp_path):
    """--no-reuse only forces a rebuild; it does not make the artifact unreusable afterwards."""
    out = tmp_path / "out"
    assert run_cli("convert", "models:tiny_mlp", "--to", "onnx", "--no-reuse", "-o", out).exit_code == 0
    again = run_cli("convert", "models:tiny_mlp", "--to", "onnx", "-o", out)
    assert again.exit_code == 0, again.output
    assert "onnx-fp32      unchanged, reused" in again.output
    assert_no_partial(out)


def test_clean_stale_keeps_temporaries_of_live_processes(tmp_path):
    live = tmp_path / f".x.tmp-{os.getpid()}-aaaaaa"
    dead = tmp_path / f".x.tmp-{dead_pid()}-bbbbbb"
    odd = tmp_path / ".x.tmp-notapid-cccccc"
    for d in (live, dead, odd):
        d.mkdir()
    assert atomic.clean_stale(tmp_path) == [dead]
    assert live.exists() and odd.exists() and not dead.exists()


def test_publish_refuses_to_overwrite_a_non_artifact_directory(tmp_path):
    final = tmp_path / "onnx-fp32"
    final.mkdir()
    (final / "precious.txt").write_text("user data")
    with atomic.staging_dir(final) as tmp:
        (tmp / "manifest.json").write_text("{}")
        with pytest.raises(UsageError, match="not a pocketml artifact .no manifest.json.; refusing to overwrite"):
            atomic.publish(tmp, final)
    assert (final / "precious.txt").read_text() == "user data"
    assert not (final / "manifest.json").exists()
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]   # staging removed on failure


def test_publish_refuses_a_symlink(tmp_path):
    target = tmp_path / "elsewhere"
    target.mkdir()
    final = tmp_path / "onnx-fp32"
    final.symlink_to(target)
    with atomic.staging_dir(final) as tmp:
        with pytest.raises(UsageError, match="symlink"):
            atomic.publish(tmp, final)
    assert final.is_symlink() and not any(target.iterdir())


def test_publish_replaces_an_artifact(tmp_path):
    final = tmp_path / "a"
    final.mkdir()
    (final / "manifest.json").write_text("old")
    with atomic.staging_dir(final) as tmp:
        (tmp / "manifest.json").write_text("new")
        atomic.publish(tmp, final)
    assert (final / "manifest.json").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


def test_convert_refuses_to_clobber_a_user_directory(tmp_path):
    out = tmp_path / "out"
    (out / "onnx-fp32").mkdir(parents=True)
    (out / "onnx-fp32" / "notes.txt").write_text("mine")
    r = run_cli("convert", CNN, "--to", "onnx", "-o", out)
    assert r.exit_code == 2, r.output
    assert "onnx-fp32" in r.output and "not a pocketml artifact" in r.output
    assert (out / "onnx-fp32" / "notes.txt").read_text() == "mine"
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]


def test_write_file_atomic(tmp_path):
    path = atomic.write_file_atomic(tmp_path / "f.json", b"data")
    assert path.read_bytes() == b"data" and [p.name for p in tmp_path.iterdir()] == ["f.json"]


def test_a_changed_exporter_is_not_reused(tmp_path, monkeypatch):
    """The reuse key holds a digest of pocketml's own code: same version, different code → rebuilt."""
    from pocketml.convert import pipeline
    out = tmp_path / "out"
    assert run_cli("convert", "models:tiny_mlp", "--to", "onnx", "-o", out).exit_code == 0
    monkeypatch.setattr(pipeline, "code_digest", lambda: "0" * 16)
    again = run_cli("convert", "models:tiny_mlp", "--to", "onnx", "-o", out)
    assert again.exit_code == 0, again.output
    assert "reused" not in again.output
