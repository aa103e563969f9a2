"""The torch-free language-model runtime: chat-template sandbox, sampling, stop strings, streaming
detokenisation, context checks and LM metrics — over a scripted numpy backend (no model file)."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from pocketml.runtime.errors import UnsafeInputError, UsageError
from pocketml.runtime.lm import ChatTemplate, Detokenizer, LanguageModel, Sampler, StopStrings, filtered_probabilities
from pocketml.runtime.lm import metrics
from pocketml.runtime.lm.sampling import candidates

SPECIALS = ["<s>", "</s>", "<|im_start|>", "<|im_end|>"]          # ids 256 … 259
BOS, EOS, IM_START, IM_END = 256, 257, 258, 259
VOCAB = 260
CHATML = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def tiny_tokenizer():
    """A byte-fallback BPE over the 256 byte tokens plus 4 special tokens (vocabulary 260): every
    non-ASCII character is several tokens, as in Llama / SmolLM vocabularies."""
    from tokenizers import AddedToken, Tokenizer, decoders, models
    tok = Tokenizer(models.BPE(vocab={f"<0x{i:02X}>": i for i in range(256)}, merges=[], byte_fallback=True))
    tok.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIALS])
    return tok


def text_ids(text: str) -> list[int]:
    return list(text.encode("utf-8"))


class ScriptedLM(LanguageModel):
    """A numpy backend. `script`: the tokens it will generate in order after any prompt (one-hot
    logits); otherwise a fixed random bigram table (logits depend on the last token)."""
    backend = "scripted"

    def __init__(self, script=None, context_length=64, all_logits=True, **kw):
        super().__init__(tiny_tokenizer(), context_length=context_length, eos_token_ids=[EOS], **kw)
        self.script = script
        self.all_logits_in_prefill = all_logits
        self.table = np.random.default_rng(0).normal(0, 2, (VOCAB, VOCAB)).astype(np.float32)
        self.reset()

    def reset(self):
        self.cache, self.prompt_len = [], 0

    def _row(self, pos: int) -> np.ndarray:
        if self.script is None:
            return self.table[self.cache[pos]]
        row = np.full(VOCAB, -10.0, np.float32)
        k = pos + 1 - self.prompt_len
        row[self.script[k] if 0 <= k < len(self.script) else EOS] = 10.0
        return row

    def prefill(self, ids, all_logits=False):
        self.reset()
        self.cache, self.prompt_len = [int(t) for t in ids], len(ids)
        rows = np.stack([self._row(i) for i in range(len(ids))])
        return rows if all_logits else rows[-1:]

    def decode(self, token):
        assert len(self.cache) < self.context_length
        self.cache.append(int(token))
        return self._row(len(self.cache) - 1)


# ---------------------------------------------------------------- chat templates

def test_chat_template_renders_like_transformers():
    t = ChatTemplate(CHATML + "{{ strftime_now('%Y') | length }}{{ {'a': 'é'} | tojson }}", bos_token="<s>")
    out = t.render([{"role": "user", "content": "Hi"}])
    assert out == '<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n4{"a": "é"}'


@pytest.mark.parametrize("source", [
    "{{ ''.__class__.__mro__ }}",
    "{{ cycler.__init__.__globals__ }}",
    "{% if false %}{{ joiner.__init__.__globals__['os'] }}{% endif %}hello",      # refused even when not taken
    "{{ messages['__class__'] }}",
    "{{ lipsum.__globals__.os.popen('id').read() }}",
])
def test_chat_template_reaching_python_internals_is_refused(source):
    with pytest.raises(UnsafeInputError) as err:
        ChatTemplate(source).render([{"role": "user", "content": "x"}])
    assert err.value.exit_code == 4 and "internals" in str(err.value)


@pytest.mark.parametrize("source", [
    "{{ (messages | first) | attr('__class__') }}",           # a name built at run time: caught while rendering
    "{% set x = messages.append(1) %}{{ x }}",                  # the immutable sandbox: no mutating list methods
])
def test_chat_template_unsafe_at_run_time_is_refused(source):
    with pytest.raises(UnsafeInputError) as err:
        ChatTemplate(source).render([{"role": "user", "content": "x"}])
    assert err.value.exit_code == 4 and "sandbox" in str(err.value)


def test_chat_template_raise_exception_and_bad_messages_are_usage_errors():
    t = ChatTemplate("{% if messages[0].role != 'system' %}{{ raise_exception('system first') }}{% endif %}")
    with pytest.raises(UsageError, match="system first"):
        t.render([{"role": "user", "content": "x"}])
    for bad in ([], "hi", [{"content": "no role"}], [{"role": "user", "content": 3}]):
        with pytest.raises(UsageError):
            ChatTemplate(CHATML).render(bad)


def test_chat_template_syntax_error_and_size_cap():
    with pytest.raises(UnsafeInputError, match="not a valid Jinja"):
        ChatTemplate("{% for %}")
    with pytest.raises(UnsafeInputError, match="cap"):
        ChatTemplate("x" * (300 << 10))


def test_messages_to_a_model_without_chat_template_is_exit_2():
    lm = ScriptedLM(script=text_ids("ok"))
    with pytest.raises(UsageError, match="no chat template") as err:
        lm.generate([{"role": "user", "content": "hi"}])
    assert err.value.exit_code == 2


def test_chat_messages_use_the_template_and_its_special_tokens():
    lm = ScriptedLM(script=text_ids("ok"), chat_template=CHATML)
    ids = lm.encode([{"role": "user", "content": "Hi"}])
    assert ids[0] == IM_START and ids.count(IM_END) == 1 and ids[-len("assistant\n"):] == text_ids("assistant\n")
    assert "".join(lm.generate([{"role": "user", "content": "Hi"}], max_new_tokens=8)) == "ok"


# ---------------------------------------------------------------- sampling

def test_top_k_and_top_p_on_hand_made_logits():
    logits = np.log(np.array([0.05, 0.5, 0.15, 0.3]))
    p = filtered_probabilities(logits, top_p=0.8)               # 0.5 + 0.3 reaches 0.8: those two only
    np.testing.assert_allclose(p, [0, 0.625, 0, 0.375])
    p = filtered_probabilities(logits, top_p=0.81)
    np.testing.assert_allclose(p, [0, 0.5 / 0.95, 0.15 / 0.95, 0.3 / 0.95])
    p = filtered_probabilities(logits, top_k=2)
    np.testing.assert_allclose(p, [0, 0.625, 0, 0.375])
    p = filtered_probabilities(logits, top_k=3, top_p=0.6)      # top-k first, then the nucleus of what is left
    np.testing.assert_allclose(p, [0, 0.625, 0, 0.375])
    p = filtered_probabilities(logits, temperature=1e-3)
    np.testing.assert_allclose(p, [0, 1, 0, 0], atol=1e-12)
    p = filtered_probabilities(np.log([0.25, 0.25, 0.5]), temperature=2.0)     # flatter: softmax(log p / 2)
    np.testing.assert_allclose(p, np.sqrt([0.25, 0.25, 0.5]) / np.sqrt([0.25, 0.25, 0.5]).sum())
    idx, q = candidates(logits, top_p=0.8)
    assert sorted(idx.tolist()) == [1, 3] and q.sum() == pytest.approx(1)


def test_sampling_is_seeded_and_stays_inside_the_nucleus():
    logits = np.random.default_rng(1).normal(size=50)
    draws = lambda seed: [Sampler(0.9, 10, 0.7, seed)(logits) for _ in range(1)] + \
        [s(logits) for s in [Sampler(0.9, 10, 0.7, seed)] for _ in range(200)]
    assert draws(3) == draws(3)
    assert draws(3) != draws(4)
    allowed = set(np.flatnonzero(filtered_probabilities(logits, 0.9, 10, 0.7)))
    assert set(draws(5)) <= allowed and len(set(draws(5))) > 1
    assert Sampler()(logits) == int(np.argmax(logits)) == Sampler(1.0, top_k=1, seed=9)(logits)


@pytest.mark.parametrize("kw", [dict(temperature=-1), dict(temperature=float("nan")), dict(top_k=-1),
                                dict(top_p=0), dict(top_p=1.5), dict(top_k=1.5)])
def test_bad_sampling_parameters_are_usage_errors(kw):
    with pytest.raises(UsageError):
        Sampler(**kw)


def test_stop_strings_hold_back_a_possible_start():
    s = StopStrings(["END", "\n\n"])
    assert [s.feed(p) for p in ["abc E", "N", "x", " tail\n"]] == ["abc ", "", "ENx", " tail"]
    assert s.feed("\nmore") == "" and s.stopped and s.flush() == ""
    s = StopStrings("lo W")
    assert s.feed("Hel") == "He" and s.feed("lo World") == "l" and s.stopped       # "l" might have begun "lo W"
    s = StopStrings(["zz"])
    assert s.feed("az") == "a" and s.flush() == "z"
    with pytest.raises(UsageError):
        StopStrings([""])


# ---------------------------------------------------------------- streaming and generation

TEXT = "héllo 中🙂 wörld"


def test_streaming_detokenisation_waits_for_whole_characters():
    tok = tiny_tokenizer()
    d = Detokenizer(tok)
    pieces = [d.push(t) for t in text_ids(TEXT)]
    pieces.append(d.flush())
    assert "".join(pieces) == TEXT == tok.decode(text_ids(TEXT))
    assert all("\ufffd" not in p for p in pieces)
    assert "中" in pieces and "🙂" in pieces and "é" in pieces       # each emitted whole, on its last byte
    assert pieces.count("") == len(text_ids(TEXT)) + 1 - len(TEXT)


def test_generate_streams_multibyte_text_and_stops_at_eos():
    lm = ScriptedLM(script=text_ids(TEXT))
    pieces = list(lm.generate("prompt", max_new_tokens=40))
    assert "".join(pieces) == TEXT and all("\ufffd" not in p for p in pieces)
    assert lm.stats["stopped_by"] == "eos" and lm.stats["generated_tokens"] == len(text_ids(TEXT))
    assert lm.generate_ids(text_ids("prompt"), 40) == text_ids(TEXT)


def test_generate_with_stop_string_and_max_new_tokens():
    lm = ScriptedLM(script=text_ids("one, two, three"))
    assert "".join(lm.generate("p", max_new_tokens=40, stop=[", th"])) == "one, two"
    assert "".join(lm.generate("p", max_new_tokens=5)) == "one, "
    assert lm.stats["stopped_by"] == "max_new_tokens"


def test_sampled_generation_is_reproducible_with_a_seed():
    lm = ScriptedLM(context_length=128)
    run = lambda seed: lm.generate_ids(text_ids("abc"), 30, temperature=0.8, top_k=40, top_p=0.95, seed=seed)
    assert run(7) == run(7) and run(7) != run(8)
    greedy = lm.generate_ids(text_ids("abc"), 30)
    expect, last = [], text_ids("abc")[-1]
    for _ in range(30):
        last = int(np.argmax(lm.table[last]))
        if last == EOS:
            break
        expect.append(last)
    assert greedy == expect


def test_prompt_longer_than_the_context_names_both_lengths():
    lm = ScriptedLM(script=[65], context_length=16)
    with pytest.raises(UsageError) as err:
        lm.generate("x" * 20, max_new_tokens=1)              # raised at the call, not at the first next()
    assert err.value.exit_code == 2 and "20 tokens" in str(err.value) and "16" in str(err.value)
    with pytest.raises(UsageError, match="beyond"):
        lm.generate("x" * 10, max_new_tokens=7)
    with pytest.raises(UsageError, match="beyond"):
        lm.generate_ids([65], 16)
    with pytest.raises(UsageError):
        lm.generate("x", max_new_tokens=-1)
    with pytest.raises(UsageError):
        lm.score(list(range(17)))
    assert lm.generate_ids([65] * 10, 6) == [65]


def test_score_without_all_logits_prefill_decodes_token_by_token():
    ids = text_ids("hello there")
    a = ScriptedLM().score(ids)
    b = ScriptedLM(all_logits=False).score(ids)
    assert a.shape == (len(ids), VOCAB)
    np.testing.assert_array_equal(a, b)


def test_runtime_lm_imports_without_torch():
    code = ("import sys; import pocketml.runtime.lm, pocketml.runtime.lm.onnx_lm, pocketml.runtime.lm.metrics; "
            "bad = [m for m in ('torch', 'transformers') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------- metrics

def test_lm_metrics_on_hand_made_logits():
    rng = np.random.default_rng(0)
    ref = [rng.normal(size=(6, 10)).astype(np.float32) for _ in range(2)]
    ids = [rng.integers(0, 10, 6) for _ in range(2)]
    same = metrics.next_token_stats(ref, ref, ids)
    assert same["top1_agreement"] == 1 and same["kl_mean"] == pytest.approx(0, abs=1e-12)
    assert same["perplexity_change"] == 0 and same["positions"] == 12
    uniform = [np.zeros((6, 10), np.float32)] * 2
    flat = metrics.next_token_stats(ref, uniform, ids)
    assert flat["perplexity"] == pytest.approx(10)                   # uniform over 10 tokens
    assert flat["kl_mean"] > 0.1 and flat["perplexity_change"] == pytest.approx(10 / flat["perplexity_ref"] - 1)
    swapped = [r[:, ::-1].copy() for r in ref]
    assert metrics.next_token_stats(ref, swapped, ids)["top1_agreement"] < 0.5
    g = metrics.greedy_agreement([[1, 2, 3], [4, 5], [6, 7]], [[1, 2, 3], [4, 9], [6]])
    assert g["first_divergence"] == [None, 1, 1] and g["identical"] == 1
    assert g["matched_fraction_mean"] == pytest.approx((1 + 0.5 + 0.5) / 3)


def test_compare_runs_both_models():
    a, b = ScriptedLM(context_length=64), ScriptedLM(context_length=64)
    out = metrics.compare(a, b, [text_ids("some text")], prompts=[text_ids("ab")], max_new_tokens=8)
    assert out["top1_agreement"] == 1 and out["greedy"]["identical"] == 1
