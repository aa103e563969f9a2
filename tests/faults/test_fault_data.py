"""Bad user data for `pocketml profile --data`: refused (exit 2) naming the sample, expected vs actual.

The same checks on `convert --calib` (wrong shape, dtype, NHWC for NCHW, NaN, empty directory) are
covered with all three assertions by tests/test_convert.py::test_bad_calibration_sample_is_named and
::test_empty_calibration_dir_is_refused. pocketml never transposes, casts or cleans data for you.
"""
from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_no_partial, cnn_samples, run_cli, save_samples


def _bad(kind: str):
    x = np.zeros((1, 3, 16, 16), np.float32)
    if kind == "shape":
        return np.zeros((1, 3, 8, 8), np.float32), ["shape [1, 3, 8, 8]", "expected [1, 3, 16, 16]"]
    if kind == "dtype":
        return x.astype(np.float16), ["dtype float16", "expected float32"]
    if kind == "nhwc":
        return np.zeros((1, 16, 16, 3), np.float32), ["shape [1, 16, 16, 3]", "expected [1, 3, 16, 16]",
                                                      "looks like NHWC data"]
    if kind == "nan":
        x[0, 0, 0, 0] = np.nan
        return x, ["1 NaN"]
    if kind == "inf":
        x[0, 2, 3, 4] = -np.inf
        return x, ["1 NaN/Inf"]
    raise AssertionError(kind)


@pytest.mark.parametrize("artifact", ["onnx-fp32", "tflite-fp32"])
@pytest.mark.parametrize("kind", ["shape", "dtype", "nhwc", "nan", "inf"])
def test_bad_profile_data_is_named(cnn_out, tmp_path, artifact, kind):
    data = save_samples(tmp_path / "data", cnn_samples(2, seed=3))
    bad, texts = _bad(kind)
    np.save(data / "bad_sample.npy", bad)
    reports = tmp_path / "reports"
    r = run_cli("profile", cnn_out / artifact, "--data", data, "--runs", "2", "-o", reports)
    assert r.exit_code == 2, r.output
    assert str(data / "bad_sample.npy") in r.output
    for text in texts:
        assert text in r.output, r.output
    assert not reports.exists() or not any(reports.iterdir())
    assert_no_partial(reports)


def test_empty_profile_data_dir(cnn_out, tmp_path):
    data = tmp_path / "empty"
    data.mkdir()
    r = run_cli("profile", cnn_out / "onnx-fp32", "--data", data, "-o", tmp_path / "reports")
    assert r.exit_code == 2, r.output
    assert f"data directory {data} is empty" in r.output
    assert not (tmp_path / "reports").exists()


def test_pickled_npy_is_refused(cnn_out, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    np.save(data / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    r = run_cli("profile", cnn_out / "onnx-fp32", "--data", data, "-o", tmp_path / "reports")
    assert r.exit_code == 2, r.output
    assert str(data / "obj.npy") in r.output and "without pickles" in r.output
    assert not (tmp_path / "reports").exists()
