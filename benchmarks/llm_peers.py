"""pocketml's language-model artifacts vs llama.cpp, ONNX Runtime GenAI and LiteRT-LM, one run, same host.

Same weights (each model's GGUF: the peers' builders read its de-quantized fp32 weights, llama.cpp the
file itself and its own re-quantizations), same prompt (the reference's first 128 held-out token ids),
same generation (greedy, EOS ignored), same thread counts, same context (1024 tokens).

    make peers        # llama-cpp-python (source build) + .venv-builders (transformers 5.x builders)
    python benchmarks/llm_peers.py [--models smollm2-135m,gemma3-270m] [--threads 1,2] [--repeats 3]
                                   [--work out/peers-lm] [--artifacts DIR] [--peers llama.cpp,ort-genai,...]
                                   [--quick]

Every row runs in its own process (`llm_peers_child.py`: peak RSS is that process's), with the same
timing and scoring code as `pocketml profile` (`profiler/lm_child.py`); repeats run the peers in
alternating order and the table shows medians. Quality: perplexity change and next-token agreement
against the same fp32 reference (pocketml's reference/ of the artifacts: 4 × 128 held-out tokens),
scored once per row at the first thread count. Built peers are cached under WORK/<model>/; raw
results go to WORK/<model>/results.json. `--quick`: 1 repeat, 32 generated tokens (a smoke run).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import llm_peers_build as build  # noqa: E402
from lm_common import ensure_artifacts  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CHILD = Path(__file__).resolve().parent / "llm_peers_child.py"
CHILD_TIMEOUT_S = 1800
CONTEXT = 1024


@dataclass(frozen=True)
class Peer:
    label: str          # "{gguf}" is replaced by the GGUF's own quantization
    runner: str         # llm_peers_child.RUNNERS key
    build: str          # BUILDS key
    arg: str = ""


PEERS = (
    Peer("llama.cpp, original {gguf} GGUF", "llama.cpp", "gguf"),
    Peer("llama.cpp Q4_0 (re-quantized)", "llama.cpp", "llama-quant", "Q4_0"),
    Peer("llama.cpp Q8_0 (re-quantized)", "llama.cpp", "llama-quant", "Q8_0"),
    Peer("ORT GenAI int4 (its builder: RTN, block 32)", "ort-genai", "ort-genai", "int4"),
    Peer("ORT GenAI int8 (its builder)", "ort-genai", "ort-genai", "int8"),
    Peer(f"LiteRT-LM int4 (litert-torch {build.LITERT_RECIPES['int4']})", "litert-lm", "litert-lm", "int4"),
    Peer(f"LiteRT-LM int8 (litert-torch {build.LITERT_RECIPES['int8']})", "litert-lm", "litert-lm", "int8"),
    Peer("torch eager fp32 (the reference)", "torch", "torch"),
)


@dataclass
class Ctx:
    model: str
    work: Path
    venv: Path
    artifacts: Path

    def gguf(self) -> Path:
        return build.original_gguf(self.model, self.work)


def _llama_python() -> str:
    if find_spec("llama_cpp") is None:
        raise build.Unavailable("llama-cpp-python is not installed in this venv (make peers)")
    return sys.executable


# each: (ctx, peer) -> (model path for the child, size MB, extra child args)
BUILDS = {
    "gguf": lambda c, p: _one(c.gguf(), python=_llama_python()),
    "llama-quant": lambda c, p: _one(build.llama_quant(c.gguf(), p.arg, c.work, _llama_python())),
    "ort-genai": lambda c, p: _one(build.ort_genai(_hf(c), p.arg, c.work, c.venv)),
    "litert-lm": lambda c, p: _one(build.litert_lm(_hf(c), p.arg, c.work, c.venv, CONTEXT),
                                   tokenizer=str(_hf(c) / "tokenizer.json")),
    "torch": lambda c, p: (c.model, None, {}),
    "pocketml": lambda c, p: (str(c.artifacts / p.arg), build.size_mb(_model_file(c.artifacts / p.arg)), {}),
}


def _one(path: Path, python: str = "", **extra) -> tuple[str, float, dict]:
    return str(path), build.size_mb(path), extra


def _hf(c: Ctx) -> Path:
    build._builders_python(c.venv)                 # no venv: say so before writing a 540 MB folder
    return build.hf_fp32(c.model, c.work, CONTEXT)


def _model_file(art: Path) -> Path:
    from pocketml.runtime.manifest import read_manifest
    return art / read_manifest(art).model_file


def run_child(args: dict) -> dict:
    with tempfile.TemporaryDirectory(prefix="pocketml-peer-") as td:
        args = {**args, "result": str(Path(td) / "result.json")}
        out = subprocess.run([sys.executable, str(CHILD), json.dumps(args)], capture_output=True, text=True,
                             timeout=CHILD_TIMEOUT_S, cwd=ROOT)
        res = Path(args["result"])
        if out.returncode != 0 or not res.is_file():
            tail = (out.stderr or out.stdout).strip().splitlines()[-3:]
            return {"error": f"exit {out.returncode}: " + " | ".join(tail)[-400:]}
        return json.loads(res.read_text())


def prepare(ctx: Ctx, peers: list[Peer], log) -> dict:
    """Build every peer (cached); a peer that cannot be built here becomes a row saying why."""
    ready = {}
    for p in peers:
        try:
            path, size, extra = BUILDS[p.build](ctx, p)
            label = p.label.replace("{gguf}", build.gguf_quant(ctx.gguf())) if "{gguf}" in p.label else p.label
            ready[label] = {"peer": p, "path": path, "size_mb": size, "extra": extra}
            log(f"  ready: {label} ({path})")
        except build.Unavailable as exc:
            ready[p.label] = {"peer": p, "skipped": str(exc)}
            log(f"  skipped: {p.label}: {exc}")
    return ready


def measure(ctx: Ctx, ready: dict, threads: list[int], repeats: int, prompt: int, gen: int, log) -> dict:
    """Every ready row × thread count × repeat, each in its own process; order alternates per repeat."""
    runs: dict = {(label, t): [] for label in ready for t in threads}
    order = [k for k, v in ready.items() if "skipped" not in v]
    for r in range(repeats):
        for t in threads:
            for label in (order if r % 2 == 0 else order[::-1]):
                v = ready[label]
                args = {"runner": v["peer"].runner, "path": v["path"], "threads": t, "context": CONTEXT,
                        "reference": str(ctx.artifacts / "reference"), "prompt_tokens": prompt, "gen_tokens": gen,
                        "score": r == 0 and t == threads[0], **v["extra"]}
                res = run_child(args)
                log(f"  repeat {r + 1}/{repeats}, {t} thread(s): {label}: "
                    + (res["error"] if "error" in res else f"TTFT {res['ttft_ms']:.0f} ms, "
                       f"decode {res['decode']['tokens_per_s']:.1f} tok/s"))
                runs[(label, t)].append(res)
    return runs


def _median(rows: list[dict], get) -> float | None:
    vals = [get(r) for r in rows if "error" not in r]
    return statistics.median(vals) if vals else None


def summarize(ready: dict, runs: dict, threads: list[int]) -> list[dict]:
    table = []
    for label, v in ready.items():
        scored = [r for t in threads for r in runs.get((label, t), []) if "accuracy" in r]
        acc = scored[0]["accuracy"] if scored else None       # the same file at every thread count
        for t in threads:
            rows = runs.get((label, t), [])
            ok = [r for r in rows if "error" not in r]
            size = v.get("size_mb") or next((r["size_mb"] for r in ok if r.get("size_mb")), None)
            table.append({"peer": label, "threads": t, "skipped": v.get("skipped"),
                          "errors": [r["error"] for r in rows if "error" in r], "runs": len(ok),
                          "size_mb": size, "accuracy": acc,
                          "ttft_ms": _median(ok, lambda r: r["ttft_ms"]),
                          "prefill_tokens_per_s": _median(ok, lambda r: r["prefill_tokens_per_s"]),
                          "decode_tokens_per_s": _median(ok, lambda r: r["decode"]["tokens_per_s"]),
                          "decode_tokens": _median(ok, lambda r: r["decode"]["tokens"]),
                          "peak_rss_mb": _median(ok, lambda r: r["peak_rss_mb"]),
                          "notes": _notes(ok)})
    return table


def _notes(ok: list[dict]) -> list[str]:
    notes = set()
    for r in ok:
        if "prompt" in r and not r["prompt"]["same_ids"]:
            notes.add(f"prompt re-tokenised by the bundle to {r['prompt']['tokens']} tokens")
        if (r.get("accuracy") or {}).get("agreement_note"):
            notes.add(r["accuracy"]["agreement_note"])
    return sorted(notes)


def _f(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def markdown(model: str, table: list[dict], gen: int) -> str:
    lines = [f"| {model} | threads | TTFT ms | prefill tok/s | decode tok/s | peak RSS MB | size MB | ppl change "
             "| next-token agreement |", "|---|---|---|---|---|---|---|---|---|"]
    for row in table:
        if row["skipped"] or not row["runs"]:
            why = row["skipped"] or "; ".join(row["errors"])[:300]
            lines.append(f"| {row['peer']} | {row['threads']} | {why} | | | | | | |")
            continue
        a = row["accuracy"] or {}
        agree = a.get("top1_agreement")
        short = "" if (row["decode_tokens"] or gen) >= gen else f" ({row['decode_tokens']:.0f} tokens: EOS)"
        lines.append(f"| {row['peer']} | {row['threads']} | {_f(row['ttft_ms'], '.0f')} | "
                     f"{_f(row['prefill_tokens_per_s'], '.0f')} | {_f(row['decode_tokens_per_s'], '.1f')}{short} | "
                     f"{_f(row['peak_rss_mb'], '.0f')} | {_f(row['size_mb'], '.0f')} | "
                     f"{_f(a.get('perplexity_change'), '+.1%')} | "
                     f"{_f(agree, '.3f') if agree is not None else ('not measured' if a else '-')} |")
    notes = sorted({n for row in table for n in row["notes"]})
    return "\n".join(lines + [f"\n- {n}" for n in notes])


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="smollm2-135m", help="comma list: built-in LMs or .gguf files")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--gen-tokens", type=int, default=128)
    ap.add_argument("--work", default=str(ROOT / "out" / "peers-lm"), help="where built peers are cached")
    ap.add_argument("--artifacts", help="pocketml's artifacts of the (single) model [WORK/<model>/pocketml], "
                                        "converted there when missing")
    ap.add_argument("--to", default="onnx,tflite", help="pocketml formats in the table")
    ap.add_argument("--precision", default="int8,int4", help="pocketml precisions in the table")
    ap.add_argument("--peers", default="llama.cpp,ort-genai,litert-lm,torch,pocketml",
                    help="which runners to include")
    ap.add_argument("--builders-venv", default=str(ROOT / ".venv-builders"))
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 repeat, 32 generated tokens")
    args = ap.parse_args()
    if args.quick:
        args.repeats, args.gen_tokens = 1, min(args.gen_tokens, 32)
    args.threads = [int(t) for t in args.threads.split(",")]
    args.models = [m for m in args.models.split(",") if m]
    if args.artifacts and len(args.models) > 1:
        ap.error("--artifacts names one model's artifacts: give one model with it")
    if min(args.threads) < 1 or args.repeats < 1 or args.prompt_tokens < 1 or args.gen_tokens < 1:
        ap.error("--threads, --repeats, --prompt-tokens and --gen-tokens must be ≥ 1")
    if args.prompt_tokens + args.gen_tokens > CONTEXT:
        ap.error(f"prompt + generated tokens must fit the {CONTEXT}-token context")
    return args


def main() -> int:
    args = parse()
    from pocketml.profiler.host import cpu_line
    from pocketml.runtime.atomic import write_file_atomic
    wanted = set(args.peers.split(","))
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    print(f"Host: {cpu_line()}, {os.cpu_count()} logical CPUs, load average {os.getloadavg()[0]:.2f} at the start; "
          f"prompt {args.prompt_tokens} tokens, {args.gen_tokens} greedy tokens (EOS ignored), context {CONTEXT}; "
          f"medians of {args.repeats} repeat(s), order alternated, each row in its own process; quality scored "
          f"once per row at {args.threads[0]} thread(s).\n")
    for model in args.models:
        work = Path(args.work) / Path(model).stem
        arts = Path(args.artifacts) if args.artifacts else work / "pocketml"
        ctx = Ctx(model, work, Path(args.builders_venv), arts)
        peers = [p for p in PEERS if p.runner in wanted]
        if "pocketml" in wanted:
            have = ensure_artifacts(model, arts, args.to.split(","), args.precision.split(","))
            peers += [Peer(f"pocketml {a.name}", "pocketml", "pocketml", a.name) for a in have]
        build.reference(model, arts, CONTEXT)
        log(f"{model}: building peers under {work}")
        ready = prepare(ctx, peers, log)
        runs = measure(ctx, ready, args.threads, args.repeats, args.prompt_tokens, args.gen_tokens, log)
        table = summarize(ready, runs, args.threads)
        print(markdown(model, table, args.gen_tokens) + f"\n\n(load average {os.getloadavg()[0]:.2f} at the end)\n")
        work.mkdir(parents=True, exist_ok=True)
        write_file_atomic(work / "results.json", json.dumps(
            {"model": model, "settings": {k: v for k, v in vars(args).items()}, "table": table,
             "runs": {f"{k[0]} @ {k[1]}": v for k, v in runs.items()}}, indent=1, default=str).encode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
