"""pocketml.runtime.lm — generative language models without torch (numpy, onnxruntime, tokenizers, jinja2).

Design
------
`LanguageModel` (model.py) owns everything that is the same for every runtime: the tokenizer
(`tokenizers.Tokenizer` from tokenizer.json), the chat template (chat.py, sandboxed Jinja),
sampling and stop strings (sampling.py), streaming detokenisation, context-length checks, the
generation loop and `score()` for validation (metrics.py turns scores into agreement, KL and
perplexity). A **backend** is a subclass that keeps the KV cache inside its runtime and implements
three methods:

    reset()                                   empty the cache
    prefill(ids, all_logits=False) -> logits  start a sequence with `ids` (int64, 1-D); float32
                                              [len(ids), vocab] if all_logits, else ≥ the last row
    decode(token) -> logits                   append one token; float32 [vocab] for the next one

and sets `backend` (a name for reports) and, if its prefill cannot return a row per position (a
TFLite prefill signature that outputs only the cache), `all_logits_in_prefill = False`: `score()`
then prefills one token and decodes the rest. For the profiler a backend also offers `cache_length`
(tokens now cached) and `kv_bytes_per_token()`. The base checks lengths before any backend call
(prompt > context, prompt + max_new_tokens > context: UsageError naming the lengths), and records
`stats` per generation (prompt tokens, prefill seconds, each decode step's seconds, why it stopped). Chunking a long prompt into a fixed prefill length,
and where the cache lives (ORT-allocated OrtValues bound as past/present in onnx_lm.py; a LiteRT
backend would bind the KV tensor buffers as input and output of each signature call) are the
backend's business; what must not happen is the cache crossing into numpy every token.

Backends: `OnnxLM` (onnx_lm.py) and `TfliteLM` (tflite_lm.py: LiteRT `CompiledModel`, one TensorBuffer per
KV-cache tensor bound as input and output of every prefill/decode call); each module's `load_dir(path)` opens
an exported directory. The format registry names them (`Format.lm_runtime`); `pocketml.runtime.load` picks.
"""
from .chat import ChatTemplate
from .model import Detokenizer, LanguageModel, load_tokenizer
from .sampling import Sampler, StopStrings, filtered_probabilities

__all__ = ["LanguageModel", "ChatTemplate", "Detokenizer", "Sampler", "StopStrings", "filtered_probabilities",
           "load_tokenizer"]
