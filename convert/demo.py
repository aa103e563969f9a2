"""The demo's conversions: both built-in models × every format × fp32/fp16/int8, two jobs at a time on two cores.

Each job converts one model for some formats in its own (spawned) process with its share of the cores,
so parallel jobs do not oversubscribe them; the formats of one model are split across jobs where one
format's converter dominates (EfficientNet's TFLite static int8).
"""
from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

# (model, output sub-directory, formats)
DEMO_JOBS = (("efficientnet-lite0", "effnet", ("tflite",)), ("efficientnet-lite0", "effnet", ("onnx", "coreml")),
             ("minilm-l6", "minilm", ("onnx", "tflite", "coreml")))
DEMO_PRECISIONS = ("fp32", "fp16", "int8")


def demo_formats() -> list[str]:
    return sorted({f for _, _, fs in DEMO_JOBS for f in fs})


def demo_outputs(out: Path) -> list[Path]:
    return [Path(out) / sub for sub in dict.fromkeys(sub for _, sub, _ in DEMO_JOBS)]


def _job(model: str, sub: str, formats: tuple, out: str, verbose: bool, threads: int,
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
    outcomes = run(Recipe(model=model, formats=list(formats), precisions=list(DEMO_PRECISIONS), options=dict(options)),
                   Path(out) / sub, log=log)
    return [(f"{model} {o.name}", o.error.exit_code, str(o.error)) for o in outcomes if o.error]


def convert_all(out: Path, jobs: int, verbose: bool, options: dict) -> list[tuple[str, int, str]]:
    """Run every demo job, `jobs` at a time; returns the failures (artifact, exit code, message)."""
    threads = max(1, (os.cpu_count() or 1) // jobs)
    failed = []
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_job, m, sub, f, str(out), verbose, threads, options) for m, sub, f in DEMO_JOBS]
        for fut in futures:
            failed += fut.result()
    return failed
