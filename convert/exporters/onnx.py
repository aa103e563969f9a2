"""ONNX: torch.onnx dynamo export; fp16 via onnxruntime's float16 converter; int8 via ORT quantization."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from pocketml.runtime.errors import UnsupportedError, UsageError
from pocketml.runtime.families import metric

from . import ExportResult, capability, observer_for
from .errors import unsupported

FORMAT = "onnx"
OPSET = 18
PERCENTILE = 99.999


def _fp32(spec, cache: dict, work: Path) -> Path:
    if "onnx_fp32" in cache:
        return cache["onnx_fp32"]
    import torch

    path = work / "onnx-fp32.onnx"
    try:
        with torch.no_grad():
            prog = torch.onnx.export(spec.module, spec.torch_example(), dynamo=True, opset_version=OPSET,
                                     input_names=[i["name"] for i in spec.inputs], output_names=spec.outputs,
                                     verbose=False)
    except Exception as exc:  # the exporter raises many types; all mean "cannot take this model"
        raise unsupported(exc, FORMAT, spec.name, spec) from exc
    prog.save(str(path))
    cache["onnx_fp32"] = path
    return path


def _io(path: Path, spec) -> tuple[list[dict], list[dict]]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    dtypes = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.INT64: "int64", onnx.TensorProto.FLOAT16: "float16",
              onnx.TensorProto.INT32: "int32", onnx.TensorProto.INT8: "int8", onnx.TensorProto.UINT8: "uint8"}
    layouts = {i["name"]: i.get("layout") for i in spec.inputs}

    def describe(vi):
        t = vi.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim]
        return {"name": vi.name, "shape": shape, "dtype": dtypes.get(t.elem_type, str(t.elem_type)),
                "layout": layouts.get(vi.name), "quantization": None}

    inits = {i.name for i in model.graph.initializer}
    return ([describe(v) for v in model.graph.input if v.name not in inits],
            [describe(v) for v in model.graph.output])


def _strip(proto) -> int:
    """Clear `metadata_props` and `doc_string` of one ONNX proto; how many entries were removed."""
    n = len(proto.metadata_props) + bool(proto.doc_string)
    del proto.metadata_props[:]
    proto.doc_string = ""
    return n


def strip_build_metadata(path: Path) -> int:
    """Remove what describes the build rather than the model from an ONNX file, in place: torch.onnx
    writes every node's Python stack trace (absolute paths of the build machine), FX node text, class
    hierarchy and name scopes as metadata_props, and the export program's signature on the graph.
    Applied to every ONNX file pocketml publishes (all precisions), in graphs, subgraphs and functions;
    nothing the runtime reads is touched. Returns the number of entries removed."""
    import onnx
    from onnx import AttributeProto

    model = onnx.load(str(path), load_external_data=False)
    removed = _strip(model)
    bodies = [model.graph] + list(model.functions)
    while bodies:
        body = bodies.pop()
        removed += _strip(body)
        items = [x for group in ("input", "output", "value_info", "initializer") for x in getattr(body, group, [])]
        items += [sparse.values for sparse in getattr(body, "sparse_initializer", [])]
        removed += sum(_strip(x) for x in items if not isinstance(x, str))     # a function's IO are names
        for node in body.node:
            removed += _strip(node)
            for a in node.attribute:
                a.doc_string = ""
                bodies += [a.g] if a.type == AttributeProto.GRAPH else list(a.graphs)
    onnx.save(model, str(path))
    return removed


class _Reader:
    """onnxruntime CalibrationDataReader over the calibration samples."""

    def __init__(self, names, samples):
        self._it = iter([dict(zip(names, s)) for s in samples])

    def get_next(self):
        return next(self._it, None)


# --observer name → onnxruntime CalibrationMethod member (and its options)
ORT_OBSERVERS = {"percentile": ("Percentile", {"CalibPercentile": PERCENTILE}), "minmax": ("MinMax", {}),
                 "entropy": ("Entropy", {})}
# quantize_static cannot set the entropy histogram: with its 128 bins for 128 quantized bins the only
# candidate threshold is the full range, i.e. min-max (measured: identical scales). pocketml computes
# the entropy ranges with 2048 bins (TensorRT's choice) itself and hands them over as the cache file.
ENTROPY_BINS = {"num_bins": 2048, "num_quantized_bins": 128}
# EfficientNet-Lite0 top-1 agreement by calibration samples (spread over the built-in 304 views):
# 56 → 0.950, 152 → 0.968, 304 → 0.971; ORT's histogram collection costs ~0.2 s per sample here.
CALIB_SAMPLES = 152


def _static_int8(spec, calib, pre: Path, work: Path, observer: str):
    """QDQ, per-channel int8 weights, uint8 activations ranged by `observer` (ORT_OBSERVERS), bias
    correction, float stem (see cnn_int8.py for why each). Returns (build(float_layers, dst), fixed float layers)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from . import cnn_int8

    single_image = len(spec.inputs) == 1 and spec.inputs[0].get("layout") == "NCHW"
    keep = cnn_int8.onnx_leading_convs(onnx.load(str(pre), load_external_data=False)) if single_image else []
    src = pre
    if single_image:
        src = work / "onnx-int8-bias-corrected.onnx"
        cnn_int8.onnx_bias_correct(str(pre), str(src), [s[0] for s in calib.samples], spec.inputs[0]["name"],
                                   skip=keep)
    cache = work / "onnx-int8-calibration.json"       # calibrate once; mixed-precision trials reuse the ranges
    cache.unlink(missing_ok=True)

    method, options = ORT_OBSERVERS[observer]
    names = [i["name"] for i in spec.inputs]
    if observer == "entropy":
        _entropy_ranges(src, _Reader(names, calib.samples), cache, work)

    def build(float_layers, dst):
        extra = [n for n in float_layers if n not in keep]
        model = src if not extra else _original_biases(src, pre, extra, work / "onnx-int8-mixed-src.onnx")
        quantize_static(str(model), str(dst), _Reader(names, calib.samples),
                        quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, nodes_to_exclude=list(float_layers),
                        calibrate_method=CalibrationMethod[method], calibration_cache_path=str(cache),
                        extra_options={"ActivationSymmetric": False, **options})
    return build, keep


def _entropy_ranges(model: Path, reader, cache: Path, work: Path) -> None:
    """KL-divergence thresholds on a 2048-bin histogram (ENTROPY_BINS), written as quantize_static's cache."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator, save_tensors_data
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    calibrator = create_calibrator(model, sorted(set(QLinearOpsRegistry) | set(QDQRegistry)),
                                   augmented_model_path=str(work / "onnx-int8-entropy-augmented.onnx"),
                                   calibrate_method=CalibrationMethod.Entropy,
                                   extra_options={**ENTROPY_BINS, "symmetric": False})
    calibrator.collect_data(reader)
    save_tensors_data(calibrator.compute_data(), cache)


def _original_biases(src: Path, pre: Path, nodes: list[str], dst: Path) -> Path:
    """Bias correction compensates each conv's int8 weight rounding; a conv kept float gets its
    original bias back."""
    import onnx
    from onnx import numpy_helper

    original = {i.name: i for i in onnx.load(str(pre)).graph.initializer}
    model = onnx.load(str(src))
    names = {n.input[2] for n in model.graph.node if n.name in nodes and len(n.input) > 2}
    for init in model.graph.initializer:
        if init.name in names:          # a bias the correction added to a bias-less conv goes back to zero
            value = (numpy_helper.to_array(original[init.name]) if init.name in original
                     else np.zeros_like(numpy_helper.to_array(init)))
            init.CopyFrom(numpy_helper.from_array(value, init.name))
    onnx.save(model, str(dst))
    return dst


def _dynamic_int8(pre: Path):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    def build(float_layers, dst):
        # dynamic quantization first rewrites each Gemm as MatMul + Add, naming the MatMul "<gemm>_MatMul"
        quantize_dynamic(str(pre), str(dst), per_channel=True, weight_type=QuantType.QInt8,
                         nodes_to_exclude=[x for n in float_layers for x in (n, f"{n}_MatMul")])
    return build, []


def _rename_fusion_constants(path: Path) -> None:
    """quant_pre_process runs ORT's MatMulAddFusion, which names its shape constants `gemm_input_shape…`.
    A MatMul left float next to an Add (mixed precision) is fused again when the session loads, under
    the same names, and ORT refuses the model ("Attempt to replace the existing tensor"). Renaming the
    first pass's constants avoids the clash."""
    import onnx

    model = onnx.load(str(path))
    rename = {i.name: f"pre_{i.name}" for i in model.graph.initializer if i.name.startswith("gemm_")}
    if not rename:
        return
    for init in model.graph.initializer:
        init.name = rename.get(init.name, init.name)
    for vi in model.graph.value_info:
        vi.name = rename.get(vi.name, vi.name)
    for node in model.graph.node:
        node.input[:] = [rename.get(x, x) for x in node.input]
    onnx.save(model, str(path))


# Ops a mixed-precision search may keep float: those ORT quantizes and that carry weights or tables.
QUANTIZABLE = ("Conv", "ConvTranspose", "Gemm", "MatMul", "Gather", "Attention", "EmbedLayerNormalization", "LSTM")
# a layer kept float takes its activation with it (static QDQ would otherwise still round its output)
ACTIVATIONS = ("Relu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "LeakyRelu", "Tanh")
# measurement data: top-1 agreement moves in steps of 1/n, so classifiers get more samples


def _layer_groups(graph, names: list[str]) -> dict[str, list[str]]:
    """name -> [name, the activation that alone consumes its output, …]."""
    consumers: dict[str, list] = {}
    for n in graph.node:
        for x in n.input:
            consumers.setdefault(x, []).append(n)
    by_name = {n.name: n for n in graph.node}
    groups = {}
    for name in names:
        group, node = [name], by_name[name]
        while len(node.output) == 1 and len(users := consumers.get(node.output[0], [])) == 1 \
                and users[0].op_type in ACTIVATIONS:
            node = users[0]
            group.append(node.name)
        groups[name] = group
    return groups


def _session(path: Path):
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = 1, 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _mixed(spec, calib, base: Path, build, fixed: list, dst: Path, work: Path, max_drop: float, log) -> dict:
    """--max-drop: keep the most sensitive layers float (exporters/mixed.py), measured on calibration data."""
    import onnx

    from . import mixed
    if calib is None or not calib.samples:
        raise UsageError(f"{spec.name}: --max-drop measures each layer's sensitivity on data: pass --calib DIR")
    names = [i["name"] for i in spec.inputs]
    samples = calib.spread(metric(spec.metric).mixed_samples).samples

    def evaluate(path):
        sess = _session(path)
        return np.concatenate([sess.run(None, dict(zip(names, s)))[0] for s in samples])

    graph = onnx.load(str(base), load_external_data=False).graph
    candidates = [n.name for n in graph.node if n.op_type in QUANTIZABLE and n.name not in fixed]
    groups = _layer_groups(graph, candidates)

    def build_groups(float_layers, path):
        build([m for name in float_layers for m in groups.get(name, [name])], path)
    search = mixed.Search(candidates, build_groups, evaluate, evaluate(base), spec.metric, max_drop, tuple(fixed), log)
    report = search.run(dst, work)
    report["float_with"] = {n: groups[n][1:] for n in report["float_layers"] if len(groups[n]) > 1}
    report["data"] = f"{len(samples)} calibration samples ({calib.source})"
    if report["float_layers"]:
        feeds = dict(zip(names, samples[0]))
        report["cost"] = mixed.cost(work / "mixed-all.onnx", dst,
                                    lambda p, s=None: mixed.host_p50_ms(lambda sess=_session(p): sess.run(None, feeds)))
    return report


def export(spec, precision: str, out_dir: Path, cache: dict, work: Path, calib=None, options=None,
           log=print) -> ExportResult:
    base = _fp32(spec, cache, work)
    dst = out_dir / "model.onnx"
    cap = capability(FORMAT, precision, spec)
    notes, float_layers, mixed_report = [], [], None
    if precision == "fp32":
        shutil.copyfile(base, dst)
    elif precision == "fp16":
        import onnx
        from onnxruntime.transformers.float16 import convert_float_to_float16

        model = convert_float_to_float16(onnx.load(str(base)), keep_io_types=True, disable_shape_infer=False)
        onnx.save(model, str(dst))
        notes.append("onnxruntime's CPU provider has few fp16 kernels: expect Cast ops and little speed-up "
                     "on the host; fp16 pays off on GPU/NNAPI/CoreML execution providers")
    elif precision == "int8":
        from onnxruntime.quantization.shape_inference import quant_pre_process

        pre = work / "onnx-int8-pre.onnx"
        if not pre.exists():
            quant_pre_process(str(base), str(pre), skip_symbolic_shape=True)
            _rename_fusion_constants(pre)
        if cap.static:
            if not calib:
                raise UsageError(f"{spec.name}: static int8 needs calibration data (--calib DIR)")
            calib_used = calib.spread(CALIB_SAMPLES)
            observer = observer_for(FORMAT, (options or {}).get("observer"))
            build, float_layers = _static_int8(spec, calib_used, pre, work, observer[0])
        else:
            build, float_layers = _dynamic_int8(pre)
        max_drop = (options or {}).get("max_drop")
        if max_drop is None:
            build(float_layers, dst)
        else:
            mixed_report = _mixed(spec, calib, pre, build, float_layers, dst, work, max_drop, log)
            float_layers = float_layers + mixed_report["float_layers"]
    elif precision == "int8w":
        from .onnx_weights import int8_weights
        weights = int8_weights(base, dst)
        notes.append(f"{len(weights)} weight tensors stored int8 per channel; onnxruntime dequantizes them "
                     "and computes in float")
    elif precision == "int4":
        from .onnx_weights import int4_weights
        if not int4_weights(base, dst):
            raise UnsupportedError(f"{spec.name}: onnx int4 found no MatMul with constant weights or embedding "
                                   "table to quantize (MatMulNBits / GatherBlockQuantized)")
    notes.append(f"{strip_build_metadata(dst)} build-machine metadata entries removed (exporter stack traces "
                 "with local paths, FX node text, doc strings): the same model gives the same bytes anywhere")
    ins, outs = _io(dst, spec)
    quant = {"method": cap.method}
    if mixed_report:
        quant["mixed_precision"] = mixed_report
    if calib and precision == "int8" and cap.static:
        quant["calibration"] = {"samples": len(calib_used), "source": calib_used.source,
                                "observer": ": ".join(observer), "bias_correction": True,
                                "float_layers": float_layers}
    return ExportResult("model.onnx", ins, outs, quant, notes)
