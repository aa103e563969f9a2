"""The issue-4 zoo (random-weight rebuilds, costed by benchmarks/estimate_zoo.py into
data/zoo_costs.json.gz): MAC counts, estimates on every profile, and ranking vs published latencies."""
from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from pocketml.profiler import devices
from pocketml.profiler.estimate import _fitted
from pocketml.profiler.estimate.band import band, time_shares
from pocketml.profiler.estimate.device_model import PRECISIONS, device_terms, fixed_time, op_times
from pocketml.profiler.estimate.fit import DATA, load_rows, spearman
from pocketml.profiler.estimate.graph_cost import CATEGORIES

ZOO = ("mobilenet_v1_1.0_224", "mobilenet_v2_1.0_224", "mobilenet_v3_large_1.0_224", "mobilenet_v3_small_1.0_224",
       *(f"efficientnet_lite{n}" for n in range(5)), "resnet18", "resnet50", "mobilebert", "minilm_l6")


@pytest.fixture(scope="module")
def tables():
    with gzip.open(DATA / "zoo_costs.json.gz", "rt", encoding="utf-8") as fh:
        return json.load(fh)


def _arr(table):
    ops = np.array(table["ops"], dtype=float)
    return {"cat": ops[:, 0].astype(int), "prec": ops[:, 1].astype(int), "macs": ops[:, 2],
            "flops": ops[:, 3], "bytes": ops[:, 4]}


def _estimate(table, device, threads, runtime="xnnpack"):
    """(ms, low, high, band) the way `estimate` computes them, from a compact cost table."""
    fitted, arr = _fitted(), _arr(table)
    dev = device_terms(devices.load(device), threads)
    t = op_times(arr, dev, fitted["params"], runtime)
    b = band(fitted, *time_shares(arr["cat"], arr["prec"], t, fixed_time(dev, fitted["params"])))
    ms = float(t.sum() * 1e3)
    return ms, ms * b["ratio_low"], ms * b["ratio_high"], b


def _macs(table, category):
    return sum(op[2] for op in table["ops"] if CATEGORIES[int(op[0])] == category)


def test_zoo_is_complete_and_mac_counts(tables):
    assert set(ZOO) <= set(tables)
    # MiniLM-L6, 128 tokens, hidden 384, FFN 1536, 6 layers: Q/K/V/out 4*128*384*384, FFN 2*128*384*1536,
    # Q.K^T and P.V 2*128*128*384 per layer
    assert _macs(tables["minilm_l6"], "fc") == 6 * (4 * 128 * 384 * 384 + 2 * 128 * 384 * 1536)
    assert _macs(tables["minilm_l6"], "attention") == 6 * 2 * 128 * 128 * 384
    # torchvision's published counts: ResNet-18 1.82 GMACs, ResNet-50 4.09 GMACs (classifier 1000)
    assert tables["resnet18"]["macs"] == pytest.approx(1.82e9, rel=0.01)
    assert tables["resnet50"]["macs"] == pytest.approx(4.09e9, rel=0.01)
    # MobileBERT (24 layers, 128 tokens): 4 heads of 32 on a 128-wide bottleneck -> 2*128*128*128 per layer
    assert _macs(tables["mobilebert"], "attention") == 24 * 2 * 128 * 128 * 128
    assert all(PRECISIONS[int(op[1])] == "fp32" for t in tables.values() for op in t["ops"])


@pytest.mark.parametrize("device", devices.available())
def test_every_profile_estimates_the_zoo_in_a_sane_order(tables, device):
    ms = {n: _estimate(tables[n], device, 4)[0] for n in ZOO}
    assert all(v > 0 for v in ms.values())
    lite = [ms[f"efficientnet_lite{n}"] for n in range(5)]
    assert lite == sorted(lite) and ms["resnet18"] < ms["resnet50"]
    assert ms["mobilenet_v3_small_1.0_224"] == min(ms.values())


def test_pixel4_ranking_vs_published(tables):
    """Pixel 4, 4 threads, fp32: every published row of a zoo model (never fitted)."""
    pub = {r["model"]: r["latency_ms"] for r in load_rows() if (r["device"], r["threads"], r["precision"]) ==
           ("pixel-4", 4, "fp32") and r["model"] in ZOO}
    assert set(pub) == {"mobilenet_v1_1.0_224", "mobilebert", *(f"efficientnet_lite{n}" for n in range(5))}
    names = sorted(pub)
    est = {n: _estimate(tables[n], "pixel-4", 4, "tflite-2020")[0] for n in names}
    rho = spearman([pub[n] for n in names], [est[n] for n in names])
    assert rho == pytest.approx(1 - 6 * 2 / (7 * 48))              # exactly one adjacent pair swapped:
    discordant = {(a, b) for a in names for b in names if pub[a] < pub[b] and est[a] > est[b]}
    assert discordant == {("mobilebert", "efficientnet_lite4")}    # the uncalibrated transformer


def test_transformers_flagged_and_mobilebert_inside_widened_band(tables):
    for n in ZOO:
        share = _estimate(tables[n], "pixel-4", 4)[3]["uncalibrated_share"]
        # CNNs: a few % in reshape copies / SE pooling / classifier fc, far below the 20 % flag
        assert (share > 0.8) if n in ("mobilebert", "minilm_l6") else (share < 0.1), (n, share)
    ms, low, high, b = _estimate(tables["mobilebert"], "pixel-4", 4, "tflite-2020")
    assert ms == pytest.approx(103.4, rel=0.02)                    # published: 62 ms (MobileBERT paper)
    assert low < 62.0 < high and high / low > 4
    assert ms * _fitted()["validation"]["band"]["fp32"]["ratio_low"] > 62.0   # the calibrated band would miss
