"""A model file as pocketml meets it, and the gate every one passes before a parser sees its bytes.

`checked_model(path)` is that gate (the estimator, `pocketml estimate`, the profiler's parent-side
estimates and the profiling child all go through it):

* an artifact — a directory with `manifest.json`, or a model file inside one: the manifest read
  through the path validator, every checksum verified, the model file pre-checked;
* a bare model file from anywhere (`.onnx`, `.tflite`, `.mlpackage`, `.mlmodel`: the suffixes of the
  format registry) with no manifest: the path refused if it is a symlink, or not a regular file (a
  directory for a package), then the format's pre-checks. Nothing can be checksum-verified; reports
  say so with BARE_MANIFEST.

`bare_manifest(path)` synthesizes an in-memory Manifest for a bare file from its graph's inputs and
outputs, read after the pre-checks (ONNX: the protobuf; TFLite: the bounds-checked flatbuffer reader),
so the profiling child can open and time it; `random_inputs` makes its timing inputs (RANDOM_INPUTS).
"""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import formats
from .errors import UnsafeInputError, UnsupportedError, UsageError, require_dependency
from .manifest import Manifest, TensorSpec, read_manifest, verify_checksums
from .parsing import reading
from .paths import contained_file
from .prechecks import precheck_model_file

BARE_MANIFEST = "none (bare file: no checksums verified)"
RANDOM_INPUTS = "random, seed 0 (floats N(0, 1), integers 0 or 1; dynamic dimensions taken as 1)"
PACKAGE_SUFFIXES = (".mlpackage",)           # a model "file" that is a directory
BARE_METRIC = "max-abs"                      # outputs compared by cosine similarity (runtime/families.py)
# TFLite TensorType → numpy dtype name, for the IO of a bare .tflite (other types cannot be fed).
TFLITE_IO_DTYPES = {0: "float32", 1: "float16", 2: "int32", 3: "uint8", 4: "int64", 6: "bool", 7: "int16",
                    9: "int8", 10: "float64", 12: "uint64", 15: "uint32", 16: "uint16"}


@dataclass(frozen=True)
class CheckedModel:
    path: Path                    # the model file (or package directory) a parser may now read
    format: str
    manifest: Manifest | None     # None: a bare file
    artifact: Path                # the artifact directory, or the bare file itself

    @property
    def bare(self) -> bool:
        return self.manifest is None


def artifact_dir_of(path: Path) -> Path | None:
    """The artifact directory `path` is (or is the model file of), else None."""
    path = Path(path)
    if path.is_dir() and (path / formats.MANIFEST_FILE).is_file():
        return path
    if (path.is_file() or formats.for_file(path)) and (path.parent / formats.MANIFEST_FILE).is_file():
        return path.parent
    return None


def bare_format(path: Path) -> str | None:
    """The format of `path` when it is a bare model file (no manifest), else None."""
    found = formats.for_file(path)
    return found.name if found is not None and artifact_dir_of(path) is None else None


def check_bare_path(path: Path) -> None:
    """The path the user named: not a symlink (refused, naming its target), a regular file (a
    directory for a package) — what `paths.open_regular` enforces when the bytes are read."""
    path = Path(path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file or directory") from None
    if stat.S_ISLNK(st.st_mode):
        raise UnsafeInputError(f"{path}: a symlink (to {os.readlink(path)}); model files are opened without "
                               "following links: name the file itself", file=str(path))
    want_dir = path.suffix.lower() in PACKAGE_SUFFIXES
    if not (stat.S_ISDIR(st.st_mode) if want_dir else stat.S_ISREG(st.st_mode)):
        kind = "a directory" if want_dir else "a regular file"
        raise UnsafeInputError(f"{path}: not {kind}", file=str(path))


def not_a_model(path: Path) -> UsageError:
    """The error for a path that is neither an artifact nor a model file (exit 2)."""
    if not (path.exists() or path.is_symlink()):
        return UsageError(f"{path}: no such file or directory")
    return UsageError(f"{path}: not a pocketml artifact (no manifest.json) nor a model file "
                      f"({', '.join(formats.all_suffixes())})")


def checked_model(path) -> CheckedModel:
    """The gate (module docstring): verified and pre-checked, or refused (exit 4) / not a model (exit 2)."""
    path = Path(path)
    art = artifact_dir_of(path)
    if art is not None:
        manifest = read_manifest(art)
        verify_checksums(art, manifest)
        model = contained_file(art, manifest.model_file)
        precheck_model_file(model, manifest.format)
        return CheckedModel(model, manifest.format, manifest, art)
    fmt = bare_format(path)
    if fmt is None:
        raise not_a_model(path)
    check_bare_path(path)
    precheck_model_file(path, fmt)
    return CheckedModel(path, fmt, None, path)


# ------------------------------------------------------------------------ bare files: IO and inputs

def bare_manifest(path) -> Manifest:
    """An in-memory manifest for a bare model file: its IO read from the graph after the gate."""
    checked = checked_model(path)
    if not checked.bare:
        raise UsageError(f"{path}: has a manifest; it is not a bare model file")
    fmt = formats.get(checked.format)
    if fmt.io_reader is None:
        raise UnsupportedError(f"{path}: the inputs of a bare {fmt.title} file are not "
                               "read yet; convert it with pocketml to get a manifest")
    inputs, outputs = fmt.read_io(checked.path)
    return Manifest(name=checked.path.name, format=checked.format, precision="unknown",
                    model_file=checked.path.name, inputs=inputs, outputs=outputs, task="generic",
                    metric=BARE_METRIC, checksums={},
                    source={"kind": "bare-file", "path": str(checked.path), "manifest": BARE_MANIFEST})


def onnx_io(path: Path) -> tuple[list[TensorSpec], list[TensorSpec]]:
    from .prechecks import read_model_bytes
    onnx = require_dependency("onnx", "onnx", "reading ONNX files")
    data = read_model_bytes(path)
    with reading(path, "the ONNX protobuf"):
        graph = onnx.ModelProto.FromString(data).graph
    weights = {t.name for t in graph.initializer}

    def spec(vi) -> TensorSpec:
        tt = vi.type.tensor_type if vi.type.HasField("tensor_type") else None
        try:
            dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)).name if tt else None
        except (KeyError, TypeError, ValueError):
            dtype = None
        if dtype is None or not tt.HasField("shape"):
            raise UnsupportedError(f"{path}: {vi.name!r} is not a tensor of a known dtype and rank; pocketml "
                                   "cannot make inputs for it")
        shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or -1) for d in tt.shape.dim]
        return TensorSpec(vi.name, shape, dtype)
    return [spec(v) for v in graph.input if v.name not in weights], [spec(v) for v in graph.output]


def tflite_io(path: Path) -> tuple[list[TensorSpec], list[TensorSpec]]:
    from . import prechecks
    ins, outs = prechecks.tflite_io(path, prechecks.read_model_bytes(path))

    def spec(t: dict) -> TensorSpec:
        if t["type"] not in TFLITE_IO_DTYPES:
            raise UnsupportedError(f"{path}: tensor {t['name']!r} has TFLite type {t['type']}, which pocketml "
                                   "cannot feed or read")
        return TensorSpec(t["name"], t["shape"], TFLITE_IO_DTYPES[t["type"]])
    return [spec(t) for t in ins], [spec(t) for t in outs]




def random_inputs(specs: list[TensorSpec], seed: int = 0) -> list[np.ndarray]:
    """One sample per input of the declared shape and dtype (RANDOM_INPUTS says how)."""
    rng = np.random.default_rng(seed)
    out = []
    for spec in specs:
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in spec.shape]
        dtype = np.dtype(spec.dtype)
        if dtype.kind == "f":
            out.append(rng.standard_normal(shape).astype(dtype))
        else:
            out.append(rng.integers(0, 2, shape).astype(dtype))
    return out
