"""Mixed int4/int8 for language models (`--max-drop` on an int4 LM, convert/llm/mixed.py) and `--int4-block`.

The tiny LLaMA is made int4-sensitive on purpose: its LM head is scaled up (peaky next-token
distributions) and layer 1's gate/up projections get one outlier per block of 32 (symmetric int4 then
rounds the rest of each block to zero). The search must find those groups and keep them at int8.
"""
from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
onnx = pytest.importorskip("onnx")

from conftest import run_cli  # noqa: E402
from test_llm_sources import bytelevel_tokenizer, save_dir, tiny_llama  # noqa: E402

from pocketml.convert.llm import groups as wg  # noqa: E402
from pocketml.convert.llm.mixed import fake_quantize  # noqa: E402
from pocketml.runtime.errors import UnsupportedError, UsageError  # noqa: E402

DAMAGED = "feedforward.1"


def sensitive_llama():
    tok = bytelevel_tokenizer()
    model = tiny_llama(tok.get_vocab_size())
    with torch.no_grad():
        model.lm_head.weight.mul_(30)
        for name in ("up_proj", "gate_proj"):
            w = getattr(model.model.layers[1].mlp, name).weight
            w[:, ::32] = 40 * w.abs().max()
    return model, tok


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    model, tok = sensitive_llama()
    return save_dir(model, tok, tmp_path_factory.mktemp("sensitive") / "llama")


@pytest.fixture(scope="module")
def mixed(model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("mixed-out")
    r = run_cli("convert", str(model_dir), "--task", "text-generation", "--to", "onnx", "--precision", "int4",
                "--max-drop", "2%", "-o", str(out))
    return r, out


def test_the_search_keeps_the_sensitive_groups_at_int8(mixed):
    r, out = mixed
    assert r.exit_code == 0, r.output
    m = json.loads((out / "onnx-int4" / "manifest.json").read_text())
    q = m["quantization"]
    rec = q["mixed_precision"]
    assert rec["all_int4_drop"] > 0.02                       # all-int4 misses the budget …
    assert rec["drop"] <= 0.02                               # … the chosen mix meets it on the search text
    assert DAMAGED in rec["int8_groups"] and "embedding" in rec["int8_groups"]
    assert [g for g, _ in rec["sensitivity"][:2]] == ["embedding", DAMAGED]
    assert rec["trials"][0] == [0, rec["all_int4_drop"]] and rec["trials"][-1][0] == len(rec["int8_groups"])
    assert "first half of convert/data/sentences.txt" in rec["search_text"]
    assert q["int8_groups"] == rec["int8_groups"]
    assert set(q["measured"]["weights"]) >= {"int4", "int8"}  # the file holds both, measured from the graph
    assert m["validation"]["status"] == "passed"
    assert "2 most sensitive group(s) int8" in r.output or "group(s) int8" in r.output


def test_an_unreachable_budget_is_exit_5_and_publishes_nothing(model_dir, tmp_path):
    r = run_cli("convert", str(model_dir), "--task", "text-generation", "--to", "onnx", "--precision", "int4",
                "--max-drop", "0.1%", "-o", str(tmp_path / "o"))
    assert r.exit_code == 5, r.output
    assert "with every weight group at int8 the perplexity increase is still" in r.output
    assert not (tmp_path / "o" / "onnx-int4").exists()


@pytest.mark.parametrize("args, needle", [
    (["--precision", "int8", "--max-drop", "5%"], "it needs --precision int4"),
    (["--precision", "int4", "--max-drop", "5%", "--to", "coreml"], "cannot run coreml here"),
])
def test_lm_max_drop_usage_errors(model_dir, tmp_path, args, needle):
    base = ["convert", str(model_dir), "--task", "text-generation", "-o", str(tmp_path / "o")]
    r = run_cli(*base, *(["--to", "onnx"] if "--to" not in args else []), *args)
    assert r.exit_code == 2, r.output
    assert needle in r.output


def test_int4_block_is_for_language_models(tmp_path):
    r = run_cli("convert", "models:tiny_cnn", "--to", "onnx", "--precision", "int4", "--int4-block", "128",
                "-o", str(tmp_path / "o"))
    assert r.exit_code == 2 and "--int4-block applies to language models" in r.output


def test_int4_block_128_reaches_the_onnx_artifact(tmp_path):
    tok = bytelevel_tokenizer()
    plain = save_dir(tiny_llama(tok.get_vocab_size()), tok, tmp_path / "plain")
    r = run_cli("convert", str(plain), "--task", "text-generation", "--to", "onnx", "--precision", "int4",
                "--int4-block", "128", "-o", str(tmp_path / "o"))
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "o" / "onnx-int4" / "manifest.json").read_text())
    assert m["quantization"]["block_size"] == 128 and m["recipe"]["options"]["int4_block"] == 128
    g = onnx.load(str(tmp_path / "o" / "onnx-int4" / "model.onnx"), load_external_data=False)
    blocks = {a.i for n in g.graph.node if n.op_type == "MatMulNBits" for a in n.attribute if a.name == "block_size"}
    assert blocks == {128}


def test_groups_map_onto_the_onnx_graph(tmp_path):
    from pocketml.convert.llm import onnx_export as ox
    model, tok = sensitive_llama()
    ox.export_fp32(model, model.config, tmp_path / "d.onnx")
    g = onnx.load(str(tmp_path / "d.onnx"), load_external_data=False)
    cfg = model.config
    assert wg.all_groups(cfg) == ["embedding", "attention.0", "feedforward.0", "attention.1", "feedforward.1"]
    assert len(wg.onnx_nodes(g, cfg, ["attention.0"])) == 4 and len(wg.onnx_nodes(g, cfg, [DAMAGED])) == 3
    emb = wg.onnx_nodes(g, cfg, ["embedding"])
    kinds = {n.name: n.op_type for n in g.graph.node}
    assert sorted(kinds[n] for n in emb) == ["Gather", "MatMul"]          # the table and the LM head
    everything = wg.onnx_nodes(g, cfg, wg.all_groups(cfg))
    assert len(everything) == len(set(everything)) == 2 * 7 + 2
    with pytest.raises(UsageError, match="feedforward.7"):
        wg.onnx_nodes(g, cfg, ["feedforward.7"])
    other = transformers.LlamaConfig(**{**cfg.to_dict(), "intermediate_size": 96})
    with pytest.raises(UnsupportedError, match="cannot be mapped"):
        wg.onnx_nodes(g, other, ["embedding"])


def test_fake_quantize_pads_blocks_and_int8_is_closer():
    torch.manual_seed(0)
    w = torch.randn(6, 40)
    q4, q8 = fake_quantize(w, 4, 32), fake_quantize(w, 8, 32)
    assert q4.shape == q8.shape == w.shape
    assert (q8 - w).abs().max() < (q4 - w).abs().max()
    assert len(torch.unique(fake_quantize(w, 4, 32)[0, :32])) <= 16       # one block: at most 16 levels
