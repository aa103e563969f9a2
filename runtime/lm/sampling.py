"""Next-token choice and stop strings, in numpy.

`Sampler(temperature, top_k, top_p, seed)`: temperature 0 is greedy (argmax, first index on ties);
otherwise the logits are divided by the temperature, cut to the `top_k` most likely tokens, cut to
the smallest set whose probability reaches `top_p` (the order and meaning transformers uses), and a
token is drawn with a `numpy.random.Generator` seeded by `seed` — the same seed gives the same text.

`StopStrings`: generation ends when the text contains a stop string; the stop string and what
follows it are not emitted, and text that could be the start of one is held back while streaming.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import UsageError


def greedy(logits: np.ndarray) -> int:
    return int(np.argmax(logits))


def candidates(logits: np.ndarray, temperature: float = 1.0, top_k: int = 0,
               top_p: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(token ids, probabilities) a sampler draws from: softmax(logits / temperature) over the `top_k`
    most likely tokens (0: all), cut to the smallest most-likely set whose mass reaches `top_p`,
    renormalised (float64). Ties at the k-th place are broken by argpartition's order."""
    x = np.asarray(logits, dtype=np.float64).reshape(-1) / temperature
    idx = np.arange(x.size) if not top_k or top_k >= x.size else np.argpartition(-x, top_k - 1)[:top_k]
    sub = x[idx] - np.max(x[idx])
    p = np.exp(sub)
    p /= p.sum()
    if top_p < 1.0:
        order = np.argsort(-p, kind="stable")
        before = np.cumsum(p[order]) - p[order]          # mass of the more likely tokens
        keep = order[before < top_p - 1e-9]             # reached within rounding: 0.5 + 0.3 is 0.8
        idx, p = idx[keep], p[keep] / p[keep].sum()
    return idx, p


def filtered_probabilities(logits: np.ndarray, temperature: float = 1.0, top_k: int = 0,
                           top_p: float = 1.0) -> np.ndarray:
    """`candidates` as a full-vocabulary distribution (zeros outside the kept set)."""
    idx, p = candidates(logits, temperature, top_k, top_p)
    out = np.zeros(np.asarray(logits).size, dtype=np.float64)
    out[idx] = p
    return out


@dataclass
class Sampler:
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self):
        if not isinstance(self.temperature, (int, float)) or not np.isfinite(self.temperature) or self.temperature < 0:
            raise UsageError(f"temperature {self.temperature!r}: a number ≥ 0 (0 is greedy)")
        if not isinstance(self.top_k, (int, np.integer)) or self.top_k < 0:
            raise UsageError(f"top_k {self.top_k!r}: an integer ≥ 0 (0 keeps every token)")
        if not isinstance(self.top_p, (int, float)) or not 0.0 < self.top_p <= 1.0:
            raise UsageError(f"top_p {self.top_p!r}: a number in (0, 1] (1 keeps every token)")
        self._rng = np.random.default_rng(self.seed)

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1

    def __call__(self, logits: np.ndarray) -> int:
        if self.is_greedy:
            return greedy(logits)
        idx, p = candidates(logits, self.temperature, self.top_k, self.top_p)
        return int(idx[self._rng.choice(p.size, p=p)])


class StopStrings:
    """Feed text pieces; get back what may be shown now, and whether a stop string was reached."""

    def __init__(self, stops=None):
        stops = [stops] if isinstance(stops, str) else list(stops or [])
        if any(not isinstance(s, str) or not s for s in stops):
            raise UsageError(f"stop strings must be non-empty strings, got {stops!r}")
        self.stops = stops
        self._pending = ""
        self.stopped = False

    def feed(self, piece: str) -> str:
        if self.stopped:
            return ""
        text = self._pending + piece
        cut = min((i for i in (text.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped, self._pending = True, ""
            return text[:cut]
        hold = self._held(text)
        self._pending = text[len(text) - hold:] if hold else ""
        return text[:len(text) - hold]

    def flush(self) -> str:
        out, self._pending = ("" if self.stopped else self._pending), ""
        return out

    def _held(self, text: str) -> int:
        """Length of the longest end of `text` that begins some stop string."""
        best = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(text)), best, -1):
                if text.endswith(s[:n]):
                    best = n
                    break
        return best
