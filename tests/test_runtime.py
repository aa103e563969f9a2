"""pocketml.runtime: loads and runs artifacts without torch; refuses bad inputs with clear errors."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from conftest import cnn_samples, run_subprocess

import pocketml.runtime as rt
from pocketml.runtime.errors import UsageError

NO_TORCH = r"""
import json, sys
sys.modules["torch"] = None          # any `import torch` now raises ImportError
import numpy as np
import pocketml.runtime as rt
x = np.load(sys.argv[1])
out = {}
for art in sys.argv[2:]:
    s = rt.load(art)
    feed = x.transpose(0, 2, 3, 1).copy() if s.manifest.inputs[0].layout == "NHWC" else x
    out[art] = {"backend": s.backend, "y": s.run([feed])["output_0"].tolist()}
heavy = sorted(m for m in ("torch", "transformers", "litert_torch", "coremltools", "torchao")
               if sys.modules.get(m) is not None)
print("RESULT " + json.dumps({"out": out, "heavy": heavy}))
"""


def test_runtime_runs_onnx_and_tflite_without_torch(cnn_out, tmp_path):
    x = cnn_samples(1, seed=77)[0]
    np.save(tmp_path / "x.npy", x)
    arts = [str(cnn_out / "onnx-fp32"), str(cnn_out / "tflite-int8")]
    proc = run_subprocess([sys.executable, "-c", NO_TORCH, tmp_path / "x.npy", *arts], timeout=120)
    assert proc.returncode == 0, proc.stderr
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    res = json.loads(line.split(" ", 1)[1])
    assert res["heavy"] == []
    assert res["out"][arts[0]]["backend"] == "onnxruntime"
    assert res["out"][arts[1]]["backend"] == "litert"
    # Same numbers as the runtime in this (torch-importing) process.
    for art in arts:
        s = rt.load(art)
        feed = x.transpose(0, 2, 3, 1).copy() if s.manifest.inputs[0].layout == "NHWC" else x
        np.testing.assert_allclose(np.array(res["out"][art]["y"], np.float32), s.run([feed])["output_0"],
                                   rtol=1e-6, atol=1e-6)


def test_session_refuses_wrong_input_shape_and_dtype(cnn_out):
    s = rt.load(cnn_out / "onnx-fp32")
    with pytest.raises(UsageError, match=r"shape \[1, 16, 16, 3\], expected \[1, 3, 16, 16\] \(NCHW\)"):
        s.run(np.zeros((1, 16, 16, 3), np.float32))
    with pytest.raises(UsageError, match="dtype int64"):
        s.run(np.zeros((1, 3, 16, 16), np.int64))
    with pytest.raises(UsageError, match="expected 1 inputs"):
        s.run([np.zeros((1, 3, 16, 16), np.float32)] * 2)
    with pytest.raises(UsageError, match="missing input 'input_0'"):
        s.run({"nope": np.zeros((1, 3, 16, 16), np.float32)})


def test_load_accepts_the_model_file_and_refuses_non_artifacts(cnn_out, tmp_path):
    assert rt.load(cnn_out / "tflite-fp32" / "model.tflite").manifest.format == "tflite"
    with pytest.raises(UsageError, match="no manifest.json"):
        rt.load(tmp_path)
    with pytest.raises(UsageError, match="no such file"):
        rt.load(tmp_path / "missing")
    with pytest.raises(UsageError, match="threads"):
        rt.load(cnn_out / "onnx-fp32", threads=0)


def test_coreml_session_needs_macos(cnn_out):
    if sys.platform == "darwin":
        pytest.skip("Core ML runs on macOS")
    with pytest.raises(rt.EnvironmentMissing, match="macOS") as err:
        rt.load(cnn_out / "coreml-fp32")
    assert err.value.exit_code == 7 and "model.mlpackage" in str(err.value)
