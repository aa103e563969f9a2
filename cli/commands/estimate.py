"""`pocketml estimate`: phone-class latency without a phone."""
from __future__ import annotations

import json

import click

from pocketml.runtime.versions import check_versions

from ..common import exits_on_error, ms


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--device", required=True, help="Device profile name, a profile .toml, or 'all'.")
@click.option("--threads", default=1, show_default=True)
@click.option("--budget", default="100ms", show_default=True, help="Latency budget for the verdict column.")
@click.option("--emulate", is_flag=True, help="Also measure each artifact here and scale it (host emulation).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (one object, or a list for several).")
def estimate(paths, device, threads, budget, emulate, as_json):
    """Estimate phone-class latency of artifacts without a phone (any registered format).

    \b
    The estimate is a roofline model over the artifact's graph, fitted on published phone
    measurements; its band comes from leave-one-device-out and hold-out errors, per precision,
    widened for op categories the fit never saw (docs/ESTIMATE.md).
    Examples:
      pocketml estimate out/effnet/tflite-int8 --device galaxy-a14-5g --threads 4 --json
      pocketml estimate out/minilm --device all
      pocketml estimate model.onnx --device pixel-7            # a bare model file (no manifest)
    """
    from pocketml.profiler.estimates import estimate_artifacts
    from pocketml.profiler.report import print_estimates

    limit = ms(budget)
    with exits_on_error():
        check_versions()
        rows = estimate_artifacts(paths, device, threads, limit, emulate)
    if as_json:
        click.echo(json.dumps(rows[0] if len(rows) == 1 else rows, indent=2))
    else:
        print_estimates(rows, threads, limit)
