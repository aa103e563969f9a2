"""Host emulation: a second opinion beside the roofline estimate (issue 4).

    emulated_ms = host p50 (this artifact, measured here, same threads)
                  × Σ_category  share_category × device_time(kernel) / host_time(kernel)

Kernels are measured on this host with onnxruntime at the same thread count (fp32 GEMM,
int8 GEMM, depthwise conv, a memory-bound elementwise op) and timed on the device by the
same fitted device model the estimate uses; `share` is the estimate's per-category time
share for this artifact. It inherits the device model's calibration, so it is a cross-check
of the host measurement's shape, not an independent phone measurement.
"""
from __future__ import annotations

import time
from functools import lru_cache

import numpy as np

from .device_model import device_terms, op_arrays, op_times
from .graph_cost import OpCost

M, K, N = 784, 256, 256                 # a 28×28 feature map through a 256→256 1×1 conv / fc
C, HW = 256, 28                         # depthwise 3×3 over 256 channels at 28×28
E = 256 * 56 * 56                       # elementwise over a 56×56×256 activation

KERNELS = {
    "gemm-fp32": OpCost("gemm", "MatMul", "fc", "fp32", macs=M * K * N, weight_bytes=K * N * 4,
                        in_bytes=M * K * 4, out_bytes=M * N * 4),
    "gemm-int8": OpCost("gemm", "MatMulInteger", "fc", "int8", macs=M * K * N, weight_bytes=K * N,
                        in_bytes=M * K, out_bytes=M * N * 4),
    "depthwise": OpCost("dw", "Conv", "depthwise", "fp32", macs=C * HW * HW * 9, weight_bytes=C * 9 * 4,
                        in_bytes=C * HW * HW * 4, out_bytes=C * HW * HW * 4),
    "elementwise": OpCost("add", "Add", "elementwise", "fp32", flops=E, in_bytes=E * 4, out_bytes=E * 4),
}
CATEGORY_KERNEL = {"conv1x1": "gemm", "convkxk": "gemm", "fc": "gemm", "attention": "gemm",
                   "depthwise": "depthwise", "elementwise": "elementwise", "pooling": "elementwise",
                   "reshape": "elementwise", "other": "elementwise"}


def _models() -> dict:
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)

    def model(node, inputs, inits, out_type=TensorProto.FLOAT):
        g = helper.make_graph([node], "k", inputs, [helper.make_tensor_value_info("y", out_type, None)],
                              [numpy_helper.from_array(a, n) for n, a in inits])
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()

    f = TensorProto.FLOAT
    return {
        "gemm-fp32": (model(helper.make_node("MatMul", ["x", "w"], ["y"]),
                            [helper.make_tensor_value_info("x", f, [M, K])],
                            [("w", rng.standard_normal((K, N)).astype(np.float32))]),
                      {"x": rng.standard_normal((M, K)).astype(np.float32)}),
        "gemm-int8": (model(helper.make_node("MatMulInteger", ["x", "w"], ["y"]),
                            [helper.make_tensor_value_info("x", TensorProto.UINT8, [M, K])],
                            [("w", rng.integers(-127, 127, (K, N)).astype(np.int8))], TensorProto.INT32),
                      {"x": rng.integers(0, 255, (M, K)).astype(np.uint8)}),
        "depthwise": (model(helper.make_node("Conv", ["x", "w"], ["y"], group=C, pads=[1, 1, 1, 1]),
                            [helper.make_tensor_value_info("x", f, [1, C, HW, HW])],
                            [("w", rng.standard_normal((C, 1, 3, 3)).astype(np.float32))]),
                      {"x": rng.standard_normal((1, C, HW, HW)).astype(np.float32)}),
        "elementwise": (model(helper.make_node("Add", ["x", "b"], ["y"]),
                              [helper.make_tensor_value_info("x", f, [1, 256, 56, 56])],
                              [("b", np.ones((1, 256, 1, 1), np.float32))]),
                        {"x": rng.standard_normal((1, 256, 56, 56)).astype(np.float32)}),
    }


@lru_cache(maxsize=8)
def host_kernel_seconds(threads: int, runs: int = 50) -> dict:
    """Median time of each kernel on this host with onnxruntime at `threads` threads."""
    import onnxruntime as ort

    out = {}
    for name, (blob, feed) in _models().items():
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        sess = ort.InferenceSession(blob, opts, providers=["CPUExecutionProvider"])
        for _ in range(5):
            sess.run(None, feed)
        t = []
        for _ in range(runs):
            a = time.perf_counter()
            sess.run(None, feed)
            t.append(time.perf_counter() - a)
        out[name] = float(np.median(t))
    return out


def emulate(host_p50_ms: float, estimate: dict, profile: dict, threads: int) -> dict:
    """Scale a host measurement to the device by measured-here vs modelled-there kernel times."""
    from . import _fitted

    params = _fitted()["params"]
    dev = device_terms(profile, threads)
    host = host_kernel_seconds(threads)
    gemm = "gemm-int8" if estimate.get("precision") == "int8" else "gemm-fp32"
    ratio = {}
    for kernel in KERNELS:
        device_s = float(op_times(op_arrays([KERNELS[kernel]]), dev, params).sum())
        ratio[kernel] = device_s / host[kernel]
    total = sum(c["ms"] for c in estimate["breakdown"].values()) or 1.0
    scale = sum(c["ms"] / total * ratio[gemm if CATEGORY_KERNEL.get(cat) == "gemm" else CATEGORY_KERNEL.get(cat, "elementwise")]
                for cat, c in estimate["breakdown"].items())
    name = profile.get("name", "device")
    return {"latency_ms": round(host_p50_ms * scale, 3), "scale": round(scale, 4),
            "method": f"emulated ({name}): host p50 × device/host kernel-time ratios",
            "kernel_ratios": {k: round(v, 4) for k, v in ratio.items()},
            "host_kernel_ms": {k: round(v * 1e3, 4) for k, v in host.items()}}
