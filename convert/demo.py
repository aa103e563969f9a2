"""The demo's conversions, two jobs at a time on two cores: EfficientNet-Lite0 and MiniLM × every format ×
fp32/fp16/int8, and SmolLM2-135M (a causal LM) × ONNX/TFLite × int8/int4 plus Core ML int4 (checked
structurally: Core ML runs only on Apple's OS).

Each job converts one model for some formats in its own (spawned) process with its share of the cores,
so parallel jobs do not oversubscribe them; the formats of one model are split across jobs where one
format's converter dominates (EfficientNet's TFLite static int8, SmolLM2's ONNX and TFLite exports).
The jobs are listed longest first, so the two workers finish close together.
"""
from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

DEMO_PRECISIONS = ("fp32", "fp16", "int8")
LM_PRECISIONS = ("int8", "int4")
# (model, output sub-directory, formats, precisions), longest first
DEMO_JOBS = (("smollm2-135m", "smollm2", ("onnx",), LM_PRECISIONS),
             ("smollm2-135m", "smollm2", ("tflite",), LM_PRECISIONS),
             ("smollm2-135m", "smollm2", ("coreml",), ("int4",)),
             ("efficientnet-lite0", "effnet", ("tflite",), DEMO_PRECISIONS),
             ("efficientnet-lite0", "effnet", ("onnx", "coreml"), DEMO_PRECISIONS),
             ("minilm-l6", "minilm", ("onnx", "tflite", "coreml"), DEMO_PRECISIONS))


def demo_formats() -> list[str]:
    return sorted({f for _, _, fs, _ in DEMO_JOBS for f in fs})


def demo_models() -> list[str]:
    return list(dict.fromkeys(m for m, _, _, _ in DEMO_JOBS))


def demo_outputs(out: Path) -> list[Path]:
    return [Path(out) / sub for sub in dict.fromkeys(sub for _, sub, _, _ in DEMO_JOBS)]


def _job(model: str, sub: str, formats: tuple, precisions: tuple, out: str, verbose: bool, threads: int,
         options: dict) -> list[tuple[str, int, str]]:
    """Run in a worker process; returns (artifact, exit code, message) for each failure."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    from pocketml.runtime.quiet import quiet
    quiet(verbose)
    import torch

    from .pipeline import Recipe, run
    torch.set_num_threads(threads)

    def log(line):
        print(f"[{model}] {line.strip()}", flush=True)
    outcomes = run(Recipe(model=model, formats=list(formats), precisions=list(precisions), options=dict(options)),
                   Path(out) / sub, log=log)
    return [(f"{model} {o.name}", o.error.exit_code, str(o.error)) for o in outcomes if o.error]


def convert_all(out: Path, jobs: int, verbose: bool, options: dict) -> list[tuple[str, int, str]]:
    """Run every demo job, `jobs` at a time; returns the failures (artifact, exit code, message)."""
    threads = max(1, (os.cpu_count() or 1) // jobs)
    failed = []
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_job, m, sub, f, p, str(out), verbose, threads, options) for m, sub, f, p in DEMO_JOBS]
        for fut in futures:
            failed += fut.result()
    return failed
