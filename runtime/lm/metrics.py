"""Language-model validation metrics from logits (the artifact's runtime vs the fp32 reference).

Inputs are per-sequence arrays `logits[i]` ([n, vocab], row j predicting token j + 1) and the token
ids they were computed on. Everything is numpy, in row chunks (a 262k vocabulary at 512 positions
would otherwise be a gigabyte of float64).

- `next_token_stats`: top-1 agreement of the next-token argmax, mean and max KL(ref ‖ artifact)
  of the next-token distributions (nats), both perplexities and the relative change.
- `greedy_agreement`: per prompt, the first position where two greedy generations differ.
"""
from __future__ import annotations

import math

import numpy as np

CHUNK = 64


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def _chunks(n: int):
    for start in range(0, n, CHUNK):
        yield slice(start, min(n, start + CHUNK))


def nll(logits: np.ndarray, token_ids) -> np.ndarray:
    """Negative log-likelihood of each next token: row j of `logits` scores token_ids[j + 1]."""
    ids = np.asarray(token_ids, dtype=np.int64).reshape(-1)
    out = []
    for sl in _chunks(len(ids) - 1):
        lp = log_softmax(logits[sl])
        out.append(-lp[np.arange(lp.shape[0]), ids[sl.start + 1:sl.stop + 1]])
    return np.concatenate(out) if out else np.zeros(0)


def perplexity(logits_list, ids_list) -> float:
    """exp(mean next-token NLL) over all sequences' scored positions."""
    losses = np.concatenate([nll(lg, ids) for lg, ids in zip(logits_list, ids_list)])
    return float(math.exp(losses.mean())) if losses.size else float("nan")


def _kl_rows(ref: np.ndarray, art: np.ndarray) -> np.ndarray:
    lp, lq = log_softmax(ref), log_softmax(art)
    return (np.exp(lp) * (lp - lq)).sum(axis=-1)


def next_token_stats(ref_logits, art_logits, ids_list) -> dict:
    """Compare next-token predictions position by position over every sequence (lists of [n, vocab])."""
    agree = kl_sum = 0.0
    kl_max, positions, nan_count = 0.0, 0, 0
    for ref, art in zip(ref_logits, art_logits):
        if ref.shape != art.shape:
            raise ValueError(f"logits shapes differ: reference {ref.shape}, artifact {art.shape}")
        nan_count += int(np.count_nonzero(~np.isfinite(art)))
        for sl in _chunks(ref.shape[0]):
            r, a = ref[sl], art[sl]
            agree += float((r.argmax(-1) == a.argmax(-1)).sum())
            kl = _kl_rows(r, a)
            kl_sum += float(kl.sum())
            kl_max = max(kl_max, float(kl.max()))
            positions += r.shape[0]
    ppl_ref, ppl_art = perplexity(ref_logits, ids_list), perplexity(art_logits, ids_list)
    return {"positions": positions, "sequences": len(ids_list),
            "top1_agreement": agree / positions if positions else float("nan"),
            "kl_mean": kl_sum / positions if positions else float("nan"), "kl_max": kl_max,
            "perplexity_ref": ppl_ref, "perplexity": ppl_art,
            "perplexity_change": (ppl_art - ppl_ref) / ppl_ref if ppl_ref else float("nan"),
            "nan_count": nan_count}


def first_divergence(ref_tokens, art_tokens) -> int | None:
    """Index of the first differing token (a shorter sequence differs where it ends); None if equal."""
    for i, (a, b) in enumerate(zip(ref_tokens, art_tokens)):
        if a != b:
            return i
    return None if len(ref_tokens) == len(art_tokens) else min(len(ref_tokens), len(art_tokens))


def greedy_agreement(ref_runs, art_runs) -> dict:
    """Greedy generations per prompt (lists of token lists, reference first) → first divergence per
    prompt, how many matched completely, and the mean fraction of the reference matched before
    diverging."""
    firsts = [first_divergence(list(r), list(a)) for r, a in zip(ref_runs, art_runs)]
    matched = [(len(r) if f is None else f) / max(len(r), 1) for r, f in zip(ref_runs, firsts)]
    return {"prompts": len(firsts), "identical": sum(f is None for f in firsts), "first_divergence": firsts,
            "matched_fraction_mean": float(np.mean(matched)) if matched else float("nan")}


def compare(ref_lm, art_lm, sequences, prompts=(), max_new_tokens: int = 32) -> dict:
    """Run both models (LanguageModel instances; the reference may be any object with `score` and
    `generate_ids`) over token sequences and greedy prompts: every metric above in one dict."""
    ids_list = [np.asarray(s, dtype=np.int64) for s in sequences]
    ref = [ref_lm.score(ids) for ids in ids_list]
    art = [art_lm.score(ids) for ids in ids_list]
    stats = next_token_stats(ref, art, ids_list)
    if prompts:
        ref_runs = [ref_lm.generate_ids(p, max_new_tokens) for p in prompts]
        art_runs = [art_lm.generate_ids(p, max_new_tokens) for p in prompts]
        stats["greedy"] = {**greedy_agreement(ref_runs, art_runs), "max_new_tokens": max_new_tokens}
    return stats
