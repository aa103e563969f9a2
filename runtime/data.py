"""User data in: images, .npy tensors and text, checked before anything runs on them.

Every sample is checked against the model's input spec; a bad one is a UsageError (exit 2)
that names the file, and the expected vs actual shape / dtype. Nothing is silently converted:
NCHW data for an NHWC input, float64 for float32, or NaN are refused.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import UsageError, require_dependency
from .parsing import reading

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
MAX_SAMPLES = 100_000


def preprocess_image(rgb: np.ndarray, pre: dict) -> np.ndarray:
    """HWC uint8 RGB → a (1, C, H, W) float32 batch following the declared preprocessing.

    Resize the shorter side to `resize_to`, centre-crop to `size`, then (x - mean) / std.
    """
    Image = require_dependency("PIL.Image", "pillow", "image preprocessing")
    im = Image.fromarray(np.asarray(rgb)).convert("RGB")
    h_out, w_out = pre["size"]
    w, h = im.size
    scale = pre.get("resize_to", max(h_out, w_out)) / min(w, h)
    im = im.resize((max(w_out, round(w * scale)), max(h_out, round(h * scale))), Image.BILINEAR)
    w, h = im.size
    left, top = (w - w_out) // 2, (h - h_out) // 2
    im = im.crop((left, top, left + w_out, top + h_out))
    x = (np.asarray(im, dtype=np.float32) - np.float32(pre["mean"])) / np.float32(pre["std"])
    return x.transpose(2, 0, 1)[None].copy()


def to_layout(x: np.ndarray, src: str | None, dst: str | None) -> np.ndarray:
    """Transpose between NCHW and NHWC (the only layouts pocketml emits)."""
    if not src or not dst or src == dst:
        return x
    table = {("NCHW", "NHWC"): (0, 2, 3, 1), ("NHWC", "NCHW"): (0, 3, 1, 2)}
    if (src, dst) not in table:
        raise UsageError(f"cannot convert layout {src} to {dst}")
    return np.ascontiguousarray(x.transpose(table[(src, dst)]))


def load_images(paths: list[Path], pre: dict) -> list[np.ndarray]:
    Image = require_dependency("PIL.Image", "pillow", "reading images")
    out = []
    for p in paths:
        try:
            with Image.open(p) as im:
                rgb = np.asarray(im.convert("RGB"))
        except Exception as exc:  # PIL raises many types for bad files
            raise UsageError(f"{p}: not a readable image ({exc})", sample=str(p)) from exc
        out.append(preprocess_image(rgb, pre))
    return out


def check_sample(x: np.ndarray, shape: list, dtype: str, where: str, layout: str | None = None) -> np.ndarray:
    """One sample (batch of 1) against the canonical input spec. Returns it unchanged."""
    want_shape = [d if isinstance(d, int) else None for d in shape]
    if x.ndim == len(want_shape) - 1:
        x = x[None]
    if x.ndim != len(want_shape) or any(w is not None and w != a for w, a in zip(want_shape, x.shape)):
        hint = ""
        if layout == "NCHW" and x.ndim == 4 and list(x.shape[1:]) == [want_shape[2], want_shape[3], want_shape[1]]:
            hint = " (this looks like NHWC data; the model takes NCHW — transpose it yourself, pocketml does not guess)"
        raise UsageError(f"{where}: shape {list(x.shape)}, expected {shape}{hint}",
                         sample=where, expected=shape, actual=list(x.shape))
    if x.dtype != np.dtype(dtype):
        raise UsageError(f"{where}: dtype {x.dtype}, expected {dtype}", sample=where,
                         expected=dtype, actual=str(x.dtype))
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).sum())
        raise UsageError(f"{where}: contains {bad} NaN/Inf value(s)", sample=where)
    return x


def list_data_dir(data_dir: Path) -> list[Path]:
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise UsageError(f"data directory {data_dir} does not exist")
    files = sorted(p for p in data_dir.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise UsageError(f"data directory {data_dir} is empty")
    if len(files) > MAX_SAMPLES:
        raise UsageError(f"data directory {data_dir} has {len(files)} files; the cap is {MAX_SAMPLES}")
    return files


def load_data_dir(data_dir: Path, inputs: list[dict], pre: dict) -> list[list[np.ndarray]]:
    """Read a directory of samples into canonical-layout input lists (one list per sample).

    Images (for image models), `.npy` (single-input models) or `.npz` (named inputs),
    `.txt` (one sentence per line, for text models).
    """
    files = list_data_dir(data_dir)
    kind = pre.get("kind", "tensor")
    named: list[tuple[str, list[np.ndarray]]] = []
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    texts = [p for p in files if p.suffix.lower() == ".txt"]
    if kind == "image" and images and not {"size", "mean", "std"} <= set(pre):
        raise UsageError(f"{images[0]}: this model declares no image preprocessing (size, mean, std), so "
                         "pocketml cannot turn image files into its input; pass .npy tensors instead",
                         sample=str(images[0]))
    if kind == "image":
        named += [(str(p), [x]) for p, x in zip(images, load_images(images, pre))]
    if kind == "text":
        from .text import encode
        for p in texts:
            with reading(p, "text data (UTF-8, one sentence per line)", error=UsageError):
                lines = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines() if ln.strip()]
            named += [(f"{p} line {i + 1}", s) for i, s in enumerate(encode(lines, pre))]
    named += [(str(p), _load_array_sample(p, inputs)) for p in files if p.suffix.lower() in (".npy", ".npz")]
    if not named:
        raise UsageError(f"{data_dir}: no usable samples for a {kind} model "
                         f"(found {', '.join(sorted({p.suffix for p in files})) or 'nothing'})")
    samples = []
    for src, sample in named:
        samples.append([check_sample(x, spec["shape"], spec["dtype"], f"{src} input {spec['name']!r}",
                                     spec.get("layout")) for x, spec in zip(sample, inputs)])
    return samples


def _load_array_sample(p: Path, inputs: list[dict]) -> list[np.ndarray]:
    with reading(p, "a numpy file without pickles", error=UsageError):
        if p.suffix.lower() == ".npy":
            arrs = [np.load(p, allow_pickle=False)]
        else:
            with np.load(p, allow_pickle=False) as z:
                missing = [s["name"] for s in inputs if s["name"] not in z.files]
                if missing:
                    raise UsageError(f"{p}: missing input(s) {missing}; has {z.files}", sample=str(p))
                arrs = [z[s["name"]] for s in inputs]
    if len(arrs) != len(inputs):
        raise UsageError(f"{p}: a .npy file holds one tensor but the model has {len(inputs)} inputs; use .npz",
                         sample=str(p))
    return arrs


def check_calibration(samples: list[list[np.ndarray]], inputs: list[dict], source: str) -> None:
    """Calibration data that cannot give an activation range is a usage error (exit 2) naming it.

    Degenerate: a float input that takes a single value across the whole set (zero range: every
    activation range downstream collapses to a point, and static int8 quantizes nothing), or two or
    more samples that are all identical (the set says nothing about the distribution). Integer inputs
    (token ids, masks, token types) are exempt from the single-value rule: they are not ranged."""
    for k, spec in enumerate(inputs):
        xs = [s[k] for s in samples]
        if xs[0].dtype.kind != "f":
            continue
        lo, hi = min(float(x.min()) for x in xs), max(float(x.max()) for x in xs)
        if lo == hi:
            raise UsageError(
                f"calibration data {source}: input {spec['name']!r} is {lo:g} in every one of its {len(xs)} "
                "sample(s) (zero range): calibration needs representative inputs, not a constant",
                sample=source, input=spec["name"])
    if len(samples) > 1 and all(all(np.array_equal(a, b) for a, b in zip(s, samples[0])) for s in samples[1:]):
        raise UsageError(f"calibration data {source}: all {len(samples)} samples are identical: calibration "
                         "needs representative inputs, not copies of one", sample=source)
