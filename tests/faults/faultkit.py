"""Helpers for the fault suite: tiny hand-built ONNX artifacts, artifact copies, report checks.

Every fault test asserts three things: the exit code, the message (naming the file, sample or
package), and that nothing partial was written (`conftest.assert_no_partial`).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from pocketml.runtime.manifest import Manifest, TensorSpec, hash_tree

SHAPE = [1, 4]


def write_artifact(art: Path, model_bytes: bytes, fmt: str = "onnx", extra: dict[str, bytes] | None = None,
                   inputs=None, outputs=None) -> Path:
    """An artifact directory holding `model_bytes` (+ extra files) and a manifest whose checksums match,
    so whatever is wrong with it reaches the checks behind the checksum verification."""
    art.mkdir(parents=True)
    model_file = f"model.{fmt}"
    (art / model_file).write_bytes(model_bytes)
    for rel, data in (extra or {}).items():
        (art / rel).parent.mkdir(parents=True, exist_ok=True)
        (art / rel).write_bytes(data)
    m = Manifest(name="fault", format=fmt, precision="fp32", model_file=model_file,
                 inputs=inputs or [TensorSpec("x", SHAPE, "float32")],
                 outputs=outputs or [TensorSpec("y", SHAPE, "float32")], task="generic", metric="max-abs",
                 checksums=hash_tree(art))
    (art / "manifest.json").write_text(m.to_json())
    return art


def write_reference(root: Path, n: int = 2) -> Path:
    """A `reference/` set for the 1×4 float models built here (y = x + w)."""
    ref = root / "reference"
    ref.mkdir(parents=True)
    x = np.arange(n * 4, dtype=np.float32).reshape(n, 4)
    np.savez(ref / "inputs.npz", x=x)
    np.savez(ref / "outputs.npz", y=x)
    meta = {"schema": "pocketml.reference/1", "model": "fault", "reference": "hand-built", "data": "arange",
            "samples": n, "metric": "max-abs", "inputs": [{"name": "x", "shape": SHAPE, "dtype": "float32",
                                                           "layout": None}],
            "outputs": ["y"], "preprocessing": {}}
    meta["checksums"] = hash_tree(ref)
    (ref / "manifest.json").write_text(json.dumps(meta))
    return ref


def copy_artifact(src_out: Path, name: str, root: Path) -> Path:
    """Copy artifact `name` and the reference set from a conversion output into `root`."""
    shutil.copytree(src_out / "reference", root / "reference")
    return shutil.copytree(src_out / name, root / name)


def rerecord(art: Path) -> None:
    """Re-record the manifest checksums after a deliberate edit, so the bytes reach the parser."""
    m = json.loads((art / "manifest.json").read_text())
    m["checksums"] = hash_tree(art)
    (art / "manifest.json").write_text(json.dumps(m))


def one_line(text: str) -> str:
    """CLI output with rich's wrapping undone."""
    return " ".join(text.split())


def report_rows(reports: Path) -> dict[str, dict]:
    report = json.loads((reports / "report.json").read_text())
    return {Path(r["artifact"]).name: r for r in report["artifacts"]}


# ------------------------------------------------------------------ ONNX models with external data

W = np.array([[1, 2, 3, 4]], np.float32)
CARRIERS = ("initializer", "sparse initializer", "attribute tensor", "If subgraph", "Loop body")


def _ext(name: str, dims, location: str):
    from onnx import TensorProto
    t = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=dims, data_location=TensorProto.EXTERNAL)
    for key, value in (("location", location), ("offset", "0"), ("length", str(W.nbytes))):
        entry = t.external_data.add()
        entry.key, entry.value = key, value
    return t


def onnx_with_external(carrier: str, location: str) -> bytes:
    """y = x + w for a 1×4 x, where w (1, 2, 3, 4) is external data at `location`, carried by
    `carrier`: an initializer, a sparse initializer's values, a Constant node's attribute tensor,
    a Constant inside an If branch, or a Constant inside a Loop body."""
    from onnx import TensorProto as T
    from onnx import helper as h

    x, y = (h.make_tensor_value_info(n, T.FLOAT, [1, 4]) for n in ("x", "y"))
    add = h.make_node("Add", ["x", "w"], ["y"])
    cond = h.make_tensor("cond", T.BOOL, [], [True])
    if carrier == "initializer":
        graph = h.make_graph([add], "g", [x], [y], [_ext("w", [1, 4], location)])
    elif carrier == "sparse initializer":
        graph = h.make_graph([add], "g", [x], [y])
        graph.sparse_initializer.append(h.make_sparse_tensor(
            _ext("w", [4], location), h.make_tensor("w_idx", T.INT64, [4], [0, 1, 2, 3]), [1, 4]))
    elif carrier == "attribute tensor":
        graph = h.make_graph([h.make_node("Constant", [], ["w"], value=_ext("w_const", [1, 4], location)), add],
                             "g", [x], [y])
    elif carrier == "If subgraph":
        then_g = h.make_graph([h.make_node("Constant", [], ["t"], value=_ext("w_then", [1, 4], location))],
                              "then", [], [h.make_tensor_value_info("t", T.FLOAT, [1, 4])])
        else_g = h.make_graph([h.make_node("Constant", [], ["e"], value=h.make_tensor("z", T.FLOAT, [1, 4], [0] * 4))],
                              "else", [], [h.make_tensor_value_info("e", T.FLOAT, [1, 4])])
        graph = h.make_graph([h.make_node("If", ["cond"], ["w"], then_branch=then_g, else_branch=else_g), add],
                             "g", [x], [y], [cond])
    elif carrier == "Loop body":
        body = h.make_graph(
            [h.make_node("Constant", [], ["wb"], value=_ext("w_body", [1, 4], location)),
             h.make_node("Add", ["v_in", "wb"], ["v_out"]), h.make_node("Identity", ["c_in"], ["c_out"])], "body",
            [h.make_tensor_value_info("i", T.INT64, []), h.make_tensor_value_info("c_in", T.BOOL, []),
             h.make_tensor_value_info("v_in", T.FLOAT, [1, 4])],
            [h.make_tensor_value_info("c_out", T.BOOL, []), h.make_tensor_value_info("v_out", T.FLOAT, [1, 4])])
        graph = h.make_graph([h.make_node("Loop", ["n", "cond", "x"], ["y"], body=body)], "g", [x], [y],
                             [h.make_tensor("n", T.INT64, [], [1]), cond])
    else:
        raise AssertionError(carrier)
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 18)], ir_version=9)
    return model.SerializeToString()
