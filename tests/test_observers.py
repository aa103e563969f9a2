"""--observer: how static int8 sets activation ranges from the calibration data, per format."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from conftest import CNN, assert_no_partial, cnn_samples, run_cli, save_samples
from pocketml.runtime import formats


def convert_cnn(out, calib_dir, fmt, observer):
    return run_cli("convert", CNN, "--task", "image-classification", "--to", fmt, "--precision", "int8",
                   "--calib", calib_dir, "--observer", observer, "-o", out)


def activation_scales(model_path) -> np.ndarray:
    """Scales of the QuantizeLinear nodes (activations; weights are stored int8 with DequantizeLinear only)."""
    model = onnx.load(str(model_path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return np.array([float(inits[n.input[1]]) for n in model.graph.node if n.op_type == "QuantizeLinear"])


@pytest.mark.parametrize("fmt, observer", [("onnx", "minmax"), ("onnx", "entropy"), ("tflite", "minmax"),
                                           ("tflite", "histogram")])
def test_observer_is_used_and_recorded(tmp_path, calib_dir, fmt, observer):
    r = convert_cnn(tmp_path / "out", calib_dir, fmt, observer)
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "out" / f"{fmt}-int8" / "manifest.json").read_text())
    assert m["quantization"]["calibration"]["observer"].startswith(f"{observer}: {formats.get(fmt).observers[observer]}")
    assert m["recipe"]["options"]["observer"] == observer
    assert m["validation"]["status"] == "passed"


def test_onnx_observers_set_different_ranges(tmp_path):
    """Calibration data with one outlier sample: min-max never clips, so each activation scale is ≥ the
    percentile and entropy ones; entropy clips (onnxruntime's own entropy default would equal min-max)."""
    samples = cnn_samples(32, seed=0)
    samples[0] = samples[0] * 50
    calib_dir = save_samples(tmp_path / "calib", samples)
    scales = {}
    for observer in ("minmax", "percentile", "entropy"):
        r = convert_cnn(tmp_path / observer, calib_dir, "onnx", observer)
        assert r.exit_code == 0, r.output
        scales[observer] = activation_scales(tmp_path / observer / "onnx-int8" / "model.onnx")
    assert len(scales["minmax"]) == len(scales["percentile"]) == len(scales["entropy"]) > 0
    for clipped in ("percentile", "entropy"):
        assert np.all(scales["minmax"] >= scales[clipped] * (1 - 1e-6))
    assert np.any(scales["entropy"] < scales["minmax"] * 0.99)


def test_percentile_observer_clips_an_outlier_minmax_keeps():
    import torch

    from pocketml.convert.exporters.cnn_int8 import activation_observer
    x = torch.cat([torch.randn(200_000, generator=torch.Generator().manual_seed(0)), torch.tensor([1000.0])])
    ranges = {}
    for name in ("minmax", "percentile"):
        obs = activation_observer(name)(dtype=torch.int8, qscheme=torch.per_tensor_affine)
        obs(x)
        scale, _ = obs.calculate_qparams()
        ranges[name] = float(scale) * 255
    assert ranges["minmax"] == pytest.approx(1000 - float(x[:-1].min()), rel=1e-3)   # the outlier sets it
    assert 5 < ranges["percentile"] < 15                                             # ±4.4 σ of N(0, 1), bins


@pytest.mark.parametrize("args, text", [
    (("--to", "tflite", "--precision", "int8", "--observer", "entropy"), "tflite: percentile, histogram, minmax"),
    (("--to", "onnx", "--precision", "int8", "--observer", "kl"), "onnx: percentile, minmax, entropy"),
    (("--to", "onnx", "--precision", "fp16", "--observer", "minmax"), "needs --precision int8"),
    (("--to", "coreml", "--precision", "int8", "--observer", "minmax"), "coreml int8 has no calibrated"),
])
def test_bad_observer_is_a_usage_error(tmp_path, args, text):
    r = run_cli("convert", CNN, "--task", "image-classification", *args, "-o", tmp_path / "out")
    assert r.exit_code == 2 and text in r.output, r.output
    assert_no_partial(tmp_path / "out")


def test_observer_on_a_dynamic_int8_model_is_a_usage_error(tmp_path):
    r = run_cli("convert", "models:tiny_mlp", "--to", "onnx", "--precision", "int8", "--observer", "minmax",
                "-o", tmp_path / "out")
    assert r.exit_code == 2 and "no calibrated activations" in r.output, r.output
    assert not (tmp_path / "out" / "onnx-int8").exists()
