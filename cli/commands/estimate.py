"""`pocketml estimate`: phone-class latency without a phone."""
from __future__ import annotations

import json

import click

from pocketml.runtime.versions import check_versions

from ..common import exits_on_error, ms


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--device", required=True, help="Device profile name, a profile .toml, or 'all'.")
@click.option("--threads", type=int, default=None,
              help="CPU threads on the phone [default: 1 for tensor models, 4 for language models].")
@click.option("--budget", default="100ms", show_default=True, help="Latency budget for the verdict column.")
@click.option("--emulate", is_flag=True, help="Also measure each artifact here and scale it (host emulation).")
@click.option("--prompt-tokens", type=int, default=None,
              help="Language models: prompt length for TTFT [default: the device's ttft_prompt_tokens].")
@click.option("--gen-tokens", type=int, default=128, show_default=True, help="Language models: tokens generated.")
@click.option("--context", type=int, default=None,
              help="Language models: KV-cache depth for decode and memory [default: the device's lm_context_tokens].")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (one object, or a list for several).")
def estimate(paths, device, threads, budget, emulate, prompt_tokens, gen_tokens, context, as_json):
    """Estimate phone-class latency of artifacts without a phone (any registered format).

    \b
    The estimate is a roofline model over the artifact's graph, fitted on published phone
    measurements; its band comes from leave-one-device-out and hold-out errors, per precision,
    widened for op categories the fit never saw (docs/ESTIMATE.md).
    A language model gets TTFT, prefill and decode tokens/s (at depth 0, over the run, at the context)
    and peak memory at the context, each with its band, from a bandwidth model fitted on published
    phone measurements, judged against each device's own LM targets (the manifest is read; the model
    is not run).
    Examples:
      pocketml estimate out/effnet/tflite-int8 --device galaxy-a14-5g --threads 4 --json
      pocketml estimate out/minilm --device all
      pocketml estimate model.onnx --device pixel-7            # a bare model file (no manifest)
      pocketml estimate out/smollm2/tflite-int4 --device pixel-7 --prompt-tokens 128 --context 1024 --json
    """
    from pocketml.profiler import lm_report
    from pocketml.profiler.estimates import estimate_artifacts
    from pocketml.profiler.lm import LMSettings, is_lm_row
    from pocketml.profiler.report import print_estimates

    limit = ms(budget)
    with exits_on_error():
        check_versions()
        rows = estimate_artifacts(paths, device, threads, limit, emulate,
                                  lm=LMSettings(prompt_tokens, gen_tokens, context))
    if as_json:
        click.echo(json.dumps(rows[0] if len(rows) == 1 else rows, indent=2))
        return
    lms, tensor = [r for r in rows if is_lm_row(r)], [r for r in rows if not is_lm_row(r)]
    if tensor:
        print_estimates(tensor, threads or 1, limit)
    if lms:
        lm_report.print_estimates(lms)
