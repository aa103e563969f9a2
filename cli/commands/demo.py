"""`pocketml demo`: convert the built-in models, profile them, write the report."""
from __future__ import annotations

import sys
import time

import click

from pocketml.runtime.versions import CONVERT_PACKAGES, check_versions

from ..common import ALLOW_SYMLINKED_OUTPUT, exits_on_error, verbose


@click.command()
@click.option("-o", "--out", "out_dir", default="out", show_default=True, type=click.Path())
@click.option("--device", default="pixel-7", show_default=True)
@click.option("--runs", default=50, show_default=True)
@click.option("--jobs", default=2, show_default=True, help="Conversions run in parallel (one per core).")
@ALLOW_SYMLINKED_OUTPUT
@click.pass_context
def demo(ctx, out_dir, device, runs, jobs, allow_symlinked_output):
    """Convert the built-in models (EfficientNet-Lite0, MiniLM: ONNX, TFLite, Core ML × fp32, fp16, int8;
    SmolLM2-135M: ONNX, TFLite × int8, int4; Core ML int4), profile, report.

    \b
    Example:
      pocketml demo -o out          # writes out/report.json and out/report.md
    """
    from pocketml.profiler import report as rep
    from pocketml.profiler.run import profile as run_profile
    from pocketml.runtime.paths import output_dir

    t0 = time.perf_counter()
    with exits_on_error():
        check_versions(CONVERT_PACKAGES)
        from pocketml.convert.pipeline import check_extras   # exit 7 naming the extra, before torch is imported
        from pocketml.convert.demo import DEMO_JOBS, convert_all, demo_formats, demo_outputs
        check_extras(demo_formats())
        out = output_dir(out_dir, allow_symlinked_output)     # exit 4 on a symlink, nothing created
        click.echo(f"converting ({jobs} jobs in parallel): " + "; ".join(
            f"{m} → {','.join(f)} × {','.join(p)}" for m, _, f, p in DEMO_JOBS))
        failed = convert_all(out, jobs, verbose(ctx),
                             {"allow_symlinked_output": True} if allow_symlinked_output else {})
        click.echo(f"conversions done in {time.perf_counter() - t0:.0f} s")
        click.echo("profiling the artifacts (those whose format cannot run on this host: not measured, with the reason)")
        result = run_profile(demo_outputs(out), device=device, runs=runs)
        rep.print_table(result)
        j, m = rep.write(result, out)
    click.echo(f"wrote {j} and {m}")
    if failed:
        click.secho(f"{len(failed)} artifact(s) failed conversion or validation: "
                    + "; ".join(f"{n} (exit {c}): {msg}" for n, c, msg in failed), fg="red", err=True)
        sys.exit(max(c for _, c, _ in failed))
