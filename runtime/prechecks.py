"""Cheap structural checks run before a model file is handed to a native runtime.

Native parsers (flatbuffers, protobuf) can crash on crafted input; these checks reject
truncated or foreign files with a clear message first. They do not replace the
sandboxed child process (see docs/SECURITY.md) — they make the common cases readable.
"""
from __future__ import annotations

import struct
from pathlib import Path

from .errors import UnsafeInputError

MAX_MODEL_BYTES = 4 << 30


def _tflite(path: Path, data: bytes, size: int) -> None:
    if size < 16 or data[4:8] not in (b"TFL3", b"TFL2"):
        raise UnsafeInputError(f"{path}: not a TFLite flatbuffer (no 'TFL3' identifier at byte 4)")
    (root,) = struct.unpack_from("<I", data, 0)
    if root < 8 or root + 4 > size:
        raise UnsafeInputError(f"{path}: truncated or corrupt TFLite file (root table offset {root} "
                               f"beyond file size {size})")


def _onnx(path: Path, data: bytes, size: int) -> None:
    # An ONNX ModelProto starts with a protobuf field; field 1 (ir_version, varint) in practice.
    if size < 8 or data[0] not in (0x08, 0x12, 0x1A, 0x22, 0x32, 0x3A, 0x42):
        raise UnsafeInputError(f"{path}: not an ONNX protobuf (first byte 0x{data[:1].hex() or '00'})")
    from .onnx_checks import check_onnx
    check_onnx(path)


def _coreml(path: Path, data: bytes, size: int) -> None:
    pass  # .mlpackage is a directory; checked by coremltools on load


CHECKS = {"tflite": _tflite, "onnx": _onnx, "coreml": _coreml}


def precheck_model_file(path: Path, fmt: str) -> None:
    path = Path(path)
    if path.is_dir():
        return CHECKS[fmt](path, b"", 0)
    size = path.stat().st_size
    if size == 0:
        raise UnsafeInputError(f"{path}: empty model file")
    if size > MAX_MODEL_BYTES:
        raise UnsafeInputError(f"{path}: {size} bytes exceeds the {MAX_MODEL_BYTES}-byte cap")
    with open(path, "rb") as fh:
        head = fh.read(64)
    CHECKS[fmt](path, head, size)
