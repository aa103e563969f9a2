"""A GGUF's own quantized blocks carried into the ONNX decoder, instead of re-quantizing its de-quantized weights.

A GGUF's weights are already quantized (SmolLM2-135M-Instruct.Q4_1.gguf: 210 Q4_1 matrices, the tied
embedding / LM head in Q8_0). Re-quantizing the de-quantized fp32 weights onto another 4-bit grid (what
`onnx_export._blocks` does, and what the int4 peers do) stacks a second rounding on the first: +33.5 %
perplexity on SmolLM2. Every carried type maps onto onnxruntime's block ops with no rounding at all:

    Q4_0  w = d·(q − 8)          MatMulNBits bits=4, scale d, no zero point (its default is 8): exact
    Q4_1  w = d·q + m            MatMulNBits bits=4, scale d, no zero point → d·(q − 8), plus the block
                                 offsets: (Σ of the activations over each block of 32) @ (m + 8d)  —
                                 llama.cpp's own Q4_1 × Q8_1 decomposition; exact up to fp32 rounding
    Q8_0  w = d·q  (q int8)      MatMulNBits bits=8, uint8 q + 128, scale d, no zero point (default 128)
    Gather (embedding tables)    GatherBlockQuantized with the same blocks (Q4_1: + the gathered offsets)

MatMulNBits would also take the Q4_1 offset as a float zero point (zp = −m/d), but onnxruntime 1.32's CPU
kernel then falls back to de-quantizing all of B at every call (measured 1.0 ms vs 17 µs for a 576 × 1536
decode step), and a block with d = 0 has no zp. Types not carried (their reason in NOT_CARRIED) are
refused by name when carrying is asked for explicitly; `onnx_export` re-quantizes them otherwise.

Which ONNX initializer holds which GGUF tensor is found by value, not by name (torch.onnx folds the
weights' transposes into anonymous initializers): each GGUF tensor is de-quantized with gguf-py's
`dequantize` (what transformers' loader calls, so the bits are the torch reference's), its rows put in
the order transformers loads them (ROW_ORDER: llama.cpp stores Q/K rows permuted for its RoPE;
the blocks lie along the input dimension, so a row permutation keeps them whole), and matched to
a MatMul weight (transposed) or a Gather table by SHA-256 of the float32 bytes. A match is bit-exact
by construction; the carried form is then de-quantized the way onnxruntime computes it and compared
with the weight it replaces (`MAX_DEVIATION`, relative to the tensor's largest magnitude).

Torch-free: numpy, onnx, gguf-py. The file is read through `runtime/gguf.read_gguf` (every tensor's
byte range checked against the file) and `paths.open_regular`; each region is re-checked as it is read.
"""
from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from pocketml.runtime.errors import PocketmlError, UnsafeInputError, UnsupportedError, ValidationFailed
from pocketml.runtime.gguf import GGUFSummary, TensorInfo, read_gguf
from pocketml.runtime.paths import open_regular

BLOCK = 32
MAX_DEVIATION = 1e-5            # carried vs the float weight it replaces, relative to the tensor's max |w|
DOMAIN = "com.microsoft"
ACCURACY_LEVELS = (0, 1, 2, 3, 4)   # MatMulNBits: 0 = float compute, 4 = int8 activations (fastest on CPU)


@dataclass(frozen=True)
class BlockType:
    name: str
    bits: int
    block_bytes: int            # bytes per block of 32 (ggml-common.h)
    has_min: bool
    what: str                   # for people

    @property
    def describe(self) -> str:
        return f"carried from the GGUF's {self.name} blocks (block {BLOCK}, {self.what}), not re-quantized"


CARRIED = {t.name: t for t in (BlockType("Q4_0", 4, 18, False, "scale"),
                               BlockType("Q4_1", 4, 20, True, "scale+min"),
                               BlockType("Q8_0", 8, 34, False, "scale"))}
NOT_CARRIED = {
    "Q5_0": "5-bit values: onnxruntime's MatMulNBits stores 2, 4 or 8 bits",
    "Q5_1": "5-bit values: onnxruntime's MatMulNBits stores 2, 4 or 8 bits",
    "Q6_K": "6-bit values: onnxruntime's MatMulNBits stores 2, 4 or 8 bits",
    "Q4_K": "256-value super-blocks with 6-bit sub-block scales and mins (not carried yet: each block of 32 "
            "would need its scale and min de-quantized to float, exact but not implemented)",
    "Q5_K": "5-bit values in 256-value super-blocks", "Q3_K": "3-bit values", "Q2_K": "2-bit values with 4-bit "
            "sub-block scales (not carried yet)", "Q8_1": "llama.cpp's intermediate type, not a weight type",
    "F16": "a float tensor (nothing to carry: it is quantized from its values)",
    "BF16": "a float tensor (nothing to carry: it is quantized from its values)",
    "F32": "a float tensor (nothing to carry: it is quantized from its values)",
}
# Bits of the precision a carried type may appear in: an int4 artifact keeps the file's Q8_0 tensors at 8 bits
# (as llama.cpp does); an int8 artifact carries only 8-bit blocks.
PRECISION_TYPES = {"int4": ("Q4_0", "Q4_1", "Q8_0"), "int8": ("Q8_0",)}
PRECISION_NEEDS = {"int4": ("Q4_0", "Q4_1"), "int8": ("Q8_0",)}    # at least one tensor of these

# transformers' GGUF TensorProcessors (modeling_gguf_pytorch_utils): the row order it loads a tensor in.
# llama: Q and K rows un-permuted from llama.cpp's RoPE layout, heads from the GGUF's metadata (K: the KV heads).
ROW_ORDER = {"llama": {"attn_q": ("head_count", "head_count"), "attn_k": ("head_count", "head_count_kv")}}


# ---------------------------------------------------------------- blocks

@dataclass(frozen=True)
class Blocks:
    """One GGUF matrix's blocks in the layout onnxruntime reads: `rows` output rows (the GGUF's dims[1])
    × `cols` inputs (dims[0]) in blocks of 32 along the inputs. codes: uint8 [rows, cols/32, 32], the
    value MatMulNBits subtracts its default zero point from (4-bit: q, zero point 8; 8-bit: q + 128,
    zero point 128); scale: float32 [rows, cols/32]; offset (Q4_1): float32 [rows, cols/32], added per
    block after d·(q − 8), i.e. m + 8d."""
    name: str
    type: BlockType
    codes: np.ndarray
    scale: np.ndarray
    offset: np.ndarray | None

    @property
    def rows(self) -> int:
        return self.codes.shape[0]

    @property
    def cols(self) -> int:
        return self.codes.shape[1] * BLOCK

    def reordered(self, order: np.ndarray) -> "Blocks":
        return replace(self, codes=self.codes[order], scale=self.scale[order],
                       offset=None if self.offset is None else self.offset[order])

    def dequantized(self) -> np.ndarray:
        """float32 [rows, cols], computed as onnxruntime does: (code − zero point)·scale (+ offset)."""
        zero = 1 << (self.type.bits - 1)
        w = (self.codes.astype(np.float32) - zero) * self.scale[..., None]
        if self.offset is not None:
            w = w + self.offset[..., None]
        return w.reshape(self.rows, self.cols)

    def packed(self) -> np.ndarray:
        """MatMulNBits' B: uint8 [rows, cols/32, 32·bits/8] (4-bit: element 2i in the low nibble of byte i)."""
        if self.type.bits == 8:
            return self.codes
        return (self.codes[..., 0::2] | (self.codes[..., 1::2] << 4)).astype(np.uint8)


def parse_blocks(raw: bytes, info: TensorInfo) -> Blocks:
    """The blocks of one tensor from its raw bytes (ggml-common.h block_q4_0 / block_q4_1 / block_q8_0)."""
    bt = CARRIED[info.type]
    cols, rows = info.dims[0], int(np.prod(info.dims[1:]))
    nb = cols // BLOCK
    a = np.frombuffer(raw, dtype=np.uint8).reshape(rows, nb, bt.block_bytes)
    d = a[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
    if bt.name == "Q8_0":
        codes = (a[..., 2:].view(np.int8).astype(np.int16) + 128).astype(np.uint8)
        return Blocks(info.name, bt, codes, d, None)
    first = 4 if bt.has_min else 2
    qs = a[..., first:first + BLOCK // 2]
    codes = np.concatenate([qs & 0x0F, qs >> 4], axis=-1)          # byte j: element j (low), j + 16 (high)
    offset = None
    if bt.has_min:
        m = a[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32)
        offset = m + np.float32(8) * d
    return Blocks(info.name, bt, codes, d, offset)


def read_region(path: Path, info: TensorInfo, fh=None) -> bytes:
    """A tensor's bytes, checked again as they are read (the file may have changed since the header walk)."""
    own = fh is None
    fh = open_regular(path) if own else fh
    try:
        size = os.fstat(fh.fileno()).st_size
        if info.offset + info.nbytes > size:
            raise UnsafeInputError(
                f"{path}: truncated GGUF: tensor {info.name!r} ({info.type}) needs bytes [{info.offset}, "
                f"{info.offset + info.nbytes}) but the file has {size}", file=str(path), tensor=info.name,
                expected=f"end ≤ {size}", found=f"end {info.offset + info.nbytes}")
        fh.seek(info.offset)
        raw = fh.read(info.nbytes)
    finally:
        if own:
            fh.close()
    if len(raw) != info.nbytes:
        raise UnsafeInputError(f"{path}: truncated GGUF: tensor {info.name!r}: expected {info.nbytes} bytes at "
                               f"offset {info.offset}, read {len(raw)}", file=str(path), tensor=info.name,
                               expected=f"{info.nbytes} bytes", found=f"{len(raw)} bytes")
    return raw


# ---------------------------------------------------------------- which tensors, in which order

def weight_tensors(summary: GGUFSummary) -> list[TensorInfo]:
    """The GGUF's matrices (2-D or more): what an exporter quantizes. Vectors (norms, biases) stay float."""
    return [t for t in summary.tensors if len(t.dims) >= 2]


def refusals(summary: GGUFSummary, precision: str) -> list[dict]:
    """Why each matrix of the file cannot be carried into a `precision` artifact (empty: all can)."""
    allowed = PRECISION_TYPES.get(precision, ())
    out = []
    for t in weight_tensors(summary):
        if t.type in allowed:
            continue
        reason = (f"{t.type} is carried into {'/'.join(p for p, ts in PRECISION_TYPES.items() if t.type in ts)} "
                  f"artifacts, not {precision}") if t.type in CARRIED else NOT_CARRIED.get(
                      t.type, f"{t.type} blocks are not carried (carried: {', '.join(CARRIED)})")
        out.append({"node": t.name, "op": t.type, "target": f"onnx {precision}", "reason": reason})
    if not out and not any(t.type in PRECISION_NEEDS.get(precision, ()) for t in weight_tensors(summary)):
        out.append({"node": "*", "op": ",".join(sorted({t.type for t in weight_tensors(summary)})) or "none",
                    "target": f"onnx {precision}",
                    "reason": f"no {'/'.join(PRECISION_NEEDS.get(precision, ()))} tensor to carry into {precision}"})
    return out


def check_carriable(summary: GGUFSummary, precision: str) -> None:
    """UnsupportedError (exit 3) naming each tensor whose blocks cannot be carried, and why."""
    bad = refusals(summary, precision)
    if bad:
        shown = "; ".join(f"{r['node']} ({r['op']}): {r['reason']}" for r in bad[:6])
        more = f"; … {len(bad) - 6} more" if len(bad) > 6 else ""
        raise UnsupportedError(f"{summary.path}: cannot carry the GGUF's blocks into ONNX {precision}: {shown}{more} "
                               "(re-quantize instead: weights_from='requantize')", rejected=bad,
                               file=summary.path, precision=precision)


def row_orders(summary: GGUFSummary, info: TensorInfo) -> list[np.ndarray | None]:
    """Row orders to try for `info`, most likely first: transformers' (ROW_ORDER), then the file's own."""
    rows = int(np.prod(info.dims[1:]))
    arch = summary.architecture
    kind = info.name.split(".")[-2] if info.name.count(".") >= 2 else ""
    spec = ROW_ORDER.get(arch, {}).get(kind)
    orders: list[np.ndarray | None] = []
    if spec:
        heads = summary.metadata.get(f"{arch}.attention.{spec[1]}") or summary.metadata.get(f"{arch}.attention.{spec[0]}")
        if isinstance(heads, int) and heads > 0 and rows % (2 * heads) == 0:
            orders.append(np.arange(rows).reshape(heads, rows // heads // 2, 2).swapaxes(1, 2).reshape(-1))
    return [*orders, None]


def group_of(name: str) -> str:
    """blk.7.attn_q.weight → blk.*.attn_q.weight (the per-group lines of the manifest)."""
    return re.sub(r"^blk\.\d+\.", "blk.*.", name)


def _digest(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a, dtype=np.float32).tobytes()).hexdigest()


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open_regular(path) as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def gguf_dequantized(raw: bytes, info: TensorInfo) -> np.ndarray:
    """float32 [rows, cols] exactly as transformers' GGUF loader computes it (gguf-py's `dequantize`)."""
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize
    rows = int(np.prod(info.dims[1:]))
    data = np.frombuffer(raw, dtype=np.uint8).reshape(rows, -1)
    return dequantize(data, GGMLQuantizationType[info.type]).reshape(rows, info.dims[0]).astype(np.float32, copy=False)


# ---------------------------------------------------------------- the graph

@dataclass
class _Target:
    init: str                    # the float initializer the blocks replace
    kind: str                    # "matmul" (B = W.T, [K, N]) or "gather" (a table [rows, K], gather axis 0)
    blocks: Blocks | None = None


def _targets(model, skip) -> dict[str, list[_Target]]:
    """SHA-256 of each MatMul weight (as rows × K) and each embedding table → its targets."""
    from onnx import numpy_helper
    inits = {i.name: i for i in model.graph.initializer}
    seen: dict[tuple[str, str], _Target] = {}
    for n in model.graph.node:
        if n.name in skip:
            continue
        if n.op_type == "MatMul" and len(n.input) == 2 and n.input[1] in inits and len(inits[n.input[1]].dims) == 2:
            seen.setdefault((n.input[1], "matmul"), _Target(n.input[1], "matmul"))
        axis = next((a.i for a in n.attribute if a.name == "axis"), 0)
        if n.op_type == "Gather" and n.input[0] in inits and len(inits[n.input[0]].dims) == 2 and axis == 0:
            seen.setdefault((n.input[0], "gather"), _Target(n.input[0], "gather"))
    out: dict[str, list[_Target]] = {}
    for (name, kind), t in seen.items():
        w = numpy_helper.to_array(inits[name])
        if w.dtype != np.float32 or (w.shape[0 if kind == "matmul" else 1] % BLOCK):
            continue
        out.setdefault(_digest(w.T if kind == "matmul" else w), []).append(t)
    return out


def match(model, path: Path, summary: GGUFSummary, skip=()) -> tuple[dict[str, list[_Target]], list[str]]:
    """GGUF matrix name → the graph's targets holding its values (bit-exact), and the matrices found nowhere."""
    targets = _targets(model, set(skip))
    found: dict[str, list[_Target]] = {}
    missing = []
    with open_regular(path) as fh:
        for info in weight_tensors(summary):
            if info.type not in CARRIED or info.dims[0] % BLOCK:
                missing.append(info.name)
                continue
            raw = read_region(path, info, fh)
            ref = gguf_dequantized(raw, info)
            for order in row_orders(summary, info):
                hits = targets.pop(_digest(ref if order is None else ref[order]), None)
                if hits:
                    blocks = parse_blocks(raw, info)
                    blocks = blocks if order is None else blocks.reordered(order)
                    _check(blocks, ref if order is None else ref[order], path)
                    found[info.name] = [replace(t, blocks=blocks) for t in hits]
                    break
            else:
                missing.append(info.name)
    return found, missing


def _check(blocks: Blocks, ref: np.ndarray, path: Path) -> float:
    """The carried blocks, computed as onnxruntime will, against the weight they replace."""
    dev = float(np.abs(blocks.dequantized() - ref).max() / max(float(np.abs(ref).max()), 1e-30))
    if not dev <= MAX_DEVIATION:
        raise ValidationFailed(f"{path}: tensor {blocks.name!r}: the carried {blocks.type.name} blocks reproduce the "
                               f"weight only to {dev:.2e} (relative), expected ≤ {MAX_DEVIATION:.0e}",
                               tensor=blocks.name, deviation=dev)
    return dev


class _Rewriter:
    """Replaces matched MatMul / Gather nodes with the block ops, keeping every output name."""

    def __init__(self, model, accuracy_level: int):
        self.model, self.level = model, accuracy_level
        self.new_inits: dict[str, object] = {}
        self.block_sums: dict[str, str] = {}       # activation → its per-block sums (shared by its MatMuls)
        self.counts: dict[str, int] = {}
        self.packed: list[list[str]] = []

    def _init(self, name: str, array: np.ndarray) -> str:
        from onnx import numpy_helper
        if name not in self.new_inits:
            self.new_inits[name] = numpy_helper.from_array(np.ascontiguousarray(array), name)
        return name

    def _ones(self, rows: int, cols: int, transpose: bool) -> str:
        """[K, K/32] block indicator (sums per block), or its transpose (repeats per block)."""
        e = np.kron(np.eye(cols if not transpose else rows, dtype=np.float32), np.ones((BLOCK, 1), np.float32))
        return self._init(f"gguf_carry.block_{'repeat' if transpose else 'sum'}_{e.shape[0]}", e.T if transpose else e)

    def matmul(self, nodes: list, blocks: list[Blocks]) -> list:
        """One MatMulNBits for MatMuls reading the same activation with blocks of one type (q/k/v,
        gate/up: their weights stacked along N, the outputs split again), + the Q4_1 offsets term."""
        from onnx import helper, numpy_helper
        a, first = nodes[0].input[0], nodes[0]
        b = blocks[0] if len(blocks) == 1 else Blocks(
            "+".join([blocks[0].name.rsplit(".", 1)[0]] + [x.name.rsplit(".", 1)[0].split(".")[-1] for x in blocks[1:]])
            + ".weight", blocks[0].type, np.concatenate([x.codes for x in blocks]),
            np.concatenate([x.scale for x in blocks]),
            None if blocks[0].offset is None else np.concatenate([x.offset for x in blocks]))
        y = first.output[0] if len(nodes) == 1 else first.output[0] + "_packed"
        base = f"{b.name}.{b.type.name.lower()}"
        q = self._init(base + ".q", b.packed())
        s = self._init(base + ".scales", b.scale.reshape(-1))
        out = [helper.make_node("MatMulNBits", [a, q, s], [y if b.offset is None else y + "_blocks"],
                                name=first.name + "_gguf", domain=DOMAIN, K=b.cols, N=b.rows, bits=b.type.bits,
                                block_size=BLOCK, accuracy_level=self.level)]
        if b.offset is not None:
            sums = self.block_sums.get(a)
            if sums is None:
                sums = self.block_sums[a] = a + "_block_sums"
                out.insert(0, helper.make_node("MatMul", [a, self._ones(b.cols, b.cols // BLOCK, False)], [sums],
                                               name=first.name + "_gguf_block_sums"))
            off = self._init(base + ".offsets", b.offset.T)                        # [K/32, N]
            out += [helper.make_node("MatMul", [sums, off], [y + "_offsets"], name=first.name + "_gguf_offsets"),
                    helper.make_node("Add", [y + "_blocks", y + "_offsets"], [y], name=first.name + "_gguf_add")]
        if len(nodes) > 1:
            sizes = self._init(f"{base}.split", np.array([x.rows for x in blocks], np.int64))
            out.append(helper.make_node("Split", [y, sizes], [n.output[0] for n in nodes], axis=-1,
                                        name=first.name + "_gguf_split"))
            self.packed.append([n.name for n in nodes])
        del numpy_helper
        return out

    def gather(self, node, b: Blocks) -> list:
        from onnx import helper
        ids, y = node.input[1], node.output[0]
        base = f"{b.name}.{b.type.name.lower()}.table"
        if b.type.bits == 8:
            data = self._init(base, b.codes.reshape(b.rows, b.cols))
            zp = self._init(base + ".zero_points", np.full(b.scale.shape, 128, np.uint8))
            ins = [data, ids, self._init(base + ".scales", b.scale), zp]
        else:
            ins = [self._init(base, b.packed().reshape(b.rows, b.cols // 2)), ids, self._init(base + ".scales", b.scale)]
        out = [helper.make_node("GatherBlockQuantized", ins, [y if b.offset is None else y + "_blocks"],
                                name=node.name + "_gguf", domain=DOMAIN, gather_axis=0, quantize_axis=1,
                                block_size=BLOCK, bits=b.type.bits)]
        if b.offset is not None:
            off = self._init(base + ".offsets", b.offset)                          # [rows, K/32]
            out += [helper.make_node("Gather", [off, ids], [y + "_offsets"], name=node.name + "_gguf_offsets", axis=0),
                    helper.make_node("MatMul", [y + "_offsets", self._ones(b.cols // BLOCK, b.cols, True)],
                                     [y + "_offsets_full"], name=node.name + "_gguf_offsets_repeat"),
                    helper.make_node("Add", [y + "_blocks", y + "_offsets_full"], [y], name=node.name + "_gguf_add")]
        return out

    def run(self, plan: dict[tuple[str, str], _Target], pack: bool = True) -> list[str]:
        """Rewrite every node whose (weight, kind) is in `plan`; returns the nodes replaced."""
        from onnx import helper
        graph = self.model.graph
        original = list(graph.node)                 # indexes, not id(): protobuf wrappers are not kept alive
        carried = {}
        for i, n in enumerate(original):
            key = ((n.input[1], "matmul") if n.op_type == "MatMul" and len(n.input) == 2 else
                   (n.input[0], "gather") if n.op_type == "Gather" else None)
            if key in plan:
                carried[i] = plan[key]
        groups: dict[tuple, list[int]] = {}         # MatMuls packed together: same activation, K and block type
        for i, t in carried.items():
            if t.kind == "matmul":
                key = (original[i].input[0], t.blocks.cols, t.blocks.type.name) if pack else (i,)
                groups.setdefault(key, []).append(i)
        lead = {g[0]: g for g in groups.values()}
        nodes, replaced = [], []
        for i, n in enumerate(original):
            t = carried.get(i)
            if t is None:
                nodes.append(n)
                continue
            replaced.append(n.name)
            op = "MatMulNBits" if t.kind == "matmul" else "GatherBlockQuantized"
            self.counts[op] = self.counts.get(op, 0) + 1
            if t.kind == "gather":
                nodes += self.gather(n, t.blocks)
            elif i in lead:
                nodes += self.matmul([original[j] for j in lead[i]], [carried[j].blocks for j in lead[i]])
        del graph.node[:]
        graph.node.extend(nodes)
        used = {x for n in graph.node for x in n.input}
        keep = [i for i in graph.initializer if i.name in used]
        del graph.initializer[:]
        graph.initializer.extend(keep + [v for k, v in self.new_inits.items() if k in used])
        if not any(o.domain == DOMAIN for o in self.model.opset_import):
            self.model.opset_import.append(helper.make_opsetid(DOMAIN, 1))
        return replaced


# ---------------------------------------------------------------- one call

LEVELS = {0: "float compute (accuracy_level 0: activations stay fp32)",
          1: "fp32 compute (accuracy_level 1)", 2: "fp16 compute (accuracy_level 2)",
          3: "bf16 compute (accuracy_level 3)",
          4: "int8 activations per block at run time (accuracy_level 4)"}


def carry(model, gguf_path, precision: str, *, accuracy_level: int = 4, expected_sha256: str | None = None,
          skip=(), pack: bool = True) -> dict:
    """Rewrite `model` (an onnx ModelProto, LM head untied) in place: every MatMul weight and embedding table
    whose values are a GGUF tensor's becomes MatMulNBits / GatherBlockQuantized holding that tensor's own
    blocks. Refuses (exit 3) a file with matrices in types not carried into `precision`; exit 4 on a file
    that changed (`expected_sha256`) or is truncated. `skip`: node names left alone. Returns the
    quantization record, with `left` = MatMul nodes still holding a float weight (the caller's to quantize).
    `pack`: MatMuls reading one activation (q/k/v, gate/up) become one MatMulNBits and a Split (measured:
    each MatMulNBits and each Q4_1 offsets term costs onnxruntime microseconds per decode step)."""
    from pocketml.runtime.errors import UsageError
    if accuracy_level not in ACCURACY_LEVELS:
        raise UsageError(f"accuracy_level {accuracy_level!r}: choose from {ACCURACY_LEVELS}")
    path = Path(gguf_path)
    summary = read_gguf(path)
    check_carriable(summary, precision)
    if expected_sha256 is not None and (actual := _file_sha256(path)) != expected_sha256:
        raise UnsafeInputError(f"{path}: SHA-256 {actual} is not the {expected_sha256} the fp32 reference was loaded "
                               "from (the file changed during the conversion)", file=str(path))
    found, missing = match(model, path, summary, skip)
    plan = {(t.init, t.kind): t for ts in found.values() for t in ts}
    rw = _Rewriter(model, accuracy_level)
    replaced = rw.run(plan, pack)
    left = [n.name for n in model.graph.node if n.op_type == "MatMul" and not n.name.endswith(("_gguf_block_sums",
            "_gguf_offsets", "_gguf_offsets_repeat")) and n.input[1] in {i.name for i in model.graph.initializer}]
    record = _record(summary, path, found, missing, replaced, left, accuracy_level, rw.counts)
    record["packed"] = rw.packed
    return record


def _record(summary, path, found, missing, replaced, left, level, counts) -> dict:
    groups: dict[str, dict] = {}
    for name, targets in found.items():
        b = targets[0].blocks
        g = groups.setdefault(group_of(name), {"type": b.type.name, "tensors": 0, "ops": set()})
        g["tensors"] += 1
        g["ops"] |= {"MatMulNBits" if t.kind == "matmul" else "GatherBlockQuantized" for t in targets}
    types = sorted({g["type"] for g in groups.values()})
    n_carried = sum(g["tensors"] for g in groups.values())
    summary_line = (f"{n_carried} GGUF tensors carried ({', '.join(f'{t}: ' + str(sum(g['tensors'] for g in groups.values() if g['type'] == t)) for t in types)}) "
                    f"from {Path(path).name}, not re-quantized; {len(replaced)} nodes; MatMulNBits {LEVELS[level]}")
    return {"method": "the GGUF's own quantized blocks, carried into MatMulNBits / GatherBlockQuantized, not "
                      f"re-quantized ({', '.join(CARRIED[t].describe.split(' (')[0].replace('carried from the ', '') for t in types)}); "
                      f"MatMulNBits {LEVELS[level]}",
            "weights_from": "gguf", "summary": summary_line,
            "weights": " + ".join(f"{t} ({CARRIED[t].bits}-bit blocks of {BLOCK}, {CARRIED[t].what})" for t in types),
            "block_size": BLOCK, "accuracy_level": level, "kv_cache": "float32",
            "gguf": {"file": Path(path).name, "tensor_types": dict(sorted(summary.quant_types.items()))},
            "tensor_groups": {g: CARRIED[v["type"]].describe for g, v in sorted(groups.items())},
            "carried": {g: {"type": v["type"], "tensors": v["tensors"], "ops": sorted(v["ops"])}
                        for g, v in sorted(groups.items())},
            "carried_nodes": dict(sorted(counts.items())), "gguf_tensors_not_in_graph": missing, "left": left}


def gguf_path(spec) -> Path | None:
    """The GGUF file a CausalLMSpec was loaded from, when it still exists (a reassembled built-in is deleted
    after loading: None)."""
    src = spec.source or {}
    if src.get("kind") == "gguf":
        return Path(src["id"])
    if src.get("kind") == "builtin":
        from .sources import LLM_BUILTINS, _dist_file
        b = LLM_BUILTINS.get(src.get("id"))
        if b is not None and b.member:
            try:
                return _dist_file(b.distribution, b.member, b)
            except PocketmlError:
                return None
    return None
