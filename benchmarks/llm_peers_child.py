"""One peer, one thread count, in its own process: `benchmarks/llm_peers.py` runs this file once per row.

    python benchmarks/llm_peers_child.py '<json: runner, path, threads, reference, prompt/gen/context, result>'

Every runner is measured by the same code as `pocketml profile`'s child (`profiler/lm_child.py`):
`speed` (TTFT = prefill of the prompt + the greedy pick, cold once then the median of 3 warm runs;
decode = `gen` greedy steps after it, EOS ignored, each step timed) and `quality` (every reference
sequence scored; perplexity vs the reference's NLL, next-token top-1 agreement with its argmax). A
runner only has to offer `prefill(ids) -> logits`, `decode(token) -> logits`, `score(ids) -> [n, vocab]`.
LiteRT-LM's Python API takes text and returns text, so it has its own timing (below) and scoring.
Peak RSS: this process's VmHWM (`/proc/self/status`) read after the timed runs, before scoring.
"""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


# ---------------------------------------------------------------- runners with logits

class LlamaCpp:
    """llama.cpp through llama-cpp-python: `Llama.eval` on token ids (no BOS added), the last row's logits
    read from the context (`llama_get_logits_ith`); scoring with a second context made with `logits_all`."""

    backend = "llama.cpp (llama-cpp-python)"

    def __init__(self, path: str, threads: int, context: int):
        import llama_cpp
        self._lc, self._path, self._threads = llama_cpp, path, threads
        self.llm = self._open(context, logits_all=False)
        self.n_vocab = self.llm.n_vocab()
        self.version = llama_cpp.__version__

    def _open(self, n_ctx: int, logits_all: bool):
        return self._lc.Llama(self._path, n_ctx=n_ctx, n_threads=self._threads, n_threads_batch=self._threads,
                              logits_all=logits_all, verbose=False)

    def _last(self) -> np.ndarray:
        ptr = self._lc.llama_get_logits_ith(self.llm.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).copy()

    def prefill(self, ids) -> np.ndarray:
        self.llm.reset()
        self.llm.eval([int(t) for t in ids])
        return self._last()[None]

    def decode(self, token: int) -> np.ndarray:
        self.llm.eval([int(token)])
        return self._last()

    def score(self, ids) -> np.ndarray:
        if not hasattr(self, "_scorer"):
            self._scorer = self._open(max(512, len(ids)), logits_all=True)
        self._scorer.reset()
        self._scorer.eval([int(t) for t in ids])
        return np.asarray(self._scorer.scores[:len(ids)], dtype=np.float32).copy()

    def close(self) -> None:
        for lm in (self.llm, getattr(self, "_scorer", None)):
            if lm is not None:
                lm.close()


class OrtGenAI:
    """ONNX Runtime GenAI's Generator on its builder's folder: `append_tokens` runs the model and keeps the
    KV cache (its own buffers), `get_logits` gives the last position; the greedy pick is the harness's
    argmax, so EOS is ignored. Threads: the decoder session's intra-op count, set by a config overlay."""

    backend = "ONNX Runtime GenAI"

    def __init__(self, path: str, threads: int, context: int):
        import onnxruntime  # noqa: F401  (loads the ORT library GenAI binds to)
        import onnxruntime_genai as og
        self._og = og
        cfg = og.Config(path)
        cfg.overlay(json.dumps({"model": {"decoder": {"session_options": {
            "intra_op_num_threads": threads, "inter_op_num_threads": 1}}}}))
        self.model = og.Model(cfg)
        self.context = context
        self.version = getattr(og, "__version__", "?")
        self.gen = None

    def _generator(self, max_length: int):
        params = self._og.GeneratorParams(self.model)
        params.set_search_options(max_length=max_length, do_sample=False)
        return self._og.Generator(self.model, params)

    def prefill(self, ids) -> np.ndarray:
        self.gen = None                                   # drop the previous sequence's cache first
        self.gen = self._generator(self.context)
        self.gen.append_tokens(np.asarray(ids, dtype=np.int32))
        return np.asarray(self.gen.get_logits(), dtype=np.float32).reshape(1, -1)

    def decode(self, token: int) -> np.ndarray:
        self.gen.append_tokens(np.array([token], dtype=np.int32))
        return np.asarray(self.gen.get_logits(), dtype=np.float32).reshape(-1)

    def score(self, ids) -> np.ndarray:
        self.gen = None
        self.gen = self._generator(self.context)
        self.gen.append_tokens(np.asarray(ids, dtype=np.int32))
        logits = np.asarray(self.gen.get_output("logits"), dtype=np.float32)
        return logits.reshape(len(ids), -1)

    def close(self) -> None:
        self.gen = self.model = None


class Torch:
    """The fp32 reference itself (convert/llm/reference.TorchLM: torch eager, Hugging Face's KV cache)."""

    backend = "torch eager fp32"

    def __init__(self, path: str, threads: int, context: int):
        import torch

        from pocketml.convert.llm import load_causal_lm
        from pocketml.convert.llm.reference import TorchLM
        torch.set_num_threads(threads)
        self.spec = load_causal_lm(path, context=context)
        self.lm = TorchLM(self.spec, threads)
        self.version = torch.__version__
        self.size_mb = sum(p.numel() * p.element_size() for p in self.spec.module.parameters()) / 1e6

    def __getattr__(self, name):
        if name == "lm":
            raise AttributeError(name)
        return getattr(self.lm, name)

    def close(self) -> None:
        self.spec.close()


class Pocketml:
    """A pocketml artifact through pocketml's own torch-free runtime (`pocketml.runtime.load`)."""

    def __init__(self, path: str, threads: int, context: int):
        from pocketml.runtime import load
        self.lm = load(path, threads=threads)
        self.backend = self.lm.backend
        self.version = "pocketml"

    def __getattr__(self, name):
        if name == "lm":
            raise AttributeError(name)
        return getattr(self.lm, name)


LOGIT_RUNNERS = {"llama.cpp": LlamaCpp, "ort-genai": OrtGenAI, "torch": Torch, "pocketml": Pocketml}


def with_logits(args: dict) -> dict:
    from pocketml.profiler.child import _peak_rss_kb, _rss_kb
    from pocketml.profiler.lm_child import prompt_of, quality, reference_ids, speed
    ids, ref_nll, ref_argmax = reference_ids(args["reference"])
    rss0 = _rss_kb()
    t = time.perf_counter()
    lm = LOGIT_RUNNERS[args["runner"]](args["path"], args["threads"], args["context"])
    out = {"load_ms": (time.perf_counter() - t) * 1e3, "backend": lm.backend, "version": lm.version,
           "baseline_rss_mb": rss0 / 1024, "size_mb": getattr(lm, "size_mb", None)}
    out.update(speed(lm, prompt_of(ids, args["prompt_tokens"]), args["gen_tokens"]))
    out["peak_rss_mb"] = _peak_rss_kb() / 1024
    if args.get("score"):
        out["accuracy"] = quality(lm, ids, ref_nll, ref_argmax)
    lm.close()
    return out


# ---------------------------------------------------------------- LiteRT-LM (text in, text out)

NO_LOGITS = "not measured: LiteRT-LM's Python API exposes no logits (its text scoring gives perplexity only)"


def litert_lm(args: dict) -> dict:
    """TTFT: `run_prefill` of the prompt's text (the held-out ids decoded; re-tokenised by the bundle, the
    match is recorded) until the first streamed piece of `run_decode_async`; cold once, median of 3 warm.
    Decode: wall clock from that first piece to the end of a `gen`-token stream, over the tokens LiteRT-LM's
    benchmark info counts (it stops at EOS, so the count is recorded); its own tokens/s are kept beside. Perplexity: `run_text_scoring` of each sequence's text (per-token log-likelihoods,
    `litert_perplexity`). Next-token agreement needs logits, which the API does not give."""
    import litert_lm as ll
    import tokenizers

    from pocketml.profiler.child import _peak_rss_kb, _rss_kb
    from pocketml.profiler.lm_child import TTFT_RUNS, prompt_of, reference_ids
    ll.set_min_log_severity(ll.LogSeverity.ERROR)
    ids, ref_nll, _ = reference_ids(args["reference"])
    tok = tokenizers.Tokenizer.from_file(args["tokenizer"])
    prompt = prompt_of(ids, args["prompt_tokens"])
    text = tok.decode(prompt.tolist(), skip_special_tokens=False)
    rss0 = _rss_kb()
    t = time.perf_counter()
    engine = ll.Engine(args["path"], backend=ll.Backend.CPU(thread_count=args["threads"]),
                       max_num_tokens=args["context"], enable_benchmark=True)
    out = {"load_ms": (time.perf_counter() - t) * 1e3, "backend": "LiteRT-LM", "baseline_rss_mb": rss0 / 1024}
    greedy = ll.SamplerConfig(top_k=1, temperature=0.0, top_p=1.0, seed=0)
    bundle_ids = engine.tokenize(text)
    out["prompt"] = {"tokens": len(bundle_ids), "same_ids": list(bundle_ids) == prompt.tolist()}

    def one(gen: int):
        session = engine.create_session(apply_prompt_template=False, max_output_tokens=gen, sampler_config=greedy)
        t0 = time.perf_counter()
        session.run_prefill([text])
        stream = session.run_decode_async()
        next(stream, None)
        first = time.perf_counter()
        for _ in stream:
            pass
        info = session.get_benchmark_info()
        session.close()
        return (first - t0) * 1e3, time.perf_counter() - first, info

    cold = one(1)[0]
    warm = [one(1)[0] for _ in range(TTFT_RUNS)]
    ms = float(np.median(warm))
    _, rest_s, info = one(args["gen_tokens"])
    n = info.last_decode_token_count
    out.update(ttft_cold_ms=cold, ttft_ms=ms, ttft_runs_ms=warm, prefill_tokens_per_s=len(bundle_ids) * 1e3 / ms,
               decode={"tokens": n, "tokens_per_s": (n - 1) / rest_s if n > 1 and rest_s > 0 else None,
                       "how": "wall clock from the first streamed piece to the end of the stream, (tokens - 1) "
                              "steps; tokens from LiteRT-LM's benchmark info"},
               litert_lm_own={"ttft_ms": info.time_to_first_token_in_second * 1e3,
                              "prefill_tokens": info.last_prefill_token_count,
                              "prefill_tokens_per_s": info.last_prefill_tokens_per_second,
                              "decode_tokens_per_s": info.last_decode_tokens_per_second})
    out["peak_rss_mb"] = _peak_rss_kb() / 1024
    if args.get("score"):
        out["accuracy"] = litert_perplexity(engine, ll, tok, ids, ref_nll, greedy)
    engine.close()
    return out


def litert_perplexity(engine, ll, tok, ids, ref_nll, greedy) -> dict:
    """Each sequence's text scored from a fresh session: token_scores[i] is log p(token i | tokens < i), the
    first one without context, so it is dropped and positions 1… are compared with the reference's. (A
    prefilled context is not used by LiteRT-LM 0.18's `run_text_scoring`: scores after 1 or 2 prefilled
    tokens came out identical, while a fresh session matches pocketml's runtime on the same bundle.)"""
    losses, mismatched = [], 0
    for seq in ids:
        text = tok.decode(seq.tolist(), skip_special_tokens=False)
        mismatched += engine.tokenize(text) != seq.tolist()
        session = engine.create_session(apply_prompt_template=False, sampler_config=greedy)
        scores = session.run_text_scoring([text]).token_scores[0]
        session.close()
        losses.extend(-float(s) for s in scores[1:])
    ppl_ref, ppl = math.exp(float(ref_nll.mean())), math.exp(float(np.mean(losses)))
    return {"samples": int(ids.shape[0]), "positions_scored": len(losses), "perplexity_ref": ppl_ref,
            "perplexity": ppl, "perplexity_change": (ppl - ppl_ref) / ppl_ref, "top1_agreement": None,
            "agreement_note": NO_LOGITS, "sequences_retokenised_differently": int(mismatched)}


RUNNERS = {**{k: with_logits for k in LOGIT_RUNNERS}, "litert-lm": litert_lm}


def main(argv: list[str]) -> int:
    args = json.loads(argv[1])
    out = RUNNERS[args["runner"]](args)
    tmp = Path(args["result"] + ".tmp")
    tmp.write_text(json.dumps(out))
    tmp.replace(args["result"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
