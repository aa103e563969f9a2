"""Tokenisation for text models with the `tokenizers` library (no torch, no transformers)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import UsageError, require_extra


def encode(sentences: list[str], pre: dict, tokenizer_path: Path | None = None) -> list[list[np.ndarray]]:
    """Sentences → per-sample [input_ids, attention_mask] int64 arrays of shape (1, max_length)."""
    tok = load_tokenizer(Path(tokenizer_path or pre["tokenizer_file"]), pre["max_length"])
    out = []
    for enc in tok.encode_batch(sentences):
        ids = np.asarray(enc.ids, dtype=np.int64)[None]
        mask = np.asarray(enc.attention_mask, dtype=np.int64)[None]
        out.append([ids, mask][: len(pre.get("inputs", ["input_ids", "attention_mask"]))])
    return out


def load_tokenizer(path: Path, max_length: int):
    tokenizers = require_extra("tokenizers", "runtime", "tokenising text")
    if not path.is_file():
        raise UsageError(f"tokenizer file {path} not found")
    tok = tokenizers.Tokenizer.from_file(str(path))
    tok.enable_truncation(max_length)
    tok.enable_padding(length=max_length)
    return tok


def mean_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    m = mask[..., None].astype(np.float32)
    return (hidden * m).sum(1) / np.maximum(m.sum(1), 1e-9)
