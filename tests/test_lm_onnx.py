"""ONNX decoder export of tiny random-weight LLaMA and Gemma-3 models, run by the torch-free runtime
(`pocketml.runtime.lm.onnx_lm`) and checked against transformers: logits, greedy tokens, KV-cache IO,
precisions (fp32 / fp16 / int8 / int4 MatMulNBits), sidecars, and ONNX Runtime GenAI loading the result."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from test_lm_runtime import BOS, CHATML, EOS, VOCAB, text_ids, tiny_tokenizer  # noqa: E402

from pocketml.convert.llm import onnx_export as ox  # noqa: E402
from pocketml.runtime.errors import UsageError  # noqa: E402
from pocketml.runtime.lm import Detokenizer, metrics, onnx_lm  # noqa: E402

PROMPT = [BOS] + text_ids("The quick brown fox")
GEN = 16


def tiny_llama():
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=128,
                                   bos_token_id=BOS, eos_token_id=EOS, tie_word_embeddings=False)
    return transformers.LlamaForCausalLM(cfg).eval(), cfg


def tiny_gemma3():
    torch.manual_seed(0)
    cfg = transformers.Gemma3TextConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                                        num_attention_heads=4, num_key_value_heads=2, head_dim=16, vocab_size=VOCAB,
                                        max_position_embeddings=128, sliding_window=8, bos_token_id=BOS,
                                        eos_token_id=EOS, pad_token_id=0,
                                        layer_types=["sliding_attention", "sliding_attention", "full_attention"])
    return transformers.Gemma3ForCausalLM(cfg).eval(), cfg


def torch_greedy(module, ids, n):
    out = module.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                          max_new_tokens=n, do_sample=False, eos_token_id=EOS, pad_token_id=EOS)
    gen = out[0, len(ids):].tolist()
    return gen[:gen.index(EOS)] if EOS in gen else gen


def torch_logits(module, ids):
    with torch.no_grad():
        return module(torch.tensor([ids])).logits[0].numpy()


@pytest.fixture(scope="module")
def tokenizer_json(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tiny_tokenizer().save(str(path))
    return path


@pytest.fixture(scope="module")
def llama(tmp_path_factory, tokenizer_json):
    """The tiny LLaMA exported once at every precision (and int4 at both block sizes)."""
    torch.set_num_threads(2)
    module, cfg = tiny_llama()
    root = tmp_path_factory.mktemp("llama")
    info = {}
    for name, prec, block in [("fp32", "fp32", 32), ("fp16", "fp16", 32), ("int8", "int8", 32),
                              ("int4", "int4", 32), ("int4-b128", "int4", 128)]:
        info[name] = ox.export(module, cfg, tokenizer_json, root / name, prec, work=root, block_size=block,
                               chat_template=CHATML, context_length=64)
    return module, cfg, root, info


def test_kv_cache_io_names_and_layout(llama):
    import onnxruntime as ort
    _, cfg, root, info = llama
    sess = ort.InferenceSession(str(root / "fp32" / "model.onnx"), providers=["CPUExecutionProvider"])
    ins = {i.name: i for i in sess.get_inputs()}
    outs = {o.name: o for o in sess.get_outputs()}
    past = [f"past_key_values.{i}.{kv}" for i in range(2) for kv in ("key", "value")]
    assert list(ins) == ["input_ids", "attention_mask", "position_ids", *past]
    assert list(outs) == ["logits", *[f"present.{i}.{kv}" for i in range(2) for kv in ("key", "value")]]
    assert ins["past_key_values.0.key"].shape == ["batch_size", 2, "past_sequence_length", 16]
    assert outs["present.1.value"].shape == ["batch_size", 2, "total_sequence_length", 16]
    assert outs["logits"].shape == ["batch_size", "sequence_length", VOCAB]
    assert ins["attention_mask"].shape == ["batch_size", "total_sequence_length"]
    lay = info["fp32"]["layout"]
    assert lay["kv_shape"] == "[batch, 2, past, 16]" and lay["num_layers"] == 2
    assert ox.layout(cfg).kv_bytes_per_token(4) == 2 * 2 * 2 * 16 * 4


def test_fp32_logits_match_torch_over_a_sequence(llama):
    module, _, root, _ = llama
    ids = PROMPT + text_ids(" jumps over the lazy dog")
    ref = torch_logits(module, ids)
    lm = onnx_lm.load_dir(root / "fp32")
    np.testing.assert_allclose(lm.score(ids), ref, atol=1e-4)
    # the same positions reached one decode step at a time through the KV cache
    rows = [lm.prefill(np.array(ids[:5]))[-1]] + [lm.decode(t) for t in ids[5:]]
    np.testing.assert_allclose(np.stack(rows), ref[4:], atol=1e-4)
    assert lm.cache_length == len(ids)


@pytest.mark.parametrize("io_binding", [True, False])
def test_greedy_generation_equals_torch(llama, io_binding):
    module, _, root, _ = llama
    lm = onnx_lm.load_dir(root / "fp32", io_binding=io_binding)
    assert lm.generate_ids(PROMPT, GEN) == torch_greedy(module, PROMPT, GEN)


def test_io_binding_keeps_the_cache_in_ort_values(llama):
    import onnxruntime as ort
    _, _, root, _ = llama
    lm = onnx_lm.load_dir(root / "fp32")
    lm.prefill(np.array(PROMPT))
    lm.decode(65)
    assert all(isinstance(v, ort.OrtValue) for v in lm._past)
    assert lm._past[0].shape() == [1, 2, len(PROMPT) + 1, 16]
    assert lm.kv_bytes_per_token() == 2 * 2 * 2 * 16 * 4


def _attr(node, name):
    return next((a.i for a in node.attribute if a.name == name), None)


def _ops(path):
    import onnx
    model = onnx.load(str(path))
    return model, {n.op_type for n in model.graph.node}


def test_precisions_have_their_ops_sizes_and_kv_dtypes(llama):
    _, _, root, info = llama
    size = {k: (root / k / "model.onnx").stat().st_size for k in info}
    assert size["fp16"] < 0.6 * size["fp32"] and size["int8"] < 0.5 * size["fp32"]
    assert size["int4"] < size["int8"]          # (block 128 pads this model's 64-wide rows: not smaller here)
    model, ops = _ops(root / "int4" / "model.onnx")
    nbits = [n for n in model.graph.node if n.op_type == "MatMulNBits"]
    assert len(nbits) == 2 * 7 + 1                       # q k v o gate up down per layer, and the LM head
    assert {a.i for n in nbits for a in n.attribute if a.name == "block_size"} == {32}
    b128, _ = _ops(root / "int4-b128" / "model.onnx")
    assert {a.i for n in b128.graph.node if n.op_type == "MatMulNBits" for a in n.attribute
            if a.name == "block_size"} == {128}
    m8, _ = _ops(root / "int8" / "model.onnx")         # int8: 8-bit blocks, embedding table included
    assert {_attr(n, "bits") for n in m8.graph.node if n.op_type in ("MatMulNBits", "GatherBlockQuantized")} == {8}
    weights = {i.name for i in m8.graph.initializer}
    assert not [n.name for n in m8.graph.node if n.op_type in ("MatMul", "Gather") and n.input[0 if n.op_type ==
                "Gather" else 1] in weights]           # every weight quantized
    fp16 = onnx_lm.load_dir(root / "fp16")
    assert fp16.kv_dtype == np.float16 and fp16.kv_bytes_per_token() == 2 * 2 * 2 * 16 * 2
    assert info["int4"]["quantization"]["block_size"] == 32 and "MatMulNBits" in info["int4"]["quantization"]["nodes"]


def test_int8_dynamic_scheme_and_int4_with_int8_kept_nodes(llama, tmp_path):
    _, _, root, _ = llama
    base = root / "decoder-fp32.onnx"
    rec = ox.quantize(base, tmp_path / "dyn.onnx", "int8", int8_scheme="dynamic")
    assert rec["scheme"] == "dynamic" and "MatMulInteger" in rec["nodes"]
    head = [n.name for n in _ops(base)[0].graph.node if n.op_type == "MatMul"][-1]
    rec = ox.quantize(base, tmp_path / "mixed.onnx", "int4", keep_int8=[head])
    model, _ = _ops(tmp_path / "mixed.onnx")
    bits = {n.name: _attr(n, "bits") for n in model.graph.node if n.op_type == "MatMulNBits"}
    assert bits.pop(head + "_Q8") == 8 and set(bits.values()) == {4} and rec["int8_nodes"] == [head]
    with pytest.raises(UsageError):
        ox.quantize(base, tmp_path / "x.onnx", "int4", block_size=64)


def test_quantized_artifacts_stay_close_to_fp32(llama):
    _, _, root, _ = llama
    ref = onnx_lm.load_dir(root / "fp32")
    seq = [PROMPT + text_ids(" jumps over the lazy dog")]
    fp16 = metrics.compare(ref, onnx_lm.load_dir(root / "fp16"), seq, prompts=[PROMPT], max_new_tokens=GEN)
    assert fp16["top1_agreement"] == 1 and fp16["kl_mean"] < 1e-4 and fp16["greedy"]["identical"] == 1
    for name in ("int8", "int4"):
        s = metrics.compare(ref, onnx_lm.load_dir(root / name), seq)
        assert s["nan_count"] == 0 and s["kl_mean"] < 0.05 and abs(s["perplexity_change"]) < 0.05, (name, s)


def test_build_metadata_is_stripped(llama):
    _, _, root, _ = llama
    for name in ("fp32", "int4"):
        raw = (root / name / "model.onnx").read_bytes()
        assert b"stack_trace" not in raw and b"site-packages" not in raw and str(Path.cwd()).encode() not in raw


def test_sidecars_and_load_dir(llama):
    _, cfg, root, info = llama
    d = root / "fp32"
    assert sorted(info["fp32"]["files"]) == ["genai_config.json", "model.onnx", "tokenizer.json", "tokenizer_config.json"]
    g = json.loads((d / "genai_config.json").read_text())
    dec = g["model"]["decoder"]
    assert g["model"]["context_length"] == 64 and g["model"]["type"] == "llama" and g["model"]["eos_token_id"] == EOS
    assert (dec["num_hidden_layers"], dec["num_key_value_heads"], dec["head_size"]) == (2, 2, 16)
    assert dec["inputs"]["past_key_names"] == "past_key_values.%d.key" and dec["outputs"]["present_value_names"] == \
        "present.%d.value" and g["search"]["past_present_share_buffer"] is False
    tc = json.loads((d / "tokenizer_config.json").read_text())
    assert tc["chat_template"] == CHATML and tc["bos_token"] == "<s>" and tc["eos_token"] == "</s>"
    lm = onnx_lm.load_dir(d)
    assert lm.context_length == 64 and lm.eos_token_ids == {EOS}
    text = "".join(lm.generate([{"role": "user", "content": "Hi"}], max_new_tokens=8))
    ids = lm.encode([{"role": "user", "content": "Hi"}])
    detok = Detokenizer(lm.tokenizer)                   # random weights: bytes that need not form UTF-8
    tokens = lm.generate_ids(ids, 8)
    assert text == "".join(detok.push(t) for t in tokens) + detok.flush() and len(tokens) == 8
    with pytest.raises(UsageError, match="70 tokens.*64"):
        lm.generate("x" * 70, max_new_tokens=1)


def test_gemma3_with_sliding_window_exports_and_matches(tmp_path, tokenizer_json):
    torch.set_num_threads(2)
    module, cfg = tiny_gemma3()
    info = ox.export(module, cfg, tokenizer_json, tmp_path / "g", "fp32")
    assert info["layout"]["sliding_window"] == 8 and info["layout"]["model_type"] == "gemma3_text"
    lm = onnx_lm.load_dir(tmp_path / "g")
    ids = PROMPT + text_ids(" and more words")                 # longer than the window of 8
    np.testing.assert_allclose(lm.score(ids), torch_logits(module, ids), atol=1e-4)
    assert lm.generate_ids(PROMPT, GEN) == torch_greedy(module, PROMPT, GEN)
    assert cfg.tie_word_embeddings                              # the tied head is untied, then quantized
    try:
        import onnxruntime_genai  # noqa: F401
        genai_matches_ours(tmp_path / "g")                     # GenAI's gemma3_text type, window included
    except ImportError:
        pass
    q = ox.quantize(tmp_path / "g" / "model.onnx", tmp_path / "g4" / "model.onnx", "int4")
    assert len(q["untied"]) == 1 and q["nodes"]["MatMulNBits"] == 3 * 7 + 1 and q["nodes"]["GatherBlockQuantized"] == 1


GENAI = """
import json, sys
import numpy as np
import onnxruntime_genai as og
model = og.Model(sys.argv[1])
params = og.GeneratorParams(model)
ids = json.loads(sys.argv[2])
params.set_search_options(max_length=len(ids) + int(sys.argv[3]), do_sample=False)
gen = og.Generator(model, params)
gen.append_tokens(np.array(ids, dtype=np.int32))
while not gen.is_done():
    gen.generate_next_token()
print(json.dumps([int(t) for t in gen.get_sequence(0)][len(ids):]))
"""


def genai_matches_ours(directory: Path) -> None:
    """ONNX Runtime GenAI (in a child process) loads the directory and generates our greedy tokens."""
    out = subprocess.run([sys.executable, "-c", GENAI, str(directory), json.dumps(PROMPT), str(GEN)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    tokens = json.loads(out.stdout.strip().splitlines()[-1])
    ours = onnx_lm.load_dir(directory).generate_ids(PROMPT, GEN)
    assert tokens[:len(ours)] == ours and (len(tokens) == len(ours) or tokens[len(ours)] == EOS)


@pytest.mark.parametrize("name", ["fp32", "int4"])
def test_onnxruntime_genai_loads_and_generates(llama, name):
    pytest.importorskip("onnxruntime_genai")
    genai_matches_ours(llama[2] / name)
