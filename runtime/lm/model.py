"""`LanguageModel`: tokenisation, chat template, generation and scoring over a backend's KV-cache steps.

A backend subclasses it and implements `reset`, `prefill` and `decode` (see `runtime/lm/__init__.py`);
everything a user calls — `generate`, `generate_ids`, `score`, `encode` — lives here, once.
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..errors import UsageError
from .chat import ChatTemplate, no_template
from .sampling import Sampler, StopStrings


def load_tokenizer(path: Path):
    """tokenizers.Tokenizer from a tokenizer.json (size-capped, parser errors refused: runtime/text.py),
    with no padding or truncation."""
    from ..text import load_tokenizer as _load
    tok = _load(Path(path), 1)
    tok.no_padding()
    tok.no_truncation()
    return tok


class Detokenizer:
    """Token ids in, text pieces out, so that the pieces join to `tokenizer.decode(all ids)`.

    A piece is emitted only once decoding no longer ends in U+FFFD: a character split over several
    byte tokens (é, 中, 🙂 in byte-level or byte-fallback vocabularies) waits for its last byte.
    Decoding a window that starts a few tokens back keeps the spaces that tokenizers strip at the
    start of a text (the offsets scheme of text-generation-inference)."""

    def __init__(self, tokenizer, skip_special_tokens: bool = True):
        self._tok, self._skip = tokenizer, skip_special_tokens
        self.ids: list[int] = []
        self._prefix = self._read = 0

    def _decode(self, ids) -> str:
        return self._tok.decode(ids, skip_special_tokens=self._skip)

    def push(self, token: int) -> str:
        self.ids.append(int(token))
        before = self._decode(self.ids[self._prefix:self._read])
        now = self._decode(self.ids[self._prefix:])
        if len(now) > len(before) and not now.endswith("\ufffd"):
            self._prefix, self._read = self._read, len(self.ids)
            return now[len(before):]
        return ""

    def flush(self) -> str:
        """What is still held (an incomplete character decodes as U+FFFD)."""
        before = self._decode(self.ids[self._prefix:self._read])
        now = self._decode(self.ids[self._prefix:])
        self._prefix = self._read = len(self.ids)
        return now[len(before):] if len(now) > len(before) else ""


class LanguageModel:
    """Base class: a causal LM whose backend keeps the KV cache inside its runtime."""

    backend = "abstract"
    all_logits_in_prefill = True     # prefill(ids, all_logits=True) gives a row per position

    def __init__(self, tokenizer, *, context_length: int, eos_token_ids, chat_template: str | None = None,
                 bos_token: str | None = None, eos_token: str | None = None, name: str = "this model"):
        self.tokenizer = tokenizer
        self.context_length = int(context_length)
        self.eos_token_ids = frozenset(int(t) for t in (eos_token_ids or ()))
        self.name = name
        self.chat_template = (ChatTemplate(chat_template, bos_token=bos_token, eos_token=eos_token,
                                           where=f"{name}'s chat template") if chat_template else None)
        self.stats: dict = {}

    # ------------------------------------------------------------ what a backend implements
    def reset(self) -> None:
        """Empty the KV cache."""
        raise NotImplementedError

    def prefill(self, ids: np.ndarray, all_logits: bool = False) -> np.ndarray:
        """Start a sequence: empty the cache, run `ids` (int64, 1-D), keep their keys and values.
        Returns float32 logits [len(ids), vocab] when `all_logits`, else at least the last row."""
        raise NotImplementedError

    def decode(self, token: int) -> np.ndarray:
        """Append one token to the cached sequence; float32 logits [vocab] for the next one."""
        raise NotImplementedError

    # ------------------------------------------------------------ text
    def encode(self, prompt_or_messages, add_generation_prompt: bool = True) -> list[int]:
        """A string is encoded with the tokenizer's special tokens (BOS where it adds one); chat
        messages are rendered by the model's chat template, which writes its own special tokens."""
        if isinstance(prompt_or_messages, str):
            return list(self.tokenizer.encode(prompt_or_messages, add_special_tokens=True).ids)
        if self.chat_template is None:
            raise no_template(self.name)
        text = self.chat_template.render(prompt_or_messages, add_generation_prompt=add_generation_prompt)
        return list(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def check_room(self, prompt_tokens: int, max_new_tokens: int) -> None:
        if not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 0:
            raise UsageError(f"max_new_tokens {max_new_tokens!r}: an integer ≥ 0")
        if prompt_tokens < 1:
            raise UsageError("the prompt is empty (0 tokens): give at least one token")
        if prompt_tokens > self.context_length:
            raise UsageError(f"prompt is {prompt_tokens} tokens, longer than {self.name}'s context of "
                             f"{self.context_length} tokens", prompt_tokens=prompt_tokens,
                             context_length=self.context_length)
        if prompt_tokens + max_new_tokens > self.context_length:
            raise UsageError(f"max_new_tokens {max_new_tokens} after a {prompt_tokens}-token prompt goes beyond "
                             f"{self.name}'s context of {self.context_length} tokens (room for "
                             f"{self.context_length - prompt_tokens})", prompt_tokens=prompt_tokens,
                             max_new_tokens=max_new_tokens, context_length=self.context_length)

    # ------------------------------------------------------------ generation
    def generate(self, prompt_or_messages, max_new_tokens: int = 128, temperature: float = 0.0, top_k: int = 0,
                 top_p: float = 1.0, seed: int | None = None, stop=None) -> Iterator[str]:
        """Stream text pieces. Arguments are checked now (errors raise here, not at the first `next`)."""
        ids = self.encode(prompt_or_messages)
        sampler = Sampler(temperature, top_k, top_p, seed)
        stops = StopStrings(stop)
        self.check_room(len(ids), max_new_tokens)
        return self._stream(self._tokens(ids, max_new_tokens, sampler), stops)

    def _stream(self, tokens: Iterator[int], stops: StopStrings) -> Iterator[str]:
        detok = Detokenizer(self.tokenizer)
        for token in tokens:
            piece = stops.feed(detok.push(token))
            if piece:
                yield piece
            if stops.stopped:
                tokens.close()
                return
        tail = stops.feed(detok.flush()) + stops.flush()
        if tail:
            yield tail

    def generate_ids(self, ids, max_new_tokens: int, temperature: float = 0.0, top_k: int = 0,
                     top_p: float = 1.0, seed: int | None = None) -> list[int]:
        """Token ids in, generated token ids out (EOS not included): for validation and benchmarks."""
        ids = [int(t) for t in ids]
        sampler = Sampler(temperature, top_k, top_p, seed)
        self.check_room(len(ids), max_new_tokens)
        return list(self._tokens(ids, max_new_tokens, sampler))

    def _tokens(self, ids: list[int], max_new_tokens: int, sampler: Sampler) -> Iterator[int]:
        t0 = time.perf_counter()
        logits = self.prefill(np.asarray(ids, dtype=np.int64))[-1]
        t1 = time.perf_counter()
        self.stats = {"prompt_tokens": len(ids), "prefill_s": t1 - t0, "generated_tokens": 0, "decode_s": [],
                      "stopped_by": "max_new_tokens"}
        for i in range(max_new_tokens):
            token = sampler(logits)
            if token in self.eos_token_ids:
                self.stats["stopped_by"] = "eos"
                return
            self.stats["generated_tokens"] += 1
            yield token
            if i + 1 < max_new_tokens:
                t = time.perf_counter()
                logits = self.decode(token)
                self.stats["decode_s"].append(time.perf_counter() - t)

    # ------------------------------------------------------------ scoring
    def score(self, token_ids) -> np.ndarray:
        """Next-token logits for every position of `token_ids`: row i predicts token i + 1.
        float32 [n, vocab]; the cache is left holding the sequence."""
        ids = np.asarray(token_ids, dtype=np.int64).reshape(-1)
        self.check_room(len(ids), 0)
        if self.all_logits_in_prefill:
            return np.asarray(self.prefill(ids, all_logits=True), dtype=np.float32)
        rows = [self.prefill(ids[:1])[-1]]
        rows += [self.decode(int(t)) for t in ids[1:]]
        return np.stack(rows).astype(np.float32, copy=False)

    def close(self) -> None:
        """Release the runtime's resources (the base holds none)."""


MAX_CONFIG_BYTES = 1 << 20


def read_config_json(root: Path, name: str) -> dict:
    """A backend's side file (genai_config.json, litert_config.json, tokenizer_config.json) through the path
    validator, size-capped, its parse errors mapped to exit 4; it must be a JSON object."""
    from ..manifest import read_json_object
    from ..paths import contained_file, open_regular
    return read_json_object(contained_file(root, name, allow_dir=False), MAX_CONFIG_BYTES, open_regular, name)
