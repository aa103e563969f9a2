"""TFLite / LiteRT via litert-torch (no TensorFlow). Image models get NHWC input.

fp16 and dynamic int8 are derived from the fp32 flatbuffer with ai-edge-quantizer; static
int8 runs PT2E calibration on the torch graph and yields full-int8 IO tensors.
"""
from __future__ import annotations

import contextlib
import io
import os
import shutil
from pathlib import Path

import numpy as np

from pocketml.runtime.data import to_layout
from pocketml.runtime.errors import UnsupportedError, UsageError

from . import ExportResult, capability, observer_for
from .tflite_graph import fold_same_pads
from .errors import unsupported

FORMAT = "tflite"
FP16_OPS = ("FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D", "BATCH_MATMUL", "EMBEDDING_LOOKUP")


def _channel_last(spec) -> bool:
    return spec.is_image and len(spec.inputs) == 1 and spec.inputs[0].get("layout") == "NCHW"


def _module_and_args(spec, samples=None):
    import torch

    import litert_torch
    example = spec.example() if samples is None else samples
    if _channel_last(spec):
        module = litert_torch.to_channel_last_io(spec.module, args=[0]).eval()
        args = tuple(torch.from_numpy(to_layout(x, "NCHW", "NHWC")) for x in example)
    else:
        module = spec.module
        args = tuple(torch.from_numpy(np.ascontiguousarray(x)) for x in example)
    return module, args


def _fp32(spec, cache, work: Path) -> Path:
    if "tflite_fp32" in cache:
        return cache["tflite_fp32"]
    import litert_torch

    module, args = _module_and_args(spec)
    path = work / "tflite-fp32.tflite"
    try:
        litert_torch.convert(module, args).export(str(path))
    except Exception as exc:
        raise unsupported(exc, FORMAT, spec.name, spec) from exc
    cache["tflite_fp32"] = path
    return path


# PT2E gains nothing from more calibration samples here (EfficientNet-Lite0 top-1 agreement, percentile
# observer: 64 views spread over the 304 → 0.968, 152 → 0.959; histogram observer: 64 → 0.950, 304 →
# 0.950 — within calibration-set noise), while ONNX's calibration does gain (56 → 0.950, 152 → 0.968).
PT2E_SAMPLES = 64

# precision -> ai-edge-quantizer recipe (fp16 is built op by op in _aeq)
AEQ_RECIPES = {"int8": "dynamic_wi8_afp32", "int8w": "weight_only_wi8_afp32", "int4": "dynamic_wi4b32_afp32"}


def _aeq(base: Path, dst: Path, kind: str) -> None:
    from ai_edge_quantizer import algorithm_manager, qtyping, quantizer, recipe

    q = quantizer.Quantizer(str(base))
    if kind == "fp16":
        cfg = qtyping.OpQuantizationConfig(
            weight_tensor_config=qtyping.TensorQuantizationConfig(num_bits=16, dtype=qtyping.TensorDataType.FLOAT),
            compute_precision=qtyping.ComputePrecision.FLOAT, explicit_dequantize=True)
        for name in FP16_OPS:
            op = getattr(qtyping.TFLOperationName, name)
            try:
                q.update_quantization_recipe(regex=".*", operation_name=op, op_config=cfg,
                                             algorithm_key=algorithm_manager.AlgorithmName.FLOAT_CASTING)
            except ValueError:   # this AEQ version cannot fp16-cast that op: it stays fp32
                continue
    else:
        q.load_quantization_recipe(getattr(recipe, AEQ_RECIPES[kind])())
    # its transformation step opens a tqdm bar with an explicit `enable` (TQDM_DISABLE cannot reach it)
    mute = contextlib.redirect_stderr(io.StringIO()) if os.environ.get("POCKETML_QUIET") else contextlib.nullcontext()
    try:
        with mute:
            result = q.quantize(enable_progress_report=False, enable_progress_bar=False)
    except ValueError as exc:     # e.g. a weight whose quantized dimension the int4 blocks do not divide
        raise UnsupportedError(f"tflite {kind}: ai-edge-quantizer {AEQ_RECIPES.get(kind, kind)} refused the "
                               f"model: {exc}") from exc
    result.export_model(str(dst), overwrite=True)


def _static_int8(spec, calib, dst: Path, observer: str) -> int:
    """PT2E static int8 with the CNN recipe of cnn_int8.py. Returns how many leading convs stay float."""
    import torch

    import litert_torch
    from litert_torch.quantize import quant_config
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from . import cnn_int8

    image = _channel_last(spec)
    float_leading = cnn_int8.FLOAT_LEADING_CONVS if image else 0
    threads = torch.get_num_threads()
    torch.set_num_threads(1)    # observer statistics independent of the thread count (demo runs in parallel)
    try:
        source = cnn_int8.torch_prepare(spec.module, [s[0] for s in calib.samples], float_leading) \
            if image else spec.module
        module = litert_torch.to_channel_last_io(source, args=[0]).eval() if image else source
        args = _module_and_args(spec)[1]
        quantizer = cnn_int8.make_pt2e_quantizer(float_leading, observer)
        graph = torch.export.export(module, args).module()
        prepared = prepare_pt2e(graph, quantizer)
        move_exported_model_to_eval(prepared)
        with torch.no_grad():
            for sample in calib.samples:
                prepared(*_module_and_args(spec, sample)[1])
        converted = convert_pt2e(prepared, fold_quantize=False)
        move_exported_model_to_eval(converted)
        litert_torch.convert(converted, args,
                             quant_config=quant_config.QuantConfig(pt2e_quantizer=quantizer)).export(str(dst))
    except Exception as exc:
        raise unsupported(exc, FORMAT, spec.name, spec) from exc
    finally:
        torch.set_num_threads(threads)
    return float_leading


def _io(path: Path, spec) -> tuple[list[dict], list[dict]]:
    from pocketml.runtime.session import tflite_interpreter

    it = tflite_interpreter()(model_path=str(path))
    layout = "NHWC" if _channel_last(spec) else None

    def describe(d, name, lay):
        scale, zero = d["quantization"]
        q = {"scale": float(scale), "zero_point": int(zero)} if np.dtype(d["dtype"]).kind in "iu" and scale else None
        return {"name": name, "shape": [int(x) for x in d["shape"]], "dtype": np.dtype(d["dtype"]).name,
                "layout": lay, "quantization": q, "tensor": d["name"]}

    ins = sorted(it.get_input_details(), key=lambda d: d["index"])
    outs = it.get_output_details()
    in_specs = [describe(d, s["name"], layout or s.get("layout")) for d, s in zip(ins, spec.inputs)]
    out_specs = [describe(d, n, None) for d, n in zip(outs, spec.outputs)]
    return in_specs, out_specs


def export(spec, precision: str, out_dir: Path, cache: dict, work: Path, calib=None, options=None,
           log=print) -> ExportResult:
    dst = out_dir / "model.tflite"
    cap = capability(FORMAT, precision, spec)
    notes = []
    if precision == "int8" and cap.static:
        if not calib:
            raise UsageError(f"{spec.name}: static int8 needs calibration data (--calib DIR)")
        calib = calib.spread(PT2E_SAMPLES)
        observer = observer_for(FORMAT, (options or {}).get("observer"))
        float_leading = _static_int8(spec, calib, dst, observer[0])
        if folded := fold_same_pads(dst, dst):
            notes.append(f"{folded} asymmetric (TF 'same') pads folded into their convs: "
                         f"{folded} PAD and {2 * folded} TRANSPOSE ops removed (exporters/tflite_graph.py)")
    else:
        base = _fp32(spec, cache, work)
        if precision == "fp32":
            shutil.copyfile(base, dst)
        else:
            _aeq(base, dst, precision)
    ins, outs = _io(dst, spec)
    quant = {"method": cap.method}
    if precision == "int8" and cap.static:
        quant["calibration"] = {"samples": len(calib), "source": calib.source,
                                "observer": ": ".join(observer) + "; weights per-channel min-max",
                                "bias_correction": float_leading > 0, "float_leading_convs": float_leading}
    if _channel_last(spec):
        notes.append("input is NHWC (channels last): the phone feeds camera frames without a transpose")
    return ExportResult("model.tflite", ins, outs, quant, notes)
