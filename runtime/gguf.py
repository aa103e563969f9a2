"""GGUF: a bounds-checked header reader, the precheck before any library touches a GGUF file.

GGUF (llama.cpp's model format) is a little-endian header — magic, version, tensor count, metadata
key/value pairs, tensor infos — followed by an aligned data section. Every count and length in it is
declared by the file, and the readers that come after this one (gguf-py's `GGUFReader`, which
transformers' `from_pretrained(..., gguf_file=)` uses) trust them: a crafted count makes them loop or
allocate what the file says. So `read_gguf` walks the header first, with

- the file read through `paths.open_regular` (no symlink, regular file) in chunks of at most 1 MiB
  plus one declared string, and **every declared length checked against the bytes left in the file
  and against a cap before it is read** — nothing is allocated beyond the caps below;
- magic `GGUF`, version 2 or 3 (1 and big-endian files: exit 3), tensor and metadata counts capped
  and bounded by the bytes left (each entry needs a minimum number of bytes);
- every string ≤ MAX_STRING_BYTES (keys ≤ MAX_KEY_BYTES, tensor names ≤ MAX_TENSOR_NAME_BYTES) and
  valid UTF-8, every array ≤ MAX_ARRAY_LEN elements (tokenizer vocabularies included: 262k for
  Gemma 3) and nested at most MAX_ARRAY_DEPTH deep, every value type known, booleans 0/1,
  duplicate keys refused;
- tensor infos: name unique, 1 ≤ n_dims ≤ 4, dims ≥ 1, element counts in checked arithmetic against
  `prechecks.MAX_TENSOR_ELEMENTS`, the ggml type known, the first dim a multiple of the type's
  block, the offset aligned;
- the data section at `general.alignment` (default 32; a power of two), every tensor's byte range
  inside the file and no two overlapping.

Anything malformed → `UnsafeInputError` (exit 4) naming the file, the field and what was expected
vs found. Then `check_supported` refuses (`UnsupportedError`, exit 3, naming it) an architecture or
a ggml type that transformers cannot de-quantize, from the tables below (transformers 4.57 / gguf
0.19; `convert/llm/sources.py` passes the installed libraries' own lists when it has them).

Torch-free and numpy-free: only `struct`. The summary (`GGUFSummary`) is what the converter and
the manifest need: architecture, tensor count, quantization types with tensor counts, parameter
count, context length, vocabulary size, chat template, bos/eos ids, file type.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UnsafeInputError, UnsupportedError
from .paths import open_regular
from .prechecks import MAX_MODEL_BYTES, MAX_TENSOR_ELEMENTS

# ---------------------------------------------------------------- caps

MAGIC = b"GGUF"
VERSIONS = (2, 3)                      # v1 (32-bit counts, 2023) is refused as unsupported
MAX_GGUF_BYTES = MAX_MODEL_BYTES       # 4 GiB, as every model file (docs/SECURITY.md)
MAX_TENSORS = 1 << 16                  # a 135M LLaMA has 272, a 70B one ~720
MAX_KV = 1 << 16
MAX_KEY_BYTES = (1 << 16) - 1          # the GGUF spec's own limit for keys
MAX_STRING_BYTES = 1 << 20             # any string value (chat templates are ~1-10 KiB)
MAX_TENSOR_NAME_BYTES = 256            # ggml itself keeps 64
MAX_ARRAY_LEN = 1 << 24                # elements of one array (vocabularies: 49k SmolLM2, 262k Gemma 3)
MAX_ARRAY_DEPTH = 2                    # an array of arrays, no deeper
MAX_DIMS = 4                           # GGML_MAX_DIMS
MAX_ALIGNMENT = 1 << 16
DEFAULT_ALIGNMENT = 32
CHUNK = 1 << 20                        # bytes read at a time
MAX_KEPT_STRING = 4096                 # metadata strings kept in the summary (longer ones: only the wanted keys)
MAX_KEPT_TOTAL = 8 << 20               # all metadata strings kept together
LONG_STRINGS_KEPT = ("tokenizer.chat_template", "general.name", "general.architecture")

# ---------------------------------------------------------------- value types (GGUF spec)

STRING, ARRAY = 8, 9
SCALARS = {0: ("UINT8", "<B"), 1: ("INT8", "<b"), 2: ("UINT16", "<H"), 3: ("INT16", "<h"),
           4: ("UINT32", "<I"), 5: ("INT32", "<i"), 6: ("FLOAT32", "<f"), 7: ("BOOL", "<B"),
           10: ("UINT64", "<Q"), 11: ("INT64", "<q"), 12: ("FLOAT64", "<d")}
VALUE_TYPES = {**{k: v[0] for k, v in SCALARS.items()}, STRING: "STRING", ARRAY: "ARRAY"}
BOOL = 7


# ---------------------------------------------------------------- ggml tensor types (ggml.h, gguf-py 0.19)

@dataclass(frozen=True)
class GgmlType:
    name: str
    block: int | None            # elements per block (None: a type removed from ggml, size unknown)
    type_size: int | None        # bytes per block


GGML_TYPES: dict[int, GgmlType] = {t: GgmlType(*v) for t, v in {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20),
    4: ("Q4_2", None, None), 5: ("Q4_3", None, None),
    6: ("Q5_0", 32, 22), 7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 40),
    10: ("Q2_K", 256, 84), 11: ("Q3_K", 256, 110), 12: ("Q4_K", 256, 144), 13: ("Q5_K", 256, 176),
    14: ("Q6_K", 256, 210), 15: ("Q8_K", 256, 292), 16: ("IQ2_XXS", 256, 66), 17: ("IQ2_XS", 256, 74),
    18: ("IQ3_XXS", 256, 98), 19: ("IQ1_S", 256, 50), 20: ("IQ4_NL", 32, 18), 21: ("IQ3_S", 256, 110),
    22: ("IQ2_S", 256, 82), 23: ("IQ4_XS", 256, 136), 24: ("I8", 1, 1), 25: ("I16", 1, 2),
    26: ("I32", 1, 4), 27: ("I64", 1, 8), 28: ("F64", 1, 8), 29: ("IQ1_M", 256, 56), 30: ("BF16", 1, 2),
    31: ("Q4_0_4_4", None, None), 32: ("Q4_0_4_8", None, None), 33: ("Q4_0_8_8", None, None),
    34: ("TQ1_0", 256, 54), 35: ("TQ2_0", 256, 66),
    36: ("IQ4_NL_4_4", None, None), 37: ("IQ4_NL_4_8", None, None), 38: ("IQ4_NL_8_8", None, None),
    39: ("MXFP4", 32, 17), 40: ("NVFP4", 64, 36), 41: ("Q1_0", 128, 18),
}.items()}

# The ggml types transformers can de-quantize to fp32: its GGUF loader calls gguf-py's `dequantize`,
# which (gguf 0.19) handles F32, F16 and the classes in `gguf.quants`. Not: Q8_1 / Q8_K (llama.cpp's
# intermediate types), the integer and F64 types, Q1_0, and the repacked types removed from ggml.
DEQUANTIZABLE = frozenset({
    "F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
    "IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ4_NL", "IQ4_XS",
    "TQ1_0", "TQ2_0", "MXFP4", "NVFP4"})

# GGUF `general.architecture` → the transformers model type its causal-LM loader builds (transformers
# 4.57: `GGUF_SUPPORTED_ARCHITECTURES` for the weights and config, `GGUF_TO_FAST_CONVERTERS` for the
# tokenizer; pocketml needs both, since it ships a tokenizer.json).
CAUSAL_LM_ARCHITECTURES: dict[str, str] = {
    "llama": "llama", "qwen2": "qwen2", "qwen2moe": "qwen2_moe", "qwen3": "qwen3", "qwen3moe": "qwen3_moe",
    "phi3": "phi3", "bloom": "bloom", "falcon": "falcon", "stablelm": "stablelm", "gpt2": "gpt2",
    "starcoder2": "starcoder2", "mamba": "mamba", "nemotron": "nemotron", "gemma2": "gemma2",
    "gemma3": "gemma3_text", "deci": "deci",
}
# Architectures transformers knows but pocketml cannot take as a causal LM, and why.
NOT_CAUSAL_LM = {
    "t5": "an encoder-decoder (seq2seq) model, not a causal LM",
    "t5encoder": "an encoder, not a causal LM",
    "umt5": "an encoder-decoder (seq2seq) model, not a causal LM",
    "lfm2": "transformers 4.57 loads its weights but has no GGUF tokenizer converter for it",
}
# general.file_type (llama.cpp's LlamaFileType) → name, for people.
FILE_TYPES = {0: "ALL_F32", 1: "MOSTLY_F16", 2: "MOSTLY_Q4_0", 3: "MOSTLY_Q4_1", 7: "MOSTLY_Q8_0",
              8: "MOSTLY_Q5_0", 9: "MOSTLY_Q5_1", 10: "MOSTLY_Q2_K", 11: "MOSTLY_Q3_K_S", 12: "MOSTLY_Q3_K_M",
              13: "MOSTLY_Q3_K_L", 14: "MOSTLY_Q4_K_S", 15: "MOSTLY_Q4_K_M", 16: "MOSTLY_Q5_K_S",
              17: "MOSTLY_Q5_K_M", 18: "MOSTLY_Q6_K", 19: "MOSTLY_IQ2_XXS", 20: "MOSTLY_IQ2_XS",
              21: "MOSTLY_Q2_K_S", 22: "MOSTLY_IQ3_XS", 23: "MOSTLY_IQ3_XXS", 24: "MOSTLY_IQ1_S",
              25: "MOSTLY_IQ4_NL", 26: "MOSTLY_IQ3_S", 27: "MOSTLY_IQ3_M", 28: "MOSTLY_IQ2_S", 29: "MOSTLY_IQ2_M",
              30: "MOSTLY_IQ4_XS", 31: "MOSTLY_IQ1_M", 32: "MOSTLY_BF16", 36: "MOSTLY_TQ1_0", 37: "MOSTLY_TQ2_0",
              38: "MOSTLY_MXFP4_MOE", 39: "MOSTLY_NVFP4", 40: "MOSTLY_Q1_0", 1024: "GUESSED"}


# ---------------------------------------------------------------- the summary

@dataclass(frozen=True)
class TensorInfo:
    name: str
    dims: tuple[int, ...]          # ggml order: dims[0] is the contiguous (row) dimension
    type: str
    offset: int                    # absolute, in the file
    nbytes: int
    elements: int


@dataclass(frozen=True)
class ArrayInfo:
    """A metadata array, summarised (its elements are checked, not kept)."""
    element_type: str
    count: int


@dataclass
class GGUFSummary:
    path: str
    size: int
    version: int
    architecture: str
    name: str | None
    file_type: int | None
    tensor_count: int
    kv_count: int
    parameter_count: int
    quant_types: dict[str, int]                      # ggml type → number of tensors
    context_length: int | None
    vocab_size: int | None
    chat_template: str | None
    bos_token_id: int | None
    eos_token_id: int | None
    tokenizer_model: str | None                      # tokenizer.ggml.model: llama | gpt2 | …
    alignment: int
    data_offset: int
    metadata: dict = field(default_factory=dict)     # scalars and short strings; arrays as ArrayInfo
    tensors: tuple[TensorInfo, ...] = ()

    @property
    def file_type_name(self) -> str | None:
        return None if self.file_type is None else FILE_TYPES.get(self.file_type, f"file type {self.file_type}")

    @property
    def main_quant_type(self) -> str:
        """The quantization most of the weights are stored in (by bytes): "Q4_1" for SmolLM2's file."""
        by_bytes: dict[str, int] = {}
        for t in self.tensors:
            by_bytes[t.type] = by_bytes.get(t.type, 0) + t.nbytes
        return max(by_bytes, key=by_bytes.get) if by_bytes else "none"

    def as_dict(self) -> dict:
        """For manifests and reports (no per-tensor list, no metadata dump)."""
        return {"version": self.version, "architecture": self.architecture, "name": self.name,
                "file_type": self.file_type_name, "tensor_count": self.tensor_count,
                "parameter_count": self.parameter_count, "quant_types": dict(sorted(self.quant_types.items())),
                "main_quant_type": self.main_quant_type, "context_length": self.context_length,
                "vocab_size": self.vocab_size, "tokenizer_model": self.tokenizer_model,
                "chat_template": self.chat_template is not None, "alignment": self.alignment,
                "size": self.size}


# ---------------------------------------------------------------- the reader

class _Cursor:
    """Sequential little-endian reads over a file, at most CHUNK (+ one capped string) in memory;
    every length is checked against the bytes left before anything is read."""

    def __init__(self, fh, size: int, path: Path):
        self.fh, self.size, self.path = fh, size, path
        self.buf = b""
        self.base = 0          # file offset of buf[0]
        self.off = 0           # read position inside buf

    @property
    def pos(self) -> int:
        return self.base + self.off

    @property
    def left(self) -> int:
        return self.size - self.pos

    def bad(self, what: str, expected, found) -> UnsafeInputError:
        return UnsafeInputError(f"{self.path}: malformed GGUF: {what}: expected {expected}, found {found}",
                                file=str(self.path), field=what, expected=str(expected), found=str(found))

    def truncated(self, what: str, n: int) -> UnsafeInputError:
        return UnsafeInputError(
            f"{self.path}: truncated GGUF: {what} needs {n} bytes at offset {self.pos}, "
            f"but only {max(self.left, 0)} are left (file size {self.size})",
            file=str(self.path), field=what, expected=f"{n} bytes", found=f"{max(self.left, 0)} bytes")

    def _need(self, n: int, what: str) -> None:
        if n > self.left:
            raise self.truncated(what, n)
        if self.off + n <= len(self.buf):
            return
        rest = self.buf[self.off:]
        want = min(max(CHUNK, n - len(rest)), self.left - len(rest))
        self.fh.seek(self.pos + len(rest))
        data = self.fh.read(want)
        self.buf, self.base, self.off = rest + data, self.pos, 0
        if len(self.buf) < n:            # the file shrank under us
            raise self.truncated(what, n)

    def take(self, n: int, what: str) -> bytes:
        self._need(n, what)
        out = self.buf[self.off:self.off + n]
        self.off += n
        return out

    def skip(self, n: int, what: str) -> None:
        if n > self.left:
            raise self.truncated(what, n)
        if self.off + n <= len(self.buf):
            self.off += n
        else:
            self.base, self.buf, self.off = self.pos + n, b"", 0

    def unpack(self, fmt: str, n: int, what: str):
        self._need(n, what)
        (v,) = struct.unpack_from(fmt, self.buf, self.off)
        self.off += n
        return v

    def u32(self, what: str) -> int:
        return self.unpack("<I", 4, what)

    def u64(self, what: str) -> int:
        return self.unpack("<Q", 8, what)

    def string(self, what: str, cap: int) -> str:
        n = self.u64(f"{what} (length)")
        if n > cap:
            raise self.bad(f"{what} (length)", f"at most {cap} bytes", f"{n} bytes")
        raw = self.take(n, what)        # take() checks n against the bytes left before reading
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise self.bad(what, "UTF-8 text", f"invalid UTF-8 at byte {exc.start}") from None


_MIN_BYTES = {**{t: struct.calcsize(f) for t, (_, f) in SCALARS.items()}, STRING: 8, ARRAY: 12}


def _value(cur: _Cursor, vtype: int, what: str, depth: int = 0, keep: bool = True):
    """Read (or, for arrays, check and summarise) one metadata value of type `vtype`."""
    if vtype in SCALARS:
        _, fmt = SCALARS[vtype]
        v = cur.unpack(fmt, _MIN_BYTES[vtype], what)
        if vtype == BOOL:
            if v not in (0, 1):
                raise cur.bad(what, "a bool (0 or 1)", v)
            return bool(v)
        return v
    if vtype == STRING:
        s = cur.string(what, MAX_STRING_BYTES)
        return s if keep else None
    if vtype == ARRAY:
        if depth >= MAX_ARRAY_DEPTH:
            raise cur.bad(what, f"arrays nested at most {MAX_ARRAY_DEPTH} deep", "a deeper array")
        etype = cur.u32(f"{what} (array element type)")
        if etype not in VALUE_TYPES:
            raise cur.bad(f"{what} (array element type)", "a GGUF value type 0-12", etype)
        n = cur.u64(f"{what} (array length)")
        if n > MAX_ARRAY_LEN:
            raise cur.bad(f"{what} (array length)", f"at most {MAX_ARRAY_LEN} elements", n)
        if n * _MIN_BYTES[etype] > cur.left:
            raise cur.bad(f"{what} (array length)",
                          f"at most {cur.left // _MIN_BYTES[etype]} {VALUE_TYPES[etype]} elements "
                          f"(the {cur.left} bytes left in the file)", n)
        if etype in SCALARS and etype != BOOL:
            cur.skip(n * _MIN_BYTES[etype], what)
        else:
            for i in range(n):
                _value(cur, etype, f"{what}[{i}]", depth + 1, keep=False)
        return ArrayInfo(VALUE_TYPES[etype], n)
    raise cur.bad(f"{what} (value type)", "a GGUF value type 0-12", vtype)


def _int(meta: dict, key: str) -> int | None:
    v = meta.get(key)
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _str(meta: dict, key: str) -> str | None:
    v = meta.get(key)
    return v if isinstance(v, str) else None


def read_gguf(path) -> GGUFSummary:
    """Walk a GGUF file's header and tensor table with every length bounded (module docstring).
    Malformed → UnsafeInputError (exit 4); an old or big-endian file → UnsupportedError (exit 3)."""
    path = Path(path)
    with open_regular(path) as fh:
        size = os.fstat(fh.fileno()).st_size
        if size > MAX_GGUF_BYTES:
            raise UnsafeInputError(f"{path}: {size} bytes exceeds the {MAX_GGUF_BYTES}-byte cap for model files",
                                   file=str(path), field="file size")
        cur = _Cursor(fh, size, path)
        magic = cur.take(4, "magic") if size >= 4 else None
        if magic is None:
            raise cur.truncated("magic", 4)
        if magic != MAGIC:
            raise cur.bad("magic", repr(MAGIC), repr(magic))
        version = cur.u32("version")
        if version not in VERSIONS:
            swapped = int.from_bytes(version.to_bytes(4, "little"), "big")
            if swapped in VERSIONS:
                raise UnsupportedError(f"{path}: a big-endian GGUF (version {swapped}); pocketml reads "
                                       "little-endian GGUF only", file=str(path), field="version")
            if version == 1:
                raise UnsupportedError(f"{path}: GGUF version 1 (32-bit counts) is not read; supported: "
                                       f"versions {', '.join(map(str, VERSIONS))}", file=str(path), field="version")
            raise cur.bad("version", " or ".join(map(str, VERSIONS)), version)
        n_tensors = cur.u64("tensor count")
        n_kv = cur.u64("metadata key/value count")
        # each tensor info takes ≥ 32 bytes (name length, n_dims, one dim, type, offset); each pair ≥ 13
        for what, n, cap, least in (("tensor count", n_tensors, MAX_TENSORS, 32),
                                    ("metadata key/value count", n_kv, MAX_KV, 13)):
            if n > cap:
                raise cur.bad(what, f"at most {cap}", n)
        if n_tensors * 32 + n_kv * 13 > cur.left:
            raise UnsafeInputError(
                f"{path}: truncated or malformed GGUF: tensor count and metadata key/value count: expected "
                f"entries fitting in the {cur.left} bytes left (≥ 32 bytes per tensor, ≥ 13 per pair), found "
                f"{n_tensors} tensors and {n_kv} pairs", file=str(path), field="tensor count",
                expected=f"≤ {cur.left} bytes of entries", found=f"{n_tensors} tensors, {n_kv} pairs")

        meta: dict = {}
        kept = 0
        for i in range(n_kv):
            key = cur.string(f"metadata key #{i}", MAX_KEY_BYTES)
            if key in meta:
                raise cur.bad(f"metadata key #{i}", "unique keys", f"a second {key!r}")
            vtype = cur.u32(f"metadata {key!r} (value type)")
            if vtype not in VALUE_TYPES:
                raise cur.bad(f"metadata {key!r} (value type)", "a GGUF value type 0-12", vtype)
            v = _value(cur, vtype, f"metadata {key!r}")
            if isinstance(v, str) and ((len(v) > MAX_KEPT_STRING and not key.startswith(LONG_STRINGS_KEPT))
                                       or kept + len(v) > MAX_KEPT_TOTAL):
                v = f"<{len(v)} characters, not kept>"
            if isinstance(v, str):
                kept += len(v)
            meta[key] = v

        alignment = DEFAULT_ALIGNMENT
        if "general.alignment" in meta:
            a = meta["general.alignment"]
            if not (isinstance(a, int) and not isinstance(a, bool)) or a < 1 or a & (a - 1) or a > MAX_ALIGNMENT:
                raise cur.bad("metadata 'general.alignment'", f"a power of two ≤ {MAX_ALIGNMENT}", a)
            alignment = a

        infos = []
        names: set[str] = set()
        for i in range(n_tensors):
            name = cur.string(f"tensor #{i} name", MAX_TENSOR_NAME_BYTES)
            where = f"tensor {name!r}"
            if name in names:
                raise cur.bad(f"tensor #{i} name", "unique tensor names", f"a second {name!r}")
            names.add(name)
            n_dims = cur.u32(f"{where} n_dims")
            if not 1 <= n_dims <= MAX_DIMS:
                raise cur.bad(f"{where} n_dims", f"1 to {MAX_DIMS}", n_dims)
            dims = tuple(cur.u64(f"{where} dim {d}") for d in range(n_dims))
            ttype = cur.u32(f"{where} ggml type")
            if ttype not in GGML_TYPES:
                raise cur.bad(f"{where} ggml type", "a known ggml type id", ttype)
            offset = cur.u64(f"{where} data offset")
            infos.append((name, dims, ttype, offset))

        data_offset = -(-cur.pos // alignment) * alignment
        if data_offset > size:
            raise cur.truncated("the data section's alignment padding", data_offset - cur.pos)
        data_len = size - data_offset

        removed = sorted({GGML_TYPES[t].name for _, _, t, _ in infos if GGML_TYPES[t].block is None})
        if removed:
            raise UnsupportedError(f"{path}: GGUF tensors of ggml type {', '.join(removed)}, a type removed from "
                                   "ggml that no reader de-quantizes (re-convert the model)",
                                   file=str(path), field="ggml type", quant_types=removed)
        tensors = []
        for name, dims, ttype, offset in infos:
            where = f"tensor {name!r}"
            gt = GGML_TYPES[ttype]
            elements = 1
            for d, n in enumerate(dims):
                if n < 1:
                    raise cur.bad(f"{where} dim {d}", "≥ 1", n)
                elements *= n
                if elements > MAX_TENSOR_ELEMENTS:
                    raise cur.bad(f"{where} element count", f"at most {MAX_TENSOR_ELEMENTS}",
                                  f"more ({' × '.join(map(str, dims))})")
            if dims[0] % gt.block:
                raise cur.bad(f"{where} dim 0", f"a multiple of {gt.name}'s block of {gt.block}", dims[0])
            nbytes = elements // gt.block * gt.type_size
            if offset % alignment:
                raise cur.bad(f"{where} data offset", f"a multiple of the alignment {alignment}", offset)
            if offset > data_len or nbytes > data_len - offset:
                raise UnsafeInputError(
                    f"{path}: malformed GGUF: {where} data offset {offset}: expected its {nbytes} bytes ({gt.name}) "
                    f"inside the file (size {size}), found [{data_offset + offset}, {data_offset + offset + nbytes}), "
                    "past the end of the file",
                    file=str(path), field=f"{where} data offset", expected=f"end ≤ {size}",
                    found=f"end {data_offset + offset + nbytes}")
            tensors.append(TensorInfo(name, dims, gt.name, data_offset + offset, nbytes, elements))

        ordered = sorted(tensors, key=lambda t: (t.offset, t.nbytes))
        for a, b in zip(ordered, ordered[1:]):
            if a.offset + a.nbytes > b.offset:
                raise UnsafeInputError(
                    f"{path}: malformed GGUF: tensors {a.name!r} [{a.offset}, {a.offset + a.nbytes}) and "
                    f"{b.name!r} [{b.offset}, {b.offset + b.nbytes}) overlap",
                    file=str(path), field=f"tensor {b.name!r} data offset",
                    expected=f"≥ {a.offset + a.nbytes}", found=str(b.offset))

    arch = meta.get("general.architecture")
    if not isinstance(arch, str) or not arch:
        raise UnsafeInputError(f"{path}: malformed GGUF: metadata 'general.architecture': expected a string, "
                               f"found {'nothing' if arch is None else type(arch).__name__}",
                               file=str(path), field="general.architecture")
    quant: dict[str, int] = {}
    for t in tensors:
        quant[t.type] = quant.get(t.type, 0) + 1
    tokens = meta.get("tokenizer.ggml.tokens")
    vocab = _int(meta, f"{arch}.vocab_size")
    if vocab is None and isinstance(tokens, ArrayInfo):
        vocab = tokens.count
    return GGUFSummary(
        path=str(path), size=size, version=version, architecture=arch, name=_str(meta, "general.name"),
        file_type=_int(meta, "general.file_type"), tensor_count=n_tensors, kv_count=n_kv,
        parameter_count=sum(t.elements for t in tensors), quant_types=quant,
        context_length=_int(meta, f"{arch}.context_length"), vocab_size=vocab,
        chat_template=_str(meta, "tokenizer.chat_template"),
        bos_token_id=_int(meta, "tokenizer.ggml.bos_token_id"), eos_token_id=_int(meta, "tokenizer.ggml.eos_token_id"),
        tokenizer_model=_str(meta, "tokenizer.ggml.model"), alignment=alignment, data_offset=data_offset,
        metadata=meta, tensors=tuple(tensors))


def check_supported(summary: GGUFSummary, architectures=None, quant_types=None, need_tokenizer: bool = True) -> None:
    """Refuse (exit 3, naming it) what transformers cannot turn into an fp32 causal LM: the architecture,
    a ggml type it cannot de-quantize, or a file without a tokenizer. `architectures` / `quant_types`
    default to the tables above (the installed libraries' own lists where the caller has them)."""
    archs = CAUSAL_LM_ARCHITECTURES if architectures is None else architectures
    qtypes = DEQUANTIZABLE if quant_types is None else quant_types
    path, arch = summary.path, summary.architecture
    if arch not in archs:
        why = NOT_CAUSAL_LM.get(arch, "transformers has no GGUF loader for it")
        raise UnsupportedError(
            f"{path}: GGUF architecture {arch!r} is not supported ({why}); supported: {', '.join(sorted(archs))}",
            rejected=[{"node": "general.architecture", "op": arch, "target": "transformers", "reason": why}],
            file=path, field="general.architecture", architecture=arch)
    bad = {t: n for t, n in sorted(summary.quant_types.items()) if t not in qtypes}
    if bad:
        listed = ", ".join(f"{t} ({n} tensor{'s' if n > 1 else ''})" for t, n in bad.items())
        raise UnsupportedError(
            f"{path}: GGUF quantization type {listed} cannot be de-quantized by gguf/transformers; "
            f"supported: {', '.join(sorted(qtypes))}",
            rejected=[{"node": next(x.name for x in summary.tensors if x.type == t), "op": t,
                       "target": "transformers", "reason": "no de-quantizer"} for t in bad],
            file=path, field="ggml type", quant_types=list(bad))
    if need_tokenizer and not isinstance(summary.metadata.get("tokenizer.ggml.tokens"), ArrayInfo):
        raise UnsupportedError(f"{path}: the GGUF has no tokenizer (tokenizer.ggml.tokens is missing); "
                               "pocketml needs one to ship tokenizer.json", file=path, field="tokenizer.ggml.tokens")


def precheck_gguf(path, architectures=None, quant_types=None) -> GGUFSummary:
    """`read_gguf` then `check_supported`: the one call before any library opens a GGUF file."""
    summary = read_gguf(path)
    check_supported(summary, architectures, quant_types)
    return summary
