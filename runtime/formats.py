"""The format registry: everything pocketml knows about a model format, in one entry per format.

Torch-free and import-light: heavy modules (exporters, sessions, graph readers) are named by
dotted path and imported only when used. Code elsewhere asks the registry (`get(fmt).session()`,
`get(fmt).host_support()`, `capability(fmt, precision, family_kind)`) instead of branching on a
format's name; adding a format is one entry here plus its exporter, session and graph reader
(ARCHITECTURE.md, "Add a format").

Also the artifact naming contract shared by the converter and the profiler:
`<out>/<format>-<precision>/` per artifact and `<out>/reference/` for the fp32 reference set.
"""
from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass, field

# ---------------------------------------------------------------- precisions (the one list)

PRECISIONS = {
    "fp32": "float32 weights and compute",
    "fp16": "float16 weights (and compute where the runtime has fp16 kernels)",
    "int8": "int8: static (calibrated activations) or dynamic, as the format and model family allow",
    "int8w": "weight-only int8: weights stored int8 per channel, float compute",
    "int4": "4-bit weights (blocks of 32, or a 16-entry palette in Core ML)",
}
PRECISION_NAMES = tuple(PRECISIONS)

# ---------------------------------------------------------------- artifact naming contract

REFERENCE_DIR = "reference"
MANIFEST_FILE = "manifest.json"


def artifact_name(fmt: str, precision: str) -> str:
    """The directory name of one artifact under a conversion's output directory."""
    return f"{fmt}-{precision}"


def parse_artifact_name(name: str) -> tuple[str, str] | None:
    """(format, precision) for a directory named by `artifact_name`, else None."""
    fmt, sep, precision = name.partition("-")
    if sep and fmt in REGISTRY and precision in PRECISIONS:
        return fmt, precision
    return None


def fp32_reference_artifact() -> str:
    """The artifact whose outputs on the user's data stand in for the torch fp32 reference where torch is
    not at hand (`profile --data`): the fp32 artifact of the format marked `fp32_reference`."""
    fmt = next(f for f in REGISTRY.values() if f.fp32_reference)
    return artifact_name(fmt.name, "fp32")


def artifact_order(name: str) -> tuple:
    """Sort key: registry order of formats, then of precisions; unknown names last."""
    parsed = parse_artifact_name(name)
    if parsed is None:
        return (len(REGISTRY), len(PRECISIONS), name)
    return (list(REGISTRY).index(parsed[0]), PRECISION_NAMES.index(parsed[1]), name)


# ---------------------------------------------------------------- capability rows

@dataclass(frozen=True)
class Capability:
    """How a format stores one precision for one kind of graph. `method` is text for people only;
    behaviour reads the typed fields."""
    method: str
    calibrated: bool = False        # activation ranges come from calibration data (needs --calib or a default set)
    static: bool = False            # activations are quantized ahead of time (full-integer graph)
    weight_only: bool = False       # weights stored low-precision, float compute
    fp16_activations: bool = False  # activations are fp16 on the device: values beyond ±65504 overflow
    refused: str | None = None      # why this cell is not available (the method text is then empty)


def refused(why: str) -> Capability:
    return Capability(method="", refused=why)


NONE = Capability("none")
ANY = "*"          # a capability row for every family kind not listed explicitly


def _load(dotted: str):
    module, _, attr = dotted.partition(":")
    mod = importlib.import_module(module)
    return getattr(mod, attr) if attr else mod


# ---------------------------------------------------------------- one entry per format

@dataclass(frozen=True)
class Format:
    name: str
    title: str                              # for people: "ONNX (onnxruntime)"
    suffixes: tuple[str, ...]               # bare model files / directories recognised by suffix
    model_file: str                         # the model file's name inside an artifact
    session_class: str                      # dotted path of its runtime Session class
    settings: dict                          # what the session applies besides the thread count
    precheck: str                           # dotted path: precheck(path) before any parser sees the bytes
    graph_reader: str                       # dotted path: (path, manifest) -> (ops, notes) for the estimator
    io_reader: str | None                   # dotted path: bare model file -> (input, output TensorSpecs); None: not read
    census: str                             # dotted path: model file -> what it stores, by dtype (runtime/census.py)
    device_runtime: str                     # the CPU runtime a device profile must list for it to run there
    exporter: str                           # dotted path of its exporter module (needs torch)
    convert_extras: tuple[str, ...]         # importable modules the exporter needs (the 'convert' extra)
    runtime_module: str | None              # imported in the profiling child before the baseline (None: none)
    capabilities: dict = field(default_factory=dict)   # precision -> family kind (or ANY) -> Capability
    observers: dict = field(default_factory=dict)      # static int8 `--observer` name -> description; first = default
    needs_os: str | None = None             # sys.platform it runs on, when not everywhere
    needs_os_reason: str = ""
    fp32_reference: bool = False            # its fp32 artifact runs user data to make reference outputs (no torch)
    mixed_precision: bool = False           # `--max-drop` (automatic mixed precision) is implemented
    estimate_calibrated: bool = False       # the latency model was fitted on measurements of this format
    lm_exporter: str | None = None          # dotted path: (CausalLMSpec, out_dir, precision, work=) -> dict (torch)
    lm_runtime: str | None = None           # dotted path: artifact dir -> runtime.lm.LanguageModel (torch-free)
    lm_structure_check: str | None = None   # dotted path: (artifact dir, declared IO, precision) -> validation, for
                                            # an LM where it cannot run (host_support): what is checked instead
    lm_carries_gguf: bool = False           # its LM exporter can carry a GGUF's own blocks (`--gguf-weights carry`)
    int8_saturates_without_vnni: bool = False   # its CPU runtime's uint8×int8 kernels saturate on x86 without
                                            # VNNI: static int8 is also validated unfused there (convert/validate.py)

    def host_support(self, platform: str | None = None) -> str | None:
        """None when artifacts of this format run on this host, else the reason they cannot."""
        platform = platform or sys.platform
        if self.needs_os is None or platform == self.needs_os:
            return None
        return self.needs_os_reason.format(platform=platform)

    def session(self):
        return _load(self.session_class)

    def run_precheck(self, path) -> None:
        _load(self.precheck)(path)

    def read_graph(self, path, manifest=None):
        return _load(self.graph_reader)(path, manifest)

    def read_io(self, path):
        """(inputs, outputs) of a bare model file, read from its graph (after the pre-check)."""
        return _load(self.io_reader)(path)

    def read_census(self, path):
        return _load(self.census)(path)

    def lm_export(self):
        return _load(self.lm_exporter)

    def lm_load(self):
        return _load(self.lm_runtime)

    def lm_check_structure(self):
        return _load(self.lm_structure_check)

    def exporter_module(self):
        return _load(self.exporter)

    def warm_runtime(self) -> None:
        """Import the runtime library (so its import is not counted as the model's memory or load time)."""
        if self.runtime_module:
            try:
                importlib.import_module(self.runtime_module)
            except ImportError:
                pass         # the session names the missing extra when it opens the model

    def capability(self, precision: str, family_kind: str) -> Capability:
        row = self.capabilities[precision]
        return row.get(family_kind) or row[ANY]


_DYNAMIC_INT8 = "dynamic int8 (weights int8 per-channel, activations quantized at run time)"

ONNX = Format(
    name="onnx", title="ONNX (onnxruntime)", suffixes=(".onnx",), model_file="model.onnx",
    session_class="pocketml.runtime.session:OnnxSession",
    settings={"runtime": "onnxruntime", "execution_provider": "CPUExecutionProvider", "execution_mode": "sequential",
              "inter_op_num_threads": 1, "graph_optimization_level": "ORT_ENABLE_ALL (onnxruntime's default)"},
    precheck="pocketml.runtime.prechecks:precheck_onnx",
    graph_reader="pocketml.profiler.estimate.graph_onnx:onnx_ops", io_reader="pocketml.runtime.model_file:onnx_io",
    census="pocketml.runtime.census:onnx_census",
    device_runtime="onnxruntime-cpu",
    exporter="pocketml.convert.exporters.onnx", convert_extras=("onnx", "onnxscript", "onnxruntime"),
    runtime_module="onnxruntime", fp32_reference=True, mixed_precision=True,
    lm_exporter="pocketml.convert.llm.onnx_export:export_spec", lm_runtime="pocketml.runtime.lm.onnx_lm:load_dir",
    lm_carries_gguf=True, int8_saturates_without_vnni=True,
    capabilities={
        "fp32": {"lm-decoder": Capability("none (decoder with the KV cache as inputs/outputs)"), ANY: NONE},
        "fp16": {"lm-decoder": Capability("fp16 weights, activations and KV cache (IO logits float32)",
                                       fp16_activations=True),
                 ANY: Capability("fp16 weights and activations (IO kept float32)", fp16_activations=True)},
        "int8": {"cnn": Capability("static int8, per-channel weights, QDQ, calibrated", calibrated=True, static=True),
                 "transformer": Capability(_DYNAMIC_INT8),
                 "lm-decoder": Capability("int8 weights in symmetric blocks of 32, activations quantized to int8 per "
                                       "block at run time (MatMulNBits bits=8); embedding table int8 "
                                       "(GatherBlockQuantized)"),
                 ANY: Capability("dynamic int8")},
        "int8w": {"lm-decoder": refused("a decoder's ONNX int8 already stores int8 weights in blocks "
                                     "(MatMulNBits bits=8): use --precision int8"),
                  ANY: Capability("weight-only int8 (per-channel weights stored int8, DequantizeLinear; float compute)",
                                  weight_only=True)},
        "int4": {"cnn": refused("onnxruntime has no int4 convolution kernel (MatMulNBits is MatMul only)"),
                 ANY: Capability("int4 weights in blocks of 32 (language models: 32 or 128, --int4-block; MatMulNBits "
                                 "for MatMul, GatherBlockQuantized for embeddings); activations quantized to int8 at "
                                 "run time (accuracy_level 4)")},
    },
    observers={"percentile": "range covering 99.999 % of a histogram of the values (onnxruntime Percentile)",
               "minmax": "smallest and largest value seen (onnxruntime MinMax)",
               "entropy": "threshold minimising the KL divergence of a 2048-bin histogram (onnxruntime Entropy)"},
)

TFLITE = Format(
    name="tflite", title="TFLite (LiteRT)", suffixes=(".tflite",), model_file="model.tflite",
    session_class="pocketml.runtime.session:TfliteSession",
    settings={"runtime": "LiteRT (ai-edge-litert Interpreter)",
              "delegate": "XNNPACK (LiteRT's default CPU delegate, applied when the interpreter is created)"},
    precheck="pocketml.runtime.prechecks:precheck_tflite",
    graph_reader="pocketml.profiler.estimate.graph_tflite:tflite_ops",
    io_reader="pocketml.runtime.model_file:tflite_io", census="pocketml.runtime.census:tflite_census",
    device_runtime="litert-cpu-xnnpack",
    exporter="pocketml.convert.exporters.tflite", convert_extras=("litert_torch", "ai_edge_litert"),
    runtime_module="ai_edge_litert.interpreter", estimate_calibrated=True,
    lm_exporter="pocketml.convert.llm.tflite_export:export_spec", lm_runtime="pocketml.runtime.lm.tflite_lm:load_dir",
    capabilities={
        "fp32": {"lm-decoder": Capability("none (litert-torch generative: prefill + decode signatures, KV cache as "
                                       "inputs/outputs)"), ANY: NONE},
        "fp16": {"lm-decoder": Capability("fp16 weights (litert-torch quantize=fp16)", fp16_activations=True),
                 ANY: Capability("fp16 weights (dequantized to fp32 on CPU, native fp16 on GPU delegates)",
                                 fp16_activations=True)},
        "int8": {"cnn": Capability("static int8, per-channel weights, full-int8 IO, calibrated (PT2E)",
                                   calibrated=True, static=True),
                 "transformer": Capability("dynamic int8 (weights int8 per-channel)"),
                 "lm-decoder": Capability("dynamic int8 (litert-torch dynamic_int8: weights int8 per-channel)"),
                 ANY: Capability("dynamic int8")},
        "int8w": {"lm-decoder": Capability("weight-only int8 (litert-torch weight_only_int8; float compute)",
                                        weight_only=True),
                  ANY: Capability("weight-only int8 per-channel (ai-edge-quantizer weight_only_wi8_afp32; "
                                  "float compute)", weight_only=True)},
        "int4": {"lm-decoder": Capability("int4 weights in blocks of 32, activations int8 at run time (litert-torch "
                                       "dynamic_int4_block32)"),
                 ANY: Capability("int4 weights in blocks of 32, activations int8 at run time "
                                 "(ai-edge-quantizer dynamic_wi4b32_afp32)")},
    },
    observers={"percentile": "range covering 99.999 % of a histogram of the values (pocketml PercentileObserver)",
               "histogram": "range minimising the L2 quantization error over a histogram (PT2E HistogramObserver)",
               "minmax": "smallest and largest value seen (PT2E MinMaxObserver)"},
)

_COREML_LM_STATE = "KV cache as float16 model state (iOS 18)"
_COREML_LM_INT8 = ("weight-only int8, symmetric per output channel (coremltools linear_quantize_weights); fp16 "
                   f"activations, {_COREML_LM_STATE}")

COREML = Format(
    name="coreml", title="Core ML (ML Program)", suffixes=(".mlpackage", ".mlmodel"), model_file="model.mlpackage",
    session_class="pocketml.runtime.session:CoremlSession",
    settings={"runtime": "Core ML (MLModel)", "compute_units": "ALL (coremltools' default)"},
    precheck="pocketml.runtime.prechecks:precheck_coreml",
    graph_reader="pocketml.profiler.estimate.graph_coreml:coreml_ops", io_reader=None,
    census="pocketml.runtime.census:coreml_census",
    device_runtime="coreml-cpu",
    exporter="pocketml.convert.exporters.coreml", convert_extras=("coremltools",),
    runtime_module=None,
    needs_os="darwin",
    needs_os_reason="Core ML needs macOS (or iOS) to run: its runtime is part of Apple's OS and this host is "
                    "{platform}; validate it on a Mac or profile it on an iPhone",
    lm_exporter="pocketml.convert.llm.coreml_export:export_spec", lm_runtime="pocketml.runtime.lm.coreml_lm:load_dir",
    lm_structure_check="pocketml.runtime.lm.coreml_structure:check",
    capabilities={
        "fp32": {"lm-decoder": Capability(f"fp32 weights and compute; {_COREML_LM_STATE}"), ANY: NONE},
        "fp16": {"lm-decoder": Capability(f"fp16 weights and compute (ML Program); {_COREML_LM_STATE}",
                                       fp16_activations=True),
                 ANY: Capability("fp16 compute (ML Program)", fp16_activations=True)},
        "int8": {"lm-decoder": Capability(_COREML_LM_INT8 + " — int8 activations need calibration that runs Core ML, "
                                       "i.e. macOS", weight_only=True, fp16_activations=True),
                 ANY: Capability("weight-only int8 per-channel (coremltools.optimize); activations fp16 — "
                                 "int8 activations need calibration that runs Core ML, i.e. macOS", weight_only=True,
                                 fp16_activations=True)},
        "int8w": {"lm-decoder": Capability(_COREML_LM_INT8, weight_only=True, fp16_activations=True),
                  ANY: Capability("weight-only int8 per-channel (coremltools.optimize); activations fp16",
                                  weight_only=True, fp16_activations=True)},
        "int4": {"lm-decoder": Capability("weight-only int4, symmetric blocks of 32 (coremltools linear_quantize_weights "
                                       f"per_block); fp16 activations, {_COREML_LM_STATE}", weight_only=True,
                                       fp16_activations=True),
                 ANY: Capability("4-bit palettization (16-entry k-means lookup table per weight tensor, "
                                 "coremltools.optimize); activations fp16", weight_only=True, fp16_activations=True)},
    },
)

REGISTRY: dict[str, Format] = {f.name: f for f in (ONNX, TFLITE, COREML)}
FORMAT_NAMES = tuple(REGISTRY)


def get(name: str) -> Format:
    """The registry entry; a KeyError here is a programming error (user input is checked by `check_names`)."""
    return REGISTRY[name]


def check_names(formats, precisions) -> list[str]:
    """Problems with user-given format and precision names (empty when all are known)."""
    bad_f = [f for f in formats if f not in REGISTRY]
    bad_p = [p for p in precisions if p not in PRECISIONS]
    problems = []
    if bad_f or not formats:
        problems.append(f"format(s) {bad_f or 'none given'}: formats are {', '.join(REGISTRY)}")
    if bad_p or not precisions:
        problems.append(f"precision(s) {bad_p or 'none given'}: precisions are {', '.join(PRECISIONS)}")
    return problems


def for_file(path) -> Format | None:
    """The format of a bare model file (or Core ML package directory) by its suffix."""
    from pathlib import Path
    suffix = Path(path).suffix.lower()
    return next((f for f in REGISTRY.values() if suffix in f.suffixes), None)


def all_suffixes() -> tuple[str, ...]:
    return tuple(s for f in REGISTRY.values() for s in f.suffixes)


def capability(fmt: str, precision: str, family_kind: str) -> Capability:
    return get(fmt).capability(precision, family_kind)


def observer_for(fmt: str, name: str | None) -> tuple[str, str]:
    """(observer name, description) used by `fmt` for the requested name (None: the format's default)."""
    table = get(fmt).observers
    name = name or next(iter(table))
    return name, table[name]


def with_observers() -> tuple[str, ...]:
    return tuple(f.name for f in REGISTRY.values() if f.observers)
