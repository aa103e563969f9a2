"""`pocketml profile --record` on a language model: TTFT, decode tokens/s and memory per thread count in the
manifest, and the recommended thread count (highest decode tokens/s) that `runtime.load` then uses."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from conftest import run_cli  # noqa: E402
from test_lm_profile import SHORT, convert  # noqa: E402

import pocketml.runtime as rt  # noqa: E402


def test_record_writes_lm_speed_and_the_recommendation(tmp_path_factory, tmp_path):
    out = convert(tmp_path_factory, "onnx")
    art = out / "onnx-int8"
    for threads in ("1", "2"):
        r = run_cli("profile", art, *SHORT, "--threads", threads, "--record", "-o", tmp_path / threads)
        assert r.exit_code == 0, r.output
    hints = json.loads((art / "manifest.json").read_text())["runtime_hints"]
    measured = hints["measured"]
    assert set(measured) == {"1", "2"}
    for n, m in measured.items():
        assert m["num_threads"] == int(n) and m["decode_tokens_per_s"] > 0 and m["ttft_ms"] > 0
        assert m["lengths"]["prompt_tokens"] == 16 and m["verdict"] == "PASS" and "latency_ms" not in m
    best = max(measured.values(), key=lambda m: m["decode_tokens_per_s"])
    rec = hints["recommended"]
    assert rec["num_threads"] == best["num_threads"] and "highest decode tokens/s" in rec["basis"]
    lm = rt.load(art)                                # checksums still verify; the recommendation is used
    try:
        assert lm.threads == best["num_threads"]
    finally:
        lm.close()
