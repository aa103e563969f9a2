"""Core ML (ML Program, .mlpackage) via coremltools. Converts on Linux; running needs macOS.

On Linux the artifact is checked structurally (see `structural_check`), and its numeric
check is reported as "not run: needs macOS" — never faked.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from pocketml.runtime.errors import UsageError, ValidationFailed

from . import ExportResult, method_for
from .errors import unsupported

FORMAT = "coreml"
MIN_TARGET = "iOS16"     # constexpr int8 weights need iOS16 / macOS13
WEIGHT_THRESHOLD = 256   # quantize weight tensors with more elements than this (coremltools default: 2048)


def _exported(spec, cache):
    if "torch_export" not in cache:
        import torch
        try:
            cache["torch_export"] = torch.export.export(spec.module, spec.torch_example()).run_decompositions({})
        except Exception as exc:
            raise unsupported(exc, FORMAT, spec.name, spec) from exc
    return cache["torch_export"]


def _convert(spec, cache, precision: str):
    key = f"coreml_{'fp32' if precision == 'fp32' else 'fp16'}"
    if key in cache:
        return cache[key]
    import coremltools as ct

    inputs = [ct.TensorType(name=i["name"], shape=i["shape"],
                            dtype=np.float32 if i["dtype"].startswith("float") else np.int32) for i in spec.inputs]
    try:
        model = ct.convert(_exported(spec, cache), inputs=inputs,
                           outputs=[ct.TensorType(name=o, dtype=np.float32) for o in spec.outputs],
                           convert_to="mlprogram", minimum_deployment_target=getattr(ct.target, MIN_TARGET),
                           compute_precision=ct.precision.FLOAT32 if precision == "fp32" else ct.precision.FLOAT16)
    except Exception as exc:
        raise unsupported(exc, FORMAT, spec.name, spec) from exc
    cache[key] = model
    return model


def export(spec, precision: str, out_dir: Path, cache: dict, work: Path, calib=None, options=None,
           log=print) -> ExportResult:
    if (options or {}).get("coreml_activations") == "int8":
        raise UsageError("Core ML int8 activations need calibration that runs the Core ML runtime, "
                         "which exists only on macOS; pocketml will not substitute weight-only int8 "
                         "silently. Use --precision int8 (weight-only) or run on a Mac.")
    model = _convert(spec, cache, precision)
    if precision in ("int8", "int8w"):
        from coremltools.optimize.coreml import OpLinearQuantizerConfig, OptimizationConfig, linear_quantize_weights
        cfg = OptimizationConfig(global_config=OpLinearQuantizerConfig(
            mode="linear_symmetric", dtype="int8", granularity="per_channel", weight_threshold=WEIGHT_THRESHOLD))
        model = linear_quantize_weights(model, cfg)
    elif precision == "int4":
        from coremltools.optimize.coreml import OpPalettizerConfig, OptimizationConfig, palettize_weights
        cfg = OptimizationConfig(global_config=OpPalettizerConfig(nbits=4, mode="kmeans",
                                                                  weight_threshold=WEIGHT_THRESHOLD))
        model = palettize_weights(model, cfg)
    model.save(str(out_dir / "model.mlpackage"))
    reproducible_package(out_dir / "model.mlpackage")
    ins = [{"name": i["name"], "shape": list(i["shape"]), "layout": i.get("layout"), "quantization": None,
            "dtype": "float32" if i["dtype"].startswith("float") else "int32"} for i in spec.inputs]
    outs = [{"name": o, "shape": None, "dtype": "float32", "layout": None, "quantization": None}
            for o in spec.outputs]
    outs = structural_check(out_dir / "model.mlpackage", ins, outs, precision, fill_shapes=True)
    return ExportResult("model.mlpackage", ins, outs,
                        {"method": method_for(FORMAT, precision, spec)},
                        ["Core ML numeric check not run: Core ML predictions need macOS"],
                        {"coreml": {"minimum_deployment_target": MIN_TARGET}})


# user-defined metadata coremltools writes that depends on when (not from what) a model was built
BUILD_METADATA = ("com.github.apple.coremltools.conversion_date",)


def reproducible_package(pkg: Path) -> None:
    """Same model, same bytes: coremltools stamps the conversion date, serialises protobuf maps in hash
    order (it differs per process) and names the package's items with random UUIDs. Rewrite the spec
    without the date and with sorted maps, and name each item by a UUID derived from its path."""
    import json
    import uuid

    from coremltools.proto import Model_pb2

    manifest_file = pkg / "Manifest.json"
    manifest = json.loads(manifest_file.read_text())
    spec_file = pkg / "Data" / manifest["itemInfoEntries"][manifest["rootModelIdentifier"]]["path"]
    spec = Model_pb2.Model.FromString(spec_file.read_bytes())
    for key in BUILD_METADATA:
        spec.description.metadata.userDefined.pop(key, None)
    spec_file.write_bytes(spec.SerializeToString(deterministic=True))
    ids = {old: str(uuid.uuid5(uuid.NAMESPACE_URL, f"pocketml:{item['path']}"))
           for old, item in manifest["itemInfoEntries"].items()}
    manifest["itemInfoEntries"] = {ids[old]: item for old, item in sorted(manifest["itemInfoEntries"].items(),
                                                                          key=lambda kv: ids[kv[0]])}
    manifest["rootModelIdentifier"] = ids[manifest["rootModelIdentifier"]]
    manifest_file.write_text(json.dumps(manifest, indent=4, sort_keys=True) + "\n")


MULTIARRAY_DTYPES = {65568: "float32", 65552: "float16", 131104: "int32", 65600: "float64"}


def structural_validation(art: Path, manifest, precision: str) -> dict:
    """Validation where Core ML cannot run (off macOS): the structural check, and what it covered."""
    structural_check(Path(art) / manifest.model_file, [vars(t) for t in manifest.inputs],
                     [vars(t) for t in manifest.outputs], precision)
    return {"checked": ["spec loads", "IO names/shapes/dtypes match manifest", "weight precision"]}


def structural_check(pkg: Path, ins: list[dict], outs: list[dict], precision: str, fill_shapes=False) -> list[dict]:
    """What Linux can check: the spec loads, IO names/shapes/dtypes (the weights' precision: census)."""
    import coremltools as ct

    spec = ct.models.MLModel(str(pkg), skip_model_load=True).get_spec()
    problems = []

    def compare(declared, actual, kind):
        got = {f.name: f for f in actual}
        for t in declared:
            f = got.get(t["name"])
            if f is None:
                problems.append(f"{kind} {t['name']!r} missing (model has {sorted(got)})")
                continue
            arr = f.type.multiArrayType
            shape, dtype = [int(d) for d in arr.shape], MULTIARRAY_DTYPES.get(arr.dataType, str(arr.dataType))
            if fill_shapes and t["shape"] is None:
                t["shape"] = shape
            if t["shape"] is not None and list(t["shape"]) != shape:
                problems.append(f"{kind} {t['name']!r} shape {shape}, manifest {t['shape']}")
            if dtype != t["dtype"]:
                problems.append(f"{kind} {t['name']!r} dtype {dtype}, manifest {t['dtype']}")

    compare(ins, spec.description.input, "input")
    compare(outs, spec.description.output, "output")
    # the weights' precision is counted from the graph for every format (runtime/census.py, pipeline)
    if problems:
        raise ValidationFailed(f"{pkg}: Core ML structural check failed: " + "; ".join(problems))
    return outs


def weight_precision(pkg: Path) -> dict:
    """Quantized-weight (constexpr_*) op count and the most common ops of a saved .mlpackage."""
    import coremltools as ct
    return _weight_precision(ct.models.MLModel(str(pkg), skip_model_load=True).get_spec())


def _weight_precision(spec) -> dict:
    ops = Counter(op.type for f in spec.mlProgram.functions.values()
                  for b in f.block_specializations.values() for op in b.operations)
    return {"constexpr_ops": sum(n for t, n in ops.items() if t.startswith("constexpr_")),
            "ops": dict(ops.most_common(8))}
