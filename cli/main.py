"""The `pocketml` command: convert, profile, devices, demo. Exit codes: see docs/EXIT_CODES.md."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from pocketml.runtime.errors import PocketmlError, UnsupportedError, UsageError
from pocketml.runtime.manifest import FORMATS
from pocketml.runtime.versions import CONVERT_PACKAGES, check_versions

from .quiet import quiet


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _ms(value: str | None) -> float | None:
    if value is None:
        return None
    v = value.strip().lower().removesuffix("ms")
    try:
        return float(v)
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected milliseconds, e.g. 100ms") from None


def _fraction(value: str | None) -> float | None:
    if value is None:
        return None
    v = value.strip()
    try:
        return float(v[:-1]) / 100 if v.endswith("%") else float(v)
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected a fraction or a percentage, e.g. 1%") from None


def _fail(exc: PocketmlError) -> None:
    click.secho(f"error: {exc}", fg="red", err=True)
    if isinstance(exc, UnsupportedError) and exc.rejected:
        click.echo("rejected ops:\n" + exc.table(), err=True)
    sys.exit(exc.exit_code)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--verbose", is_flag=True, help="Show converter progress and library logs.")
@click.version_option(package_name="pocketml")
def cli(verbose: bool) -> None:
    """pocketml: take a PyTorch or Hugging Face model to a phone.

    \b
    Exit codes: 0 ok, 2 usage/bad data, 3 unsupported model or op, 4 unsafe or corrupt
    input refused, 5 validation failed, 6 target missed, 7 device/environment, 1 internal.
    """
    quiet(verbose)


@cli.command()
@click.argument("model")
@click.option("--to", "formats", help="Target formats [default: onnx,tflite,coreml, or the recipe's export step].")
@click.option("--precision", "precisions",
              help="fp32,fp16,int8,int8w,int4 (int8w: weight-only int8; int4: 4-bit weights, see docs/COMPRESSION.md) "
              "[default: fp32, or the recipe's quantize step].")
@click.option("--calib", type=click.Path(), help="Calibration data directory (images, .npy/.npz, .txt).")
@click.option("--task", help="For Hugging Face dirs: feature-extraction, sentence-embedding, text-classification.")
@click.option("--seq-len", default=128, show_default=True, help="Sequence length for text models.")
@click.option("--trust-remote-code", is_flag=True, help="Allow a Hugging Face model's own Python code to run.")
@click.option("--no-reuse", is_flag=True, help="Rebuild artifacts even when an identical one is already published.")
@click.option("--recipe", "recipe_file", type=click.Path(), help="Compression recipe (TOML [[steps]]), see docs/COMPRESSION.md.")
@click.option("--prune", "prune", help="Prune before export: channels=0.3[,importance=l1|l2|taylor|random][,global] "
              "(CNNs) or heads=0.5,ffn=0.5 (transformers).")
@click.option("--drop-layers", "drop_layers", help="Keep only these encoder layers: keep=0,2,4.")
@click.option("--distill", "distill", help="Distill the compressed model from the original: [data=DIR][,epochs=N].")
@click.option("--quantize", "quantize", help="Shorthand for a recipe's quantize step: int8[,observer=NAME][,max_drop=1%]"
              "[,calib=DIR] (the same as --precision int8 --observer … --max-drop … --calib …).")
@click.option("--max-drop", "max_drop", help="ONNX int8: keep the most sensitive layers float until the accuracy "
              "drop on the calibration data is within this budget, e.g. 1% (automatic mixed precision).")
@click.option("--observer", help="Static int8: how activation ranges are set from the calibration data. "
              "onnx: percentile (default), minmax, entropy; tflite: percentile (default), histogram, minmax.")
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(), help="Output directory.")
def convert(model, formats, precisions, calib, task, seq_len, trust_remote_code, no_reuse, recipe_file, prune,
            drop_layers, distill, quantize, max_drop, observer, out_dir):
    """Convert MODEL into validated artifacts, one directory per format × precision.

    \b
    MODEL is a built-in name (efficientnet-lite0, minilm-l6), a local Hugging Face
    directory, or a module:function factory returning (nn.Module, example_inputs).

    \b
    Examples:
      pocketml convert efficientnet-lite0 --to onnx,tflite,coreml --precision fp32,fp16,int8 -o out/effnet
      pocketml convert ./my_hf_model_dir --task feature-extraction --to onnx,tflite -o out/minilm
      pocketml convert mypkg.models:build --to tflite --precision int8 --calib ./images -o out/mine
      pocketml convert minilm-l6 --recipe recipes/minilm-phone.toml --to onnx -o out/minilm-small
      pocketml convert efficientnet-lite0 --prune channels=0.3 --distill epochs=5 --to tflite -o out/eff
      pocketml convert efficientnet-lite0 --prune channels=0.3 --distill data=./images --quantize int8 --calib ./images -o out/eff
      pocketml convert minilm-l6 --to onnx --precision int8 --max-drop 0.5% -o out/minilm-mixed
    """
    from pocketml.convert import Recipe, run

    try:
        steps, settings = _compression_steps(recipe_file, prune, drop_layers, distill, quantize)
        flags = {"formats": formats and _csv(formats), "precisions": precisions and _csv(precisions),
                 "calib": calib, "observer": observer, "max_drop": _fraction(max_drop)}
        if "max_drop" in settings:
            settings["max_drop"] = _fraction(str(settings["max_drop"]))
        chosen = _merge_settings(flags, settings)
    except PocketmlError as exc:
        _fail(exc)
    recipe = Recipe(model=model, formats=chosen.get("formats", list(FORMATS)),
                    precisions=chosen.get("precisions", ["fp32"]), calib=chosen.get("calib"), task=task,
                    trust_remote_code=trust_remote_code, seq_len=seq_len, options={"reuse": not no_reuse},
                    steps=steps)
    recipe.options.update({k: chosen[k] for k in ("max_drop", "observer") if chosen.get(k) is not None})
    try:
        check_versions(CONVERT_PACKAGES)
        click.echo(f"converting {model} → {', '.join(recipe.formats)} × {', '.join(recipe.precisions)} in {out_dir}")
        outcomes = run(recipe, Path(out_dir), log=click.echo)
    except PocketmlError as exc:
        _fail(exc)
    errors = [o.error for o in outcomes if o.error]
    for o in outcomes:
        if o.error and isinstance(o.error, UnsupportedError) and o.error.rejected:
            click.echo(f"{o.name} rejected ops:\n{o.error.table()}", err=True)
    if errors:
        worst = max(errors, key=lambda e: (e.exit_code != 1, e.exit_code))
        click.secho(f"{len(errors)} of {len(outcomes)} artifacts not published; first error: {errors[0]}",
                    fg="red", err=True)
        sys.exit(worst.exit_code)
    click.echo(f"{len(outcomes)} artifacts published in {out_dir}")


def _compression_steps(recipe_file, prune, drop_layers, distill, quantize) -> tuple[list[dict], dict]:
    """--recipe FILE steps, then the shorthands in the order prune → drop-layers → distill → quantize.
    Returns (compression steps, export settings of the quantize / export steps). Torch-free."""
    from pocketml.convert.compress.recipe import check_order, load_recipe, parse_shorthand, take_settings
    steps = load_recipe(recipe_file) if recipe_file else []
    for option, text in (("prune", prune), ("drop-layers", drop_layers), ("distill", distill), ("quantize", quantize)):
        if text is not None:
            steps.append(parse_shorthand(option, text))
    if prune or drop_layers or distill or quantize:
        check_order([s["kind"] for s in steps], "--recipe with shorthand flags")
    return take_settings(steps)


def _merge_settings(flags: dict, settings: dict) -> dict:
    """A setting given both as a flag and by the recipe's quantize / export step must agree."""
    clash = [k for k in flags if flags[k] is not None and k in settings and flags[k] != settings[k]]
    if clash:
        show = lambda v: ",".join(v) if isinstance(v, list) else v   # noqa: E731
        raise UsageError("the command line and the recipe's quantize / export step disagree: " + "; ".join(
            f"{FLAG_NAMES[k]} {show(flags[k])} vs {show(settings[k])}" for k in clash), fields=clash)
    return {**settings, **{k: v for k, v in flags.items() if v is not None}}


FLAG_NAMES = {"formats": "--to", "precisions": "--precision", "calib": "--calib", "observer": "--observer",
              "max_drop": "--max-drop"}


@cli.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--device", help="Device profile whose targets to judge against (see `pocketml devices`).")
@click.option("--data", type=click.Path(), help="Your own evaluation data (default: the reference set written by convert).")
@click.option("--threads", default=1, show_default=True)
@click.option("--warmup", default=10, show_default=True)
@click.option("--runs", default=50, show_default=True)
@click.option("--max-latency", help="Override the p90 latency target, e.g. 100ms.")
@click.option("--max-drop", help="Override the accuracy-drop target, e.g. 1%.")
@click.option("--max-size", type=float, help="Override the size target (MB).")
@click.option("--max-memory", type=float, help="Override the memory target (MB).")
@click.option("--record", is_flag=True, help="Write the settings and latency measured here into each artifact's "
              "manifest (runtime_hints.measured); the fastest thread count measured becomes runtime_hints.recommended, "
              "which pocketml.runtime.load uses by default.")
@click.option("-o", "--out", "out_dir", type=click.Path(), help="Where to write report.json and report.md.")
def profile(paths, device, data, threads, warmup, runs, max_latency, max_drop, max_size, max_memory, record, out_dir):
    """Measure artifacts (latency percentiles, cold start, memory, size, accuracy) and judge them.

    \b
    With --device, the latency verdict uses the phone-class estimate and its error band
    (a band crossing the budget is UNCERTAIN); host measurements are reported beside it.
    Exit 0 when every measured artifact passes, 6 when a target is missed or uncertain.
    Examples:
      pocketml profile out/effnet --device pixel-7 --runs 50
      pocketml profile out/effnet/tflite-int8 --data ./images --max-latency 30ms --max-drop 1%
      pocketml profile out/effnet/tflite-int8 --threads 2 --record
    """
    from pocketml.profiler import report as rep
    from pocketml.profiler.run import profile as run_profile

    overrides = {"p90_latency_ms": _ms(max_latency), "max_accuracy_drop": _fraction(max_drop),
                 "max_size_mb": max_size, "max_memory_mb": max_memory}
    try:
        check_versions()
        result = run_profile(list(paths), device, data, threads, warmup, runs, overrides)
    except PocketmlError as exc:
        _fail(exc)
    rep.print_table(result)
    target = Path(out_dir) if out_dir else (Path(paths[0]) if Path(paths[0]).is_dir() else Path(paths[0]).parent)
    j, m = rep.write(result, target)
    click.echo(f"wrote {j} and {m}")
    if record:
        from pocketml.profiler.record import record as record_settings
        try:
            written = record_settings(result)
        except PocketmlError as exc:
            _fail(exc)
        click.echo(f"recorded the measured settings in {len(written)} manifest(s)")
    codes = {"PASS": 0, "NOT MEASURED": 0, "FAIL": 6, "UNCERTAIN": 6, "ERROR": 4}
    sys.exit(codes[result["overall"]])


@cli.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--device", required=True, help="Device profile name, a profile .toml, or 'all'.")
@click.option("--threads", default=1, show_default=True)
@click.option("--budget", default="100ms", show_default=True, help="Latency budget for the verdict column.")
@click.option("--emulate", is_flag=True, help="Also measure each artifact here and scale it (host emulation).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (one object, or a list for several).")
def estimate(paths, device, threads, budget, emulate, as_json):
    """Estimate phone-class latency of artifacts without a phone (ONNX, TFLite, Core ML).

    \b
    The estimate is a roofline model over the artifact's graph, fitted on published phone
    measurements; its band comes from leave-one-device-out and hold-out errors, per precision,
    widened for op categories the fit never saw (docs/ESTIMATE.md).
    Examples:
      pocketml estimate out/effnet/tflite-int8 --device galaxy-a14-5g --threads 4 --json
      pocketml estimate out/minilm --device all
    """
    import json

    from pocketml.profiler import devices as dev
    from pocketml.profiler.estimate import estimate as run_estimate
    from pocketml.profiler.run import discover
    from pocketml.runtime.manifest import read_manifest, verify_checksums
    from pocketml.runtime.paths import contained_file
    from pocketml.runtime.prechecks import precheck_model_file

    limit = _ms(budget)
    try:
        check_versions()
        arts = [a for a, _ in discover(list(paths))]
        profiles = [dev.load(n) for n in (dev.available() if device == "all" else [device])]
        rows, host_p50 = [], {}
        for art in arts:
            manifest = read_manifest(art)
            verify_checksums(art, manifest)
            precheck_model_file(contained_file(art, manifest.model_file), manifest.format)
            for prof in profiles:
                e = run_estimate(art, prof, threads)
                e["artifact"] = str(art)
                e["verdict"] = ("N/A: no runtime for this format" if not e["runs_on_device"] else "PASS"
                                if e["high_ms"] <= limit else "FAIL" if e["low_ms"] > limit else "UNCERTAIN")
                if emulate and host_p50.get(art) is None:
                    host_p50[art] = _host_p50(art, threads)
                if emulate and host_p50[art] is not None:
                    from pocketml.profiler.estimate.emulate import emulate as run_emulate
                    e["emulated"] = run_emulate(host_p50[art], e, prof, threads)
                rows.append(e)
    except PocketmlError as exc:
        _fail(exc)
    if as_json:
        click.echo(json.dumps(rows[0] if len(rows) == 1 else rows, indent=2))
        return
    from rich.table import Table

    from pocketml.profiler.report import make_console
    t = Table(title=f"pocketml estimate — {threads} thread(s), budget {limit:g} ms")
    for c in ("artifact", "device", "estimate ms", "band ms", f"≤ {limit:g} ms", "method", "emulated ms"):
        t.add_column(c)
    for e in rows:
        t.add_row(Path(e["artifact"]).name, e["device"], f"{e['latency_ms']:.1f}",
                  f"{e['low_ms']:.1f}–{e['high_ms']:.1f}", e["verdict"], e["method"],
                  f"{e['emulated']['latency_ms']:.1f}" if e.get("emulated") else "-")
    make_console().print(t)
    notes = sorted({n for e in rows for n in e.get("notes", [])})
    for n in notes:
        click.echo(f"note: {n}")


def _host_p50(art: Path, threads: int) -> float | None:
    """Host p50 of one artifact for emulation (a short, sandboxed profile run); None if not measurable."""
    from pocketml.profiler.run import profile as run_profile
    from pocketml.runtime.manifest import read_manifest
    if read_manifest(art).format == "coreml" and sys.platform != "darwin":
        return None
    row = run_profile([art], threads=threads, warmup=3, runs=20)["artifacts"][0]
    return row["latency_ms"]["p50"] if row.get("status") == "measured" else None


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the profiles as JSON.")
def devices(as_json):
    """List the device profiles (phone-class targets) and their default budgets.

    \b
    Example:
      pocketml devices
    """
    import json

    from pocketml.profiler import devices as dev

    try:
        profiles = [dev.load(n) for n in dev.available()]
    except PocketmlError as exc:
        _fail(exc)
    if as_json:
        click.echo(json.dumps(profiles, indent=2))
        return
    from rich.table import Table

    from pocketml.profiler.report import make_console
    t = Table(title="pocketml device profiles")
    for c in ("name", "device", "SoC", "CPU", "RAM", "p90 target", "max drop", "tier"):
        t.add_column(c)
    for p in profiles:
        t.add_row(p["name"], p["display_name"], p["soc"]["name"], dev.cpu_summary(p), f"{p['memory']['ram_gb']:g} GB",
                  f"{p['targets']['p90_latency_ms']:g} ms", f"{p['targets']['max_accuracy_drop']:.0%}", p["tier"])
    make_console().print(t)


# The demo's conversion jobs: two at a time on two cores; each job converts one model for some formats.
DEMO_JOBS = (("efficientnet-lite0", "effnet", ("tflite",)), ("efficientnet-lite0", "effnet", ("onnx", "coreml")),
             ("minilm-l6", "minilm", ("onnx", "tflite", "coreml")))


def _demo_job(model: str, sub: str, formats: tuple, out: str, verbose: bool,
              threads: int) -> list[tuple[str, int, str]]:
    """Run in a worker process; returns (artifact, exit code, message) for each failure."""
    import os
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)      # parallel jobs must not oversubscribe the cores
    quiet(verbose)
    import torch

    from pocketml.convert import Recipe, run
    torch.set_num_threads(threads)

    def log(line):
        click.echo(f"[{model}] {line.strip()}")
    outcomes = run(Recipe(model=model, formats=list(formats), precisions=["fp32", "fp16", "int8"]),
                   Path(out) / sub, log=log)
    return [(f"{model} {o.name}", o.error.exit_code, str(o.error)) for o in outcomes if o.error]


@cli.command()
@click.option("-o", "--out", "out_dir", default="out", show_default=True, type=click.Path())
@click.option("--device", default="pixel-7", show_default=True)
@click.option("--runs", default=50, show_default=True)
@click.option("--jobs", default=2, show_default=True, help="Conversions run in parallel (one per core).")
@click.pass_context
def demo(ctx, out_dir, device, runs, jobs):
    """Convert both built-in models to ONNX, TFLite and Core ML (fp32, fp16, int8), profile, report.

    \b
    Example:
      pocketml demo -o out          # writes out/report.json and out/report.md
    """
    import multiprocessing
    import os
    import time
    from concurrent.futures import ProcessPoolExecutor

    from pocketml.profiler import report as rep
    from pocketml.profiler.run import profile as run_profile

    out = Path(out_dir)
    verbose = bool(ctx.parent and ctx.parent.params.get("verbose"))
    t0 = time.perf_counter()
    click.echo(f"converting efficientnet-lite0 and minilm-l6 → onnx, tflite, coreml × fp32, fp16, int8 "
               f"({jobs} jobs in parallel)")
    failed = []
    try:
        check_versions(CONVERT_PACKAGES)
        with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            threads = max(1, (os.cpu_count() or 1) // jobs)
            futures = [pool.submit(_demo_job, m, sub, f, str(out), verbose, threads) for m, sub, f in DEMO_JOBS]
            for fut in futures:
                failed += fut.result()
        click.echo(f"conversions done in {time.perf_counter() - t0:.0f} s")
        click.echo("profiling ONNX and TFLite artifacts (Core ML: not measured on Linux)")
        result = run_profile([out / "effnet", out / "minilm"], device=device, runs=runs)
    except PocketmlError as exc:
        _fail(exc)
    rep.print_table(result)
    j, m = rep.write(result, out)
    click.echo(f"wrote {j} and {m}")
    if failed:
        click.secho(f"{len(failed)} artifact(s) failed conversion or validation: "
                    + "; ".join(f"{n} (exit {c}): {msg}" for n, c, msg in failed), fg="red", err=True)
        sys.exit(max(c for _, c, _ in failed))


def main() -> None:
    try:
        cli(standalone_mode=True)
    except PocketmlError as exc:  # pragma: no cover - commands catch their own
        _fail(exc)


if __name__ == "__main__":
    main()
