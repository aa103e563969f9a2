"""Degenerate calibration data is a usage error (exit 2) naming the data, before any conversion work.

All-zero (or any constant) calibration tensors give every activation a zero range — static int8
then quantizes nothing, and an "int8" artifact used to be published with no quantized op. The rule
(runtime/data.check_calibration): a float input with a single value across the whole set, or two or
more samples that are all identical, is refused. Integer inputs (token ids, masks) are not ranged
and are exempt from the single-value rule.
"""
from __future__ import annotations

import os

import numpy as np
import pytest
from conftest import CNN, assert_no_partial, cnn_samples, run_cli, save_samples
from faultkit import one_line

from pocketml.runtime.data import check_calibration
from pocketml.runtime.errors import UsageError

SHAPE = (1, 3, 16, 16)
INPUTS = [{"name": "input_0", "shape": list(SHAPE), "dtype": "float32"}]


def _degenerate(kind: str) -> tuple[list[np.ndarray], str]:
    if kind == "zeros":
        return [np.zeros(SHAPE, np.float32)] * 4, "input 'input_0' is 0 in every one of its 4 sample(s) (zero range)"
    if kind == "constant":
        return [np.full(SHAPE, 0.5, np.float32)] * 3, "input 'input_0' is 0.5 in every one of its 3 sample(s)"
    if kind == "copies":
        return cnn_samples(1, seed=1) * 5, "all 5 samples are identical"
    raise AssertionError(kind)


@pytest.mark.parametrize("fmt", ["onnx", "tflite"])
@pytest.mark.parametrize("kind", ["zeros", "constant", "copies"])
def test_degenerate_calibration_is_refused_before_any_work(tmp_path, monkeypatch, kind, fmt):
    arrays, text = _degenerate(kind)
    calib = save_samples(tmp_path / "calib", arrays)
    monkeypatch.chdir(tmp_path)
    r = run_cli("convert", CNN, "--task", "image-classification", "--to", fmt, "--precision", "int8",
                "--calib", calib, "-o", "out")
    assert r.exit_code == 2, r.output
    message = one_line(r.output)
    assert f"calibration data --calib {calib}: {text}" in message, message
    assert not (tmp_path / "out").exists()          # refused before the reference pass or any export
    assert_no_partial(tmp_path / "out")
    assert sorted(os.listdir(tmp_path)) == ["calib"]


def test_varied_data_passes_and_two_values_are_enough():
    check_calibration([[x] for x in cnn_samples(3, seed=2)], INPUTS, "ok")
    binary = [np.zeros(SHAPE, np.float32), np.ones(SHAPE, np.float32)]
    check_calibration([[x] for x in binary], INPUTS, "binary")       # 2 distinct values: a range
    check_calibration([[cnn_samples(1, seed=3)[0]]], INPUTS, "one")  # one varied sample is a range too


def test_integer_inputs_are_not_ranged():
    inputs = [{"name": "input_ids", "dtype": "int64"}, {"name": "token_type_ids", "dtype": "int64"}]
    samples = [[np.array([[101, i, 102]]), np.zeros((1, 3), np.int64)] for i in range(3)]
    check_calibration(samples, inputs, "sentences")                   # constant token types are fine
    with pytest.raises(UsageError, match="all 2 samples are identical"):
        check_calibration([samples[0], samples[0]], inputs, "sentences")
