"""Estimator error band: per precision from LOO + hold-out residuals, honest hold-out coverage,
uncalibrated op categories flagged and widened, and a clear CLI error for a missing CPU fact."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from pocketml.profiler import devices  # noqa: E402
from pocketml.profiler.estimate import estimate  # noqa: E402
from pocketml.profiler.estimate.band import uncalibrated_categories  # noqa: E402
from pocketml.profiler.estimate.fit import FITTED, band_of, precision_band  # noqa: E402


def _fitted() -> dict:
    return json.loads(Path(FITTED).read_text())


def _ratios(rows, role, precision):
    return np.array([r["latency_ms"] / r["estimate_ms"] for r in rows
                     if r["role"] == role and r["precision"] == precision])


def _onnx(tmp_path, name, nodes, x_shape, y_shape, inits):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    path = tmp_path / name
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.fixture
def big_conv(tmp_path):
    w = np.random.rand(64, 64, 3, 3).astype(np.float32)
    return _onnx(tmp_path, "conv.onnx", [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])],
                 [1, 64, 56, 56], [1, 64, 56, 56], {"w": w})


@pytest.fixture
def ffn(tmp_path):
    """A transformer feed-forward block: 128 tokens x (384 -> 1536 -> 384) MatMuls with constant weights."""
    w1, w2 = (np.random.rand(384, 1536).astype(np.float32), np.random.rand(1536, 384).astype(np.float32))
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["g"]),
             helper.make_node("MatMul", ["g", "w2"], ["y"])]
    return _onnx(tmp_path, "ffn.onnx", nodes, [1, 128, 384], [1, 128, 384], {"w1": w1, "w2": w2})


# ---------- the band recorded by the fit ----------
def test_band_is_union_of_loo_and_holdout_per_precision():
    v = _fitted()["validation"]
    for p in ("fp32", "int8"):
        loo, hold = _ratios(v["rows"], "fit", p), _ratios(v["rows"], "holdout", p)
        assert len(loo) >= 10 and len(hold) >= 10
        rec = v["band"][p]
        lo, hi = band_of([loo, hold])
        # rows are rounded to 0.01 ms in fitted.json: recomputed factors agree to ~1 %
        assert rec["ratio_low"] == pytest.approx(lo, rel=0.01) and rec["ratio_high"] == pytest.approx(hi, rel=0.01)
        assert set(rec) == set(precision_band(loo, hold))
        assert rec["n_fit_loo"] == len(loo) and rec["n_holdout"] == len(hold)
        assert rec["holdout_ratio_range"] == pytest.approx([hold.min(), hold.max()], rel=0.01)
        assert rec["ratio_low"] < 1 < rec["ratio_high"]
        # the hold-out rows are above the centre: the band's upper side comes from them
        assert rec["median_ratio_holdout"] > 1.1 and rec["ratio_high"] >= np.quantile(loo, 0.9)
    fp32, int8 = v["band"]["fp32"], v["band"]["int8"]
    assert int8["ratio_high"] > fp32["ratio_high"] + 0.3            # int8 (SDOT-era runtimes) is wider
    assert v["band"]["fp16"]["ratio_high"] == fp32["ratio_high"]


def test_holdout_coverage_is_leave_one_out():
    v = _fitted()["validation"]
    for p in ("fp32", "int8"):
        loo, hold = _ratios(v["rows"], "fit", p), _ratios(v["rows"], "holdout", p)
        inside = [band_of([loo, np.delete(hold, i)])[0] <= r <= band_of([loo, np.delete(hold, i)])[1]
                  for i, r in enumerate(hold)]
        assert v["band"][p]["holdout_coverage"] == pytest.approx(np.mean(inside), abs=1 / len(hold))
        assert 0.7 <= v["band"][p]["holdout_coverage"] < 1.0        # honest: not every row is covered


# ---------- bands on estimates ----------
def test_cnn_band_is_the_calibrated_one(big_conv):
    fitted = _fitted()
    r = estimate(big_conv, devices.load("pixel-4"), 1)
    fp32 = fitted["validation"]["band"]["fp32"]
    assert r["uncalibrated_categories"] == {} and r["band"]["uncalibrated_share"] == 0
    assert r["low_ms"] == pytest.approx(r["latency_ms"] * fp32["ratio_low"], rel=1e-3)
    assert r["high_ms"] == pytest.approx(r["latency_ms"] * fp32["ratio_high"], rel=1e-3)
    assert r["method"] == f"estimated (pixel-4, ±{round(100 * (fp32['ratio_high'] - 1))} %)"
    assert r["band"]["holdout_coverage"] == {"fp32": fp32["holdout_coverage"]}


def test_matmul_model_is_flagged_uncalibrated(ffn):
    fitted = _fitted()
    assert {"fc", "attention"} <= uncalibrated_categories(fitted)
    assert {"conv1x1", "depthwise"}.isdisjoint(uncalibrated_categories(fitted))
    r = estimate(ffn, devices.load("pixel-4"), 1)
    share = r["uncalibrated_categories"]["fc"]
    assert share > 0.8 and r["band"]["uncalibrated_share"] >= share
    s, fp32 = r["band"]["uncalibrated_share"], fitted["validation"]["band"]["fp32"]
    assert r["low_ms"] == pytest.approx(r["latency_ms"] * fp32["ratio_low"] * 0.5 ** s, rel=1e-3)
    assert r["high_ms"] == pytest.approx(r["latency_ms"] * fp32["ratio_high"] * 2.0 ** s, rel=1e-3)
    assert r["method"].startswith("estimated (pixel-4, ±") and r["method"].endswith(", uncalibrated op mix)")
    assert any(n.startswith("uncalibrated op categories: fc ") for n in r["notes"])


# ---------- CLI: a profile missing a CPU fact ----------
def _artifact(tmp_path, model_path):
    from pocketml.runtime.manifest import Manifest, TensorSpec, sha256_file
    art = tmp_path / "art"
    art.mkdir()
    (art / "model.onnx").write_bytes(Path(model_path).read_bytes())
    m = Manifest(name="conv", format="onnx", precision="fp32", model_file="model.onnx",
                 inputs=[TensorSpec("x", [1, 64, 56, 56], "float32", "NCHW")],
                 outputs=[TensorSpec("y", [1, 64, 56, 56], "float32", "NCHW")], task="image-classification",
                 metric="top1_agreement", checksums={"model.onnx": sha256_file(art / "model.onnx")})
    (art / "manifest.json").write_text(m.to_json())
    return art


@pytest.mark.parametrize("drop, field", [("l2_kb", "cpu.clusters[1].l2_kb"),
                                         ("fp32_fma_per_cycle", "cpu.clusters[1].fp32_fma_per_cycle"),
                                         ("system_cache_kb", "cpu.system_cache_kb")])
def test_cli_names_the_missing_cpu_field(tmp_path, big_conv, drop, field):
    from conftest import run_cli
    text = (devices.profiles_dir() / "pixel-7.toml").read_text()
    hits = [m.start() for m in re.finditer(rf"(?m)^{drop} = .*\n", text)]
    at = hits[1] if len(hits) > 1 else hits[0]                     # the second cluster where there is one
    line = re.match(r".*\n", text[at:]).group(0)
    prof = tmp_path / "broken.toml"
    prof.write_text(text[:at] + text[at + len(line):])
    art = _artifact(tmp_path, big_conv)
    ok = run_cli("estimate", art, "--device", devices.profiles_dir() / "pixel-7.toml")
    assert ok.exit_code == 0, ok.output
    r = run_cli("estimate", art, "--device", prof)
    assert r.exit_code == 2, r.output
    assert f"'{field}'" in r.output
