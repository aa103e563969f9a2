"""Bare model files (no manifest, from anywhere): `profile` and `estimate` take them.

The same path validation (a symlink is refused, O_NOFOLLOW reads), pre-checks and sandboxed child as
an artifact; latency, memory and size measured on random inputs; accuracy only with --data and
--reference; every report says the file had no manifest, so nothing could be checksum-verified.
"""
from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest
from conftest import assert_no_partial, run_cli

from pocketml.runtime.model_file import BARE_MANIFEST, RANDOM_INPUTS

RUNS = ("--runs", "3", "--warmup", "1")


def one_line(text: str) -> str:
    return " ".join(text.split())


def report_rows(reports) -> dict:
    return {os.path.basename(r["artifact"]): r for r in json.loads((reports / "report.json").read_text())["artifacts"]}


@pytest.fixture(scope="session")
def bare_onnx(tmp_path_factory):
    """y = x + 1 for x of shape [batch, 4] (a dynamic batch dimension), made with onnx.helper."""
    from onnx import TensorProto as T
    from onnx import helper, numpy_helper, save
    g = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", T.FLOAT, ["batch", 4])],
                          [helper.make_tensor_value_info("y", T.FLOAT, ["batch", 4])],
                          [numpy_helper.from_array(np.ones((1, 4), np.float32), "w")])
    path = tmp_path_factory.mktemp("bare-onnx") / "adder.onnx"
    save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), str(path))
    return path


@pytest.fixture(scope="session")
def bare_tflite(tmp_path_factory):
    """A tiny conv + linear model converted with litert-torch, outside any artifact."""
    torch = pytest.importorskip("torch")
    litert_torch = pytest.importorskip("litert_torch")

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
            self.fc = torch.nn.Linear(4, 5)

        def forward(self, x):
            return self.fc(torch.relu(self.conv(x)).mean((2, 3)))

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("bare-tflite") / "tiny.tflite"
    litert_torch.convert(Tiny().eval(), (torch.rand(1, 3, 8, 8),)).export(str(path))
    return path


@pytest.fixture(params=["onnx", "tflite"])
def bare(request):
    return request.getfixturevalue(f"bare_{request.param}")


def test_bare_file_is_profiled(bare, tmp_path):
    reports = tmp_path / "rep"
    r = run_cli("profile", bare, *RUNS, "-o", reports)
    assert r.exit_code == 0, r.output
    row = report_rows(reports)[bare.name]
    assert row["status"] == "measured" and row["manifest"] == BARE_MANIFEST and row["inputs"] == RANDOM_INPUTS
    assert row["latency_ms"]["runs"] == 3 and row["peak_rss_added_mb"] >= 0 and row["load_ms"] > 0
    assert row["size_mb"] == pytest.approx(bare.stat().st_size / 1e6)
    assert "accuracy" not in row and row["verdict"]["result"] == "PASS"
    text = one_line(r.output)
    assert f"{bare.name} (no manifest)" in text and "no checksums verified" in text and "not measured" in text
    md = (reports / "report.md").read_text()
    assert "none (bare file: no checksums verified)" in md and "inputs: random, seed 0" in md
    assert sorted(p.name for p in bare.parent.iterdir()) == [bare.name]      # nothing written beside it
    assert_no_partial(reports)


def test_bare_file_is_estimated(bare):
    r = run_cli("estimate", bare, "--device", "pixel-7", "--json")
    assert r.exit_code == 0, r.output
    e = json.loads(r.output)
    assert e["artifact"] == str(bare) and e["format"] == bare.suffix[1:] and e["latency_ms"] > 0


def test_bare_file_with_device_uses_the_estimate(bare, tmp_path):
    r = run_cli("profile", bare, "--device", "pixel-7", *RUNS, "-o", tmp_path / "rep")
    assert r.exit_code == 0, r.output
    row = report_rows(tmp_path / "rep")[bare.name]
    assert row["estimate"]["latency_ms"] > 0 and row["verdict"]["checks"][0]["name"] == "p90 latency on device (ms)"


@pytest.fixture
def adder_data(tmp_path):
    """Three [1, 4] float32 samples and the adder's true outputs (x + 1)."""
    data = tmp_path / "data"
    data.mkdir()
    xs = [np.random.default_rng(i).standard_normal((1, 4)).astype(np.float32) for i in range(3)]
    for i, x in enumerate(xs):
        np.save(data / f"s{i}.npy", x)
    np.savez(tmp_path / "ref.npz", y=np.concatenate(xs) + 1)
    np.savez(tmp_path / "wrong.npz", y=-np.concatenate(xs))
    return data


def test_data_and_reference_give_accuracy(bare_onnx, adder_data, tmp_path):
    reports = tmp_path / "rep"
    r = run_cli("profile", bare_onnx, "--data", adder_data, "--reference", tmp_path / "ref.npz", *RUNS,
                "--max-drop", "1%", "-o", reports)
    assert r.exit_code == 0, r.output
    row = report_rows(reports)[bare_onnx.name]
    assert row["accuracy"]["cosine_min"] == pytest.approx(1.0) and row["accuracy"]["samples"] == 3
    assert row["inputs"] == f"user data {adder_data} (3 samples)"
    assert row["accuracy_reference"].startswith(f"your reference outputs {tmp_path / 'ref.npz'}")
    assert [c["name"] for c in row["verdict"]["checks"]] == ["p90 latency (ms)", "accuracy drop"]


def test_wrong_reference_fails_the_accuracy_target(bare_onnx, adder_data, tmp_path):
    r = run_cli("profile", bare_onnx, "--data", adder_data, "--reference", tmp_path / "wrong.npz", *RUNS,
                "--max-drop", "1%", "-o", tmp_path / "rep")
    assert r.exit_code == 6, r.output
    assert "accuracy drop" in one_line(r.output)


def test_data_without_reference_measures_no_accuracy(bare_onnx, adder_data, tmp_path):
    r = run_cli("profile", bare_onnx, "--data", adder_data, *RUNS, "-o", tmp_path / "rep")
    assert r.exit_code == 0, r.output
    row = report_rows(tmp_path / "rep")[bare_onnx.name]
    assert "accuracy" not in row and row["accuracy_reference"].startswith("not measured")


@pytest.mark.parametrize("case, message", [
    ("no data", "--reference needs --data"),
    ("rows", "2 reference output row(s) for 3 --data sample(s)"),
    ("names", "expected the model's output 'y'"),
    ("pickle", "cannot read reference outputs"),
])
def test_bad_reference_is_a_usage_error(bare_onnx, adder_data, tmp_path, case, message):
    ref = tmp_path / "bad.npz"
    if case == "rows":
        np.savez(ref, y=np.zeros((2, 4), np.float32))
    elif case == "names":
        np.savez(ref, a=np.zeros((3, 4)), b=np.zeros((3, 4)))
    elif case == "pickle":
        ref = tmp_path / "bad.npy"
        np.save(ref, np.array([{"x": 1}] * 3, dtype=object), allow_pickle=True)
    data = () if case == "no data" else ("--data", adder_data)
    reports = tmp_path / "rep"
    r = run_cli("profile", bare_onnx, *data, "--reference", ref, *RUNS, "-o", reports)
    assert r.exit_code == 2, r.output
    assert message in one_line(r.output) and not reports.exists()


def test_data_of_the_wrong_shape_is_named(bare_onnx, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    np.save(data / "s0.npy", np.zeros((1, 5), np.float32))
    r = run_cli("profile", bare_onnx, "--data", data, *RUNS, "-o", tmp_path / "rep")
    assert r.exit_code == 2, r.output
    assert f"{data / 's0.npy'} input 'x': shape [1, 5], expected ['batch', 4]" in one_line(r.output)


@pytest.mark.parametrize("command", ["profile", "estimate"])
def test_bare_symlink_is_refused(bare_onnx, tmp_path, command):
    link = tmp_path / "link.onnx"
    link.symlink_to(bare_onnx)
    reports = tmp_path / "rep"
    args = ("-o", reports) if command == "profile" else ("--device", "pixel-7")
    r = run_cli(command, link, *args)
    assert r.exit_code == 4, r.output
    assert f"{link}: a symlink (to {bare_onnx})" in one_line(r.output)
    assert not reports.exists()


def test_unknown_file_is_a_usage_error(tmp_path):
    f = tmp_path / "weights.bin"
    f.write_bytes(b"\0" * 16)
    r = run_cli("profile", f, "-o", tmp_path / "rep")
    assert r.exit_code == 2, r.output
    assert "not a pocketml artifact" in one_line(r.output) and ".onnx" in r.output


@pytest.mark.skipif(sys.platform == "darwin", reason="Core ML runs on macOS")
@pytest.mark.parametrize("name", ["m.mlpackage", "m.mlmodel"])
def test_bare_coreml_off_macos_is_not_measured(tmp_path, name):
    model = tmp_path / name
    model.mkdir() if name.endswith(".mlpackage") else model.write_bytes(b"\x08\x07")
    r = run_cli("profile", model, "-o", tmp_path / "rep")
    assert r.exit_code == 0, r.output
    row = report_rows(tmp_path / "rep")[name]
    assert row["status"] == "not measured" and "macOS" in row["reason"]
    assert row["manifest"] == BARE_MANIFEST and row["verdict"]["result"] == "NOT MEASURED"


def test_hard_to_feed_inputs_are_unsupported(tmp_path):
    """An input without a declared shape: pocketml cannot make data for it (exit 3), and says which."""
    from onnx import TensorProto as T
    from onnx import helper, save
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", T.FLOAT, None)],
                          [helper.make_tensor_value_info("y", T.FLOAT, None)])
    path = tmp_path / "norank.onnx"
    save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), str(path))
    data = tmp_path / "data"
    data.mkdir()
    np.save(data / "s.npy", np.zeros((1, 4), np.float32))
    r = run_cli("profile", path, "--data", data, "-o", tmp_path / "rep")
    assert r.exit_code == 3, r.output
    assert f"{path}: 'x' is not a tensor of a known dtype and rank" in one_line(r.output)
    assert not (tmp_path / "rep").exists()


def test_record_leaves_a_bare_file_alone(bare_onnx, tmp_path):
    before = bare_onnx.read_bytes()
    r = run_cli("profile", bare_onnx, *RUNS, "--record", "-o", tmp_path / "rep")
    assert r.exit_code == 0, r.output
    assert "recorded the measured settings in 0 manifest(s)" in r.output
    assert bare_onnx.read_bytes() == before and sorted(os.listdir(bare_onnx.parent)) == [bare_onnx.name]
