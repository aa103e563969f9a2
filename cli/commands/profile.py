"""`pocketml profile`: measure artifacts (or bare model files) and judge them against a budget."""
from __future__ import annotations

import sys

import click

from pocketml.runtime.versions import check_versions

from ..common import ALLOW_SYMLINKED_OUTPUT, exits_on_error, fraction, megabytes, ms, tokens_per_s


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--device", help="Device profile whose targets to judge against (see `pocketml devices`).")
@click.option("--data", type=click.Path(), help="Your own evaluation data (default: the reference set written by convert).")
@click.option("--reference", type=click.Path(), help="Reference outputs for --data (.npz / .npy, one row per sample): "
              "accuracy is measured against them (for a bare model file, the only way to get accuracy).")
@click.option("--threads", default=1, show_default=True)
@click.option("--warmup", default=10, show_default=True)
@click.option("--runs", default=50, show_default=True)
@click.option("--max-latency", help="Override the p90 latency target, e.g. 100ms.")
@click.option("--max-drop", help="Override the accuracy-drop target, e.g. 1% (for a language model: the perplexity "
              "increase).")
@click.option("--max-size", help="Override the size target, e.g. 50MB or 1GB.")
@click.option("--max-memory", help="Override the memory target, e.g. 400MB or 1GB.")
@click.option("--min-decode", help="Language models: the decode-speed floor, e.g. 15tok/s.")
@click.option("--max-ttft", help="Language models: the time-to-first-token ceiling, e.g. 1s or 800ms.")
@click.option("--prompt-tokens", type=int, help="Language models: prompt length for TTFT and decode "
              "[default: the device profile's ttft_prompt_tokens, else 128].")
@click.option("--gen-tokens", type=int, default=128, show_default=True,
              help="Language models: greedy tokens generated (EOS ignored) for the decode speed.")
@click.option("--context", type=int, help="Language models: the deepest KV-cache depth decode is measured at "
              "(capped by the model's context) [default: the device profile's lm_context_tokens, else 1024].")
@click.option("--record", is_flag=True, help="Write the settings and latency measured here into each artifact's "
              "manifest (runtime_hints.measured); the fastest thread count measured becomes runtime_hints.recommended, "
              "which pocketml.runtime.load uses by default.")
@click.option("-o", "--out", "out_dir", type=click.Path(), help="Where to write report.json and report.md "
              "[default: the directory profiled; for an artifact directory or a model file, its parent].")
@ALLOW_SYMLINKED_OUTPUT
def profile(paths, device, data, reference, threads, warmup, runs, max_latency, max_drop, max_size, max_memory,
            min_decode, max_ttft, prompt_tokens, gen_tokens, context, record, out_dir, allow_symlinked_output):
    """Measure artifacts (latency percentiles, cold start, memory, size, accuracy) and judge them.

    \b
    With --device, the latency verdict uses the phone-class estimate and its error band
    (a band crossing the budget is UNCERTAIN); host measurements are reported beside it.
    Exit 0 when every measured artifact passes, 6 when a target is missed or uncertain.
    A language model (text generation) gets load time, TTFT, prefill and decode tokens/s
    (per-token percentiles, and at KV-cache depth), memory with the cache filled, KV bytes per
    token, and perplexity / next-token agreement against its fp32 reference; judged on the host,
    or with --device on the phone estimate's band (docs/ESTIMATE.md), shown beside the host numbers.
    Examples:
      pocketml profile out/effnet --device pixel-7 --runs 50
      pocketml profile out/effnet/tflite-int8 --data ./images --max-latency 30ms --max-drop 1%
      pocketml profile out/effnet/tflite-int8 --threads 2 --record
      pocketml profile model.tflite --device pixel-7          # a bare file: no manifest, random inputs
      pocketml profile model.onnx --data ./inputs --reference outputs.npz
      pocketml profile out/smollm2 --prompt-tokens 128 --gen-tokens 128 --context 1024 --device pixel-7
      pocketml profile out/smollm2/onnx-int4 --min-decode 15tok/s --max-ttft 1s --max-memory 400MB --max-drop 5%
    """
    from pocketml.profiler import report as rep
    from pocketml.profiler.lm import LMSettings
    from pocketml.profiler.run import profile as run_profile
    from pocketml.profiler.verdict import exit_code

    drop, size, memory = fraction(max_drop), megabytes(max_size), megabytes(max_memory)
    overrides = {"p90_latency_ms": ms(max_latency), "max_accuracy_drop": drop, "max_size_mb": size,
                 "max_memory_mb": memory, "min_decode_tokens_per_s": tokens_per_s(min_decode),
                 "max_ttft_ms": ms(max_ttft), "max_lm_memory_mb": memory, "max_perplexity_increase": drop,
                 "max_lm_size_mb": size}
    with exits_on_error():
        check_versions()
        target = rep.report_dir(paths, out_dir, allow_symlinked_output)    # checked before anything runs
        result = run_profile(list(paths), device, data, threads, warmup, runs, overrides, reference=reference,
                             lm=LMSettings(prompt_tokens, gen_tokens, context))
        if allow_symlinked_output:
            result["settings"]["allow_symlinked_output"] = True
        rep.print_table(result)
        j, m = rep.write(result, target)
        click.echo(f"wrote {j} and {m}")
        if record:
            from pocketml.profiler.record import record as record_settings
            written = record_settings(result)
            click.echo(f"recorded the measured settings in {len(written)} manifest(s)")
    sys.exit(exit_code(result["overall"]))
