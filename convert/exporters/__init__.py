"""Exporters: one module per target format, each with a static capability table.

The table is data (what each format can do at each precision, and how), so the CLI can
refuse a request before importing any heavy converter.
"""
from __future__ import annotations

from dataclasses import dataclass, field

UNSUPPORTED = "unsupported: "

# (format, precision, model family) -> quantization method, or UNSUPPORTED + the reason it is refused.
CAPABILITIES = {
    "onnx": {
        "fp32": {"*": "none"},
        "fp16": {"*": "fp16 weights and activations (IO kept float32)"},
        "int8": {"cnn": "static int8, per-channel weights, QDQ, calibrated",
                 "transformer": "dynamic int8 (weights int8 per-channel, activations quantized at run time)",
                 "generic": "dynamic int8"},
        "int8w": {"*": "weight-only int8 (per-channel weights stored int8, DequantizeLinear; float compute)"},
        "int4": {"cnn": UNSUPPORTED + "onnxruntime has no int4 convolution kernel (MatMulNBits is MatMul only)",
                 "*": "weight-only int4, blocks of 32 (MatMulNBits for MatMul, GatherBlockQuantized for "
                      "embeddings); int8 compute (accuracy_level 4)"},
    },
    "tflite": {
        "fp32": {"*": "none"},
        "fp16": {"*": "fp16 weights (dequantized to fp32 on CPU, native fp16 on GPU delegates)"},
        "int8": {"cnn": "static int8, per-channel weights, full-int8 IO, calibrated (PT2E)",
                 "transformer": "dynamic int8 (weights int8 per-channel)",
                 "generic": "dynamic int8"},
        "int8w": {"*": "weight-only int8 per-channel (ai-edge-quantizer weight_only_wi8_afp32; float compute)"},
        "int4": {"*": "int4 weights in blocks of 32, activations int8 at run time "
                      "(ai-edge-quantizer dynamic_wi4b32_afp32)"},
    },
    "coreml": {
        "fp32": {"*": "none"},
        "fp16": {"*": "fp16 compute (ML Program)"},
        "int8": {"*": "weight-only int8 per-channel (coremltools.optimize); activations fp16 — "
                      "int8 activations need calibration that runs Core ML, i.e. macOS"},
        "int8w": {"*": "weight-only int8 per-channel (coremltools.optimize); activations fp16"},
        "int4": {"*": "4-bit palettization (16-entry k-means lookup table per weight tensor, "
                      "coremltools.optimize); activations fp16"},
    },
}

EXTRAS = {"onnx": ("onnx", "onnxscript", "onnxruntime"), "tflite": ("litert_torch", "ai_edge_litert"),
          "coreml": ("coremltools",)}


def method_for(fmt: str, precision: str, family: str) -> str:
    table = CAPABILITIES[fmt][precision]
    return table.get(family, table.get("*", table.get("generic")))


def refusal(fmt: str, precision: str, family: str) -> str | None:
    """Why `fmt` cannot take `precision` for this model family, or None when it can."""
    method = method_for(fmt, precision, family)
    return method[len(UNSUPPORTED):] if method.startswith(UNSUPPORTED) else None


def needs_calibration(fmt: str, precision: str, family: str) -> bool:
    return precision == "int8" and "calibrated" in method_for(fmt, precision, family)


# How static int8 picks each activation's range from the calibration data (`--observer`), per format.
# The first entry is the default. EfficientNet-Lite0 top-1 agreement per observer: docs/PERFORMANCE.md.
OBSERVERS = {
    "onnx": {"percentile": "range covering 99.999 % of a histogram of the values (onnxruntime Percentile)",
             "minmax": "smallest and largest value seen (onnxruntime MinMax)",
             "entropy": "threshold minimising the KL divergence of a 2048-bin histogram (onnxruntime Entropy)"},
    "tflite": {"percentile": "range covering 99.999 % of a histogram of the values (pocketml PercentileObserver)",
               "histogram": "range minimising the L2 quantization error over a histogram (PT2E HistogramObserver)",
               "minmax": "smallest and largest value seen (PT2E MinMaxObserver)"},
}


def observer_for(fmt: str, name: str | None) -> tuple[str, str]:
    """(observer name, description) used by `fmt` for the requested name (None: the format's default)."""
    table = OBSERVERS[fmt]
    name = name or next(iter(table))
    return name, table[name]


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
