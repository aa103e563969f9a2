"""`pocketml profile`: measuring, reports, verdicts, Core ML off macOS."""
from __future__ import annotations

import json
import sys

import pytest
from conftest import assert_no_partial, pocketml_script, run_cli, run_subprocess

from pocketml.profiler.run import REPORT_SCHEMA

pytestmark = pytest.mark.skipif(sys.platform == "darwin", reason="Core ML is measurable on macOS")


@pytest.fixture(scope="module")
def generous_profile(cnn_out, tmp_path_factory):
    """Profile the whole tiny-CNN directory once, with targets nothing can miss."""
    reports = tmp_path_factory.mktemp("reports")
    r = run_cli("profile", cnn_out, "--runs", "5", "--warmup", "1", "--max-latency", "10000ms",
                "--max-drop", "100%", "-o", reports)
    return r, reports


def test_profile_directory_passes_generous_targets(generous_profile):
    r, reports = generous_profile
    assert r.exit_code == 0, r.output
    assert "overall PASS" in r.output
    assert f"wrote {reports / 'report.json'} and {reports / 'report.md'}" in r.output
    assert_no_partial(reports)


def test_report_json_schema_and_labels(generous_profile, cnn_out):
    _, reports = generous_profile
    report = json.loads((reports / "report.json").read_text())
    assert report["schema"] == REPORT_SCHEMA == "pocketml.report/1"
    assert report["overall"] == "PASS"
    assert report["settings"] == {"threads": 1, "warmup": 1, "runs": 5, "data": None}
    assert report["targets"]["p90_latency_ms"] == 10000.0 and report["targets"]["max_accuracy_drop"] == 1.0
    rows = {f"{a['format']}-{a['precision']}": a for a in report["artifacts"]}
    assert set(rows) == {f"{f}-{p}" for f in ("onnx", "tflite", "coreml") for p in ("fp32", "fp16", "int8")}
    for name, row in rows.items():
        if name.startswith("coreml"):
            continue
        assert row["status"] == "measured", row
        assert row["measured"].startswith("measured (host: ") and row["measured"].endswith("1 thread)")
        lat = row["latency_ms"]
        assert lat["runs"] == 5 and 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["max"]
        assert row["size_mb"] > 0 and row["samples"] >= 1
        # The child's own peak, not this (torch-laden) test process's, which Linux's ru_maxrss would carry
        # across fork+exec.
        assert 0 <= row["peak_rss_added_mb"] < 150, row["peak_rss_added_mb"]
        assert row["accuracy"]["top1_agreement"] == 1.0
        assert row["verdict"]["result"] == "PASS"
        assert {c["name"] for c in row["verdict"]["checks"]} == {"p90 latency (ms)", "accuracy drop"}
        assert row["accuracy_reference"].startswith("torch fp32 (eager)")


def test_report_md_written(generous_profile):
    _, reports = generous_profile
    md = (reports / "report.md").read_text()
    assert md.startswith("# pocketml profile report — overall **PASS**")
    assert "| tiny_cnn tflite-int8 |" in md
    assert "tiny_cnn coreml-fp32: not measured" in md


def test_coreml_in_a_directory_is_not_measured_and_others_are(generous_profile):
    r, reports = generous_profile
    report = json.loads((reports / "report.json").read_text())
    coreml = [a for a in report["artifacts"] if a["format"] == "coreml"]
    others = [a for a in report["artifacts"] if a["format"] != "coreml"]
    assert len(coreml) == 3 and len(others) == 6
    for row in coreml:
        assert row["status"] == "not measured" and row["verdict"]["result"] == "NOT MEASURED"
        assert "macOS" in row["reason"] and "latency_ms" not in row
    assert all(row["status"] == "measured" for row in others)
    assert "NOT MEASURED" in r.output


def test_coreml_artifact_named_explicitly_exits_7(cnn_out, tmp_path):
    """A real run of the installed console script."""
    art = cnn_out / "coreml-fp16"
    proc = run_subprocess([pocketml_script(), "profile", art, "--runs", "2", "-o", tmp_path / "reports"])
    assert proc.returncode == 7, proc.stderr
    assert str(art) in proc.stderr and "macOS" in proc.stderr
    assert not (tmp_path / "reports").exists()


def test_missed_latency_target_exits_6(cnn_out, tmp_path):
    r = run_cli("profile", cnn_out / "onnx-fp32", cnn_out / "tflite-fp32", "--runs", "3", "--warmup", "0",
                "--max-latency", "0.0001ms", "--max-drop", "100%", "-o", tmp_path)
    assert r.exit_code == 6, r.output
    assert "overall FAIL" in r.output
    assert "FAIL tiny_cnn onnx-fp32: p90 latency (ms)" in r.output
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["overall"] == "FAIL"
    for row in report["artifacts"]:
        check, = [c for c in row["verdict"]["checks"] if c["name"] == "p90 latency (ms)"]
        assert check["limit"] == 0.0001 and check["value"] > 0.0001 and check["pass"] is False


def test_device_profile_targets_are_used(cnn_out, tmp_path):
    r = run_cli("profile", cnn_out / "onnx-int8", "--device", "pixel-7", "--runs", "2", "--warmup", "0",
                "-o", tmp_path)
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["device"]["name"] == "pixel-7"
    assert "no phone is attached" in report["device"]["latency_basis"]
    row = report["artifacts"][0]
    assert row["estimate"]["method"].startswith("estimated (pixel-7, ±")
    assert row["estimate"]["low_ms"] <= row["estimate"]["latency_ms"] <= row["estimate"]["high_ms"]
    lat = row["verdict"]["checks"][0]
    assert lat["name"] == "p90 latency on device (ms)" and lat["value"] == row["estimate"]["latency_ms"]
    assert row["measured"].startswith("measured (host: ")
    em = row["emulated"]                                   # the second opinion: host p50 scaled
    assert em["method"].startswith("emulated (pixel-7)") and em["latency_ms"] > 0
    assert set(em["kernel_ratios"]) == {"gemm-fp32", "gemm-int8", "depthwise", "elementwise"}
    assert all(v > 0 for v in em["kernel_ratios"].values())
    assert em["latency_ms"] == pytest.approx(row["latency_ms"]["p50"] * em["scale"], rel=1e-3, abs=1e-3)   # rounded to 3 decimals
    assert report["targets"]["source"] == "device profile pixel-7"
    assert report["targets"]["max_size_mb"] == 50.0


def test_report_defaults_to_the_profiled_directory(cnn_out, tmp_path):
    import shutil
    root = tmp_path / "arts"
    shutil.copytree(cnn_out / "reference", root / "reference")
    shutil.copytree(cnn_out / "tflite-fp16", root / "tflite-fp16")
    r = run_cli("profile", root, "--runs", "2", "--warmup", "0")
    assert r.exit_code == 0, r.output
    assert (root / "report.json").is_file() and (root / "report.md").is_file()
    assert_no_partial(root)


@pytest.mark.parametrize("args, text", [
    (["--runs", "1"], "--runs must be ≥ 2"),
    (["--max-latency", "fast"], "expected milliseconds"),
    (["--max-drop", "lots"], "expected a fraction or a percentage"),
])
def test_bad_profile_options(cnn_out, tmp_path, args, text):
    r = run_cli("profile", cnn_out / "onnx-fp32", *args, "-o", tmp_path)
    assert r.exit_code == 2, r.output
    assert text in r.output
    assert not (tmp_path / "report.json").exists()


def test_directory_without_artifacts(tmp_path):
    (tmp_path / "empty").mkdir()
    r = run_cli("profile", tmp_path / "empty")
    assert r.exit_code == 2
    assert "no pocketml artifacts" in r.output and "empty" in r.output


# ------------------------------------------------------------------ settings in the manifest (--record)

def test_manifest_records_the_session_settings_it_was_validated_with(cnn_out):
    m = json.loads((cnn_out / "tflite-int8" / "manifest.json").read_text())
    s = m["runtime_hints"]["settings"]
    assert s["num_threads"] == 1 and s["delegate"].startswith("XNNPACK") and s["runtime"].startswith("LiteRT")
    o = json.loads((cnn_out / "onnx-fp32" / "manifest.json").read_text())["runtime_hints"]["settings"]
    assert o["execution_provider"] == "CPUExecutionProvider" and o["num_threads"] == 1
    assert "recommended" not in m["runtime_hints"]          # nothing measured yet


def test_record_writes_measured_settings_and_the_runtime_uses_them(cnn_out, tmp_path):
    import shutil

    import pocketml.runtime as rt
    root = tmp_path / "arts"
    shutil.copytree(cnn_out / "reference", root / "reference")
    shutil.copytree(cnn_out / "tflite-fp32", root / "tflite-fp32")
    model_bytes = (root / "tflite-fp32" / "model.tflite").read_bytes()
    for threads in ("1", "2"):
        r = run_cli("profile", root, "--threads", threads, "--runs", "5", "--warmup", "1", "--record", "-o", tmp_path)
        assert r.exit_code == 0 and "recorded the measured settings in 1 manifest(s)" in r.output, r.output
    hints = json.loads((root / "tflite-fp32" / "manifest.json").read_text())["runtime_hints"]
    measured = hints["measured"]
    assert set(measured) == {"1", "2"}
    assert [measured[k]["num_threads"] for k in ("1", "2")] == [1, 2]
    assert all(m["delegate"].startswith("XNNPACK") and m["runs"] == 5 and m["verdict"] == "PASS"
               and m["latency_ms"]["p50"] > 0 and m["host"].startswith("measured (host: ") for m in measured.values())
    fastest = min(measured.values(), key=lambda m: m["latency_ms"]["p50"])
    assert hints["recommended"]["num_threads"] == fastest["num_threads"]
    assert "(1, 2)" in hints["recommended"]["basis"]
    assert (root / "tflite-fp32" / "model.tflite").read_bytes() == model_bytes     # model untouched
    assert rt.load(root / "tflite-fp32").threads == fastest["num_threads"]        # checksums still verify
    assert rt.load(root / "tflite-fp32", threads=1).threads == 1
    assert_no_partial(root)


def test_recommendation_ignores_other_hosts():
    from pocketml.profiler.record import recommend
    entry = lambda n, p50, cpu: {"num_threads": n, "latency_ms": {"p50": p50}, "cpu": cpu}  # noqa: E731
    measured = {"1": entry(1, 9.0, "Pixel 7"), "2": entry(2, 6.0, "AMD EPYC"), "4": entry(4, 5.0, "AMD EPYC")}
    rec = recommend(measured, "Pixel 7")
    assert rec["num_threads"] == 1 and rec["basis"].endswith("(1) on host Pixel 7")
    assert recommend(measured, "AMD EPYC")["num_threads"] == 4


def test_record_drops_malformed_earlier_entries(cnn_out, tmp_path):
    import shutil
    root = tmp_path / "arts"
    shutil.copytree(cnn_out / "reference", root / "reference")
    shutil.copytree(cnn_out / "onnx-fp32", root / "onnx-fp32")
    mf = root / "onnx-fp32" / "manifest.json"
    m = json.loads(mf.read_text())
    m["runtime_hints"]["measured"] = {"8": {"num_threads": 8, "latency_ms": "fast"}, "3": [1]}
    mf.write_text(json.dumps(m))
    r = run_cli("profile", root, "--runs", "3", "--warmup", "0", "--record", "-o", tmp_path)
    assert r.exit_code == 0, r.output
    hints = json.loads(mf.read_text())["runtime_hints"]
    assert set(hints["measured"]) == {"1"} and hints["recommended"]["num_threads"] == 1


@pytest.mark.parametrize("value, threads", [(2, 2), (0, 1), (10**6, 1), ("4", 1), (True, 1), (None, 1)])
def test_recommended_threads_from_the_manifest_are_checked(value, threads):
    from pocketml.runtime.manifest import Manifest
    from pocketml.runtime.session import recommended_threads
    m = Manifest(name="m", format="tflite", precision="fp32", model_file="model.tflite", inputs=[], outputs=[],
                 task="generic", metric="max-abs", runtime_hints={"recommended": {"num_threads": value}})
    assert recommended_threads(m) == threads
