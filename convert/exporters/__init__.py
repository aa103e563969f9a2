"""Exporters: one module per target format, each with a static capability table.

The table is data (what each format can do at each precision, and how), so the CLI can
refuse a request before importing any heavy converter.
"""
from __future__ import annotations

from dataclasses import dataclass, field

# (format, precision, model family) -> quantization method, or the reason it is refused.
CAPABILITIES = {
    "onnx": {
        "fp32": {"*": "none"},
        "fp16": {"*": "fp16 weights and activations (IO kept float32)"},
        "int8": {"cnn": "static int8, per-channel weights, QDQ, calibrated",
                 "transformer": "dynamic int8 (weights int8 per-channel, activations quantized at run time)",
                 "generic": "dynamic int8"},
    },
    "tflite": {
        "fp32": {"*": "none"},
        "fp16": {"*": "fp16 weights (dequantized to fp32 on CPU, native fp16 on GPU delegates)"},
        "int8": {"cnn": "static int8, per-channel weights, full-int8 IO, calibrated (PT2E)",
                 "transformer": "dynamic int8 (weights int8 per-channel)",
                 "generic": "dynamic int8"},
    },
    "coreml": {
        "fp32": {"*": "none"},
        "fp16": {"*": "fp16 compute (ML Program)"},
        "int8": {"*": "weight-only int8 per-channel (coremltools.optimize); activations fp16 — "
                      "int8 activations need calibration that runs Core ML, i.e. macOS"},
    },
}

EXTRAS = {"onnx": ("onnx", "onnxscript", "onnxruntime"), "tflite": ("litert_torch", "ai_edge_litert"),
          "coreml": ("coremltools",)}


def method_for(fmt: str, precision: str, family: str) -> str:
    table = CAPABILITIES[fmt][precision]
    return table.get(family, table.get("*", table.get("generic")))


def needs_calibration(fmt: str, precision: str, family: str) -> bool:
    return precision == "int8" and "calibrated" in method_for(fmt, precision, family)


@dataclass
class ExportResult:
    model_file: str                      # relative to the artifact directory
    inputs: list[dict]                   # name, shape, dtype, layout, quantization
    outputs: list[dict]
    quantization: dict
    notes: list[str] = field(default_factory=list)
    runtime_hints: dict = field(default_factory=dict)


def get_exporter(fmt: str):
    import importlib
    return importlib.import_module(f".{fmt}", __name__)
