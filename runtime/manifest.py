"""The artifact manifest: what a phone app needs to run an artifact, and how it was made.

Schema `pocketml.manifest/1` is documented in docs/MANIFEST.md. An artifact is a directory
holding `manifest.json` plus the files it lists under `checksums`; a directory without a
manifest is never an artifact. The manifest is written last, after every file is hashed.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import UnsafeInputError, UsageError
from .formats import FORMAT_NAMES, PRECISION_NAMES

SCHEMA = "pocketml.manifest/1"
MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 4 << 20
FORMATS, PRECISIONS = FORMAT_NAMES, PRECISION_NAMES     # the format registry's lists (runtime/formats.py)


@dataclass
class TensorSpec:
    name: str
    shape: list[int | str]
    dtype: str                      # numpy dtype name as seen by the runtime, e.g. "float32", "int8", "int64"
    layout: str | None = None       # "NCHW", "NHWC", "NC", "NS" (batch, sequence) ...
    quantization: dict | None = None  # {"scale": float, "zero_point": int} for quantized IO

    @classmethod
    def from_dict(cls, d: dict, where: str = "tensor") -> "TensorSpec":
        if not isinstance(d, dict):
            raise UnsafeInputError(f"{where}: not a JSON object")
        _require(d, ("name", "shape", "dtype"), where)
        _types(d, TENSOR_TYPES, where)
        if len(d["shape"]) > 16 or not all(isinstance(x, str) or (isinstance(x, int) and not isinstance(x, bool))
                                           for x in d["shape"]):
            raise UnsafeInputError(f"{where}: field 'shape' must be a list of at most 16 ints or names")
        return cls(name=d["name"], shape=list(d["shape"]), dtype=d["dtype"],
                   layout=d.get("layout"), quantization=d.get("quantization"))


@dataclass
class Manifest:
    name: str
    format: str
    precision: str
    model_file: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    task: str
    metric: str
    preprocessing: dict = field(default_factory=dict)
    quantization: dict = field(default_factory=dict)
    labels: str | None = None
    tokenizer: str | None = None
    source: dict = field(default_factory=dict)
    recipe: dict = field(default_factory=dict)
    tools: dict = field(default_factory=dict)
    validation: dict = field(default_factory=dict)
    checksums: dict = field(default_factory=dict)
    runtime_hints: dict = field(default_factory=dict)
    created: str = ""
    schema: str = SCHEMA

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_dict(cls, d: dict, where: str = "manifest") -> "Manifest":
        if not isinstance(d, dict):
            raise UnsafeInputError(f"{where}: not a JSON object")
        if d.get("schema") != SCHEMA:
            raise UnsafeInputError(f"{where}: schema {d.get('schema')!r} is not {SCHEMA!r}")
        _require(d, ("name", "format", "precision", "model_file", "inputs", "outputs", "task",
                     "metric", "checksums"), where)
        _types(d, MANIFEST_TYPES, where)
        if d["format"] not in FORMATS:
            raise UnsafeInputError(f"{where}: format {d['format']!r} is not one of {FORMATS}")
        if d["precision"] not in PRECISIONS:
            raise UnsafeInputError(f"{where}: precision {d['precision']!r} is not one of {PRECISIONS}")
        bad = [k for k, v in d["checksums"].items() if not (isinstance(v, str) and _is_sha256(v))]
        if bad:
            raise UnsafeInputError(f"{where}: checksum of {bad[0]!r} is not a SHA-256 hex digest")
        from .paths import reference_parts     # every file reference, lexically, before any is followed
        for ref in [d["model_file"], *d["checksums"], *(d.get(k) for k in ("tokenizer", "labels") if d.get(k))]:
            reference_parts(where, ref)
        kw = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        kw["inputs"] = [TensorSpec.from_dict(t, f"{where}: inputs[{i}]") for i, t in enumerate(d["inputs"])]
        kw["outputs"] = [TensorSpec.from_dict(t, f"{where}: outputs[{i}]") for i, t in enumerate(d["outputs"])]
        return cls(**kw)


_OPT_STR = (str, type(None))
_OPT_DICT = (dict, type(None))
TENSOR_TYPES = {"name": str, "shape": list, "dtype": str, "layout": _OPT_STR, "quantization": _OPT_DICT}
MANIFEST_TYPES = {"name": str, "format": str, "precision": str, "model_file": str, "inputs": list, "outputs": list,
                  "task": str, "metric": str, "preprocessing": dict, "quantization": dict, "labels": _OPT_STR,
                  "tokenizer": _OPT_STR, "source": dict, "recipe": dict, "tools": dict, "validation": dict,
                  "checksums": dict, "runtime_hints": dict, "created": str, "schema": str}


def _types(d: dict, types: dict, where: str) -> None:
    for key, want in types.items():
        if key in d and not isinstance(d[key], want):
            raise UnsafeInputError(f"{where}: field '{key}' is {type(d[key]).__name__}, expected "
                                   f"{getattr(want, '__name__', None) or ' or '.join(t.__name__ for t in want)}")


def _is_sha256(v: str) -> bool:
    return len(v) == 64 and all(c in "0123456789abcdef" for c in v)


def _require(d: dict, keys, where: str) -> None:
    missing = [k for k in keys if k not in d]
    if missing:
        raise UnsafeInputError(f"{where}: missing field(s) {', '.join(missing)}")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    with open(path, "rb") as fh:
        return sha256_fileobj(fh, chunk)


def sha256_fileobj(fh, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    while block := fh.read(chunk):
        h.update(block)
    return h.hexdigest()


def hash_tree(root: Path) -> dict[str, str]:
    """SHA-256 of every regular file under `root` (relative POSIX paths), manifest excluded."""
    root = Path(root)
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_symlink():
            raise UnsafeInputError(f"symlink inside artifact: {p}")
        if p.is_file() and p.name != MANIFEST:
            out[p.relative_to(root).as_posix()] = sha256_file(p)
    return out


def read_manifest(artifact_dir: Path) -> Manifest:
    from .paths import open_contained

    path = Path(artifact_dir) / MANIFEST
    if not (path.is_file() or path.is_symlink()):
        raise UsageError(f"{artifact_dir} is not a pocketml artifact: no {MANIFEST}")
    with open_contained(artifact_dir, MANIFEST) as fh:      # O_NOFOLLOW: a symlinked manifest is refused
        raw = fh.read(MAX_MANIFEST_BYTES + 1)
    if len(raw) > MAX_MANIFEST_BYTES:
        raise UnsafeInputError(f"{path}: manifest larger than {MAX_MANIFEST_BYTES} bytes")
    return Manifest.from_dict(parse_json(raw, path), where=str(path))


def parse_json(raw: bytes, path) -> object:
    """JSON from untrusted bytes: every failure (bad UTF-8, syntax, nesting, huge ints) → exit 4."""
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:   # JSONDecodeError is a ValueError
        raise UnsafeInputError(f"{path}: not valid JSON ({type(exc).__name__}: {str(exc)[:200]})") from None


def read_json_object(path: Path, cap: int, opener=open, what: str | None = None) -> dict:
    """A JSON object from a user's file, at most `cap` bytes; size, reading, parse and type errors → exit 4
    naming the file. `opener`: `open`, or `paths.open_regular` where a symlink must not be followed."""
    from .parsing import reading
    path = Path(path)
    with reading(path, what or path.name), opener(path) as fh:
        raw = fh.read(cap + 1)
    if len(raw) > cap:
        raise UnsafeInputError(f"{path}: larger than {cap} bytes", file=str(path))
    data = parse_json(raw, path)
    if not isinstance(data, dict):
        raise UnsafeInputError(f"{path}: not a JSON object", file=str(path))
    return data


def verify_checksums(artifact_dir: Path, manifest: Manifest) -> None:
    """Refuse (exit 4) when any listed file is missing, altered, or a listed path escapes the directory."""
    root = Path(artifact_dir)
    mf = manifest.model_file
    if not any(k == mf or k.startswith(mf.rstrip("/") + "/") for k in manifest.checksums):
        raise UnsafeInputError(f"{root}: model file {manifest.model_file} has no checksum in the manifest")
    verify_files(root, manifest.checksums)


def verify_files(root: Path, checksums: dict) -> None:
    """Hash every listed file through the path validator (O_NOFOLLOW walk); exit 4 on any mismatch."""
    from .paths import open_contained

    root = Path(root)
    for rel, expected in checksums.items():
        path = root / rel if isinstance(rel, str) else root
        with open_contained(root, rel) as fh:
            actual = sha256_fileobj(fh)
        if actual != expected:
            raise UnsafeInputError(
                f"{path}: SHA-256 mismatch (manifest {expected[:16]}…, file {actual[:16]}…); "
                "the artifact was altered or corrupted", file=str(path), expected=expected, actual=actual)
