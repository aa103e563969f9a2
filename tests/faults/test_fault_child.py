"""A profile whose child crashes, hangs, runs out of memory or dies: that artifact's error (exit 4,
naming the signal / timeout / cap), and every other artifact is still measured.

The faults are real: the child honours POCKETML_TEST_CHILD_FAULT=MODE:ARTIFACT (only while pytest's
PYTEST_CURRENT_TEST is set) before it loads anything — os.kill(SIGSEGV), abort(), an endless sleep,
a 1 TiB allocation under the RLIMIT_AS cap, or os._exit(3).
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import pytest
from conftest import assert_no_partial, run_cli, subprocess_env
from faultkit import copy_artifact, one_line, report_rows

OTHERS = ("onnx-fp16", "tflite-fp32")


@pytest.fixture
def arts(cnn_out, tmp_path):
    root = tmp_path / "arts"
    copy_artifact(cnn_out, "onnx-fp32", root)
    for name in OTHERS:
        shutil.copytree(cnn_out / name, root / name)
    return root


@pytest.mark.parametrize("mode, env, message", [
    ("segv", {}, "the runtime crashed with SIGSEGV while loading or running the artifact"),
    ("abort", {}, "the runtime crashed with SIGABRT"),
    ("hang", {"POCKETML_CHILD_TIMEOUT_S": "4"}, "profiling timed out after 4 s (child killed)"),
    ("oom", {"POCKETML_CHILD_MEMORY_MB": "1024"}, "profiling needed more memory than the child's cap of 1024 MB"),
    ("exit", {}, "profiling child exited 3"),
])
def test_child_fault_is_that_artifacts_error(arts, tmp_path, monkeypatch, mode, env, message):
    monkeypatch.setenv("POCKETML_TEST_CHILD_FAULT", f"{mode}:onnx-fp32")     # the first one profiled
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    reports = tmp_path / "reports"
    t0 = time.monotonic()
    r = run_cli("profile", arts, "--runs", "3", "--warmup", "1", "--max-latency", "10000ms", "--max-drop", "100%",
                "-o", reports)
    assert r.exit_code == 4, r.output
    assert f"{arts / 'onnx-fp32'}: {message}" in one_line(r.output), r.output
    rows = report_rows(reports)
    bad = rows["onnx-fp32"]
    assert bad["status"] == "error" and bad["error"]["exit_code"] == 4 and message in bad["error"]["message"]
    assert bad["verdict"]["result"] == "ERROR"
    for name in OTHERS:                                  # the rest of the run completed
        assert rows[name]["status"] == "measured", rows[name]
        assert rows[name]["verdict"]["result"] == "PASS" and rows[name]["latency_ms"]["runs"] == 3
    if mode == "hang":
        assert time.monotonic() - t0 < 60
    assert_no_partial(reports)


def test_hung_child_is_killed(arts, monkeypatch):
    """The child runs in its own session; on timeout the whole process group is killed and reaped."""
    monkeypatch.setenv("POCKETML_TEST_CHILD_FAULT", "hang:onnx-fp32")
    from pocketml.profiler.run import run_child
    res = run_child({"artifact": str(arts / "onnx-fp32")}, timeout=3, memory_mb=None)
    assert res == {"ok": False, "error": {"kind": "timeout", "exit_code": 4, "timeout_s": 3,
                                          "message": f"{arts / 'onnx-fp32'}: profiling timed out after 3 s "
                                                     "(child killed)"}}
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout.splitlines()
    assert not [ln for ln in ps if "pocketml.profiler.child" in ln and str(arts) in ln]


def test_normal_sessions_fit_a_tight_memory_cap(arts, tmp_path, monkeypatch):
    """The cap is real (RLIMIT_AS) and ordinary onnxruntime / LiteRT sessions run under one far
    below the default (8192 MB, or 4 × model + 2048 MB for big models), with 2 threads."""
    monkeypatch.setenv("POCKETML_CHILD_MEMORY_MB", "2048")
    r = run_cli("profile", arts, "--runs", "3", "--warmup", "1", "--threads", "2", "--max-latency", "10000ms",
                "--max-drop", "100%", "-o", tmp_path / "reports")
    assert r.exit_code == 0, r.output
    assert all(row["status"] == "measured" for row in report_rows(tmp_path / "reports").values())


@pytest.mark.parametrize("value, message", [
    ("lots", "POCKETML_CHILD_MEMORY_MB='lots': expected megabytes"),
    ("12", "POCKETML_CHILD_MEMORY_MB=12: at least 256 MB"),
])
def test_bad_memory_cap_setting(arts, tmp_path, monkeypatch, value, message):
    monkeypatch.setenv("POCKETML_CHILD_MEMORY_MB", value)
    r = run_cli("profile", arts, "--runs", "2", "-o", tmp_path / "reports")
    assert r.exit_code == 2, r.output
    assert message in r.output
    assert not (tmp_path / "reports").exists()


def test_fault_hook_is_ignored_outside_pytest(arts, tmp_path):
    """Without PYTEST_CURRENT_TEST the hook does nothing: the artifact is measured."""
    env = subprocess_env(POCKETML_TEST_CHILD_FAULT="segv")
    env.pop("PYTEST_CURRENT_TEST", None)
    ref = arts / "reference"
    meta = json.loads((ref / "manifest.json").read_text())
    args = {"artifact": str(arts / "onnx-fp32"), "threads": 1, "warmup": 0, "runs": 2, "metric": "top1",
            "inputs_npz": str(ref / "inputs.npz"), "reference_npz": str(ref / "outputs.npz"),
            "canonical_inputs": meta["inputs"], "layouts": ["NCHW"], "memory_mb": 2048}
    proc = subprocess.run([sys.executable, "-m", "pocketml.profiler.child", json.dumps(args)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert '"ok": true' in proc.stdout
