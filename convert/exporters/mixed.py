"""Automatic mixed precision: keep the most quantization-sensitive layers in float until an accuracy
budget (`--max-drop`) is met.

Policy is apart from mechanics. This module decides *which* layers stay float; a format's exporter
supplies `build(float_layers, dst)` (quantize with those layers excluded) and the data to measure on.

1. Quantize everything; measure the drop on the measurement data. Within budget → done.
2. Sensitivity: for each candidate layer, quantize everything except it; its gain is how much the
   error proxy (KL of softmax for classifiers, 1 − cosine otherwise) improves.
3. Keep the k most sensitive layers float, growing k geometrically, then bisecting, to the smallest
   k that meets the budget. All-float candidates still over budget → ValidationFailed (exit 5).

The drop is pocketml's one accuracy number (runtime.metrics.accuracy_drop): 1 − top-1 agreement for
classifiers, 1 − mean cosine for embeddings, against the fp32 model's outputs on the same data.
"""
from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pocketml.runtime.families import METRICS
from pocketml.runtime.metrics import DROP_DEFINITION, accuracy_drop, compare
from pocketml.runtime.errors import ValidationFailed


@dataclass
class Measure:
    drop: float
    proxy: float            # continuous error, used to rank layers


def proxy_error(ref: np.ndarray, out: np.ndarray, metric: str) -> float:
    r, o = ref.reshape(len(ref), -1).astype(np.float64), out.reshape(len(out), -1).astype(np.float64)
    if METRICS[metric].classifier:
        lp = r - r.max(1, keepdims=True)
        lp -= np.log(np.exp(lp).sum(1, keepdims=True))
        lq = o - o.max(1, keepdims=True)
        lq -= np.log(np.exp(lq).sum(1, keepdims=True))
        return float((np.exp(lp) * (lp - lq)).sum(1).mean())
    cos = (r * o).sum(1) / np.maximum(np.linalg.norm(r, axis=1) * np.linalg.norm(o, axis=1), 1e-12)
    return float(1 - cos.mean())


def measure(outputs: np.ndarray, ref: np.ndarray, metric: str) -> Measure:
    stats = compare(list(ref), list(outputs), metric)
    if stats.get("nan_count") or stats.get("collapsed"):
        return Measure(1.0, float("inf"))
    return Measure(accuracy_drop(stats, metric), proxy_error(ref, outputs, metric))


def host_p50_ms(run_once, runs: int = 30) -> float:
    for _ in range(5):
        run_once()
    t = []
    for _ in range(runs):
        t0 = time.perf_counter()
        run_once()
        t.append(time.perf_counter() - t0)
    return float(np.median(t) * 1e3)


@dataclass
class Search:
    candidates: list[str]       # layers (graph node names) that may stay float
    build: object               # build(float_layers: list[str], dst: Path) -> None
    evaluate: object            # evaluate(path) -> np.ndarray of outputs on the measurement data
    reference: np.ndarray       # fp32 outputs on the same data
    metric: str
    max_drop: float
    fixed_float: tuple = ()     # layers float regardless (e.g. the float stem)
    log: object = print

    def _try(self, k_layers: list[str], dst: Path) -> Measure:
        self.build(list(self.fixed_float) + k_layers, dst)
        return measure(self.evaluate(dst), self.reference, self.metric)

    def run(self, dst: Path, work: Path) -> dict:
        t0 = time.perf_counter()
        trial = work / f"mixed-trial{dst.suffix}"
        base = self._try([], dst)
        report = {"max_drop": self.max_drop, "drop_definition": DROP_DEFINITION[self.metric],
                  "all_quantized_drop": round(base.drop, 5), "candidates": len(self.candidates)}
        self.log(f"    mixed precision: all layers int8 → drop {base.drop:.4f} (budget {self.max_drop:.4f})")
        if base.drop <= self.max_drop:
            return {**report, "float_layers": [], "drop": round(base.drop, 5), "trials": [[0, round(base.drop, 5)]],
                    "seconds": round(time.perf_counter() - t0, 1)}
        shutil.copyfile(dst, work / f"mixed-all{dst.suffix}")
        ranked = self._rank(base, trial)

        def drop_at(k):
            d = self._try(ranked[:k], trial).drop
            self.log(f"    mixed precision: {k} most sensitive layer(s) float → drop {d:.4f}")
            return d
        best, trials = smallest_prefix(len(ranked), drop_at, self.max_drop, {0: base.drop})
        if best is None:
            raise ValidationFailed(
                f"mixed precision cannot meet --max-drop {self.max_drop:g}: with all {len(ranked)} candidate "
                f"layers float the drop is still {trials[len(ranked)]:.4f} ({DROP_DEFINITION[self.metric]})",
                mixed_precision={**report, "trials": sorted(trials.items())})
        self.build(list(self.fixed_float) + ranked[:best], dst)
        report.update(float_layers=ranked[:best], drop=round(trials[best], 5),
                      trials=[[k, round(v, 5)] for k, v in sorted(trials.items())],
                      sensitivity=self.sensitivity[:max(10, best)], not_excludable=self.skipped, seconds=round(time.perf_counter() - t0, 1))
        return report

    def _rank(self, base: Measure, trial: Path) -> list[str]:
        from ..progress import Bar
        gains = []
        n = len(self.candidates)
        self.skipped = []
        with Bar("mixed precision: layer sensitivity", n, log=self.log) as bar:
            for i, name in enumerate(self.candidates):
                try:
                    gains.append((base.proxy - self._try([name], trial).proxy, name))
                except Exception as exc:  # noqa: BLE001 — the quantizer or runtime rejects this one exclusion
                    self.skipped.append([name, f"{type(exc).__name__}: {str(exc)[-160:]}"])
                bar.advance()
                if (i + 1) % 10 == 0 or i + 1 == n:
                    bar.print(f"    mixed precision: sensitivity {i + 1}/{n} layers")
        gains.sort(key=lambda g: -g[0])
        self.sensitivity = [[name, float(f"{g:.3g}")] for g, name in gains]
        return [name for _, name in gains]


def smallest_prefix(n: int, drop_at, budget: float, trials: dict) -> tuple[int | None, dict]:
    """The smallest k in 1..n with drop_at(k) <= budget, for a drop that falls as k grows (the k most
    sensitive items kept at higher precision): k grows geometrically (1, 2, 4, …, n), then bisects.
    `trials` holds drops already known ({0: all quantized}); returns (k or None when even n misses, trials)."""
    k, lo, best = 1, 0, None
    while best is None:
        k = min(k, n)
        trials[k] = drop_at(k)
        if trials[k] <= budget:
            best = k
        elif k == n:
            return None, trials
        else:
            lo, k = k, k * 2
    while best - lo > 1:
        mid = (lo + best) // 2
        trials[mid] = drop_at(mid)
        lo, best = (lo, mid) if trials[mid] <= budget else (mid, best)
    return best, trials


def cost(all_path: Path, mixed_path: Path, p50) -> dict:
    """What keeping layers float cost: size and host p50 (1 thread) of all-int8 vs the mixed artifact."""
    size = lambda p: round(os.path.getsize(p) / 1e6, 3)
    return {"size_mb": [size(all_path), size(mixed_path)],
            "host_p50_ms": [round(p50(all_path), 3), round(p50(mixed_path), 3)],
            "measured": "this host, 1 thread, 30 runs after 5 warm-up, [all int8, mixed]"}
