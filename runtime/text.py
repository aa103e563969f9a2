"""Tokenisation for text models with the `tokenizers` library (no torch, no transformers)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import UnsafeInputError, UsageError, require_dependency
from .parsing import reading

MAX_TOKENIZER_BYTES = 64 << 20


def encode(sentences: list[str], pre: dict, tokenizer_path: Path | None = None) -> list[list[np.ndarray]]:
    """Sentences → per-sample [input_ids, attention_mask] int64 arrays of shape (1, max_length)."""
    path = Path(tokenizer_path or pre["tokenizer_file"])
    tok = load_tokenizer(path, pre["max_length"])
    with reading(path, "the tokenizer (while encoding text)"):
        encoded = tok.encode_batch(sentences)
    out = []
    for enc in encoded:
        ids = np.asarray(enc.ids, dtype=np.int64)[None]
        mask = np.asarray(enc.attention_mask, dtype=np.int64)[None]
        out.append([ids, mask][: len(pre.get("inputs", ["input_ids", "attention_mask"]))])
    return out


def load_tokenizer(path: Path, max_length: int):
    """A `tokenizers` tokenizer from a tokenizer.json (size-capped); any error the library raises on
    the file is a refusal naming it (runtime/parsing.py)."""
    tokenizers = require_dependency("tokenizers", "tokenizers", "tokenising text")
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"tokenizer file {path} not found")
    with reading(path, "the tokenizer"):
        with open(path, "rb") as fh:
            raw = fh.read(MAX_TOKENIZER_BYTES + 1)
        if len(raw) > MAX_TOKENIZER_BYTES:
            raise UnsafeInputError(f"{path}: tokenizer larger than {MAX_TOKENIZER_BYTES} bytes", file=str(path))
        tok = tokenizers.Tokenizer.from_str(raw.decode("utf-8"))
        tok.enable_truncation(max_length)
        tok.enable_padding(length=max_length)
    return tok


def mean_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    m = mask[..., None].astype(np.float32)
    return (hidden * m).sum(1) / np.maximum(m.sum(1), 1e-9)
