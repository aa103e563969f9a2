"""Shared by the benchmark scripts: the built-in models, artifact reuse, accuracy formatting."""
from __future__ import annotations

from pathlib import Path

MODELS = (("efficientnet-lite0", "effnet"), ("minilm-l6", "minilm"))
FORMATS = ("onnx", "tflite", "coreml")
PRECISIONS = ("fp32", "fp16", "int8")


def ensure_artifacts(model: str, out: Path):
    """Load the model spec; convert whatever artifacts are missing under `out`."""
    from pocketml.runtime.quiet import quiet
    from pocketml.convert import Recipe, run
    from pocketml.convert.sources import load_model

    quiet(verbose=False)
    spec = load_model(model)
    missing = [f for f in FORMATS if any(not (out / f"{f}-{p}" / "manifest.json").exists() for p in PRECISIONS)]
    if missing or not (out / "reference" / "manifest.json").exists():
        run(Recipe(model=model, formats=missing or ["onnx"], precisions=list(PRECISIONS)), out, spec=spec)
    return spec


def fmt_acc(row: dict) -> str:
    a = row.get("accuracy") or {}
    if "top1_agreement" in a:
        return f"top-1 agree {a['top1_agreement']:.3f}, top-5 {a['top5_overlap']:.3f}"
    if "cosine_mean" in a:
        return f"cosine mean {a['cosine_mean']:.4f}, min {a['cosine_min']:.4f}"
    return "-"
