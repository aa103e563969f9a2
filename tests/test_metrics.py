"""runtime.metrics.compare and the validation tolerances, on hand-made arrays."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from pocketml.convert.validate import check, tolerance
from pocketml.runtime.metrics import accuracy_drop, compare


def rows(*vectors) -> list[np.ndarray]:
    return [np.asarray(v, dtype=np.float32)[None] for v in vectors]


def test_identical_outputs():
    ref = rows([1, 2, 3, 4, 5, 6], [6, 5, 4, 3, 2, 1])
    s = compare(ref, ref, "top1")
    assert s["samples"] == 2 and s["max_abs"] == 0 and s["mean_abs"] == 0
    assert s["cosine_min"] == pytest.approx(1.0) and s["cosine_mean"] == pytest.approx(1.0)
    assert s["top1_agreement"] == 1.0 and s["top5_overlap"] == 1.0
    assert s["nan_count"] == 0 and s["collapsed"] is False and s["sqnr_db"] == math.inf


def test_top1_agreement_and_top5_overlap():
    ref = rows([9, 8, 7, 6, 5, 0, 0], [0, 1, 2, 3, 4, 5, 6])
    out = rows([8, 9, 7, 6, 5, 0, 0],      # top-1 differs (index 1 vs 0); same top-5 set
               [6, 5, 4, 3, 2, 1, 0])      # top-1 differs; top-5 {0..4} vs ref {2..6}: overlap 3/5
    s = compare(ref, out, "top1")
    assert s["top1_agreement"] == 0.0
    assert s["top5_overlap"] == pytest.approx((1.0 + 3 / 5) / 2)
    out2 = rows([9, 8, 7, 6, 5, 0, 0], [1, 0, 0, 0, 0, 0, 0])
    assert compare(ref, out2, "top1")["top1_agreement"] == 0.5


def test_top5_with_fewer_than_five_classes():
    s = compare(rows([1, 2, 3]), rows([3, 2, 1]), "top1")
    assert s["top5_overlap"] == 1.0 and s["top1_agreement"] == 0.0


def test_cosine_values():
    ref = rows([1, 0], [1, 1])
    out = rows([0, 1], [2, 2])             # orthogonal; same direction, twice as long
    s = compare(ref, out, "cosine")
    assert s["cosine_min"] == pytest.approx(0.0, abs=1e-12)
    assert s["cosine_mean"] == pytest.approx(0.5)
    assert s["max_abs"] == 1.0
    assert "top1_agreement" not in s
    neg = compare(rows([1, 2]), rows([-1, -2]), "cosine")
    assert neg["cosine_min"] == pytest.approx(-1.0)


def test_zero_output_has_zero_cosine():
    s = compare(rows([1, 2, 3]), rows([0, 0, 0]), "cosine")
    assert s["cosine_min"] == 0.0


def test_cosine_of_tiny_outputs():
    tiny = rows([1e-20, 2e-20, -3e-20])
    assert compare(tiny, tiny, "cosine")["cosine_min"] == pytest.approx(1.0)
    assert compare(tiny, [-t for t in tiny], "cosine")["cosine_min"] == pytest.approx(-1.0)


def test_nan_and_inf_are_counted():
    out = rows([np.nan, 1, 2], [np.inf, -np.inf, 0])
    s = compare(rows([0, 1, 2], [1, 1, 1]), out, "cosine")
    assert s["nan_count"] == 3
    assert math.isfinite(s["max_abs"]) and math.isfinite(s["cosine_mean"])
    assert check(s, tolerance("cosine", "fp32")) and any("nan_count = 3" in f for f in check(s, tolerance("cosine", "fp32")))


def test_collapsed_output_is_detected():
    ref = rows([1, 2, 3], [3, 2, 1], [0, 5, 1])
    s = compare(ref, rows([1, 1, 1], [1, 1, 1], [1, 1, 1]), "max-abs")
    assert s["collapsed"] is True
    assert any("collapsed = True" in f for f in check(s, tolerance("max-abs", "int8")))
    # A single sample cannot be "collapsed"; a constant reference is not a collapse either.
    assert compare(rows([1, 2]), rows([1, 1]), "max-abs")["collapsed"] is False
    const = rows([1, 1], [1, 1])
    assert compare(const, const, "max-abs")["collapsed"] is False


def test_shape_mismatch_is_an_error():
    s = compare(rows([1, 2, 3]), rows([1, 2]), "top1")
    assert "error" in s and "[1, 2]" in s["error"] and "[1, 3]" in s["error"]
    assert accuracy_drop(s, "top1") == 1.0
    assert check(s, tolerance("top1", "fp32")) == [s["error"]]


def test_accuracy_drop():
    assert accuracy_drop({"top1_agreement": 0.75, "cosine_mean": 0.9}, "top1") == pytest.approx(0.25)
    assert accuracy_drop({"cosine_mean": 0.9}, "cosine") == pytest.approx(0.1)
    assert accuracy_drop({"cosine_mean": 0.99}, "max-abs") == pytest.approx(0.01)


def test_tolerances_pass_and_fail_on_real_stats():
    ref = rows([3, 1, 0, 0], [0, 3, 1, 0], [0, 0, 3, 1])
    close = [r + np.float32(1e-6) for r in ref]
    assert check(compare(ref, close, "top1"), tolerance("top1", "fp32")) == []
    wrong = rows([0, 1, 3, 0], [0, 3, 1, 0], [0, 0, 3, 1])
    failures = check(compare(ref, wrong, "top1"), tolerance("top1", "fp32"))
    assert any(f.startswith("top1_agreement = 0.666667 (required >= 1.0)") for f in failures)


@settings(max_examples=50, deadline=None)
@given(arrays(np.float32, (4, 10), elements=st.floats(-100, 100, width=32)))
def test_compare_against_itself(batch):
    ref = [b[None] for b in batch]
    s = compare(ref, ref, "top1")
    assert s["max_abs"] == 0 and s["nan_count"] == 0 and s["top1_agreement"] == 1.0
    assert s["top5_overlap"] == 1.0
    nonzero = [np.any(b != 0) for b in batch]
    if all(nonzero):
        assert s["cosine_min"] == pytest.approx(1.0)
