"""The language-model phone estimate (profiler/estimate/lm_model.py, lm_estimate.py, lm_fit.py): the model's
physics, the band as the fit recorded it, the refit command, the calibration rows and their sources (the
reserved validation sources absent), `pocketml estimate` on a tiny LLaMA converted to ONNX (JSON, verdicts per
device, UNCERTAIN when a band crosses), and the real SmolLM2 artifacts in a slow test."""
from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

from pocketml.profiler import devices
from pocketml.profiler.estimate import lm_fit, lm_model
from pocketml.profiler.estimate.lm_estimate import estimate_workload
from pocketml.profiler.estimate.lm_model import Workload, central, decode_s, fitted, prefill_s
from pocketml.profiler.lm import band_check, estimate_verdict, targets

PARAMS = fitted()["params"]
PIXEL7 = devices.load("pixel-7")
LEN = {"prompt": 128, "gen": 128, "context": 1024}
# Reserved for independent validation (docs/ESTIMATE.md): never a calibration row.
RESERVED = ("litert-community", "LiteRT-LM", "litert-lm", "aihub.qualcomm", "qualcomm/ai-hub", "ai-hub-models",
            "arm-community", "huggingface.co/Arm", "cactus", "nyunai", "edge-llm-leaderboard", "edge_llm")


def workload(bits: float, params: float = 1.0e9, layers: int = 16) -> Workload:
    emb = 128256 * 2048
    return Workload(name=f"w{bits}", params=params, body_params=params - emb, head_params=emb,
                    resident_bytes=params * bits / 8, read_bytes=params * bits / 8, kv_bytes_per_token=32768,
                    wclass=lm_model.weight_class(bits), compute="int8" if bits < 16 else "fp32", vocab=128256,
                    layers=layers, context_length=4096)


def with_bandwidth(profile: dict, gbps: float) -> dict:
    return {**profile, "memory": {**profile["memory"], "bandwidth_gbps": gbps}}


# ---------------------------------------------------------------- physics


@pytest.mark.parametrize("runtime", ["xnnpack", "llama.cpp", None])
def test_fewer_bits_decode_faster_at_the_same_bandwidth(runtime):
    speeds = [1 / decode_s(workload(b), PIXEL7, PARAMS, runtime, 256) for b in (4.5, 8.5, 16.0)]
    assert speeds[0] > speeds[1] > speeds[2]


def test_decode_slows_with_depth_by_the_kv_bytes():
    w = workload(4.5)
    t = [decode_s(w, PIXEL7, PARAMS, "xnnpack", d) for d in (0, 512, 1024, 4096)]
    assert t == sorted(t) and len(set(t)) == 4
    eff = PARAMS["dec_eff"]["q4"]
    assert t[2] - t[1] == pytest.approx(512 * w.kv_bytes_per_token / (51.2e9 * eff))
    c = central(w, PIXEL7, PARAMS, "xnnpack", prompt=128, gen=128, context=1024, threads=4)
    assert c["decode_tokens_per_s_depth0"] > c["decode_tokens_per_s"] > c["decode_tokens_per_s_at_context"]


def test_more_bandwidth_decodes_faster_and_leaves_prefill():
    w = workload(4.5)
    slow, fast = with_bandwidth(PIXEL7, 25.6), with_bandwidth(PIXEL7, 102.4)
    assert decode_s(w, fast, PARAMS, "xnnpack", 128) < decode_s(w, PIXEL7, PARAMS, "xnnpack", 128) \
        < decode_s(w, slow, PARAMS, "xnnpack", 128)
    assert prefill_s(w, fast, PARAMS, "xnnpack", 128, 4) == prefill_s(w, slow, PARAMS, "xnnpack", 128, 4)
    assert prefill_s(w, PIXEL7, PARAMS, "xnnpack", 128, 4) < prefill_s(w, PIXEL7, PARAMS, "xnnpack", 128, 1)


def test_memory_is_weights_plus_kv_at_context_plus_overhead():
    w = workload(4.5)
    m = [central(w, PIXEL7, PARAMS, "xnnpack", prompt=128, gen=128, context=c, threads=4,
                 mem_runtime="xnnpack")["memory_mb"] for c in (1024, 2048)]
    assert m[1] - m[0] == pytest.approx(1024 * w.kv_bytes_per_token / 1e6)
    assert m[0] == pytest.approx((w.resident_bytes + 1024 * w.kv_bytes_per_token + w.vocab * 4) / 1e6
                                 + PARAMS["mem_overhead_mb"]["xnnpack"])


# ---------------------------------------------------------------- fit, band, rows

def test_band_is_what_the_fit_recorded():
    fit = fitted()
    rows = fit["validation"]["rows"]
    for metric, b in fit["validation"]["band"].items():
        pool = [r["ratio"] for r in rows if r["metric"] == metric and r["role"] in ("fit", "holdout")]
        assert b["rows"] == len(pool)
        assert b["ratio_low"] == pytest.approx(np.percentile(pool, 10), abs=1e-4)
        assert b["ratio_high"] == pytest.approx(np.percentile(pool, 90), abs=1e-4)
        inside = np.mean([b["ratio_low"] <= x <= b["ratio_high"] for x in pool])
        assert b["in_sample_coverage"] == pytest.approx(inside, abs=1e-3) and 0.7 <= inside <= 0.9
    # an estimate on a calibrated runtime is its value times those factors
    e = estimate_workload(workload(4.5), "tflite", PIXEL7, **LEN)
    d, b = e["decode_tokens_per_s"], fit["validation"]["band"]["decode_tok_s"]
    assert d["low"] == pytest.approx(d["value"] * b["ratio_low"], rel=1e-3)
    assert d["high"] == pytest.approx(d["value"] * b["ratio_high"], rel=1e-3)
    t, p = e["ttft_ms"], fit["validation"]["band"]["prefill_tok_s"]      # TTFT: the prefill band inverted
    assert t["low"] == pytest.approx(t["value"] / p["ratio_high"], rel=1e-3)
    assert re.fullmatch(r"estimated \(bandwidth model, fitted on \d+ rows from \d+ sources, leave-one-source-out "
                        r"median error \d+ %\)", d["method"])


def test_refit_reproduces_the_committed_fit(tmp_path):
    res = lm_fit.run(tmp_path / "lm_fitted.json")
    for table, values in fitted()["params"].items():
        for key, v in values.items():
            assert res["params"][table][key] == pytest.approx(v, rel=1e-4), (table, key)
    assert res["validation"]["band"] == fitted()["validation"]["band"]


def test_calibration_rows_have_sources_and_no_reserved_ones():
    path = Path(lm_fit.ROWS)
    text = path.read_text(encoding="utf-8")
    for word in RESERVED:
        assert word.lower() not in text.lower(), word
    rows = list(csv.DictReader(path.open(encoding="utf-8")))
    used = [r for r in rows if r["role"] in ("fit", "holdout")]
    assert len(used) >= 25 and len({r["source_id"] for r in used}) >= 5
    assert all(re.match(r"https://", r["source_url"]) and r["device"] in devices.available() for r in rows)
    archs = {a["model"] for a in csv.DictReader(Path(lm_fit.ARCHS).open(encoding="utf-8"))}
    assert {r["model"] for r in rows} <= archs


# ---------------------------------------------------------------- the CLI on a tiny LLaMA (ONNX int8)

@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from test_llm_sources import bytelevel_tokenizer, save_dir, tiny_llama
    tok = bytelevel_tokenizer()
    src = save_dir(tiny_llama(tok.get_vocab_size()), tok, tmp_path_factory.mktemp("tiny-llama"))
    out = tmp_path_factory.mktemp("lm-est") / "out"
    r = run_cli("convert", src, "--task", "text-generation", "--to", "onnx", "--precision", "int8", "-o", out)
    assert r.exit_code == 0, r.output
    return out / "onnx-int8"


def test_cli_json_on_a_tiny_lm(tiny_lm):
    r = run_cli("estimate", tiny_lm, "--device", "pixel-7", "--prompt-tokens", "64", "--gen-tokens", "32",
                "--context", "128", "--json")
    assert r.exit_code == 0, r.output
    e = json.loads(r.output)
    assert e["kind"] == "language-model" and e["device"] == "pixel-7" and e["threads"] == 4
    assert e["lengths"] == {"prompt_tokens": 64, "gen_tokens": 32, "context": 128}
    manifest = json.loads((tiny_lm / "manifest.json").read_text())
    assert e["workload"]["kv_bytes_per_token"] == manifest["runtime_hints"]["generation"]["kv_bytes_per_token"]
    assert e["workload"]["weights_mb"] == pytest.approx((tiny_lm / "model.onnx").stat().st_size / 1e6, abs=0.01)
    for k in ("ttft_ms", "prefill_tokens_per_s", "decode_tokens_per_s", "decode_tokens_per_s_depth0",
              "decode_tokens_per_s_at_context", "memory_mb"):
        m = e[k]
        assert 0 < m["low"] <= m["value"] <= m["high"], k
        assert m["method"].startswith("estimated (bandwidth model, fitted on ")
        assert "uncalibrated runtime" in m["method"]
    assert any("onnxruntime-cpu" in n for n in e["notes"])                 # no published ORT LM measurement
    assert e["verdict"]["targets"] == "device profile pixel-7"


def test_device_all_judges_each_device_on_its_own_targets(tiny_lm):
    r = run_cli("estimate", tiny_lm, "--device", "all", "--json")
    assert r.exit_code == 0, r.output
    rows = {e["device"]: e for e in json.loads(r.output)}
    assert list(rows) == devices.available()
    for name, e in rows.items():
        t = targets(devices.load(name), {})
        limits = {c["name"]: c["limit"] for c in e["verdict"]["checks"]}
        assert limits == {"decode tokens/s": t["min_decode_tokens_per_s"], "TTFT (ms)": t["max_ttft_ms"],
                          "memory (MB)": t["max_lm_memory_mb"]}, name
        assert e["lengths"]["prompt_tokens"] == t["ttft_prompt_tokens"]
    assert rows["galaxy-a14-5g"]["verdict"]["checks"][2]["limit"] == 250.0          # a budget phone's own target
    # faster memory -> faster decode, across the shipped profiles
    by_bw = sorted(rows.values(), key=lambda e: e["memory_bandwidth_gbps"])
    assert by_bw[0]["decode_tokens_per_s"]["value"] < by_bw[-1]["decode_tokens_per_s"]["value"]
    table = run_cli("estimate", tiny_lm, "--device", "galaxy-s23")
    assert table.exit_code == 0 and "language models" in table.output and "decode:" in table.output


def test_verdict_uncertain_when_the_band_crosses(tiny_lm):
    e = json.loads(run_cli("estimate", tiny_lm, "--device", "pixel-7", "--json").output)
    mem = e["memory_mb"]
    assert band_check("memory (MB)", mem, (mem["low"] + mem["high"]) / 2, "<=", "")["pass"] is None
    assert band_check("memory (MB)", mem, mem["high"] * 1.01, "<=", "")["pass"] is True
    assert band_check("memory (MB)", mem, mem["low"] * 0.99, "<=", "")["pass"] is False
    dec = e["decode_tokens_per_s"]
    assert band_check("decode tokens/s", dec, (dec["low"] + dec["high"]) / 2, ">=", "")["pass"] is None
    prof = devices.load("pixel-7")
    v = estimate_verdict(e, prof, {"max_lm_memory_mb": (mem["low"] + mem["high"]) / 2,
                                   "min_decode_tokens_per_s": dec["low"] * 0.5, "max_ttft_ms": 1e9})
    assert v["result"] == "UNCERTAIN" and [c["pass"] for c in v["checks"]] == [True, True, None]
    assert estimate_verdict(e, prof, {"max_lm_memory_mb": 1e9, "min_decode_tokens_per_s": dec["low"] * 0.5,
                                      "max_ttft_ms": 1e9})["result"] == "PASS"
    assert estimate_verdict(e, prof, {"max_lm_memory_mb": 1e9, "min_decode_tokens_per_s": dec["high"] * 2,
                                      "max_ttft_ms": 1e9})["result"] == "FAIL"


def test_prompt_beyond_the_context_is_exit_2(tiny_lm):
    r = run_cli("estimate", tiny_lm, "--device", "pixel-7", "--prompt-tokens", "300")
    assert r.exit_code == 2 and "longer than" in r.output and "context of 256 tokens" in r.output, r.output


def test_tampered_artifact_is_refused_exit_4(tiny_lm, tmp_path):
    import shutil
    bad = tmp_path / "onnx-int8"
    shutil.copytree(tiny_lm, bad)
    with open(bad / "model.onnx", "ab") as f:
        f.write(b"\0")
    r = run_cli("estimate", bad, "--device", "pixel-7")
    assert r.exit_code == 4 and "model.onnx" in r.output, r.output


# ---------------------------------------------------------------- the real SmolLM2 (converted by pocketml)

# SmolLM2's artifacts as `make demo` leaves them (or POCKETML_SMOLLM2_ARTIFACTS=DIR)
LLMB = Path(os.environ.get("POCKETML_SMOLLM2_ARTIFACTS", Path(__file__).resolve().parents[1] / "out" / "smollm2"))


@pytest.mark.slow
@pytest.mark.skipif(not (LLMB / "tflite-int4" / "manifest.json").is_file(),
                    reason=f"no SmolLM2 artifacts in {LLMB} (run `make demo`, or set POCKETML_SMOLLM2_ARTIFACTS)")
def test_smollm2_on_pixel7():
    r = run_cli("estimate", LLMB / "tflite-int4", LLMB / "tflite-int8", "--device", "pixel-7", "--json")
    assert r.exit_code == 0, r.output
    int4, int8 = json.loads(r.output)
    assert int4["runtime_class"] == "xnnpack" and int4["workload"]["weight_class"] == "q4"
    assert int4["decode_tokens_per_s"]["value"] > int8["decode_tokens_per_s"]["value"]
    assert int4["workload"]["weights_mb"] == pytest.approx(82.18, abs=0.1)
