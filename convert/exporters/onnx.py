"""ONNX: torch.onnx dynamo export; fp16 via onnxruntime's float16 converter; int8 via ORT quantization."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from pocketml.runtime.errors import UsageError

from . import ExportResult, method_for
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


class _Reader:
    """onnxruntime CalibrationDataReader over the calibration samples."""

    def __init__(self, names, samples):
        self._it = iter([dict(zip(names, s)) for s in samples])

    def get_next(self):
        return next(self._it, None)


CALIBRATION = f"percentile {PERCENTILE}"


def _static_int8(spec, calib, pre: Path, dst: Path, work: Path) -> list[str]:
    """QDQ, per-channel int8 weights, uint8 activations, percentile calibration, bias correction,
    float stem (see cnn_int8.py for why each)."""
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
    quantize_static(str(src), str(dst), _Reader([i["name"] for i in spec.inputs], calib.samples),
                    quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8, nodes_to_exclude=keep,
                    calibrate_method=CalibrationMethod.Percentile,
                    extra_options={"ActivationSymmetric": False, "CalibPercentile": PERCENTILE})
    return keep


def export(spec, precision: str, out_dir: Path, cache: dict, work: Path, calib=None, options=None) -> ExportResult:
    base = _fp32(spec, cache, work)
    dst = out_dir / "model.onnx"
    method = method_for(FORMAT, precision, spec.family)
    notes, float_layers = [], []
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
        from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process

        pre = work / "onnx-int8-pre.onnx"
        if not pre.exists():
            quant_pre_process(str(base), str(pre), skip_symbolic_shape=True)
        if "static" in method:
            if not calib:
                raise UsageError(f"{spec.name}: static int8 needs calibration data (--calib DIR)")
            float_layers = _static_int8(spec, calib, pre, dst, work)
        else:
            quantize_dynamic(str(pre), str(dst), per_channel=True, weight_type=QuantType.QInt8)
    ins, outs = _io(dst, spec)
    quant = {"method": method}
    if calib and precision == "int8" and "static" in method:
        quant["calibration"] = {"samples": len(calib), "source": calib.source, "observer": CALIBRATION,
                                "bias_correction": True, "float_layers": float_layers}
    return ExportResult("model.onnx", ins, outs, quant, notes,
                        {"onnxruntime": {"providers": ["CPUExecutionProvider"], "graph_optimization": "ORT_ENABLE_ALL"}})
