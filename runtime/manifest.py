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

SCHEMA = "pocketml.manifest/1"
MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 4 << 20
FORMATS = ("onnx", "tflite", "coreml")
PRECISIONS = ("fp32", "fp16", "int8")


@dataclass
class TensorSpec:
    name: str
    shape: list[int | str]
    dtype: str                      # numpy dtype name as seen by the runtime, e.g. "float32", "int8", "int64"
    layout: str | None = None       # "NCHW", "NHWC", "NC", "NS" (batch, sequence) ...
    quantization: dict | None = None  # {"scale": float, "zero_point": int} for quantized IO

    @classmethod
    def from_dict(cls, d: dict) -> "TensorSpec":
        _require(d, ("name", "shape", "dtype"), "tensor")
        return cls(name=str(d["name"]), shape=list(d["shape"]), dtype=str(d["dtype"]),
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
        if d["format"] not in FORMATS:
            raise UnsafeInputError(f"{where}: format {d['format']!r} is not one of {FORMATS}")
        kw = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        kw["inputs"] = [TensorSpec.from_dict(t) for t in d["inputs"]]
        kw["outputs"] = [TensorSpec.from_dict(t) for t in d["outputs"]]
        return cls(**kw)


def _require(d: dict, keys, where: str) -> None:
    missing = [k for k in keys if k not in d]
    if missing:
        raise UnsafeInputError(f"{where}: missing field(s) {', '.join(missing)}")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
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
    path = Path(artifact_dir) / MANIFEST
    if not path.is_file():
        raise UsageError(f"{artifact_dir} is not a pocketml artifact: no {MANIFEST}")
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise UnsafeInputError(f"{path}: manifest larger than {MAX_MANIFEST_BYTES} bytes")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UnsafeInputError(f"{path}: not valid JSON ({exc})") from exc
    return Manifest.from_dict(data, where=str(path))


def verify_checksums(artifact_dir: Path, manifest: Manifest) -> None:
    """Refuse (exit 4) when any listed file is missing, altered, or a listed path escapes the directory."""
    from .paths import contained_file

    root = Path(artifact_dir)
    mf = manifest.model_file
    if not any(k == mf or k.startswith(mf.rstrip("/") + "/") for k in manifest.checksums):
        raise UnsafeInputError(f"{root}: model file {manifest.model_file} has no checksum in the manifest")
    for rel, expected in manifest.checksums.items():
        path = contained_file(root, rel)
        actual = sha256_file(path)
        if actual != expected:
            raise UnsafeInputError(
                f"{path}: SHA-256 mismatch (manifest {expected[:16]}…, file {actual[:16]}…); "
                "the artifact was altered or corrupted", file=str(path), expected=expected, actual=actual)
