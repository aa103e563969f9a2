"""`pocketml convert`: a model → validated artifacts, one directory per format × precision."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from pocketml.runtime import formats
from pocketml.runtime.errors import UnsupportedError
from pocketml.runtime.versions import CONVERT_PACKAGES, check_versions

from ..common import ALLOW_SYMLINKED_OUTPUT, csv, exits_on_error, fraction


@click.command()
@click.argument("model")
@click.option("--to", "to", help=f"Target formats [default: {','.join(formats.FORMAT_NAMES)}, or the recipe's export step].")
@click.option("--precision", "precisions",
              help=f"{','.join(formats.PRECISION_NAMES)} (int8w: weight-only int8; int4: 4-bit weights, see "
              "docs/COMPRESSION.md) [default: fp32, or the recipe's quantize step].")
@click.option("--calib", type=click.Path(), help="Calibration data directory (images, .npy/.npz, .txt).")
@click.option("--task", help="For Hugging Face dirs: feature-extraction, sentence-embedding, text-classification.")
@click.option("--seq-len", default=128, show_default=True, help="Sequence length for text models.")
@click.option("--trust-remote-code", is_flag=True, help="Allow a Hugging Face model's own Python code to run.")
@click.option("--no-reuse", is_flag=True, help="Rebuild artifacts even when an identical one is already published.")
@click.option("--recipe", "recipe_file", type=click.Path(), help="Compression recipe (TOML [[steps]]), see docs/COMPRESSION.md.")
@click.option("--prune", help="Prune before export: channels=0.3[,importance=l1|l2|taylor|random][,global] "
              "(CNNs) or heads=0.5,ffn=0.5 (transformers).")
@click.option("--drop-layers", "drop_layers", help="Keep only these encoder layers: keep=0,2,4.")
@click.option("--distill", help="Distill the compressed model from the original: [data=DIR][,epochs=N].")
@click.option("--quantize", help="Shorthand for a recipe's quantize step: int8[,observer=NAME][,max_drop=1%]"
              "[,calib=DIR] (the same as --precision int8 --observer … --max-drop … --calib …).")
@click.option("--max-drop", "max_drop", help="ONNX int8: keep the most sensitive layers float until the accuracy "
              "drop on the calibration data is within this budget, e.g. 1% (automatic mixed precision). Language "
              "models, int4: keep the most sensitive weight groups at int8 until the perplexity increase is within it.")
@click.option("--int4-block", "int4_block", type=click.Choice(["32", "128"]),
              help="Language models: int4 weights in blocks of 32 (default) or 128.")
@click.option("--gguf-weights", "gguf_weights", type=click.Choice(["carry", "requantize"]),
              help="Language models from a GGUF, ONNX int4/int8: carry the file's own Q4_0/Q4_1/Q8_0 blocks "
              "(the default when every matrix is one) or re-quantize its de-quantized weights.")
@click.option("--observer", help="Static int8: how activation ranges are set from the calibration data. " + "; ".join(
    f"{f}: {', '.join(formats.get(f).observers)}" for f in formats.with_observers()) + " (first: default).")
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(), help="Output directory.")
@ALLOW_SYMLINKED_OUTPUT
def convert(model, to, precisions, calib, task, seq_len, trust_remote_code, no_reuse, recipe_file, prune,
            drop_layers, distill, quantize, max_drop, int4_block, gguf_weights, observer, out_dir,
            allow_symlinked_output):
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
      pocketml convert smollm2-135m --to tflite --precision int4 --max-drop 10% -o out/smollm2-mixed
      pocketml convert smollm2-135m --to onnx --precision int4 --gguf-weights requantize -o out/smollm2-rtn
    """
    from pocketml.convert import Recipe, run
    from pocketml.convert.compress.recipe import compression_steps, merge_settings

    flags = {"formats": csv(to), "precisions": csv(precisions), "calib": calib, "observer": observer,
             "max_drop": fraction(max_drop)}
    with exits_on_error():
        steps, settings = compression_steps(recipe_file, {"prune": prune, "drop-layers": drop_layers,
                                                          "distill": distill, "quantize": quantize})
        chosen = merge_settings(flags, settings)
        options = {"reuse": not no_reuse, **{k: chosen[k] for k in ("max_drop", "observer") if chosen.get(k) is not None}}
        if int4_block:
            options["int4_block"] = int(int4_block)
        if gguf_weights:
            options["gguf_weights"] = gguf_weights
        if allow_symlinked_output:
            options["allow_symlinked_output"] = True     # recorded in every manifest's recipe
        recipe = Recipe(model=model, formats=chosen.get("formats", list(formats.FORMAT_NAMES)),
                        precisions=chosen.get("precisions", ["fp32"]), calib=chosen.get("calib"), task=task,
                        trust_remote_code=trust_remote_code, seq_len=seq_len, options=options, steps=steps)
        check_versions(CONVERT_PACKAGES)
        click.echo(f"converting {model} → {', '.join(recipe.formats)} × {', '.join(recipe.precisions)} in {out_dir}")
        outcomes = run(recipe, Path(out_dir), log=click.echo)
    report_outcomes(outcomes, out_dir)


def report_outcomes(outcomes, out_dir) -> None:
    """Rejected-op tables, then one summary line; exit with the most specific failure's code."""
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
