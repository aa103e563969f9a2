"""ONNX backend: an onnxruntime session over a decoder with the KV cache as explicit inputs/outputs
(convert/llm/onnx_export.py, the layout ONNX Runtime GenAI loads).

With `io_binding=True` (the default) the cache never passes through numpy: every `present.N.*` output
is bound to an ORT-allocated buffer and that `OrtValue` is bound as the next step's
`past_key_values.N.*` input, so only the token, the mask, the position and the logits cross into
Python. `io_binding=False` is the plain `session.run` loop (each step copies the whole cache out to
numpy and back in), kept for measurement (benchmarks/llm.py compares the two).

With `share_buffer=True` (genai_config.json's `search.past_present_share_buffer`, which the exporter sets
for graphs whose attention is GroupQueryAttention) each layer's cache is one context-long buffer bound as
both past and present: the op writes the new keys and values in place instead of concatenating the
whole cache into a new tensor every step (ONNX Runtime GenAI's own mode).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import UnsafeInputError, UsageError, require_dependency
from ..parsing import reading
from .model import LanguageModel, load_tokenizer, read_config_json

PAST_PREFIX, PRESENT_PREFIX = "past_key_values.", "present."
DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
PREFILL_CHUNK = 128          # prompt tokens per run: bounds the logits (and activations) a long prefill holds


class OnnxLM(LanguageModel):
    backend = "onnxruntime"

    def __init__(self, model_path: Path, tokenizer, *, context_length: int, eos_token_ids, threads: int = 1,
                 io_binding: bool = True, share_buffer: bool = False, **kw):
        super().__init__(tokenizer, context_length=context_length, eos_token_ids=eos_token_ids, **kw)
        ort = require_dependency("onnxruntime", "onnxruntime", "running ONNX language models")
        self._ort, self.io_binding, self.threads = ort, io_binding, threads
        self.share_buffer = share_buffer and io_binding
        self._kv = None
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.model_path = Path(model_path)
        with reading(self.model_path, "the language model with onnxruntime"):
            self._sess = ort.InferenceSession(str(self.model_path), opts, providers=["CPUExecutionProvider"])
        self._layout()
        self._binding = self._sess.io_binding() if io_binding else None
        self.reset()

    def _layout(self) -> None:
        ins = {i.name: i for i in self._sess.get_inputs()}
        self._past_names = [n for n in ins if n.startswith(PAST_PREFIX)]
        self._present_names = [PRESENT_PREFIX + n[len(PAST_PREFIX):] for n in self._past_names]
        outs = {o.name for o in self._sess.get_outputs()}
        missing = [n for n in ["input_ids", "attention_mask", *self._past_names] if n not in ins]
        missing += [n for n in ["logits", *self._present_names] if n not in outs]
        if missing or not self._past_names:
            raise UnsafeInputError(f"{self.model_path}: not a KV-cache decoder graph (missing {missing or 'past inputs'})")
        first = ins[self._past_names[0]]
        self.kv_dtype = DTYPES.get(first.type)
        heads, head_dim = first.shape[1], first.shape[3]
        if self.kv_dtype is None or not isinstance(heads, int) or not isinstance(head_dim, int):
            raise UnsafeInputError(f"{self.model_path}: KV cache input {first.name} is {first.type} {first.shape}")
        self.kv_heads, self.head_dim = heads, head_dim
        self.num_layers = len(self._past_names) // 2
        self._has_positions = "position_ids" in ins

    def kv_bytes_per_token(self) -> int:
        return 2 * self.num_layers * self.kv_heads * self.head_dim * np.dtype(self.kv_dtype).itemsize

    def kv_cache_bytes(self) -> int:
        """Bytes the cache holds now (shared buffers: allocated whole, for the full context)."""
        return self.kv_bytes_per_token() * (self.context_length if self._kv is not None else self._length)

    # ------------------------------------------------------------ backend interface
    def reset(self) -> None:
        empty = np.zeros((1, self.kv_heads, 0, self.head_dim), dtype=self.kv_dtype)
        self._length = 0
        if self.share_buffer:                     # one context-long buffer per tensor, allocated once
            if self._kv is None:
                shape = (1, self.kv_heads, self.context_length, self.head_dim)
                self._kv = [self._ort.OrtValue.ortvalue_from_numpy(np.zeros(shape, self.kv_dtype))
                            for _ in self._past_names]
            self._past = self._kv
        elif self.io_binding:
            self._past = [self._ort.OrtValue.ortvalue_from_numpy(empty) for _ in self._past_names]
        else:
            self._past = [empty] * len(self._past_names)

    @property
    def cache_length(self) -> int:
        return self._length

    def prefill(self, ids: np.ndarray, all_logits: bool = False) -> np.ndarray:
        """Run the prompt in chunks of PREFILL_CHUNK tokens (the graph returns logits for every position it
        is given: one 992-token run held 992 × vocab floats, 195 MB for SmolLM2, in onnxruntime's arena)."""
        self.reset()
        ids = np.asarray(ids, dtype=np.int64).reshape(1, -1)
        parts = []
        for start in range(0, max(ids.shape[1], 1), PREFILL_CHUNK):
            logits = self._step(ids[:, start:start + PREFILL_CHUNK])
            parts.append(logits if all_logits else logits[-1:].copy())     # a view would keep the chunk
        return np.concatenate(parts) if all_logits else parts[-1]

    def decode(self, token: int) -> np.ndarray:
        return self._step(np.array([[token]], dtype=np.int64))[-1]

    # ------------------------------------------------------------ one run
    def _feeds(self, ids: np.ndarray) -> dict:
        n = ids.shape[1]
        if self._length + n > self.context_length:
            raise UsageError(f"{self._length + n} tokens would exceed {self.name}'s context of {self.context_length}")
        feeds = {"input_ids": ids, "attention_mask": np.ones((1, self._length + n), dtype=np.int64)}
        if self._has_positions:
            feeds["position_ids"] = np.arange(self._length, self._length + n, dtype=np.int64)[None]
        return feeds

    def _step(self, ids: np.ndarray) -> np.ndarray:
        feeds = self._feeds(ids)
        if self.io_binding:
            logits = self._run_bound(feeds)
        else:
            feeds.update(zip(self._past_names, self._past))
            out = self._sess.run(["logits", *self._present_names], feeds)
            logits, self._past = out[0], out[1:]
        self._length += ids.shape[1]
        return np.asarray(logits[0], dtype=np.float32)

    def _run_bound(self, feeds: dict) -> np.ndarray:
        b = self._binding
        b.clear_binding_inputs()
        b.clear_binding_outputs()
        for name, value in feeds.items():
            b.bind_cpu_input(name, value)
        for name, value in zip(self._past_names, self._past):
            b.bind_ortvalue_input(name, value)
        b.bind_output("logits", "cpu")
        if self.share_buffer:                 # written in place: present is the past buffer
            for name, value in zip(self._present_names, self._kv):
                b.bind_ortvalue_output(name, value)
            self._sess.run_with_iobinding(b)
            return b.get_outputs()[0].numpy()
        for name in self._present_names:
            b.bind_output(name, "cpu")
        self._sess.run_with_iobinding(b)
        outs = b.get_outputs()
        self._past = list(outs[1:])           # ORT's buffers become the next step's inputs, uncopied
        return outs[0].numpy()

    def close(self) -> None:
        self._past, self._kv, self._binding, self._sess = [], None, None, None


# ---------------------------------------------------------------- loading an exported directory

def load_dir(directory, threads: int = 1, io_binding: bool = True) -> OnnxLM:
    """An OnnxLM from a directory holding model.onnx, genai_config.json, tokenizer.json and
    tokenizer_config.json (what convert/llm/onnx_export.py writes)."""
    from ..paths import contained_file
    root = Path(directory)
    config = read_config_json(root, "genai_config.json")
    genai = config.get("model", {})
    tokcfg = read_config_json(root, "tokenizer_config.json") if (root / "tokenizer_config.json").exists() else {}
    decoder = genai.get("decoder", {})
    model_file = contained_file(root, str(decoder.get("filename", "model.onnx")), allow_dir=False)
    eos = genai.get("eos_token_id")
    eos = eos if isinstance(eos, list) else [eos] if eos is not None else []
    context = genai.get("context_length")
    share = (config.get("search") or {}).get("past_present_share_buffer") is True
    if not isinstance(context, int) or context < 1 or not all(isinstance(e, int) for e in eos):
        raise UnsafeInputError(f"{root}/genai_config.json: context_length {context!r} / eos_token_id {eos!r}")
    tok = load_tokenizer(contained_file(root, "tokenizer.json", allow_dir=False))
    return OnnxLM(model_file, tok, context_length=context, eos_token_ids=eos, threads=threads, io_binding=io_binding,
                  share_buffer=share,
                  chat_template=tokcfg.get("chat_template"), bos_token=_text(tokcfg.get("bos_token")),
                  eos_token=_text(tokcfg.get("eos_token")), name=root.name or str(root))


def _text(token) -> str | None:
    """tokenizer_config.json writes special tokens as strings or as {"content": ...}."""
    if isinstance(token, dict):
        token = token.get("content")
    return token if isinstance(token, str) else None
