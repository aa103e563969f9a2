"""The fp32 reference of a causal LM, and the held-out text it is judged on.

`TorchLM` runs the source model (torch eager, fp32 — for a GGUF source its de-quantized weights) behind
the same `LanguageModel` interface as the artifacts' runtimes, so validation compares like with like:
`runtime.lm.metrics.compare(reference, artifact, sequences, prompts)`.

Held-out text: the evaluation half of `convert/data/sentences.txt` (real English, CPython 3.11 standard
library docstrings, PSF license; shipped with pocketml, so the same on every machine), joined into
paragraphs and tokenized into fixed-length sequences. Language-model conversion calibrates nothing
(int8 is dynamic, int4/int8w weight-only); the mixed-precision search (`--max-drop`) tunes on the
first half only (`search_sequences`), so no text is shared between what is tuned and what is judged.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pocketml.runtime.lm import LanguageModel, load_tokenizer

SENTENCES = Path(__file__).resolve().parent.parent / "data" / "sentences.txt"
TEXT_SOURCE = ("evaluation half of convert/data/sentences.txt (CPython 3.11 standard-library docstrings, "
               "English prose, never used for calibration)")
# Greedy-generation prompts for the agreement check: plain text (every model has a tokenizer; not every
# model has a chat template).
PROMPTS = ("The capital of France is", "Here is a short poem about the sea:\n",
           "To sort a list of numbers in Python, you can")


def _halves() -> tuple[str, str]:
    lines = [ln.strip() for ln in SENTENCES.read_text(encoding="utf-8").splitlines()
             if ln.strip() and not ln.startswith("#")]
    return " ".join(lines[:len(lines) // 2]), " ".join(lines[len(lines) // 2:])


def held_out_text() -> str:
    return _halves()[1]


def _sequences(text: str, tokenizer, count: int, length: int) -> list[np.ndarray]:
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    n = min(count, len(ids) // length)
    return [np.asarray(ids[i * length:(i + 1) * length], dtype=np.int64) for i in range(n)]


def held_out_sequences(tokenizer, count: int, length: int) -> list[np.ndarray]:
    """`count` disjoint sequences of `length` tokens from the held-out text (fewer if it runs out)."""
    return _sequences(held_out_text(), tokenizer, count, length)


def search_sequences(tokenizer, count: int, length: int) -> list[np.ndarray]:
    """Sequences from the other half: what a search (mixed precision) may tune on; validation never reads it."""
    return _sequences(_halves()[0], tokenizer, count, length)


def prompt_ids(tokenizer) -> list[list[int]]:
    return [list(tokenizer.encode(p, add_special_tokens=True).ids) for p in PROMPTS]


class TorchLM(LanguageModel):
    """The source model in torch eager fp32, with Hugging Face's own KV cache (the reference backend)."""

    backend = "torch eager fp32"

    def __init__(self, spec, threads: int | None = None):
        super().__init__(load_tokenizer(spec.tokenizer_json), context_length=spec.context,
                         eos_token_ids=spec.eos_token_ids, chat_template=spec.chat_template, name=spec.name)
        import torch
        self._torch = torch
        self.module = spec.module.eval()
        if threads:
            torch.set_num_threads(threads)
        self._past = None

    def reset(self) -> None:
        self._past = None

    def _forward(self, ids, past):
        torch = self._torch
        with torch.no_grad():
            out = self.module(input_ids=torch.as_tensor(np.asarray(ids, dtype=np.int64))[None],
                              past_key_values=past, use_cache=True)
        self._past = out.past_key_values
        return out.logits[0].float().numpy()

    def prefill(self, ids: np.ndarray, all_logits: bool = False) -> np.ndarray:
        logits = self._forward(ids, None)
        return logits if all_logits else logits[-1:]

    def decode(self, token: int) -> np.ndarray:
        return self._forward([int(token)], self._past)[-1]
