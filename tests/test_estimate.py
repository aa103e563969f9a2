"""Phone latency estimator: graph cost (ONNX / TFLite / Core ML), device model, API, data."""
from __future__ import annotations

import copy
import csv
import json
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from pocketml.profiler import devices  # noqa: E402
from pocketml.profiler.estimate import estimate, estimate_all  # noqa: E402
from pocketml.profiler.estimate.device_model import (  # noqa: E402
    device_terms, exec_precision, mac_rate, speedup)
from pocketml.profiler.estimate.fit import COSTS, FITTED, MEASUREMENTS, load_costs, load_rows  # noqa: E402
from pocketml.profiler.estimate.graph_cost import graph_cost  # noqa: E402
from pocketml.runtime.errors import UsageError  # noqa: E402

FIT_SOURCES = ("github.com/google/XNNPACK", "tensorflow.org/lite/performance/benchmarks",
               "tensorflow/models/blob/master/research/slim/nets/mobilenet",
               "tensorflow/tpu/blob/master/models/official/mnasnet")


# ---------- tiny ONNX graphs ----------
def _init(name, arr):
    return numpy_helper.from_array(np.asarray(arr), name)


def _save(tmp_path, nodes, inputs, outputs, inits, name="m.onnx", opset=17):
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset),
                                                    helper.make_opsetid("com.microsoft", 1)])
    path = tmp_path / name
    onnx.save(model, str(path))
    return path


def _vi(name, shape, t=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, t, shape)


def _by(cost, op):
    return [o for o in cost.ops if o.op == op]


@pytest.fixture
def conv_chain(tmp_path):
    """conv3x3 (3->4) + relu, depthwise 3x3 (4), conv1x1 (4->8), global pool, gemm 8->10."""
    w = lambda *s: np.random.rand(*s).astype(np.float32)   # noqa: E731
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1], group=4),
             helper.make_node("Conv", ["c2", "w3"], ["c3"]),
             helper.make_node("GlobalAveragePool", ["c3"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "w4"], ["y"], transB=1)]
    inits = [_init("w1", w(4, 3, 3, 3)), _init("b1", w(4)), _init("w2", w(4, 1, 3, 3)), _init("w3", w(8, 4, 1, 1)),
             _init("w4", w(10, 8))]
    return _save(tmp_path, nodes, [_vi("x", [1, 3, 8, 8])], [_vi("y", [1, 10])], inits)


def test_onnx_conv_macs_and_categories(conv_chain):
    cost = graph_cost(conv_chain)
    convs = _by(cost, "Conv")
    assert [c.macs for c in convs] == [4 * 8 * 8 * 3 * 9, 4 * 8 * 8 * 9, 8 * 8 * 8 * 4]
    assert [c.category for c in convs] == ["convkxk", "depthwise", "conv1x1"]
    assert _by(cost, "Gemm")[0].macs == 80 and _by(cost, "Gemm")[0].category == "fc"
    assert _by(cost, "Relu")[0].fused                         # folded into the conv
    assert _by(cost, "GlobalAveragePool")[0].category == "pooling"
    assert convs[0].weight_bytes == (4 * 3 * 9 + 4) * 4
    assert convs[0].in_bytes == 3 * 64 * 4 and convs[0].out_bytes == 4 * 64 * 4
    assert cost.totals()["macs"] == 6912 + 2304 + 2048 + 80
    assert cost.precision == "fp32"


def test_onnx_attention_matmul_softmax(tmp_path):
    nodes = [helper.make_node("MatMul", ["q", "k"], ["s"]), helper.make_node("Softmax", ["s"], ["p"]),
             helper.make_node("MatMul", ["p", "v"], ["o"])]
    path = _save(tmp_path, nodes, [_vi("q", [1, 2, 4, 8]), _vi("k", [1, 2, 8, 4]), _vi("v", [1, 2, 4, 8])],
                 [_vi("o", [1, 2, 4, 8])], [])
    cost = graph_cost(path)
    mm = _by(cost, "MatMul")
    assert [m.macs for m in mm] == [2 * 4 * 4 * 8, 2 * 4 * 8 * 4]
    assert {o.category for o in cost.ops} == {"attention"}


def test_onnx_qdq_conv_is_int8(tmp_path):
    wq = np.random.randint(-127, 127, (8, 4, 3, 3)).astype(np.int8)
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
             helper.make_node("DequantizeLinear", ["wq", "ws"], ["wd"], axis=0),
             helper.make_node("Conv", ["xd", "wd"], ["y"], pads=[1, 1, 1, 1])]
    inits = [_init("s", np.float32(0.1)), _init("z", np.int8(0)), _init("wq", wq),
             _init("ws", np.full(8, 0.01, np.float32))]
    cost = graph_cost(_save(tmp_path, nodes, [_vi("x", [1, 4, 6, 6])], [_vi("y", [1, 8, 6, 6])], inits))
    conv = _by(cost, "Conv")[0]
    assert conv.macs == 8 * 36 * 4 * 9 and conv.precision == "int8" and not conv.fused
    assert conv.weight_bytes == 8 * 4 * 9 + 8 * 4                     # int8 weights + fp32 scales
    assert conv.in_bytes == 4 * 36                                      # int8 activations
    assert all(o.fused for o in cost.ops if o.op in ("QuantizeLinear", "DequantizeLinear"))
    assert cost.precision == "int8"


def test_onnx_qlinear_and_dynamic_int8(tmp_path):
    f, i8, u8 = np.float32, np.int8, np.uint8
    nodes = [helper.make_node("QLinearConv", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz"], ["y"]),
             helper.make_node("DynamicQuantizeLinear", ["a"], ["aq", "as", "az"]),
             helper.make_node("MatMulInteger", ["aq", "b", "az", "bz"], ["m"])]
    inits = [_init("xs", f(0.1)), _init("xz", u8(0)), _init("w", np.ones((6, 4, 1, 1), u8)), _init("ws", f(0.1)),
             _init("wz", u8(0)), _init("ys", f(0.1)), _init("yz", u8(0)), _init("b", np.ones((16, 12), i8)),
             _init("bz", i8(0))]
    path = _save(tmp_path, nodes, [_vi("x", [1, 4, 5, 5], TensorProto.UINT8), _vi("a", [3, 16])],
                 [_vi("y", [1, 6, 5, 5], TensorProto.UINT8), _vi("m", [3, 12], TensorProto.INT32)], inits)
    cost = graph_cost(path)
    qc, mi = _by(cost, "QLinearConv")[0], _by(cost, "MatMulInteger")[0]
    assert (qc.macs, qc.precision, qc.category) == (6 * 25 * 4, "int8", "conv1x1")
    assert (mi.macs, mi.precision, mi.category) == (3 * 12 * 16, "int8", "fc")
    dq = _by(cost, "DynamicQuantizeLinear")[0]
    assert dq.category == "elementwise" and not dq.fused


def test_onnx_dynamic_dims_pinned_or_noted(tmp_path):
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"])]
    path = _save(tmp_path, nodes, [_vi("x", ["batch", 16])], [_vi("y", ["batch", 4])],
                 [_init("w", np.ones((16, 4), np.float32))])
    cost = graph_cost(path)
    assert _by(cost, "MatMul")[0].macs == 64 and any("dynamic" in n for n in cost.notes)


# ---------- TFLite (litert-torch) and Core ML (coremltools MIL) ----------
@pytest.fixture(scope="module")
def tiny_tflite(tmp_path_factory):
    torch = pytest.importorskip("torch")
    litert_torch = pytest.importorskip("litert_torch")
    from torch import nn

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = nn.Conv2d(3, 8, 3, padding=1)
            self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
            self.pw = nn.Conv2d(8, 16, 1)
            self.fc = nn.Linear(16, 10)

        def forward(self, x):
            y = self.pw(self.dw(torch.relu(self.c1(x))))
            return self.fc(y.mean((2, 3)))

    path = tmp_path_factory.mktemp("tfl") / "tiny.tflite"
    litert_torch.convert(Tiny().eval(), (torch.rand(1, 3, 16, 16),)).export(str(path))
    return path


def test_tflite_macs(tiny_tflite):
    cost = graph_cost(tiny_tflite)
    macs = {}
    for o in cost.live():
        macs[o.category] = macs.get(o.category, 0) + o.macs
    assert macs["convkxk"] == 8 * 256 * 3 * 9
    assert macs["depthwise"] == 8 * 256 * 9
    assert macs["conv1x1"] == 16 * 256 * 8
    assert macs["fc"] == 160
    assert cost.format == "tflite" and cost.precision == "fp32"


@pytest.fixture(scope="module")
def tiny_mlpackage(tmp_path_factory):
    ct = pytest.importorskip("coremltools")
    from coremltools.converters.mil import Builder as mb

    w = np.random.rand(8, 4, 3, 3).astype(np.float32)
    lw = np.random.rand(5, 8).astype(np.float32)

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 4, 10, 10))])
    def prog(x):
        y = mb.relu(x=mb.conv(x=x, weight=w, pad_type="same"))
        return mb.linear(x=mb.reduce_mean(x=y, axes=[2, 3]), weight=lw)

    model = ct.convert(prog, convert_to="mlprogram", skip_model_load=True,
                       compute_precision=ct.precision.FLOAT32)
    path = tmp_path_factory.mktemp("ml") / "m.mlpackage"
    model.save(str(path))
    return path


def test_coreml_macs(tiny_mlpackage):
    path = tiny_mlpackage
    cost = graph_cost(path)
    conv, lin = _by(cost, "conv")[0], _by(cost, "linear")[0]
    assert (conv.macs, conv.category) == (8 * 100 * 4 * 9, "convkxk")
    assert (lin.macs, lin.category) == (40, "fc")
    assert _by(cost, "relu")[0].fused


# ---------- device model ----------
def test_peak_rates_from_profile_facts():
    p7 = devices.load("pixel-7")
    x1 = p7["cpu"]["clusters"][0]
    assert mac_rate(x1, "fp32") == pytest.approx(2.85e9 * 4 * 4)
    assert mac_rate(x1, "fp16") == pytest.approx(2 * mac_rate(x1, "fp32"))
    assert mac_rate(x1, "int8") == pytest.approx(4 * mac_rate(x1, "fp32"))
    a73 = devices.load("pixel-2")["cpu"]["clusters"][0]
    assert exec_precision("fp16", a73) == "fp32" and mac_rate(a73, "int8") == pytest.approx(2 * mac_rate(a73, "fp32"))
    assert mac_rate(devices.load("iphone-13")["cpu"]["clusters"][0], "int8") == pytest.approx(
        8 * mac_rate(devices.load("iphone-13")["cpu"]["clusters"][0], "fp32"))


def test_threads_use_fastest_cores_first():
    p4 = devices.load("pixel-4")
    assert device_terms(p4, 4)["rel_speed"] == pytest.approx([2.42 / 2.84] * 3)
    assert speedup(p4, 1, 0.9) == 1.0 and speedup(p4, 4, 1.0) == pytest.approx(1 + 3 * 2.42 / 2.84)
    assert device_terms(p4, 99)["threads"] == 8


def test_missing_cpu_fact_names_the_field(conv_chain):
    prof = copy.deepcopy(devices.load("pixel-7"))
    del prof["cpu"]["clusters"][1]["fp32_fma_per_cycle"]
    with pytest.raises(UsageError, match="fp32_fma_per_cycle"):
        estimate(conv_chain, prof, 1)
    prof = copy.deepcopy(devices.load("pixel-7"))
    del prof["memory"]["bandwidth_gbps"]
    with pytest.raises(UsageError, match="bandwidth_gbps"):
        estimate(conv_chain, prof, 1)


# ---------- API ----------
def test_estimate_result_shape(conv_chain):
    r = estimate(conv_chain, devices.load("pixel-4"), 1)
    for key in ("device", "threads", "precision", "latency_ms", "low_ms", "high_ms", "method", "breakdown"):
        assert key in r
    assert r["device"] == "pixel-4" and r["threads"] == 1 and r["precision"] == "fp32"
    assert r["runs_on_device"] is True and r["format"] == "onnx"
    assert 0 < r["low_ms"] <= r["latency_ms"] <= r["high_ms"]
    assert r["method"].startswith("estimated (pixel-4, ±") and r["method"].endswith(" %)")
    assert sum(v["ms"] for v in r["breakdown"].values()) == pytest.approx(r["latency_ms"], rel=1e-3)
    assert r["breakdown"]["convkxk"] == {"count": 1, "macs": 6912, "ms": pytest.approx(r["breakdown"]["convkxk"]["ms"])}


def test_threads_help_big_graphs_not_tiny_ones(tmp_path, tiny_tflite):
    w = np.random.rand(64, 64, 3, 3).astype(np.float32)
    big = _save(tmp_path, [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])],
                [_vi("x", [1, 64, 56, 56])], [_vi("y", [1, 64, 56, 56])], [_init("w", w)], name="big.onnx")
    p4 = devices.load("pixel-4")
    one, four = estimate(big, p4, 1), estimate(big, p4, 4)
    assert four["latency_ms"] < 0.6 * one["latency_ms"]
    # a few-µs graph: per-op thread synchronisation outweighs the parallel speed-up
    assert estimate(tiny_tflite, p4, 4)["latency_ms"] >= estimate(tiny_tflite, p4, 1)["latency_ms"] * 0.8


def test_estimate_all(conv_chain):
    p4 = devices.load("pixel-4")
    rows = estimate_all(conv_chain, threads=2)
    assert [r["device"] for r in rows] == devices.available()
    assert all(r["latency_ms"] > 0 for r in rows)
    with pytest.raises(UsageError):
        estimate(conv_chain, p4, 0)


def test_estimator_imports_neither_torch_nor_scipy(conv_chain, tiny_tflite, tiny_mlpackage):
    import subprocess
    import sys
    code = ("import sys\nfrom pocketml.profiler import devices\nfrom pocketml.profiler.estimate import estimate\n"
            f"for a in ({str(conv_chain)!r}, {str(tiny_tflite)!r}, {str(tiny_mlpackage)!r}):\n"
            "    estimate(a, devices.load('pixel-7'), 2)\n"
            "bad = [m for m in ('torch', 'scipy', 'coremltools') if m in sys.modules]\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# ---------- calibration data ----------
def test_measurements_cite_sources_and_roles():
    rows = load_rows(MEASUREMENTS)
    assert {r["role"] for r in rows} == {"fit", "holdout", "check"}
    for r in rows:
        assert r["source"].startswith("https://") and r["latency_ms"] > 0 and r["threads"] >= 1
        assert r["device"] in devices.available(), r["device"]
        if r["role"] == "fit":
            assert any(s in r["source"] for s in FIT_SOURCES), r["source"]
    costs = load_costs(COSTS)
    assert all(f"{r['model']}|{r['precision']}" in costs for r in rows)


def test_fitted_parameters_and_validation_recorded():
    fitted = json.loads(Path(FITTED).read_text())
    v = fitted["validation"]
    for part in (v["fit_loo"]["overall"], v["holdout"]["overall"]):
        assert {"median_ape", "within_25pct", "spearman", "n"} <= set(part)
    for p in ("fp32", "int8"):
        assert v["band"][p]["ratio_low"] < 1 < v["band"][p]["ratio_high"]
    assert {r["role"] for r in v["rows"]} == {"fit", "holdout", "check"}
    assert fitted["calibration"]["fit_rows"] == sum(r["role"] == "fit" for r in csv.DictReader(open(MEASUREMENTS)))
