"""Where models come from: built-in names, local Hugging Face directories, `module:function` factories.

Loading is safe by default: safetensors, or `torch.load(weights_only=True)`; never a pickle
fallback. Hugging Face code from the model directory (`auto_map`) is refused unless the user
passes `trust_remote_code=True`, which the manifest and report then record.
"""
from __future__ import annotations

import importlib
import pickle
import re
from pathlib import Path

import numpy as np

from pocketml.runtime import families
from pocketml.runtime.errors import EnvironmentMissing, UnsafeInputError, UsageError
from pocketml.runtime.manifest import sha256_file
from pocketml.runtime.parsing import reading
from pocketml.runtime.prechecks import precheck_safetensors
from pocketml.runtime.text import load_tokenizer

from . import builtins as builtin_models
from .spec import ModelSpec

FACTORY_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
HF_TASKS = ("feature-extraction", "sentence-embedding", "image-classification", "text-classification")


def load_model(ref: str, task: str | None = None, trust_remote_code: bool = False,
               seq_len: int = 128) -> ModelSpec:
    if ref in builtin_models.BUILTINS:
        return builtin_models.BUILTINS[ref]()
    path = Path(ref)
    if path.is_dir():
        return load_hf_dir(path, task or "feature-extraction", trust_remote_code, seq_len)
    if path.suffix in (".pt", ".pth", ".bin", ".ckpt", ".pkl"):
        raise UsageError(f"{ref}: a bare checkpoint holds weights, not a model; write a factory "
                         "`mypkg.models:build` that builds the nn.Module and loads it with "
                         "torch.load(weights_only=True), and pass that")
    if FACTORY_RE.match(ref):
        return load_factory(ref, task)
    raise UsageError(f"unknown model {ref!r}: not a built-in ({', '.join(builtin_models.BUILTINS)}), "
                     "not a directory, not a module:function factory")


# ---------------------------------------------------------------------------- Hugging Face

def read_config(cfg_path: Path) -> dict:
    """config.json as a JSON object; any failure (size, UTF-8, syntax, nesting, not an object) → exit 4."""
    from pocketml.runtime.manifest import MAX_MANIFEST_BYTES, read_json_object
    return read_json_object(cfg_path, MAX_MANIFEST_BYTES, lambda p: open(p, "rb"), "config.json")


def check_remote_code(model_dir: Path, trust_remote_code: bool) -> bool:
    cfg_path = model_dir / "config.json"
    if not cfg_path.is_file():
        raise UsageError(f"{model_dir}: not a Hugging Face model directory (no config.json)")
    cfg = read_config(cfg_path)
    wants_code = bool(cfg.get("auto_map")) or any(model_dir.glob("*.py"))
    if wants_code and not trust_remote_code:
        raise UnsafeInputError(
            f"{model_dir}: the model asks to run its own Python code (config.json auto_map / *.py); "
            "refused. Pass --trust-remote-code only if you trust its author — it runs with your rights.",
            file=str(cfg_path))
    return wants_code


def weights_digest(model_dir: Path) -> tuple[str, list[str]]:
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        files = sorted(model_dir.glob("pytorch_model*.bin"))
    if not files:
        raise UsageError(f"{model_dir}: no model.safetensors or pytorch_model.bin")
    import hashlib
    h = hashlib.sha256()
    for f in files:
        h.update(sha256_file(f).encode())
    return h.hexdigest(), [f.name for f in files]


class _HFWrapper:
    """Turns a transformers model into a tensor-in / tensor-out module for one task."""

    @staticmethod
    def build(model, task: str):
        import torch

        class Wrapped(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.model = model

            def tokens(self, input_ids, attention_mask):
                """Per-token last hidden states (distillation can match them, not only the output)."""
                return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

            def pool(self, hidden, attention_mask):
                if task == "feature-extraction":
                    return hidden
                mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                return torch.nn.functional.normalize(pooled, p=2.0, dim=1)

            def forward(self, input_ids, attention_mask):
                return self.pool(self.tokens(input_ids, attention_mask), attention_mask)

        class WrappedLogits(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.model = model

            def forward(self, *args):
                names = ("pixel_values",) if task == "image-classification" else ("input_ids", "attention_mask")
                return self.model(**dict(zip(names, args))).logits

        return (Wrapped if task in ("feature-extraction", "sentence-embedding") else WrappedLogits)().eval()


def load_hf_dir(model_dir: Path, task: str, trust_remote_code: bool, seq_len: int) -> ModelSpec:
    if task not in HF_TASKS:
        raise UsageError(f"--task {task!r} is not one of {', '.join(HF_TASKS)}")
    remote = check_remote_code(model_dir, trust_remote_code)
    digest, weight_files = weights_digest(model_dir)
    try:
        import transformers
    except ImportError as exc:
        raise EnvironmentMissing("Hugging Face models need the 'convert' extra: pip install 'pocketml[convert]'",
                                 extra="convert") from exc
    auto = {"feature-extraction": transformers.AutoModel, "sentence-embedding": transformers.AutoModel,
            "image-classification": transformers.AutoModelForImageClassification,
            "text-classification": transformers.AutoModelForSequenceClassification}[task]
    safetensors = weight_files[0].endswith(".safetensors")
    for name in weight_files if safetensors else ():
        precheck_safetensors(model_dir / name)       # our own bounds-checked header walk, before the loader
    with reading(model_dir, "the Hugging Face model (config.json and weights)"):
        model = auto.from_pretrained(str(model_dir), local_files_only=True, use_safetensors=safetensors,
                                     trust_remote_code=trust_remote_code, attn_implementation="eager")
    model.eval()
    tok = model_dir / "tokenizer.json"
    if task == "image-classification":
        raise UsageError("image-classification from a Hugging Face directory is not supported yet; "
                         "use a module:function factory")
    if not tok.is_file():
        raise UsageError(f"{model_dir}: text tasks need tokenizer.json (a fast tokenizer)")
    load_tokenizer(tok, seq_len)                     # a corrupt tokenizer.json is refused now, not mid-conversion
    pre = {"kind": "text", "tokenizer_file": "tokenizer.json", "max_length": seq_len,
           "inputs": ["input_ids", "attention_mask"]}
    inputs = [{"name": n, "shape": [1, seq_len], "dtype": "int64", "layout": "NS"}
              for n in ("input_ids", "attention_mask")]
    out = {"feature-extraction": "last_hidden_state", "sentence-embedding": "sentence_embedding",
           "text-classification": "logits"}[task]
    if task == "sentence-embedding":
        pre["postprocessing"] = "mean pooling over attention_mask, then L2 normalisation (inside the graph)"
    return ModelSpec(
        name=model_dir.name, module=_HFWrapper.build(model, task), inputs=inputs, outputs=[out], task=task,
        metric=families.for_task(task).metric, family=families.for_task(task).name,
        preprocessing=pre, tokenizer_file=tok, hf_dir=model_dir,
        source={"kind": "hf-dir", "id": str(model_dir), "sha256": digest, "weights": weight_files,
                "trust_remote_code": remote and trust_remote_code,
                "loader": "safetensors" if safetensors else "torch.load(weights_only=True) via transformers"})


# ---------------------------------------------------------------------------- factories

def factory_family(module, is_image: bool) -> str:
    """A factory's model family: an image classifier (one NCHW image, classification task), another
    network with convolutions (static int8 applies), or a generic tensor model."""
    import torch
    if is_image:
        return "image-classifier"
    return "conv-net" if any(isinstance(m, torch.nn.Conv2d) for m in module.modules()) else "generic"


def load_factory(ref: str, task: str | None) -> ModelSpec:
    """`pkg.module:function` returning (nn.Module, example_inputs) — example inputs a tensor or tuple."""
    import torch

    mod_name, fn_name = ref.split(":")
    try:
        fn = getattr(importlib.import_module(mod_name), fn_name)
    except (ImportError, AttributeError) as exc:
        raise UsageError(f"cannot import factory {ref}: {exc}") from exc
    try:
        result = fn()
    except pickle.UnpicklingError as exc:   # torch.load(weights_only=True) refused a pickle that runs code
        raise UnsafeInputError(f"factory {ref} tried to load a checkpoint that is not plain weights "
                               f"(torch.load(weights_only=True) refused it): {exc}") from exc
    except Exception as exc:
        raise UsageError(f"factory {ref} raised {type(exc).__name__}: {exc}") from exc
    if not (isinstance(result, tuple) and len(result) == 2 and isinstance(result[0], torch.nn.Module)):
        raise UsageError(f"factory {ref} must return (torch.nn.Module, example_inputs)")
    module, example = result
    example = (example,) if isinstance(example, torch.Tensor) else tuple(example)
    inputs = []
    for i, t in enumerate(example):
        layout = "NCHW" if t.ndim == 4 else None
        inputs.append({"name": f"input_{i}", "shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", ""),
                       "layout": layout})
    is_image = task == "image-classification" and len(example) == 1 and example[0].ndim == 4
    import hashlib
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        h.update(np.ascontiguousarray(v.detach().cpu().numpy()).tobytes())
    spec = ModelSpec(
        name=fn_name, module=module.eval(), inputs=inputs, outputs=["output_0"],
        task=task or "generic", metric="top1" if task in ("image-classification", "text-classification") else "max-abs",
        family=factory_family(module, is_image),
        preprocessing=({"kind": "image", "size": list(example[0].shape[2:]), "normalisation": "none declared "
                        "(feed tensors the factory's model expects)"} if is_image else {"kind": "tensor"}),
        source={"kind": "factory", "id": ref, "sha256": h.hexdigest(), "loads_code": True})
    from .spec import DataSet
    spec.eval = DataSet([[t.detach().numpy() for t in example]], "the factory's example inputs")
    return spec
