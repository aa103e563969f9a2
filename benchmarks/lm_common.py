"""Shared by the language-model benchmarks (`llm.py`, `llm_peers.py`): pocketml's LM artifacts, converted
when missing. Measuring and quality are the profiler child's own functions (`profiler/lm_child.py`)."""
from __future__ import annotations

from pathlib import Path


def ensure_artifacts(model: str, out: Path, formats_: list[str], precisions: list[str]) -> list[Path]:
    """The artifacts `out/<format>-<precision>/` (with `out/reference/`), `pocketml convert`ed if missing
    (minutes for a real model); returns those that exist afterwards."""
    from pocketml.convert import Recipe, run
    from pocketml.runtime.formats import artifact_name
    from pocketml.runtime.quiet import quiet
    quiet(verbose=False)
    want = [out / artifact_name(f, p) for f in formats_ for p in precisions]
    if any(not (a / "manifest.json").is_file() for a in want):
        run(Recipe(model=model, formats=formats_, precisions=precisions), out, log=print)
    return [a for a in want if (a / "manifest.json").is_file()]
