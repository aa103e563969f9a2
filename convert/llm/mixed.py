"""Mixed int4/int8 for language models: keep the most sensitive weight groups at int8 in an int4
artifact until the perplexity increase against the fp32 reference is within `--max-drop`.

The same policy as the tensor models' search (`convert/exporters/mixed.py`: all quantized first; rank;
the smallest k most sensitive kept, k grown geometrically then bisected — `smallest_prefix`), with two
changes a 135M–300M decoder needs:

- ranking: re-quantizing the artifact once per group (61 groups for SmolLM2) would take most of an hour,
  so groups are ranked on the fp32 torch reference with fake-quantized weights (every linear and the
  embedding at symmetric int4 in blocks of the artifact's size; then, per group, that group at int8):
  the gain is the drop in KL(fp32 ‖ fake) on the search text. One reference forward per group.
- deciding: every k tried is a real artifact (the format's own exporter with `keep_int8`), scored by the
  format's own runtime; the drop is its relative perplexity increase over the fp32 reference.

Search text: the first half of `convert/data/sentences.txt` (the half validation never reads), so the
budget is met on text the published validation figures do not share.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

from pocketml.runtime.errors import ValidationFailed
from pocketml.runtime.lm.metrics import next_token_stats

from ..exporters.mixed import smallest_prefix
from . import groups as wg

SEARCH_SEQUENCES, SEARCH_LENGTH = 2, 128
DROP_DEFINITION = "relative perplexity increase over the fp32 reference on the search text"


def fake_quantize(weight, bits: int, block: int):
    """Symmetric round-to-nearest in blocks of `block` along the input (last) axis, de-quantized."""
    import torch
    out_dim, in_dim = weight.shape
    pad = (-in_dim) % block
    w = torch.nn.functional.pad(weight, (0, pad)).reshape(out_dim, -1, block)
    qmax = 2 ** (bits - 1) - 1
    scale = w.abs().amax(-1, keepdim=True).clamp_min(1e-12) / qmax
    q = torch.clamp(torch.round(w / scale), -qmax - 1, qmax) * scale
    return q.reshape(out_dim, -1)[:, :in_dim]


class Sensitivity:
    """Rank weight groups by how much keeping each at int8 (all others int4) brings the reference back."""

    def __init__(self, spec, sequences, ref_logits, block: int):
        self.spec, self.sequences, self.ref_logits, self.block = spec, sequences, ref_logits, block

    def _kl(self) -> float:
        import torch
        with torch.no_grad():
            logits = [self.spec.module(input_ids=torch.as_tensor(s)[None]).logits[0].float().numpy()
                      for s in self.sequences]
        return next_token_stats(self.ref_logits, logits, self.sequences)["kl_mean"]

    def rank(self, log) -> list[tuple[str, float]]:
        import torch
        table = wg.torch_modules(self.spec.module, self.spec.config)
        weights = {id(m.weight): m.weight for mods in table.values() for m in mods}
        saved = {k: w.detach().clone() for k, w in weights.items()}
        int4 = {k: fake_quantize(w, 4, self.block) for k, w in saved.items()}
        int8 = {k: fake_quantize(w, 8, self.block) for k, w in saved.items()}

        def set_(values):
            with torch.no_grad():
                for k, w in weights.items():
                    w.copy_(values[k])
        try:
            set_(int4)
            base = self._kl()
            gains = []
            for group, mods in table.items():
                keys = {id(m.weight) for m in mods}
                set_({k: (int8 if k in keys else int4)[k] for k in weights})
                gains.append((group, base - self._kl()))
            log(f"    mixed precision: ranked {len(gains)} weight groups on the reference (fake int4, KL {base:.4f})")
        finally:
            set_(saved)
        return sorted(gains, key=lambda g: -g[1])


def search(spec, entry, ref_lm, max_drop: float, work: Path, log, *, block_size: int = 32, **options) -> dict:
    """The int8 groups (and the search record) for `entry`'s int4 artifact of `spec` within `max_drop`.
    Raises ValidationFailed (exit 5) when even every group at int8 misses the budget."""
    from .reference import search_sequences
    t0 = time.perf_counter()
    sequences = search_sequences(ref_lm.tokenizer, SEARCH_SEQUENCES, min(SEARCH_LENGTH, spec.context))
    ref_logits = [ref_lm.score(s) for s in sequences]
    trial = Path(work) / "mixed-trial"

    def drop_of(keep: list[str]) -> tuple[float, float]:
        shutil.rmtree(trial, ignore_errors=True)
        entry.lm_export()(spec, trial, "int4", work=work, block_size=block_size, keep_int8=keep, **options)
        lm = entry.lm_load()(trial)
        try:
            stats = next_token_stats(ref_logits, [lm.score(s) for s in sequences], sequences)
        finally:
            lm.close()
        size = sum(p.stat().st_size for p in trial.rglob("*") if p.is_file()) / 1e6
        return (float("inf") if stats["nan_count"] else stats["perplexity_change"]), size

    base, base_size = drop_of([])
    record = {"max_drop": max_drop, "drop_definition": DROP_DEFINITION, "search_text": SEARCH_TEXT_NOTE,
              "all_int4_drop": round(base, 5), "groups": len(wg.all_groups(spec.config))}
    log(f"    mixed precision: all groups int4 → perplexity {base:+.2%} (budget {max_drop:+.2%})")
    if base <= max_drop:
        return {**record, "int8_groups": [], "drop": round(base, 5), "trials": [[0, round(base, 5)]],
                "seconds": round(time.perf_counter() - t0, 1)}
    ranked = Sensitivity(spec, sequences, ref_logits, block_size).rank(log)
    names = [g for g, _ in ranked]
    sizes = {0: base_size}

    def drop_at(k):
        d, sizes[k] = drop_of(names[:k])
        log(f"    mixed precision: {k} most sensitive group(s) int8 → perplexity {d:+.2%}")
        return d
    best, trials = smallest_prefix(len(names), drop_at, max_drop, {0: base})
    shutil.rmtree(trial, ignore_errors=True)
    record["trials"] = [[k, round(v, 5)] for k, v in sorted(trials.items())]
    record["sensitivity"] = [[g, float(f"{v:.3g}")] for g, v in ranked[:12]]
    if best is None:
        raise ValidationFailed(f"mixed precision cannot meet --max-drop {max_drop:.2%}: with every weight group at "
                               f"int8 the perplexity increase is still {trials[len(names)]:+.2%} "
                               f"({DROP_DEFINITION})", mixed_precision=record)
    return {**record, "int8_groups": names[:best], "drop": round(trials[best], 5),
            "size_mb": [round(base_size, 3), round(sizes[best], 3)], "size_note": "[all int4, mixed] artifact folder",
            "seconds": round(time.perf_counter() - t0, 1)}


SEARCH_TEXT_NOTE = ("first half of convert/data/sentences.txt (CPython 3.11 docstrings), the half validation "
                    f"never reads; {SEARCH_SEQUENCES} × {SEARCH_LENGTH} tokens")
