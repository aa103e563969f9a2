"""What a Linux host can check of a stateful Core ML decoder (convert/llm/coreml_export.py). Core ML runs
only on Apple's OS, so nothing here computes a logit, and the report says numerics were not run.

`check(artifact_dir, declared, precision)` reads the ML Program spec with coremltools' protobuf schema
(runtime/coreml_spec.py: no coremltools import, no torch) and refuses (ValidationFailed, exit 5):

- a spec older than specification version 9 (iOS 18 / macOS 15, the first with states);
- inputs, outputs and states whose names, dtypes or shapes (fixed sizes, and the ranges of the flexible
  dims) differ from what the exporter declared — which is what the manifest records;
- a state the program does not both read (`read_state`) and write (`write_state`): a cache never updated;
- weights not stored at the requested precision (runtime/census.py), or int4 blocks of another size than
  declared (each constexpr_blockwise_shift_scale: data [out, in], scale [out, in / block]).

A package that does not parse is refused as unsafe input (exit 4, runtime/parsing.py). The format
registry names `check` as the Core ML entry's `lm_structure_check`; `check_artifact` re-checks a
published artifact against its own manifest.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from ..errors import ValidationFailed

NUMERICS = "not run: needs macOS (Core ML runs only on Apple OS)"
MIN_SPEC_VERSION = 9                   # iOS 18 / macOS 15: states
ARRAY_DTYPES = {"FLOAT32": "float32", "FLOAT16": "float16", "INT32": "int32", "DOUBLE": "float64", "INT8": "int8"}
CHECKED = ["the ML Program spec parses (coremltools' protobuf schema)",
           f"specification version ≥ {MIN_SPEC_VERSION} (iOS 18: states)",
           "inputs, outputs and states: names, dtypes, shapes and flexible ranges as declared in the manifest "
           "(output shapes where the package states one)",
           "every state is read and written by the program (the KV cache is updated in place)",
           "weights stored at the requested precision (census), int4 block size as declared"]


def _spec(model_path: Path):
    from ..coreml_spec import proto, spec_file
    from ..parsing import reading
    with reading(model_path, "the Core ML spec"):
        return proto().Model.FromString(spec_file(model_path).read_bytes())


def _array(arr, dtype_name) -> dict:
    """shape (fixed sizes), ranges (lower, upper) per dim, dtype of a multiArrayType / state arrayType."""
    ranges = [[int(r.lowerBound), int(r.upperBound)] for r in arr.shapeRange.sizeRanges] \
        if arr.HasField("shapeRange") else None
    return {"shape": [int(d) for d in arr.shape], "ranges": ranges, "dtype": dtype_name(arr.dataType)}


def read_interface(spec) -> dict:
    """The package's inputs, outputs and states as stored: name → {shape, ranges, dtype}."""
    from ..coreml_spec import proto
    names = proto().ArrayFeatureType.ArrayDataType.Name

    def dtype(code):
        return ARRAY_DTYPES.get(names(code), names(code).lower())

    d = spec.description
    return {"inputs": {f.name: _array(f.type.multiArrayType, dtype) for f in d.input},
            "outputs": {f.name: _array(f.type.multiArrayType, dtype) for f in d.output},
            "states": {f.name: _array(f.type.stateType.arrayType, dtype) for f in d.state}}


def _compare(kind: str, declared: list[dict], actual: dict, dims: dict, problems: list) -> None:
    want = [t["name"] for t in declared]
    if sorted(want) != sorted(actual):
        problems.append(f"{kind}: the package has {sorted(actual)}, the manifest declares {sorted(want)}")
    for t in declared:
        got = actual.get(t["name"])
        if got is None:
            continue
        if got["dtype"] != t["dtype"]:
            problems.append(f"{kind[:-1]} {t['name']!r}: dtype {got['dtype']}, declared {t['dtype']}")
        if not got["shape"]:
            continue                        # no shape stated (coremltools leaves flexible outputs unshaped)
        if len(got["shape"]) != len(t["shape"]):
            problems.append(f"{kind[:-1]} {t['name']!r}: rank {len(got['shape'])}, declared shape {t['shape']}")
            continue
        for k, dim in enumerate(t["shape"]):
            span = got["ranges"][k] if got["ranges"] else [got["shape"][k]] * 2
            expect = list(dims.get(dim, [None, None])) if isinstance(dim, str) else [dim, dim]
            if span != expect:
                problems.append(f"{kind[:-1]} {t['name']!r} dim {k} ({dim}): package {span[0]}…{span[1]}, "
                                f"declared {expect[0]}…{expect[1]}")


def _state_ops(spec) -> dict[str, Counter]:
    """state name → Counter of read_state / write_state ops on it, over every function of the program."""
    ops: dict[str, Counter] = {}
    for fn in spec.mlProgram.functions.values():
        for block in fn.block_specializations.values():
            for op in block.operations:
                if op.type in ("read_state", "write_state") and "input" in op.inputs:
                    for arg in op.inputs["input"].arguments:
                        ops.setdefault(arg.name, Counter())[op.type] += 1
    return ops


def block_sizes(spec) -> dict[str, int]:
    """'int4 blocks of 32' / 'int8 blocks of 576 (per channel)' → count of constexpr_blockwise_shift_scale ops
    (a block is a weight row's input width ÷ its scales per row)."""
    from ..census import coreml_value_type
    from ..coreml_spec import proto
    names = {v.number: v.name.lower() for v in proto().MIL__pb2.DataType.DESCRIPTOR.values}
    seen: Counter = Counter()
    for fn in spec.mlProgram.functions.values():
        for block in fn.block_specializations.values():
            for op in block.operations:
                if op.type != "constexpr_blockwise_shift_scale":
                    continue
                data, scale = coreml_value_type(op, "data"), coreml_value_type(op, "scale")
                if data is None or scale is None or not data.dimensions:
                    seen["unreadable"] += 1
                    continue
                width = data.dimensions[-1].constant.size
                groups = scale.dimensions[-1].constant.size if scale.dimensions else 1
                kind = names.get(data.dataType, "unknown")
                seen[f"{kind} blocks of {width // max(groups, 1)}" + (" (per channel)" if groups == 1 else "")] += 1
    return dict(sorted(seen.items()))


def check(artifact_dir, declared: dict, precision: str, model_file: str = "model.mlpackage") -> dict:
    """The structural validation of one package against its declared interface (`declared`: inputs,
    outputs, states, dims, and `block_size` for int4). Returns the manifest's validation record."""
    from ..census import coreml_census, missing_precision
    path = Path(artifact_dir) / model_file
    spec = _spec(path)
    problems: list[str] = []
    if spec.specificationVersion < MIN_SPEC_VERSION:
        problems.append(f"specification version {spec.specificationVersion} < {MIN_SPEC_VERSION}: no states "
                        "before iOS 18")
    if not spec.HasField("mlProgram"):
        problems.append("not an ML Program")
    found = read_interface(spec)
    dims = declared.get("dims") or {}
    for kind in ("inputs", "outputs", "states"):
        _compare(kind, declared.get(kind) or [], found[kind], dims, problems)
    ops = _state_ops(spec)
    for name in found["states"]:
        used = ops.get(name, Counter())
        if not used["read_state"] or not used["write_state"]:
            problems.append(f"state {name!r}: {used['read_state']} read_state / {used['write_state']} write_state "
                            "ops: the cache must be both read and written")
    measured = coreml_census(path)
    if why := missing_precision(precision, measured):
        problems.append(why)
    blocks = block_sizes(spec)
    block = declared.get("block_size")
    if precision == "int4" and block and any(k.startswith("int4") and not k.startswith(f"int4 blocks of {block}")
                                             for k in blocks):
        problems.append(f"int4 weights in {blocks}, declared blocks of {block}")
    if problems:
        raise ValidationFailed(f"{path}: Core ML structural check failed: " + "; ".join(problems),
                               problems=problems)
    return {"status": "structural", "numerics": NUMERICS, "checked": list(CHECKED),
            "specification_version": int(spec.specificationVersion),
            "states": {n: {**s, "reads": ops[n]["read_state"], "writes": ops[n]["write_state"]}
                       for n, s in found["states"].items()},
            "weights": {"blocks": blocks, "summary": measured["summary"]}}


def declared_of(manifest) -> dict:
    """The interface a published manifest declares (what `check` compares the package with)."""
    layout = (manifest.runtime_hints.get("generation") or {}).get("layout") or {}
    return {"inputs": [vars(t) for t in manifest.inputs], "outputs": [vars(t) for t in manifest.outputs],
            "states": layout.get("states") or [], "dims": layout.get("dims") or {},
            "block_size": manifest.quantization.get("block_size")}


def check_artifact(artifact_dir) -> dict:
    """`check` of a published artifact against its own manifest (checksums verified first, exit 4)."""
    from ..manifest import read_manifest, verify_checksums
    manifest = read_manifest(Path(artifact_dir))
    verify_checksums(Path(artifact_dir), manifest)
    return check(artifact_dir, declared_of(manifest), manifest.precision, manifest.model_file)
