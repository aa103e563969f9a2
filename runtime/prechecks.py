"""Structural checks run before a model file is handed to a native runtime.

Native parsers (flatbuffers, protobuf) can crash on crafted input, and trust the sizes a file
declares. These checks reject truncated, foreign or oversized files with a clear message
(UnsafeInputError, exit 4) before any allocation a file asked for. They do not replace the
sandboxed child process (see docs/SECURITY.md); they make the common cases readable and the
allocation sizes bounded.

Checked sizes live here, in one place: `checked_nbytes` multiplies a declared shape out against
explicit caps (element count, bytes, rank) at every step, so a crafted shape cannot make pocketml
or the runtime allocate more than the caps. ONNX tensors (`onnx_checks`) and TFLite tensors
(`_tflite`, a minimal bounds-checked flatbuffer reader) both go through it.
"""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path

from .errors import UnsafeInputError
from .paths import check_range, contained_file, open_contained, open_regular

MAX_MODEL_BYTES = 4 << 30
MAX_TENSOR_ELEMENTS = 1 << 34          # 16 Gi elements
MAX_TENSOR_BYTES = 8 << 30             # 8 GiB for one tensor
MAX_TOTAL_TENSOR_BYTES = 32 << 30      # all tensors of a TFLite model together (the arena's upper bound)
MAX_DIMS = 16
MAX_PACKAGE_MANIFEST_BYTES = 1 << 20


def checked_nbytes(where: str, dims, elem_bytes: int, dynamic_ok: bool = False) -> int:
    """Bytes of a tensor with shape `dims`, refusing negative dims, too many dims, and any element
    count or byte size above the caps. `dynamic_ok` admits -1 (a dynamic dim, counted as 1)."""
    if len(dims) > MAX_DIMS:
        raise UnsafeInputError(f"{where}: {len(dims)} dimensions (cap {MAX_DIMS})")
    n = 1
    for d in dims:
        if d < 0 and not (dynamic_ok and d == -1):
            raise UnsafeInputError(f"{where}: negative dimension {d}")
        n *= max(d, 1) if dynamic_ok else d
        if n > MAX_TENSOR_ELEMENTS:
            raise UnsafeInputError(f"{where}: more than {MAX_TENSOR_ELEMENTS} elements")
    nbytes = n * elem_bytes
    if nbytes > MAX_TENSOR_BYTES:
        raise UnsafeInputError(f"{where}: {nbytes} bytes exceeds the {MAX_TENSOR_BYTES}-byte cap")
    return nbytes


# ------------------------------------------------------------------------------------------ TFLite

# TensorType → bytes per element (schema.fbs). STRING/RESOURCE/VARIANT and unknown types are
# counted at 16 bytes for the caps; packed INT4/INT2 at one byte (an upper bound).
TFLITE_ELEM_BYTES = {0: 4, 1: 2, 2: 4, 3: 1, 4: 8, 5: 1, 6: 1, 7: 2, 8: 8, 9: 1, 10: 8, 11: 16, 12: 8,
                     15: 4, 16: 2, 17: 1, 18: 2, 19: 1}


class _FlatBuffer:
    """Just enough of the flatbuffers wire format to walk a TFLite model with every offset and
    length bounded by the file size, and the total work bounded by a budget proportional to it."""

    def __init__(self, path: Path, buf, size: int):
        self.path, self.buf, self.size = path, buf, size
        self.budget = 4 * size + 4096

    def fail(self, what: str):
        raise UnsafeInputError(f"{self.path}: truncated or corrupt TFLite file: {what} "
                               f"(file size {self.size})")

    def spend(self, n: int = 1) -> None:
        self.budget -= n
        if self.budget < 0:
            self.fail("structure references itself more often than its size allows")

    def u8(self, pos: int) -> int:
        if not 0 <= pos <= self.size - 1:
            self.fail(f"byte at {pos} beyond the end")
        return self.buf[pos]

    def u16(self, pos: int) -> int:
        if not 0 <= pos <= self.size - 2:
            self.fail(f"16-bit field at {pos} beyond the end")
        return struct.unpack_from("<H", self.buf, pos)[0]

    def u32(self, pos: int) -> int:
        if not 0 <= pos <= self.size - 4:
            self.fail(f"32-bit field at {pos} beyond the end")
        return struct.unpack_from("<I", self.buf, pos)[0]

    def i32(self, pos: int) -> int:
        if not 0 <= pos <= self.size - 4:
            self.fail(f"32-bit field at {pos} beyond the end")
        return struct.unpack_from("<i", self.buf, pos)[0]

    def u64(self, pos: int) -> int:
        if not 0 <= pos <= self.size - 8:
            self.fail(f"64-bit field at {pos} beyond the end")
        return struct.unpack_from("<Q", self.buf, pos)[0]

    def deref(self, pos: int) -> int:
        """Follow a uoffset at `pos`."""
        target = pos + self.u32(pos)
        if target >= self.size:
            self.fail(f"offset at {pos} points to {target}, beyond the end")
        return target

    def table(self, pos: int) -> "_Table":
        self.spend()
        vt = pos - self.i32(pos)
        vsize, tsize = self.u16(vt), self.u16(vt + 2)
        if vsize < 4 or vsize % 2 or vt + vsize > self.size:
            self.fail(f"vtable of table at {pos} has size {vsize}")
        if tsize < 4 or pos + tsize > self.size:
            self.fail(f"table at {pos} declares size {tsize}")
        return _Table(self, pos, vt, vsize, tsize)

    def vector(self, pos: int, elem: int) -> tuple[int, int]:
        """(start, length) of the vector at `pos` with `elem`-byte elements, bounded by the file."""
        n = self.u32(pos)
        start = pos + 4
        if n > (self.size - start) // elem:
            self.fail(f"vector at {pos} declares {n} elements of {elem} bytes")
        return start, n


class _Table:
    def __init__(self, fb: _FlatBuffer, pos: int, vt: int, vsize: int, tsize: int):
        self.fb, self.pos, self.vt, self.vsize, self.tsize = fb, pos, vt, vsize, tsize

    def field(self, i: int, width: int) -> int | None:
        """Absolute position of field `i` (`width` bytes), or None when absent."""
        slot = 4 + 2 * i
        if slot + 2 > self.vsize:
            return None
        off = self.fb.u16(self.vt + slot)
        if off == 0:
            return None
        if off + width > self.tsize:
            self.fb.fail(f"field {i} of table at {self.pos} lies outside the table")
        return self.pos + off

    def scalar(self, i: int, fmt: str, default: int = 0) -> int:
        width = struct.calcsize(fmt)
        p = self.field(i, width)
        return default if p is None else struct.unpack_from("<" + fmt, self.fb.buf, p)[0]

    def vector(self, i: int, elem: int) -> tuple[int, int]:
        p = self.field(i, 4)
        return (0, 0) if p is None else self.fb.vector(self.fb.deref(p), elem)

    def tables(self, i: int):
        start, n = self.vector(i, 4)
        for k in range(n):
            yield k, self.fb.table(self.fb.deref(start + 4 * k))

    def string(self, i: int) -> str | None:
        p = self.field(i, 4)
        if p is None:
            return None
        start, n = self.fb.vector(self.fb.deref(p), 1)
        self.fb.spend(n // 64 + 1)
        try:
            return bytes(self.fb.buf[start:start + n]).decode("utf-8")
        except UnicodeDecodeError:
            self.fb.fail(f"string at {start} is not UTF-8")

    def ints(self, i: int) -> list[int]:
        start, n = self.vector(i, 4)
        self.fb.spend(n)
        return [self.fb.i32(start + 4 * k) for k in range(n)]


def _tflite(path: Path, buf, size: int) -> None:
    if size < 16 or buf[4:8] not in (b"TFL3", b"TFL2"):
        raise UnsafeInputError(f"{path}: not a TFLite flatbuffer (no 'TFL3' identifier at byte 4)")
    fb = _FlatBuffer(path, buf, size)
    root = fb.u32(0)
    if root < 8 or root + 4 > size:
        fb.fail(f"root table offset {root}")
    model = fb.table(root)
    buffers = list(model.tables(4))
    for k, b in buffers:
        start, n = b.vector(0, 1)                      # inline data: bounded by vector()
        offset, length = b.scalar(1, "Q"), b.scalar(2, "Q")
        if offset > 1:                                 # data appended after the flatbuffer (>2 GB models)
            try:
                check_range(path, offset, length, size=size)
            except UnsafeInputError:
                fb.fail(f"buffer {k} points at bytes {offset}..{offset + length}")
    _external_buffers(fb, model, path)
    n_codes = model.vector(1, 4)[1]
    total = 0
    for s, sub in model.tables(2):
        tensors = list(sub.tables(0))
        for t, tensor in tensors:
            where = f"{path}: subgraph {s} tensor {t}"
            shape = tensor.ints(0)
            ttype = tensor.scalar(1, "b")
            total += checked_nbytes(where, shape, TFLITE_ELEM_BYTES.get(ttype, 16), dynamic_ok=True)
            if total > MAX_TOTAL_TENSOR_BYTES:
                raise UnsafeInputError(f"{path}: tensors need more than {MAX_TOTAL_TENSOR_BYTES} bytes in all")
            if len(tensor.ints(7)) not in (0, len(shape)):
                fb.fail(f"subgraph {s} tensor {t}: shape_signature rank differs from shape rank")
            buffer = tensor.scalar(2, "I")
            if buffer >= max(len(buffers), 1):
                fb.fail(f"subgraph {s} tensor {t} refers to buffer {buffer} of {len(buffers)}")
        n_tensors = len(tensors)
        for name, idx in (("inputs", 1), ("outputs", 2)):
            bad = [i for i in sub.ints(idx) if not 0 <= i < n_tensors]
            if bad:
                fb.fail(f"subgraph {s} {name} refer to tensor {bad[0]} of {n_tensors}")
        for o, op in sub.tables(3):
            if op.scalar(0, "I") >= n_codes:
                fb.fail(f"subgraph {s} operator {o} uses operator code {op.scalar(0, 'I')} of {n_codes}")
            for idx in (1, 2):
                bad = [i for i in op.ints(idx) if not -1 <= i < n_tensors]
                if bad:
                    fb.fail(f"subgraph {s} operator {o} refers to tensor {bad[0]} of {n_tensors}")


def _external_buffers(fb: _FlatBuffer, model: _Table, path: Path) -> None:
    """Model.external_buffer_groups name files beside the model (weights kept outside the flatbuffer):
    file references like ONNX external data, so each goes through the path validator, and every
    external buffer's (offset, length) is bounded by its group file's real size."""
    sizes = []
    for g, group in model.tables(8):
        name = group.string(0)
        if not name:
            fb.fail(f"external buffer group {g} has no file name")
        try:
            with open_contained(path.parent, name) as fh:
                sizes.append(os.fstat(fh.fileno()).st_size)
        except UnsafeInputError as exc:
            raise UnsafeInputError(f"{path}: external buffer group {g}: {exc}", location=name) from None
    for b, ext in model.tables(9):
        group = ext.scalar(1, "I")
        if group >= len(sizes):
            fb.fail(f"external buffer {b} refers to group {group} of {len(sizes)}")
        offset, length = ext.scalar(2, "Q"), ext.scalar(3, "Q")
        try:
            check_range(path.parent / "?", offset, length, size=sizes[group])
        except UnsafeInputError:
            raise UnsafeInputError(f"{path}: external buffer {b}: bytes {offset}..{offset + length} lie beyond "
                                   f"its group file ({sizes[group]} bytes)") from None


def tflite_io(path: Path, data: bytes) -> tuple[list[dict], list[dict]]:
    """The main subgraph's inputs (in tensor-index order, as LiteRT's sessions take them) and outputs:
    name, shape, TensorType, read with the bounds-checked reader. Run after `_tflite` passed."""
    fb = _FlatBuffer(path, data, len(data))
    model = fb.table(fb.u32(0))
    subgraphs = list(model.tables(2))
    if not subgraphs:
        fb.fail("no subgraph")
    sub = subgraphs[0][1]
    tensors = [t for _, t in sub.tables(0)]

    def describe(i: int) -> dict:
        t = tensors[i]
        return {"name": t.string(3) or f"tensor_{i}", "shape": t.ints(0), "type": t.scalar(1, "b")}
    return [describe(i) for i in sorted(sub.ints(1))], [describe(i) for i in sub.ints(2)]


# ------------------------------------------------------------------------------------- safetensors

MAX_SAFETENSORS_HEADER_BYTES = 100_000_000      # the safetensors library's own limit
# dtype → bits per element (safetensors' Dtype enum; F4 / F6 are packed).
SAFETENSORS_DTYPE_BITS = {"BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E4M3FNUZ": 8,
                          "F8_E5M2FNUZ": 8, "F8_E8M0": 8, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6, "I16": 16,
                          "U16": 16, "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32, "C64": 64,
                          "I64": 64, "U64": 64, "F64": 64}


def precheck_safetensors(path: Path) -> None:
    """A `.safetensors` header before any loader maps the file: the 8-byte little-endian header length
    (capped, inside the file), a JSON object whose tensors each have a known dtype, a shape of
    non-negative ints whose byte size (`checked_nbytes`) equals its `data_offsets` span, and spans that
    follow each other without overlap or gap and cover the data area exactly. Follows symlinks: a
    Hugging Face cache snapshot links its files into `blobs/`."""
    from .manifest import parse_json
    path = Path(path)
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        head = fh.read(8)
        if len(head) < 8:
            _bad_safetensors(path, f"{len(head)} bytes, shorter than the 8-byte header length")
        n = struct.unpack("<Q", head)[0]
        if n > MAX_SAFETENSORS_HEADER_BYTES:
            _bad_safetensors(path, f"header of {n} bytes exceeds the {MAX_SAFETENSORS_HEADER_BYTES}-byte cap")
        if n > size - 8:
            _bad_safetensors(path, f"header of {n} bytes is longer than the file ({size} bytes)")
        header = parse_json(fh.read(n), path)
    if not isinstance(header, dict):
        _bad_safetensors(path, "the header is not a JSON object")
    data_len = size - 8 - n
    spans = sorted(_safetensors_span(path, name, info, data_len) for name, info in header.items()
                   if name != "__metadata__")
    end, last = 0, None
    for begin, stop, name in spans:
        if begin < end:
            _bad_safetensors(path, f"tensor {name!r} (bytes {begin}..{stop}) overlaps tensor {last!r} "
                                   f"(which ends at {end})")
        if begin > end:
            _bad_safetensors(path, f"a gap of {begin - end} bytes before tensor {name!r}")
        end, last = stop, name
    if end != data_len:
        _bad_safetensors(path, f"the tensors cover {end} of the {data_len} data bytes")


def _safetensors_span(path: Path, name: str, info, data_len: int) -> tuple[int, int, str]:
    where = f"{path}: corrupt safetensors file: tensor {name!r}"
    if not isinstance(info, dict) or info.get("dtype") not in SAFETENSORS_DTYPE_BITS:
        _bad_safetensors(path, f"tensor {name!r} has no known dtype")
    shape, offsets = info.get("shape"), info.get("data_offsets")
    ints = lambda v, n=None: isinstance(v, list) and (n is None or len(v) == n) and all(  # noqa: E731
        isinstance(x, int) and not isinstance(x, bool) for x in v)
    if not ints(shape) or not ints(offsets, 2):
        _bad_safetensors(path, f"tensor {name!r} needs an integer shape and two integer data_offsets")
    begin, stop = offsets
    if not 0 <= begin <= stop <= data_len:
        _bad_safetensors(path, f"tensor {name!r} data_offsets {offsets} lie outside the {data_len} data bytes")
    bits = SAFETENSORS_DTYPE_BITS[info["dtype"]]
    nbytes = checked_nbytes(where, shape, max(bits // 8, 1))
    if bits < 8:
        nbytes = (nbytes * bits + 7) // 8
    if nbytes != stop - begin:
        _bad_safetensors(path, f"tensor {name!r} {info['dtype']}{shape} needs {nbytes} bytes but its "
                               f"data_offsets span {stop - begin}")
    return begin, stop, name


def _bad_safetensors(path: Path, what: str):
    raise UnsafeInputError(f"{path}: corrupt safetensors file: {what}", file=str(path))


# -------------------------------------------------------------------------------------------- ONNX

def _onnx(path: Path, buf, size: int) -> None:
    # An ONNX ModelProto starts with a protobuf field; field 1 (ir_version, varint) in practice.
    if size < 8 or buf[0] not in (0x08, 0x12, 0x1A, 0x22, 0x32, 0x3A, 0x42):
        raise UnsafeInputError(f"{path}: not an ONNX protobuf (first byte 0x{buf[:1].hex() or '00'})")
    from .onnx_checks import check_onnx
    check_onnx(path, buf)


# ---------------------------------------------------------------------------------------- Core ML

def _coreml(path: Path) -> None:
    """An .mlpackage: Manifest.json's item paths are package members, each through the validator."""
    if not path.is_dir():
        return   # a flat .mlmodel protobuf: parsed by coremltools, only on macOS
    with open_contained(path, "Manifest.json") as fh:
        raw = fh.read(MAX_PACKAGE_MANIFEST_BYTES + 1)
    if len(raw) > MAX_PACKAGE_MANIFEST_BYTES:
        raise UnsafeInputError(f"{path}/Manifest.json: larger than {MAX_PACKAGE_MANIFEST_BYTES} bytes")
    try:
        manifest = json.loads(raw.decode("utf-8"))
        entries = manifest["itemInfoEntries"]
        items = [e["path"] for e in entries.values()]
        entries[manifest["rootModelIdentifier"]]
    except (UnicodeDecodeError, ValueError, RecursionError, KeyError, TypeError, AttributeError) as exc:
        raise UnsafeInputError(f"{path}/Manifest.json: not a Core ML package manifest "
                               f"({type(exc).__name__})") from None
    for item in items:
        contained_file(path / "Data", item)


def read_model_bytes(path: Path) -> bytes:
    """The whole model file, opened with O_NOFOLLOW and capped: the checks see the bytes the runtime will see."""
    path = Path(path)
    with open_regular(path) as fh:
        size = os.fstat(fh.fileno()).st_size
        if size > MAX_MODEL_BYTES:
            raise UnsafeInputError(f"{path}: {size} bytes exceeds the {MAX_MODEL_BYTES}-byte cap")
        data = fh.read(size + 1)   # read, not mmap: a file truncated under us cannot SIGBUS
    if len(data) > MAX_MODEL_BYTES:
        raise UnsafeInputError(f"{path}: grew beyond the {MAX_MODEL_BYTES}-byte cap while being read")
    if not data:
        raise UnsafeInputError(f"{path}: empty model file")
    return data


def precheck_onnx(path: Path) -> None:
    data = read_model_bytes(path)
    _onnx(Path(path), data, len(data))


def precheck_tflite(path: Path) -> None:
    data = read_model_bytes(path)
    _tflite(Path(path), data, len(data))


def precheck_coreml(path: Path) -> None:
    _coreml(Path(path))


def precheck_model_file(path: Path, fmt: str) -> None:
    """The format's pre-check (format registry: `Format.precheck`) before any parser or runtime sees the file."""
    from .formats import REGISTRY
    if fmt not in REGISTRY:
        raise UnsafeInputError(f"{path}: unknown model format {fmt!r}")
    REGISTRY[fmt].run_precheck(path)
