"""The parser-error rule, in one place: a library's error while reading a user's file is a refusal.

Third-party readers (safetensors, `torch.load`, transformers reading `config.json`, tokenizers,
ONNX / protobuf, flatbuffers, Core ML specs, a GGUF reader) raise their own exception types on a
crafted or damaged file — often a plain `Exception` from native code. Inside

    with reading(path, "tokenizer.json"):
        tok = tokenizers.Tokenizer.from_str(text)

any such error becomes `UnsafeInputError` (exit 4, or the `error` class given, e.g. `UsageError`
for the user's own data files) naming the file and the library's reason, with the chain cut so
no traceback reaches the user. What counts as "the library's error": its type is defined in one
of LIBRARIES, or it was raised inside one of them (the innermost frame), or it is one of
DECODE_ERRORS (what decoders raise on bad bytes), or it is a bare `Exception` (what pyo3/pybind
extensions raise). Anything else — a bug in pocketml's own code inside the block — propagates
unchanged, as do pocketml's own errors and KeyboardInterrupt.
"""
from __future__ import annotations

import struct
from contextlib import contextmanager

from .errors import PocketmlError, UnsafeInputError

# Top-level modules whose errors, raised while reading a file, describe that file.
LIBRARIES = ("safetensors", "tokenizers", "onnx", "onnxruntime", "google.protobuf", "flatbuffers",
             "coremltools", "_pocketml_coreml_proto", "transformers", "huggingface_hub", "torch", "gguf",
             "ai_edge_litert", "tflite_runtime", "numpy", "PIL", "json", "pickle", "_pickle", "zipfile",
             "tomllib")
# Library names as people know them (module → name in the message).
DISPLAY = {"google.protobuf": "protobuf", "_pocketml_coreml_proto": "coremltools (Core ML spec)",
           "_pickle": "pickle", "ai_edge_litert": "LiteRT", "tflite_runtime": "LiteRT"}
DECODE_ERRORS = (ValueError, UnicodeError, RecursionError, OverflowError, MemoryError, EOFError, OSError,
                 struct.error)
MAX_REASON_CHARS = 300


def library_of(module: str | None) -> str | None:
    """The entry of LIBRARIES that `module` belongs to, else None."""
    if not module:
        return None
    return next((lib for lib in LIBRARIES if module == lib or module.startswith(lib + ".")), None)


def _innermost_module(exc: BaseException) -> str | None:
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb.tb_frame.f_globals.get("__name__") if tb is not None else None


def source_library(exc: BaseException) -> str | None:
    """The library an exception comes from (by its type's module, else where it was raised)."""
    return library_of(type(exc).__module__) or library_of(_innermost_module(exc))


def is_parser_error(exc: BaseException) -> bool:
    if isinstance(exc, PocketmlError) or not isinstance(exc, Exception):
        return False
    return (source_library(exc) is not None or isinstance(exc, DECODE_ERRORS)
            or type(exc) is Exception)


def reason(exc: BaseException) -> str:
    """The library's own words, on one line and bounded."""
    text = " ".join(str(exc).split())
    if len(text) > MAX_REASON_CHARS:
        text = text[:MAX_REASON_CHARS] + "…"
    name = type(exc).__name__
    return f"{name}: {text}" if text else name


def refusal(path, what: str, exc: BaseException, error=UnsafeInputError) -> PocketmlError:
    """The error `reading` raises for `exc`: names the file, what was being read, the library and its reason."""
    lib = source_library(exc)
    name = DISPLAY.get(lib, lib) if lib else None
    by = f" ({name})" if name and name.lower() not in what.lower() else ""
    return error(f"{path}: cannot read {what}{by}: {reason(exc)}", file=str(path), library=lib,
                 reason=reason(exc))


@contextmanager
def reading(path, what: str, error=UnsafeInputError):
    """Map a library's error while reading `path` (described as `what`) to `error` (see module docstring)."""
    try:
        yield
    except Exception as exc:
        if not is_parser_error(exc):
            raise
        raise refusal(path, what, exc, error) from None
