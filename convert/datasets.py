"""Built-in calibration and evaluation data, real and available offline. Splits are disjoint.

Images: photographs bundled with scikit-image and scikit-learn. Each photo yields several
crops/flips; calibration and evaluation use *different photos*, not just different crops.
Text: sentences from CPython docstrings (convert/data/sentences.txt, provenance in its header).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pocketml.runtime.data import preprocess_image

from .spec import DataSet

CALIB_PHOTOS = ("astronaut", "coffee", "rocket", "china", "camera", "coins", "brick", "grass")
EVAL_PHOTOS = ("chelsea", "flower", "immunohistochemistry", "retina", "moon", "clock", "gravel",
               "hubble_deep_field")
SENTENCES = Path(__file__).parent / "data" / "sentences.txt"


def _photo(name: str) -> np.ndarray:
    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_image
        rgb = load_sample_image(f"{name}.jpg")
    else:
        import skimage.data
        rgb = getattr(skimage.data, name)()
    if rgb.ndim == 2:
        rgb = np.repeat(rgb[..., None], 3, axis=2)
    return np.ascontiguousarray(rgb[..., :3]).astype(np.uint8)


def _views(rgb: np.ndarray) -> list[np.ndarray]:
    """Full image, its mirror, and five 60 % crops (corners and centre): 7 views per photo."""
    h, w = rgb.shape[:2]
    ch, cw = int(h * 0.6), int(w * 0.6)
    crops = [rgb[:ch, :cw], rgb[:ch, w - cw:], rgb[h - ch:, :cw], rgb[h - ch:, w - cw:],
             rgb[(h - ch) // 2:(h - ch) // 2 + ch, (w - cw) // 2:(w - cw) // 2 + cw]]
    return [rgb, rgb[:, ::-1]] + crops


def photo_set(split: str, pre: dict) -> DataSet:
    names = {"calib": CALIB_PHOTOS, "eval": EVAL_PHOTOS}[split]
    samples = [[preprocess_image(np.ascontiguousarray(v), pre)] for n in names for v in _views(_photo(n))]
    return DataSet(samples, f"{len(samples)} views of {len(names)} photos bundled with scikit-image/scikit-learn "
                            f"({', '.join(names)})")


def sentences(split: str) -> list[str]:
    lines = [ln for ln in SENTENCES.read_text(encoding="utf-8").splitlines() if ln and not ln.startswith("#")]
    half = len(lines) // 2
    return lines[:half] if split == "calib" else lines[half:]


def sentence_set(split: str, pre: dict, tokenizer_file: Path, limit: int | None = None) -> DataSet:
    from pocketml.runtime.text import encode

    lines = sentences(split)[:limit]
    return DataSet(encode(lines, pre, tokenizer_file),
                   f"{len(lines)} {split} sentences from CPython docstrings (convert/data/sentences.txt)")
