"""Built-in calibration and evaluation data, real and available offline. Splits are disjoint.

Images: photographs bundled with scikit-image and scikit-learn. Each photo yields 38 crops/flips;
calibration and evaluation use *different photos*, not just different crops.
Text: sentences from CPython docstrings (convert/data/sentences.txt, provenance in its header).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pocketml.runtime.data import preprocess_image

from .spec import DataSet

CALIB_PHOTOS = ("astronaut", "coffee", "rocket", "china", "camera", "coins", "brick", "grass")
EVAL_PHOTOS = ("chelsea", "flower", "immunohistochemistry", "retina", "moon", "clock", "gravel",
               "hubble_deep_field", "stereo_motorcycle")
SENTENCES = Path(__file__).parent / "data" / "sentences.txt"


def _photo(name: str) -> np.ndarray:
    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_image
        rgb = load_sample_image(f"{name}.jpg")
    else:
        import skimage.data
        rgb = getattr(skimage.data, name)()
        rgb = rgb[0] if isinstance(rgb, tuple) else rgb    # stereo_motorcycle: (left, right, disparity)
    if rgb.ndim == 2:
        rgb = np.repeat(rgb[..., None], 3, axis=2)
    return np.ascontiguousarray(rgb[..., :3]).astype(np.uint8)


def _dense_views(rgb: np.ndarray) -> list[np.ndarray]:
    """The full image and 3×3 grids of 80 % and 60 % crops, each also mirrored: 38 views per photo.

    Evaluation: many views make top-1 agreement a fine-grained measure (56 samples could not tell 0.91
    from 0.95). Calibration: 304 views instead of 7 per photo (56) lift EfficientNet-Lite0's ONNX int8
    top-1 agreement from 0.950 to 0.971 (docs/PERFORMANCE.md)."""
    h, w = rgb.shape[:2]
    out = []
    for scale in (1.0, 0.8, 0.6):
        ch, cw = int(h * scale), int(w * scale)
        spots = [(0.5, 0.5)] if scale == 1.0 else [(a, b) for a in (0, 0.5, 1) for b in (0, 0.5, 1)]
        for a, b in spots:
            y, x = int((h - ch) * a), int((w - cw) * b)
            view = rgb[y:y + ch, x:x + cw]
            out += [view, view[:, ::-1]]
    return out


def photo_set(split: str, pre: dict) -> DataSet:
    names = {"calib": CALIB_PHOTOS, "eval": EVAL_PHOTOS}[split]
    samples = [[preprocess_image(np.ascontiguousarray(v), pre)] for n in names for v in _dense_views(_photo(n))]
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


DISTILL_SENTENCES = 40000


def docstring_set(pre: dict, tokenizer_file: Path, limit: int = DISTILL_SENTENCES) -> DataSet:
    """Distillation text for the built-in text model: docstrings of installed packages (convert/corpus.py),
    with every evaluation sentence removed."""
    from pocketml.runtime.text import encode

    from .corpus import docstring_sentences
    lines, source = docstring_sentences(limit, exclude=set(sentences("eval")))
    return DataSet(encode(lines, pre, tokenizer_file), source)
