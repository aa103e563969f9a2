"""Small language models, one run: per model × format × precision — size, perplexity change and next-token
agreement against the fp32 reference, TTFT, prefill and decode tokens/s at 1 and 2 threads, peak memory —
next to torch eager fp32 on the same prompt.

    python benchmarks/llm.py [--model smollm2-135m] [--out /tmp/pocketml-llm] [--threads 1,2]
                             [--prompt-tokens 128 --gen-tokens 128] [--to onnx,tflite] [--precision int8,int4]

Artifacts missing under OUT/<model> are converted first (`pocketml convert`, minutes for a real model).
Each artifact is measured by `pocketml profile`'s sandboxed child (the same numbers as the report); the
torch row is the reference model (convert/llm/reference.TorchLM, Hugging Face's KV cache) timed in this
process. Latencies are this host's: which CPU and how many threads are printed with them.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lm_common import ensure_artifacts  # noqa: E402


def measured(art: Path, threads: int, prompt: int, gen: int) -> dict:
    from pocketml.profiler.lm import LMSettings
    from pocketml.profiler.run import profile
    report = profile([art], threads=threads, lm=LMSettings(prompt, gen, prompt + gen))
    return report["artifacts"][0]


def torch_row(model: str, threads: int, prompt: int, gen: int) -> dict:
    """The fp32 reference in torch eager: TTFT and decode tokens/s on the reference's held-out prompt."""
    import torch

    from pocketml.convert.llm import load_causal_lm
    from pocketml.convert.llm.reference import TorchLM, held_out_sequences
    torch.set_num_threads(threads)
    spec = load_causal_lm(model)
    lm = TorchLM(spec)
    ids = held_out_sequences(lm.tokenizer, 1, prompt)[0]
    t = time.perf_counter()
    logits = lm.prefill(ids)
    ttft = (time.perf_counter() - t) * 1e3
    steps = []
    token = int(np.argmax(logits[-1]))
    for _ in range(gen):
        t = time.perf_counter()
        token = int(np.argmax(lm.decode(token)))
        steps.append(time.perf_counter() - t)
    size = sum(p.numel() * p.element_size() for p in spec.module.parameters()) / 1e6
    return {"name": "torch eager fp32", "size_mb": size, "ttft_ms": ttft, "prefill_tokens_per_s": prompt * 1e3 / ttft,
            "decode_tokens_per_s": len(steps) / sum(steps), "decode_p50_ms": statistics.median(steps) * 1e3}


def line(model, label, threads, r, acc="reference") -> str:
    mem = f"{r['peak_rss_added_mb']:.0f}" if r.get("peak_rss_added_mb") is not None else "-"
    return (f"| {model} | {label} | {threads} | {r['size_mb']:.0f} | {acc} | {r['ttft_ms']:.0f} | "
            f"{r['prefill_tokens_per_s']:.0f} | {r['decode_tokens_per_s']:.1f} | {mem} |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", help="built-in LM, .gguf or HF dir (repeatable) [smollm2-135m]")
    ap.add_argument("--out", default="/tmp/pocketml-llm")
    ap.add_argument("--to", default="onnx,tflite")
    ap.add_argument("--precision", default="int8,int4")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--gen-tokens", type=int, default=128)
    args = ap.parse_args()
    from pocketml.profiler.host import cpu_line, describe
    threads = [int(t) for t in args.threads.split(",")]
    print(f"Host: {describe(threads[0])}, {cpu_line()}; prompt {args.prompt_tokens} tokens, {args.gen_tokens} greedy tokens; "
          "quality against the fp32 reference on the held-out text of reference/.\n")
    print("| model | artifact | threads | size MB | ppl change / next-token agree | TTFT ms | prefill tok/s | "
          "decode tok/s | peak MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for model in args.model or ["smollm2-135m"]:
        arts = ensure_artifacts(model, Path(args.out) / Path(model).stem, args.to.split(","),
                                args.precision.split(","))
        for t in threads:                     # alternate: every artifact at t threads, then the next t
            print(line(model, "torch eager fp32", t, torch_row(model, t, args.prompt_tokens, args.gen_tokens)))
            for art in arts:
                r = measured(art, t, args.prompt_tokens, args.gen_tokens)
                if r.get("status") != "measured":
                    print(f"| {model} | {art.name} | {t} | - | {r.get('error') or r.get('reason')} | | | | |")
                    continue
                a = r["accuracy"]
                flat = {**r, "decode_tokens_per_s": r["decode"]["tokens_per_s"]}
                print(line(model, art.name, t, flat, f"{a['perplexity_change']:+.1%} / {a['top1_agreement']:.3f}"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
