"""`pocketml profile` on language-model artifacts: a tiny random-weight LLaMA converted with the CLI, then
profiled in the sandboxed child (TTFT, prefill / decode tokens/s, depth, memory, KV bytes, quality against
reference/), judged against LM targets (exit 6 naming the check), a prompt beyond the context (exit 2), the
LM report table, the unit parsers and the device profiles' optional LM targets."""
from __future__ import annotations

import json

import pytest
from conftest import run_cli

pytest.importorskip("torch")
pytest.importorskip("transformers")

from test_llm_sources import bytelevel_tokenizer, save_dir, tiny_llama  # noqa: E402

from pocketml.profiler import devices  # noqa: E402
from pocketml.profiler.lm_child import depths, prompt_of  # noqa: E402
from pocketml.runtime import formats  # noqa: E402
from pocketml.runtime.errors import UsageError  # noqa: E402

SHORT = ("--prompt-tokens", "16", "--gen-tokens", "16")
CONTEXT = 256          # tiny_llama's max_position_embeddings


def convert(tmp_path_factory, fmt: str):
    tok = bytelevel_tokenizer()
    src = save_dir(tiny_llama(tok.get_vocab_size()), tok, tmp_path_factory.mktemp("tiny-llama"))
    out = tmp_path_factory.mktemp(f"lm-{fmt}") / "out"
    r = run_cli("convert", src, "--task", "text-generation", "--to", fmt, "--precision", "fp32,int8", "-o", out)
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture(scope="module")
def lm_out(tmp_path_factory):
    return convert(tmp_path_factory, "onnx")


def rows_of(report_dir):
    report = json.loads((report_dir / "report.json").read_text())
    return report, {f"{r['format']}-{r['precision']}": r for r in report["artifacts"]}


def check_row(row, manifest_dir, exact: bool):
    assert row["status"] == "measured" and row["kind"] == "language-model", row
    assert row["measured"].startswith("measured (host: ") and "1 thread" in row["measured"]
    assert row["lengths"] == {"prompt_tokens": 16, "gen_tokens": 16, "context": 1024}
    assert row["context_length"] == CONTEXT and row["parameters"] > 0 and row["size_mb"] > 0
    assert row["load_ms"] > 0 and row["ttft_ms"] > 0 and row["ttft_cold_ms"] > 0 and len(row["ttft_runs_ms"]) == 3
    assert row["prefill_tokens_per_s"] > 0
    d = row["decode"]
    assert d["tokens"] == 16 and d["tokens_per_s"] > 0 and d["latency_ms"]["runs"] == 16
    assert 0 < d["latency_ms"]["p50"] <= d["latency_ms"]["p90"] <= d["latency_ms"]["p99"]
    assert [x["depth_tokens"] for x in row["depths"]] == [1, CONTEXT - 16]      # capped by the context
    assert all(x["tokens_per_s"] > 0 and x["decode_tokens"] == 16 for x in row["depths"])
    assert row["memory_context_tokens"] == CONTEXT and row["peak_rss_added_mb"] > 0
    hints = json.loads((manifest_dir / "manifest.json").read_text())["runtime_hints"]["generation"]
    assert row["kv_bytes_per_token"] == hints["kv_bytes_per_token"] > 0
    assert row["kv_cache_mb_at_context"] == pytest.approx(row["kv_bytes_per_token"] * CONTEXT / 1e6)
    a = row["accuracy"]
    assert a["samples"] >= 1 and a["positions"] == a["samples"] * a["tokens_per_sample"] and a["nan_count"] == 0
    if exact:                                       # fp32: the artifact is the reference
        assert abs(a["perplexity_change"]) < 1e-4 and a["top1_agreement"] == 1.0
    else:
        assert abs(a["perplexity_change"]) < 0.05 and a["top1_agreement"] > 0.8
    assert row["accuracy_reference"].startswith("the fp32 reference (fp32 (the directory's safetensors weights), "
                                                "from reference/manifest.json) on evaluation half of")
    names = [c["name"] for c in row["verdict"]["checks"]]
    assert names[:4] == ["decode tokens/s", "TTFT (ms)", "memory (MB)", "perplexity increase"]
    assert row["verdict"]["result"] == "PASS"


def test_profile_lm_directory(lm_out, tmp_path):
    r = run_cli("profile", lm_out, *SHORT, "-o", tmp_path)
    assert r.exit_code == 0, r.output
    report, rows = rows_of(tmp_path)
    assert set(rows) == {"onnx-fp32", "onnx-int8"} and report["overall"] == "PASS"
    check_row(rows["onnx-fp32"], lm_out / "onnx-fp32", exact=True)
    check_row(rows["onnx-int8"], lm_out / "onnx-int8", exact=False)
    assert report["settings"]["lm"]["prompt_tokens"] == 16 and "greedy, EOS ignored" in report["settings"]["lm"]["label"]
    t = report["targets"]
    assert t["lm_source"] == "pocketml defaults" and t["min_decode_tokens_per_s"] == 20.0
    assert t["max_perplexity_increase"] == 0.05 and t["ttft_prompt_tokens"] == 128
    md, name = (tmp_path / "report.md").read_text(), rows["onnx-int8"]["name"]
    assert "## Language models" in md and f"| {name} onnx-int8 | 37.8 k |" in md and "decode tok/s" in md
    assert "Quality against the fp32 reference (" in md and "tokens cached" in md
    assert "language models — overall PASS" in r.output and f"Decode at depth, {name} onnx-fp32" in r.output
    assert "host p50 ms" not in r.output                # no (empty) tensor-model table


def test_lm_budget_miss_is_exit_6_naming_the_check(lm_out, tmp_path):
    r = run_cli("profile", lm_out / "onnx-int8", *SHORT, "--min-decode", "1e9tok/s", "--max-ttft", "1s",
                "--max-memory", "1GB", "--max-drop", "50%", "-o", tmp_path)
    assert r.exit_code == 6, r.output
    report, rows = rows_of(tmp_path)
    assert f"FAIL {rows['onnx-int8']['name']} onnx-int8: decode tokens/s" in r.output and "< 1e+09" in r.output
    checks = {c["name"]: c for c in rows["onnx-int8"]["verdict"]["checks"]}
    assert checks["decode tokens/s"]["pass"] is False and checks["decode tokens/s"]["op"] == ">="
    assert checks["TTFT (ms)"]["limit"] == 1000.0 and checks["memory (MB)"]["limit"] == 1000.0
    assert checks["perplexity increase"]["limit"] == 0.5 and checks["perplexity increase"]["pass"] is True
    assert report["targets"]["lm_source"] == "pocketml defaults with command-line overrides"
    assert report["overall"] == "FAIL"


def test_lm_with_a_device_is_judged_on_the_phone_estimate(lm_out, tmp_path):
    """The LM estimate's band judges decode / TTFT / memory (tests/test_lm_estimate.py covers the estimate);
    the memory budget is raised so the verdict is a settled PASS."""
    r = run_cli("profile", lm_out / "onnx-fp32", *SHORT, "--device", "pixel-7", "--max-memory", "4GB",
                "-o", tmp_path)
    assert r.exit_code == 0, r.output
    report, rows = rows_of(tmp_path)
    row = rows["onnx-fp32"]
    assert row["estimate"]["kind"] == "language-model" and row["estimate"]["device"] == "pixel-7"
    decode = row["verdict"]["checks"][0]
    assert decode["basis"].startswith("estimated (bandwidth model, fitted on ") and decode["low"] >= 20.0
    assert "Host measurement beside the phone estimate" in (tmp_path / "report.md").read_text()
    assert report["targets"]["lm_source"] == "device profile pixel-7 with command-line overrides"
    assert report["targets"]["max_lm_memory_mb"] == 4000.0 and report["targets"]["max_size_mb"] == 50.0
    assert not any(c["name"] == "size (MB)" for c in row["verdict"]["checks"])   # the tensor-model size budget


def test_tensor_and_language_models_in_one_report(cnn_out, lm_out, tmp_path, monkeypatch):
    """Two tables; a crashed language-model child is that row's error (exit 4), the others still measured."""
    monkeypatch.setenv("POCKETML_TEST_CHILD_FAULT", "segv:onnx-int8")
    r = run_cli("profile", cnn_out / "onnx-fp32", lm_out, *SHORT, "--runs", "2", "--warmup", "0", "-o", tmp_path)
    assert r.exit_code == 4, r.output
    report, _ = rows_of(tmp_path)
    status = {(r.get("kind", "tensor"), r["precision"]): r["status"] for r in report["artifacts"]}
    assert status == {("tensor", "fp32"): "measured", ("language-model", "fp32"): "measured",
                      ("language-model", "int8"): "error"}
    md = (tmp_path / "report.md").read_text()
    assert "host p50 ms" in md and "## Language models" in md and "Accuracy reference:" in md
    assert "crashed with SIGSEGV" in r.output


@pytest.mark.parametrize("args, words", [
    (["--prompt-tokens", "300"], ["prompt of 300 tokens", "context of 256 tokens"]),
    (["--prompt-tokens", "200", "--gen-tokens", "100"], ["200-token prompt plus 100 generated", "300 tokens",
                                                         "context of 256 tokens"]),
])
def test_prompt_longer_than_the_context_is_exit_2(lm_out, tmp_path, args, words):
    r = run_cli("profile", lm_out, *args, "-o", tmp_path)
    assert r.exit_code == 2, r.output
    assert all(w in r.output for w in words), r.output
    assert not (tmp_path / "report.json").exists()


@pytest.mark.parametrize("args, text", [
    (["--min-decode", "fast"], "expected tokens per second"),
    (["--max-ttft", "-1s"], "expected milliseconds"),
    (["--max-memory", "lots"], "expected megabytes"),
    (["--gen-tokens", "0"], "--gen-tokens 0: an integer ≥ 1"),
])
def test_bad_lm_options(lm_out, tmp_path, args, text):
    r = run_cli("profile", lm_out, *args, "-o", tmp_path)
    assert r.exit_code == 2 and text in r.output, r.output


def test_lm_with_data_is_refused(lm_out, tmp_path):
    r = run_cli("profile", lm_out / "onnx-fp32", "--data", tmp_path, *SHORT, "-o", tmp_path)
    assert r.exit_code == 2 and "--data is for tensor models" in r.output, r.output


def test_unit_parsers():
    from pocketml.cli.common import megabytes, ms, tokens_per_s
    assert tokens_per_s("15tok/s") == 15.0 and tokens_per_s("1e9 tok/s") == 1e9 and tokens_per_s("7") == 7.0
    assert ms("1s") == 1000.0 and ms("800ms") == 800.0 and ms("250") == 250.0
    assert megabytes("400MB") == 400.0 and megabytes("1.5GB") == 1500.0 and megabytes("64") == 64.0


def test_depths_and_prompt():
    assert depths(1024, 2048, 32) == [1, 512, 1024]
    assert depths(1024, 1024, 32) == [1, 512, 992]
    assert depths(1024, 256, 16) == [1, 240]
    assert depths(1024, 8, 16) == [1]
    import numpy as np
    assert prompt_of(np.arange(6).reshape(2, 3), 8).tolist() == [0, 1, 2, 3, 4, 5, 0, 1]


def test_device_profiles_lm_targets():
    p = devices.load("pixel-7")["targets"]
    assert (p["min_decode_tokens_per_s"], p["max_ttft_ms"], p["ttft_prompt_tokens"]) == (20.0, 1000.0, 128)
    assert (p["max_lm_memory_mb"], p["lm_context_tokens"], p["max_perplexity_increase"]) == (400.0, 1024, 0.05)
    assert "min_decode_tokens_per_s" not in devices.load("pixel-3")["targets"]      # optional
    bad = devices.load("pixel-7")
    bad["targets"]["lm_context_tokens"] = 10.5
    with pytest.raises(UsageError, match="targets.lm_context_tokens"):
        devices.check(bad, "bad.toml")
    bad["targets"].update(lm_context_tokens=1024, min_decode_tokens_per_s=float("nan"))
    with pytest.raises(UsageError, match="targets.min_decode_tokens_per_s"):
        devices.check(bad, "bad.toml")


@pytest.mark.skipif(formats.get("tflite").lm_exporter is None, reason="TFLite language-model export not wired yet")
def test_profile_tflite_lm(tmp_path_factory, tmp_path):
    out = convert(tmp_path_factory, "tflite")
    r = run_cli("profile", out, *SHORT, "-o", tmp_path)
    assert r.exit_code == 0, r.output
    _, rows = rows_of(tmp_path)
    assert rows["tflite-fp32"]["backend"] == "litert" and rows["tflite-fp32"]["decode"]["tokens_per_s"] > 0
    assert rows["tflite-fp32"]["accuracy"]["top1_agreement"] > 0.99
