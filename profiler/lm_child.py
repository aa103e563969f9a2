"""Profile one language-model artifact inside the profiling child (`profiler/child.py` calls `profile_lm`).

Everything runs through pocketml's torch-free runtime (`runtime.load` → a `runtime.lm.LanguageModel`),
calling `prefill` / `decode` directly, greedy, EOS ignored, so generation never stops early:

- load: the runtime session (parse + allocate), after the checksums were verified;
- time to first token (TTFT): prefill of a `prompt_tokens` prompt (the reference set's held-out token
  ids, repeated if short; tokenisation not included) + the greedy pick — once cold, then the median of
  `TTFT_RUNS` warm runs; prefill tokens/s = prompt tokens / that prefill time;
- decode: `gen_tokens` steps after that prompt, each one `decode` call + the greedy pick, timed one by one
  (tokens/s = steps / their total time; per-token latency percentiles);
- decode at depth: `DEPTH_DECODE` steps after 1 (the first token; "depth 0"), 512, 1024 … tokens already in
  the cache, up to `context` (capped so the steps fit in the artifact's context);
- memory: peak resident memory added by the session, read after the deepest run, so it includes the KV
  cache holding `memory_context_tokens` tokens (and the runtime's arenas); quality scoring comes after;
- quality: every reference sequence scored by the artifact; perplexity vs the reference's (its per-position
  NLL in reference/outputs.npz) and next-token top-1 agreement with the reference's argmax.
"""
from __future__ import annotations

import math
import time

import numpy as np

TTFT_RUNS = 3
DEPTH_STEP = 512
DEPTH_DECODE = 32          # decode steps timed at each depth (fewer when --gen-tokens is smaller)


def reference_ids(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(input_ids [n, L], reference nll [n, L-1], reference argmax [n, L]) from a verified reference set."""
    with np.load(f"{path}/inputs.npz", allow_pickle=False) as z:
        ids = np.asarray(z["input_ids"], dtype=np.int64)
    with np.load(f"{path}/outputs.npz", allow_pickle=False) as z:
        nll, argmax = np.asarray(z["nll"], dtype=np.float64), np.asarray(z["argmax"], dtype=np.int64)
    from pocketml.runtime.errors import UnsafeInputError
    if ids.ndim != 2 or nll.shape != (ids.shape[0], ids.shape[1] - 1) or argmax.shape != ids.shape:
        raise UnsafeInputError(f"{path}: not a language-model reference set (input_ids {ids.shape}, "
                               f"nll {nll.shape}, argmax {argmax.shape})")
    return ids, nll, argmax


def prompt_of(ids: np.ndarray, n: int) -> np.ndarray:
    """`n` token ids: the held-out ids in order, repeated if there are fewer."""
    flat = ids.reshape(-1)
    return np.resize(flat, n).astype(np.int64)


def depths(largest: int, context: int, steps: int) -> list[int]:
    """Tokens in the cache before the timed decode steps: 1, 512, 1024 … up to `largest`, capped so that
    `steps` more fit in `context`."""
    top = max(1, min(largest, context - steps))
    return sorted({1, *range(DEPTH_STEP, top, DEPTH_STEP), top})


def timed_decode(lm, token: int, steps: int) -> tuple[list[float], int]:
    """`steps` greedy decode steps from `token`; per-step milliseconds (decode call + argmax)."""
    times, clock = [], time.perf_counter_ns
    for _ in range(steps):
        t0 = clock()
        token = int(np.argmax(lm.decode(token)))
        times.append((clock() - t0) / 1e6)
    return times, token


def ttft(lm, prompt: np.ndarray) -> tuple[float, int]:
    """(ms to the first token: prefill + greedy pick, first token)."""
    t0 = time.perf_counter_ns()
    token = int(np.argmax(lm.prefill(prompt)[-1]))
    return (time.perf_counter_ns() - t0) / 1e6, token


def speed(lm, prompt: np.ndarray, gen_tokens: int) -> dict:
    from .child import latency_stats
    cold, _ = ttft(lm, prompt)
    warm = [ttft(lm, prompt)[0] for _ in range(TTFT_RUNS)]
    ms = float(np.median(warm))
    _, token = ttft(lm, prompt)
    steps, _ = timed_decode(lm, token, gen_tokens)
    return {"ttft_cold_ms": cold, "ttft_ms": ms, "ttft_runs_ms": warm,
            "prefill_tokens_per_s": len(prompt) * 1e3 / ms,
            "decode": {"tokens": len(steps), "tokens_per_s": len(steps) * 1e3 / sum(steps),
                       "latency_ms": latency_stats(steps)}}


def at_depths(lm, ids: np.ndarray, largest: int, gen_tokens: int) -> list[dict]:
    steps = max(1, min(gen_tokens, DEPTH_DECODE))
    out = []
    for d in depths(largest, lm.context_length, steps):
        _, token = ttft(lm, prompt_of(ids, d))
        times, _ = timed_decode(lm, token, steps)
        out.append({"depth_tokens": d, "decode_tokens": steps, "tokens_per_s": steps * 1e3 / sum(times),
                    "p50_ms": float(np.percentile(times, 50))})
    return out


def quality(lm, ids: np.ndarray, ref_nll: np.ndarray, ref_argmax: np.ndarray) -> dict:
    from pocketml.runtime.lm.metrics import nll
    losses, agree, nan_count = [], 0, 0
    for seq, want in zip(ids, ref_argmax):
        logits = lm.score(seq)
        nan_count += int(np.count_nonzero(~np.isfinite(logits)))
        losses.append(nll(logits, seq))
        agree += int((logits.argmax(-1) == want).sum())
    ppl_ref, ppl = math.exp(float(ref_nll.mean())), math.exp(float(np.concatenate(losses).mean()))
    return {"samples": int(ids.shape[0]), "tokens_per_sample": int(ids.shape[1]), "positions": int(ids.size),
            "perplexity_ref": ppl_ref, "perplexity": ppl, "perplexity_change": (ppl - ppl_ref) / ppl_ref,
            "top1_agreement": agree / ids.size, "nan_count": nan_count}


def profile_lm(args: dict, art, manifest, verify_ms: float) -> dict:
    """The child's result for a language-model artifact (see the module docstring)."""
    from pocketml.runtime import formats
    from pocketml.runtime import session as rt

    from .child import _peak_rss_kb, _reset_peak, _rss_kb
    ids, ref_nll, ref_argmax = reference_ids(args["reference_dir"])
    formats.get(manifest.format).warm_runtime()
    import jinja2  # noqa: F401  (the chat template's sandbox and the tokenizer are not the session's memory)
    import tokenizers  # noqa: F401
    p, g = args["prompt_tokens"], args["gen_tokens"]
    _reset_peak()
    rss0 = _rss_kb()
    t = time.perf_counter()
    lm = rt.load(art, threads=args["threads"], verify=False)
    load_ms = (time.perf_counter() - t) * 1e3
    try:
        lm.check_room(p, g)
        result = {"load_ms": load_ms, "verify_ms": verify_ms, "backend": lm.backend,
                  "context_length": lm.context_length, **speed(lm, prompt_of(ids, p), g)}
        result["depths"] = at_depths(lm, ids, args["context"], g)
        result["memory_context_tokens"] = int(lm.cache_length)
        result["peak_rss_added_mb"] = max(0.0, (_peak_rss_kb() - rss0) / 1024)
        kv = lm.kv_bytes_per_token()
        held = lm.kv_cache_bytes() if hasattr(lm, "kv_cache_bytes") else kv * lm.cache_length   # allocated whole
        result.update(kv_bytes_per_token=int(kv), kv_cache_mb=held / 1e6,
                      kv_cache_mb_at_context=kv * lm.context_length / 1e6)
        result["accuracy"] = quality(lm, ids, ref_nll, ref_argmax)
    finally:
        lm.close()
    return result
