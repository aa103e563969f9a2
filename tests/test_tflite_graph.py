"""exporters/tflite_graph.py: TF "same" pads left in a quantized .tflite are folded into the convs."""
from __future__ import annotations

import collections
import json

import numpy as np

from conftest import run_cli, save_samples


def op_counts(path) -> collections.Counter:
    from ai_edge_litert.interpreter import Interpreter
    return collections.Counter(op["op_name"] for op in Interpreter(model_path=str(path))._get_ops_details())


def outputs(path, xs) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter
    it = Interpreter(model_path=str(path), num_threads=1)
    it.allocate_tensors()
    i, o = it.get_input_details()[0], it.get_output_details()[0]
    out = []
    for x in xs:
        it.set_tensor(i["index"], x)
        it.invoke()
        out.append(it.get_tensor(o["index"]).astype(np.float32))
    return np.concatenate(out)


def test_int8_export_folds_the_same_pads(tmp_path):
    rng = np.random.default_rng(0)
    calib = save_samples(tmp_path / "calib", [rng.standard_normal((1, 3, 16, 16)).astype(np.float32)
                                              for _ in range(16)])
    r = run_cli("convert", "models:same_pad_cnn", "--task", "image-classification", "--to", "tflite",
                "--precision", "int8", "--calib", calib, "-o", tmp_path / "out")
    assert r.exit_code == 0, r.output
    art = tmp_path / "out" / "tflite-int8"
    m = json.loads((art / "manifest.json").read_text())
    assert any("2 asymmetric (TF 'same') pads folded" in n for n in m["runtime_hints"]["notes"])
    assert m["validation"]["status"] == "passed"
    ops = op_counts(art / "model.tflite")
    assert ops["PAD"] == 0 and ops["TRANSPOSE"] == 0 and ops["DEPTHWISE_CONV_2D"] == 3


def test_folding_keeps_the_outputs(tmp_path):
    """Same model without and with the fold: identical ops otherwise, outputs within one int8 step
    (a requantize between PAD and conv, when there is one, goes away)."""
    from pocketml.convert.exporters import tflite
    from pocketml.convert.exporters.tflite_graph import fold_same_pads
    from pocketml.convert.sources import load_factory
    from pocketml.convert.spec import DataSet
    spec = load_factory("models:same_pad_cnn", "image-classification")
    rng = np.random.default_rng(1)
    samples = [[rng.standard_normal((1, 3, 16, 16)).astype(np.float32)] for _ in range(16)]
    raw, folded = tmp_path / "raw.tflite", tmp_path / "folded.tflite"
    tflite._static_int8(spec, DataSet(samples, "random"), raw, "histogram")
    assert fold_same_pads(raw, folded) == 2
    before, after = op_counts(raw), op_counts(folded)
    assert before["PAD"] == 2 and before["TRANSPOSE"] == 4 and after["PAD"] == after["TRANSPOSE"] == 0
    assert {k: v for k, v in before.items() if k not in ("PAD", "TRANSPOSE", "QUANTIZE")} == \
           {k: v for k, v in after.items() if k not in ("PAD", "TRANSPOSE", "QUANTIZE")}
    xs = [s[0].transpose(0, 2, 3, 1).copy() for s in samples]          # the artifact's input is NHWC
    a, b = outputs(raw, xs), outputs(folded, xs)
    scale = float(np.abs(a).max()) / 127
    assert np.abs(a - b).max() <= 2 * scale + 1e-6
