"""Compression before export: prune, layer_drop, distill (issue 3). See docs/COMPRESSION.md.

`apply_steps(spec, recipe, calib, log)` runs `recipe.steps` in order and returns a NEW ModelSpec whose
module is the compressed student; the input spec (the original model) is left untouched and stays the
accuracy reference. Every step's report lands in `spec.source["compression"]` (→ the manifest).
A recipe's `quantize` / `export` steps are export settings, not compression: the CLI folds them into the
Recipe's precisions / formats / options (`recipe.take_settings`); apply_steps refuses them.
"""
from __future__ import annotations

from pocketml.runtime.errors import UsageError

from .recipe import (SETTING_KINDS, STEP_KINDS, Step, as_step, load_recipe, parse_shorthand,  # noqa: F401
                     parse_step, parse_steps)


def make_step(kind: str, cfg):
    from .distill import Distill
    from .layerdrop import LayerDrop
    from .prune import Prune
    return {"prune": Prune, "layer_drop": LayerDrop, "distill": Distill}[kind](cfg)


def apply_steps(spec, recipe, calib=None, log=print, out_dir=None):
    """Run the recipe's steps; returns the student spec (a copy). `recipe` may also be a list of Steps
    (or step dicts, parsed here)."""
    from .report import Context, run_step
    parsed = parse_steps(recipe if isinstance(recipe, list) else recipe.steps)
    settings = [s.kind for s in parsed if not s.compresses]
    if settings:
        raise UsageError(f"steps {', '.join(settings)} set how the model is exported, not how it is compressed: "
                         "give them as Recipe precisions / formats / options (recipe.take_settings splits them off)")
    steps = [make_step(s.kind, s.config) for s in parsed]
    ctx = Context.build(spec, calib, out_dir, log)
    log(f"compressing {spec.name}: {', '.join(s.kind for s in steps)}")
    for step in steps:
        spec = run_step(step, spec, ctx)
    return spec
