"""Core ML backend: a stateful decoder (convert/llm/coreml_export.py) whose KV cache is Core ML model state.

Core ML runs only on Apple's OS. Off macOS `load_dir` refuses with the same environment error (exit 7)
every Core ML artifact gets (the format registry's `host_support`), before anything is parsed.

On macOS `CoremlLM` drives the package through coremltools: `MLModel.make_state()` is the empty cache,
and each `predict(..., state=)` appends the call's tokens to it, so the cache stays inside Core ML and
only the token ids, the mask and the logits cross into Python. pocketml's test machines are Linux: this
path is written against coremltools' documented stateful-prediction API and has not been run by them —
the converter validates Core ML language models structurally only, and says so in every manifest.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import EnvironmentMissing, UnsafeInputError, UsageError, require_extra
from ..parsing import reading
from .model import LanguageModel, load_tokenizer, read_config_json

CONFIG_FILE = "coreml_config.json"


def causal_mask(past: int, seq: int) -> np.ndarray:
    """The additive mask for `seq` new tokens after `past` cached ones: float16 [1, 1, seq, past + seq],
    0 where new token i may attend position j (j ≤ past + i), −inf elsewhere."""
    allowed = np.arange(past + seq)[None, :] <= (np.arange(seq) + past)[:, None]
    return np.where(allowed, 0.0, -np.inf).astype(np.float16)[None, None]


class CoremlLM(LanguageModel):
    backend = "coreml"

    def __init__(self, model_path: Path, tokenizer, *, context_length: int, eos_token_ids, kv_bytes: int | None = None,
                 **kw):
        super().__init__(tokenizer, context_length=context_length, eos_token_ids=eos_token_ids, **kw)
        ct = require_extra("coremltools", "convert", "running Core ML language models on macOS")
        self.model_path = Path(model_path)
        with reading(self.model_path, "the Core ML language model with coremltools"):
            self._model = ct.models.MLModel(str(self.model_path), compute_units=ct.ComputeUnit.ALL)
        self._kv_bytes = kv_bytes
        self.reset()

    def kv_bytes_per_token(self) -> int | None:
        return self._kv_bytes

    def reset(self) -> None:
        self._state = self._model.make_state()
        self._length = 0

    @property
    def cache_length(self) -> int:
        return self._length

    def prefill(self, ids: np.ndarray, all_logits: bool = False) -> np.ndarray:
        self.reset()
        logits = self._step(np.asarray(ids, dtype=np.int64).reshape(-1))
        return logits if all_logits else logits[-1:]

    def decode(self, token: int) -> np.ndarray:
        return self._step(np.array([token], dtype=np.int64))[-1]

    def _step(self, ids: np.ndarray) -> np.ndarray:
        n = len(ids)
        if self._length + n > self.context_length:
            raise UsageError(f"{self._length + n} tokens would exceed {self.name}'s context of {self.context_length}")
        feeds = {"input_ids": ids.astype(np.int32)[None], "causal_mask": causal_mask(self._length, n)}
        out = self._model.predict(feeds, state=self._state)
        self._length += n
        return np.asarray(out["logits"][0], dtype=np.float32)

    def close(self) -> None:
        self._state = self._model = None


def load_dir(directory, threads: int = 1) -> CoremlLM:
    """A CoremlLM from a directory holding model.mlpackage, coreml_config.json, tokenizer.json and
    tokenizer_config.json (what convert/llm/coreml_export.py writes). `threads` is accepted for the
    common interface; Core ML has no thread setting (it picks CPU, GPU or Neural Engine itself)."""
    from .. import formats
    from ..paths import contained_file
    root = Path(directory)
    cfg = read_config_json(root, CONFIG_FILE)
    model_file = contained_file(root, str(cfg.get("model", "model.mlpackage")), allow_dir=True)
    fmt = formats.for_file(model_file)
    if fmt is not None and (why := fmt.host_support()) is not None:
        raise EnvironmentMissing(f"{model_file}: {why}", needs="macOS")
    context, eos = cfg.get("context_length"), cfg.get("eos_token_ids") or []
    if not isinstance(context, int) or context < 1 or not all(isinstance(e, int) for e in eos):
        raise UnsafeInputError(f"{root}/{CONFIG_FILE}: context_length {context!r} / eos_token_ids {eos!r}")
    kv = (cfg.get("layout") or {}).get("kv_bytes_per_token")
    tokcfg = read_config_json(root, "tokenizer_config.json") if (root / "tokenizer_config.json").exists() else {}
    tok = load_tokenizer(contained_file(root, "tokenizer.json", allow_dir=False))
    from .onnx_lm import _text
    return CoremlLM(model_file, tok, context_length=context, eos_token_ids=eos,
                    kv_bytes=kv if isinstance(kv, int) else None, chat_template=tokcfg.get("chat_template"),
                    bos_token=_text(tokcfg.get("bos_token")), eos_token=_text(tokcfg.get("eos_token")),
                    name=root.name or str(root))
