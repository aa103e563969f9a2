"""LiteRT backend: a prefill_<N> / decode flatbuffer with the KV cache as explicit inputs and outputs
(convert/llm/tflite_export.py; the layout LiteRT-LM runs).

With `bind_cache=True` (the default) the cache never passes through numpy. One `TensorBuffer` per
`kv_cache_{k,v}_<layer>` tensor is created once from the compiled model and bound as **both** the
input and the output of that name in every `run_by_name` call, prefill and decode signatures alike
(their cache tensors have the same shape): the graph's dynamic_update_slice writes the new positions
into the buffer it read, as LiteRT-LM does. Per call only the token ids and positions are written
and the logits read; the input/output maps are built once.

`bind_cache=False` is the plain loop over `Interpreter` signature runners: every call passes the
whole cache in as numpy and gets a fresh copy out. It is kept for measurement (benchmarks compare
the two on the same file).

Positions: the cache has `context_length` slots; a call writes slots `input_pos[0] … + N - 1`.
A prefill signature has a fixed length N, so a shorter chunk is padded (token 0) and its padding
lands in slots beyond the sequence, which the in-graph causal mask hides until decode overwrites
them. A prompt longer than N is prefilled in chunks; a chunk whose padded length would run past the
last slot (dynamic_update_slice would clamp it onto earlier slots) is fed by decode steps instead.
Files whose prefill signatures return no logits (litert-torch's default) set
`all_logits_in_prefill = False`: the last prompt token then goes through decode for its logits.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np

from ..errors import UnsafeInputError, UsageError, require_dependency
from ..parsing import reading
from .model import LanguageModel, load_tokenizer, read_config_json

KV_PREFIX = "kv_cache_"
PREFILL_PREFIX = "prefill_"


@contextlib.contextmanager
def _quiet_native_stderr(enabled: bool = True):
    """LiteRT logs INFO lines on fd 2 while it builds a model (accelerator registry, XNNPACK);
    silence fd 2 for that moment only. Errors still arrive as Python exceptions."""
    if not enabled:
        yield
        return
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


class _BoundRunner:
    """CompiledModel with the KV-cache TensorBuffers bound as input and output of every call."""

    def __init__(self, path: Path, threads: int, signatures: dict):
        from ai_edge_litert.compiled_model import CompiledModel
        from ai_edge_litert.environment import Environment, EnvironmentOptions
        from ai_edge_litert.options import CpuOptions, Options
        # CPU only: point plugin discovery at a folder that holds none (the default scans every vendor's
        # NPU compiler plugin and fails to load each on a host without its SDK)
        here = str(Path(__file__).resolve().parent)
        with _quiet_native_stderr():
            env = Environment.create(options=EnvironmentOptions(compiler_plugin_path=here, dispatch_library_path=here))
            self.cm = CompiledModel.from_file(str(path), environment=env,
                                              options=Options(cpu_options=CpuOptions(num_threads=threads)))
        details = self.cm.get_input_tensor_details("decode")
        self.kv_names = [n for n in signatures["decode"]["inputs"] if n.startswith(KV_PREFIX)]
        self.kv = {n: self.cm.create_input_buffer_by_name("decode", n) for n in self.kv_names}
        for n in self.kv_names:     # fresh buffers are not guaranteed zero; stale values must be finite
            self.kv[n].write(np.zeros(details[n]["shape"], dtype=np.float32))
        self._calls = {}
        for sig, io in signatures.items():
            ids = self.cm.create_input_buffer_by_name(sig, "tokens")
            pos = self.cm.create_input_buffer_by_name(sig, "input_pos")
            logits, size = None, 0
            if "logits" in io["outputs"]:
                logits = self.cm.create_output_buffer_by_name(sig, "logits")
                size = int(np.prod(self.cm.get_output_tensor_details(sig)["logits"]["shape"]))
            ins = {"tokens": ids, "input_pos": pos, **self.kv}
            outs = {**({"logits": logits} if logits is not None else {}), **self.kv}
            self._calls[sig] = (ids, pos, logits, size, ins, outs)

    def run(self, sig: str, tokens: np.ndarray, positions: np.ndarray, rows: int) -> np.ndarray | None:
        ids, pos, logits, size, ins, outs = self._calls[sig]
        ids.write(tokens)
        pos.write(positions)
        self.cm.run_by_name(sig, ins, outs)
        if logits is None:
            return None
        return logits.read(size, np.float32).reshape(tokens.size, -1)[:rows]

    def close(self):
        for b in [*self.kv.values(), *(x for c in self._calls.values() for x in c[:3] if x is not None)]:
            b.destroy()
        self.kv, self._calls = {}, {}
        self.cm.close()


class _CopyRunner:
    """Interpreter signature runners; the cache goes in and comes out as numpy on every call."""

    def __init__(self, path: Path, threads: int, signatures: dict):
        from ai_edge_litert.interpreter import Interpreter
        with _quiet_native_stderr():
            self.interp = Interpreter(model_path=str(path), num_threads=threads)
            self.runners = {sig: self.interp.get_signature_runner(sig) for sig in signatures}
        details = self.runners["decode"].get_input_details()
        self.kv_names = [n for n in signatures["decode"]["inputs"] if n.startswith(KV_PREFIX)]
        self.kv = {n: np.zeros(details[n]["shape"], dtype=np.float32) for n in self.kv_names}

    def run(self, sig: str, tokens: np.ndarray, positions: np.ndarray, rows: int) -> np.ndarray | None:
        out = self.runners[sig](tokens=tokens, input_pos=positions, **self.kv)
        self.kv = {n: out[n] for n in self.kv_names}
        logits = out.get("logits")
        return None if logits is None else logits.reshape(tokens.size, -1)[:rows].astype(np.float32, copy=False)

    def close(self):
        self.runners, self.interp, self.kv = {}, None, {}


def _kv_layout(path: Path, shapes: dict, kv: list[str], given: str | None) -> str:
    """"transposed" (k [1, heads, slots, dim], v [1, heads, dim, slots]; what LiteRT-LM runs) or
    "btnh" (k and v [1, slots, heads, dim]), checked against the shapes; `given` (the exported
    directory's litert_config.json) settles a file where both read alike (slots == head dim)."""
    k, v = (list(shapes.get(n, [])) for n in (KV_PREFIX + "k_0", KV_PREFIX + "v_0"))
    if any(list(shapes[n]) != (k if n.startswith(KV_PREFIX + "k_") else v) for n in kv):
        raise UnsafeInputError(f"{path}: KV-cache tensors differ in shape between layers")
    fits = []
    if len(k) == 4 and k[:2] == v[:2] and k[2] == v[3] and k[3] == v[2]:
        fits.append("transposed")
    if len(k) == 4 and k == v:
        fits.append("btnh")
    if given is not None and given not in fits or not fits:
        raise UnsafeInputError(f"{path}: KV-cache shapes k {k} / v {v} are not the {given or 'transposed or btnh'} "
                               "layout")
    if given is None and len(fits) > 1:
        raise UnsafeInputError(f"{path}: KV-cache shapes k {k} / v {v} fit both layouts; give kv_layout")
    return given or fits[0]


class TfliteLM(LanguageModel):
    backend = "litert"

    def __init__(self, model_path: Path, tokenizer, *, eos_token_ids, context_length: int | None = None,
                 threads: int = 1, bind_cache: bool = True, kv_layout: str | None = None, **kw):
        require_dependency("ai_edge_litert", "ai-edge-litert", "running TFLite language models")
        self.model_path, self.threads, self.bind_cache = Path(model_path), threads, bind_cache
        signatures = self._layout(kv_layout)
        if context_length is not None and not 1 <= context_length <= self.cache_slots:
            raise UnsafeInputError(f"{self.model_path}: context_length {context_length} but the KV cache holds "
                                   f"{self.cache_slots} positions")
        super().__init__(tokenizer, context_length=context_length or self.cache_slots, eos_token_ids=eos_token_ids,
                         **kw)
        runner = _BoundRunner if bind_cache else _CopyRunner
        with reading(self.model_path, "the language model with LiteRT"):
            self._runner = runner(self.model_path, threads, signatures)
        self.reset()

    def _layout(self, kv_layout: str | None) -> dict:
        """Signatures, prefill lengths and the KV-cache shape, read from the flatbuffer."""
        from ai_edge_litert import schema_py_generated as s
        with reading(self.model_path, "the language model's signatures"):
            model = s.Model.GetRootAs(self.model_path.read_bytes(), 0)
            sigs, shapes = {}, {}
            for i in range(model.SignatureDefsLength()):
                d = model.SignatureDefs(i)
                graph = model.Subgraphs(d.SubgraphIndex())
                ins = {d.Inputs(j).Name().decode(): d.Inputs(j).TensorIndex() for j in range(d.InputsLength())}
                outs = {d.Outputs(j).Name().decode(): d.Outputs(j).TensorIndex() for j in range(d.OutputsLength())}
                sigs[d.SignatureKey().decode()] = {"inputs": list(ins), "outputs": list(outs)}
                if "logits" in outs:
                    self.vocab_size = int(graph.Tensors(outs["logits"]).ShapeAsNumpy()[-1])
                shapes[d.SignatureKey().decode()] = {n: list(graph.Tensors(t).ShapeAsNumpy()) for n, t in ins.items()}
        self.prefill_lengths = sorted(int(k[len(PREFILL_PREFIX):]) for k in sigs
                                      if k.startswith(PREFILL_PREFIX) and k[len(PREFILL_PREFIX):].isdigit())
        decode = sigs.get("decode", {})
        kv = [n for n in decode.get("inputs", []) if n.startswith(KV_PREFIX)]
        problems = [] if decode and kv and "logits" in decode["outputs"] else [
            "a decode signature with logits and a KV cache"]
        for sig in ["decode", *(f"{PREFILL_PREFIX}{n}" for n in self.prefill_lengths)]:
            io = sigs.get(sig, {"inputs": [], "outputs": []})
            if not {"tokens", "input_pos", *kv} <= set(io["inputs"]) or not set(kv) <= set(io["outputs"]):
                problems.append(f"{sig}: tokens, input_pos and the cache {kv[:2]}… in and the cache out")
            elif any(shapes[sig][n] != shapes["decode"][n] for n in kv):
                problems.append(f"{sig}: KV-cache shapes differ from decode's")
        if problems:
            raise UnsafeInputError(f"{self.model_path}: not a prefill/decode KV-cache model "
                                   f"(needs {'; '.join(problems)})")
        self.kv_names, self.num_layers = kv, len(kv) // 2
        self.kv_layout = _kv_layout(self.model_path, shapes["decode"], kv, kv_layout)
        k = [int(x) for x in shapes["decode"][KV_PREFIX + "k_0"]]
        seq, heads = (2, 1) if self.kv_layout == "transposed" else (1, 2)
        self.cache_slots, self.kv_heads, self.head_dim = k[seq], k[heads], k[3]
        self.all_logits_in_prefill = bool(self.prefill_lengths) and all(
            "logits" in sigs[f"{PREFILL_PREFIX}{n}"]["outputs"] for n in self.prefill_lengths)
        return {k: v for k, v in sigs.items() if k == "decode" or k[len(PREFILL_PREFIX):].isdigit()}

    def kv_bytes_per_token(self) -> int:
        return 2 * self.num_layers * self.kv_heads * self.head_dim * 4

    def kv_cache_bytes(self) -> int:
        """The cache is allocated whole: every slot, whatever the sequence length."""
        return self.kv_bytes_per_token() * self.cache_slots

    @property
    def cache_length(self) -> int:
        return self._length

    # ------------------------------------------------------------ backend interface
    def reset(self) -> None:
        """Stale slots stay: the mask hides every slot past the current position."""
        self._length = 0

    def prefill(self, ids: np.ndarray, all_logits: bool = False) -> np.ndarray:
        self.reset()
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if ids.size == 0:
            raise UsageError("prefill needs at least one token")
        self._room(ids.size)
        if ids.min() < 0 or ids.max() >= self.vocab_size:
            raise UsageError(f"token ids must lie in 0 … {self.vocab_size - 1} "
                             f"(got {int(ids.min())} … {int(ids.max())})")
        if not self.all_logits_in_prefill:
            if all_logits and ids.size > 1:
                raise UsageError(f"{self.model_path.name}: its prefill returns no logits (score() decodes instead)")
            self._feed(ids[:-1], keep=False)
            return self.decode(int(ids[-1]))[None]
        rows = self._feed(ids, keep=all_logits)
        return rows if all_logits else rows[-1:]

    def decode(self, token: int) -> np.ndarray:
        self._room(1)
        if not 0 <= token < self.vocab_size:        # the compiled kernels do not bounds-check the lookup
            raise UsageError(f"token id {token} outside the vocabulary (0 … {self.vocab_size - 1})")
        logits = self._runner.run("decode", np.array([[token]], dtype=np.int32),
                                  np.array([self._length], dtype=np.int32), 1)
        self._length += 1
        return logits[0]

    # ------------------------------------------------------------ chunks
    def _room(self, n: int) -> None:
        if self._length + n > self.context_length:
            raise UsageError(f"{self._length + n} tokens would exceed {self.name}'s context of {self.context_length}")

    def _chunk_length(self, remaining: int) -> int | None:
        """The prefill length for the next chunk: the shortest that covers what is left, else the
        longest that fits; None when none fits before the last slot (decode steps then)."""
        fits = [n for n in self.prefill_lengths if self._length + n <= self.cache_slots]
        cover = [n for n in fits if n >= remaining]
        return min(cover) if cover else max(fits) if fits else None

    def _feed(self, ids: np.ndarray, keep: bool) -> np.ndarray:
        """Run `ids` through prefill chunks (decode steps near the end of the cache). Returns the logits
        rows produced: all of them when `keep`, else at least the last."""
        rows, i = [], 0
        while i < ids.size:
            n = self._chunk_length(ids.size - i)
            if n is None:
                row = self.decode(int(ids[i]))[None]
                i += 1
            else:
                take = min(n, ids.size - i)
                tokens = np.zeros((1, n), dtype=np.int32)
                tokens[0, :take] = ids[i:i + take]
                positions = np.arange(self._length, self._length + n, dtype=np.int32)
                row = self._runner.run(f"{PREFILL_PREFIX}{n}", tokens, positions, take)
                self._length += take
                i += take
            if row is not None and (keep or i == ids.size):
                rows.append(row)
        return np.concatenate(rows) if rows else np.zeros((0, 0), np.float32)

    def close(self) -> None:
        if getattr(self, "_runner", None) is not None:
            self._runner.close()
            self._runner = None


# ---------------------------------------------------------------- loading an exported directory

def load_dir(directory, threads: int = 1, bind_cache: bool = True) -> TfliteLM:
    """A TfliteLM from a directory holding model.tflite, litert_config.json, tokenizer.json and
    tokenizer_config.json (what convert/llm/tflite_export.py writes)."""
    from ..paths import contained_file
    from .onnx_lm import _text
    root = Path(directory)
    cfg = read_config_json(root, "litert_config.json")
    tokcfg = read_config_json(root, "tokenizer_config.json") if (root / "tokenizer_config.json").exists() else {}
    model_file = contained_file(root, str(cfg.get("model", "model.tflite")), allow_dir=False)
    eos, context = cfg.get("eos_token_ids", []), cfg.get("context_length")
    if not isinstance(context, int) or context < 1 or not isinstance(eos, list) or \
            not all(isinstance(e, int) for e in eos):
        raise UnsafeInputError(f"{root}/litert_config.json: context_length {context!r} / eos_token_ids {eos!r}")
    tok = load_tokenizer(contained_file(root, "tokenizer.json", allow_dir=False))
    kv_layout = (cfg.get("layout") or {}).get("kv_layout")
    if kv_layout is not None and not isinstance(kv_layout, str):
        raise UnsafeInputError(f"{root}/litert_config.json: kv_layout {kv_layout!r}")
    return TfliteLM(model_file, tok, context_length=context, eos_token_ids=eos, threads=threads, bind_cache=bind_cache,
                    kv_layout=kv_layout,
                    chat_template=tokcfg.get("chat_template"), bos_token=_text(tokcfg.get("bos_token")),
                    eos_token=_text(tokcfg.get("eos_token")), name=root.name or str(root))
