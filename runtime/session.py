"""`load(path)` → a Session for an artifact of any registered format (runtime/formats.py). No torch needed.

A Session takes and returns float32 arrays in the layout the manifest declares; for
int8 IO (full-int8 TFLite) it applies the tensor's scale/zero-point itself.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from . import formats
from .families import for_task
from .errors import EnvironmentMissing, UnsafeInputError, UsageError, require_dependency, require_extra
from .manifest import Manifest, read_manifest, verify_checksums
from .parsing import reading
from .paths import contained_file
from .prechecks import precheck_model_file


class Session:
    """Common surface of every backend: `run(inputs) -> dict[name, float32 array]`."""

    backend = "?"

    def __init__(self, artifact_dir: Path, manifest: Manifest, threads: int):
        self.artifact_dir = Path(artifact_dir)
        self.manifest = manifest
        self.threads = threads
        self.model_path = contained_file(self.artifact_dir, manifest.model_file)

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.manifest.inputs]

    def run(self, inputs: dict | list | np.ndarray) -> dict[str, np.ndarray]:
        feeds = self._normalise(inputs)
        return self._run(feeds)

    def invoke_prepared(self):  # pragma: no cover - overridden
        """Run once on the inputs of the last `prepare()` call (the profiler's hot loop)."""
        raise NotImplementedError

    def prepare(self, inputs) -> None:
        self._prepared = self._normalise(inputs)

    def _normalise(self, inputs) -> dict[str, np.ndarray]:
        specs = self.manifest.inputs
        if isinstance(inputs, np.ndarray):
            inputs = [inputs]
        if isinstance(inputs, (list, tuple)):
            if len(inputs) != len(specs):
                raise UsageError(f"{self.artifact_dir}: expected {len(specs)} inputs "
                                 f"({', '.join(self.input_names)}), got {len(inputs)}")
            inputs = dict(zip(self.input_names, inputs))
        feeds = {}
        for spec in specs:
            if spec.name not in inputs:
                raise UsageError(f"{self.artifact_dir}: missing input {spec.name!r}")
            arr = np.asarray(inputs[spec.name])
            check_shape(arr, spec, where=f"input {spec.name!r}")
            want = np.dtype(np.float32 if spec.quantization or spec.dtype.startswith("float") else spec.dtype)
            if arr.dtype != want and not (arr.dtype.kind == want.kind == "i"):
                raise UsageError(f"input {spec.name!r}: dtype {arr.dtype}, expected {np.dtype(want).name}")
            feeds[spec.name] = np.ascontiguousarray(arr.astype(want, copy=False))
        return feeds

    def _run(self, feeds):  # pragma: no cover - overridden
        raise NotImplementedError


def check_shape(arr: np.ndarray, spec, where: str) -> None:
    shape = list(spec.shape)
    ok = len(arr.shape) == len(shape) and all(isinstance(d, str) or d in (-1, None) or d == a
                                               for d, a in zip(shape, arr.shape))
    if not ok:
        layout = f" ({spec.layout})" if spec.layout else ""
        raise UsageError(f"{where}: shape {list(arr.shape)}, expected {shape}{layout}",
                         expected=shape, actual=list(arr.shape))


class OnnxSession(Session):
    backend = "onnxruntime"

    def __init__(self, artifact_dir, manifest, threads, *, fuse_quantized: bool = True):
        """`fuse_quantized=False`: no graph optimization, so a QDQ graph runs as DequantizeLinear → float op →
        QuantizeLinear (the integer semantics without the host's int8 kernels: see convert/validate.py)."""
        super().__init__(artifact_dir, manifest, threads)
        ort = require_dependency("onnxruntime", "onnxruntime", "running ONNX artifacts")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        if not fuse_quantized:
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        with reading(self.model_path, "the model with onnxruntime"):    # Fail, InvalidProtobuf, …
            self._sess = ort.InferenceSession(str(self.model_path), opts, providers=["CPUExecutionProvider"])
        self._out_names = [o.name for o in self._sess.get_outputs()]

    def _run(self, feeds):
        return dict(zip(self._out_names, self._sess.run(self._out_names, feeds)))

    def invoke_prepared(self):
        self._sess.run(self._out_names, self._prepared)


def tflite_interpreter():
    try:
        from ai_edge_litert.interpreter import Interpreter
        return Interpreter
    except ImportError:
        pass
    try:  # legacy fallback; tflite-runtime 2.14 crashes under numpy 2
        from tflite_runtime.interpreter import Interpreter
        return Interpreter
    except ImportError:
        require_dependency("ai_edge_litert", "ai-edge-litert", "running TFLite artifacts")


class TfliteSession(Session):
    backend = "litert"

    def __init__(self, artifact_dir, manifest, threads):
        super().__init__(artifact_dir, manifest, threads)
        Interpreter = tflite_interpreter()
        with reading(self.model_path, "the model with LiteRT"):
            self._it = Interpreter(model_path=str(self.model_path), num_threads=threads)
            self._it.allocate_tensors()
        sig = self._it.get_signature_list()
        self._in = {d["name"]: d for d in self._it.get_input_details()}
        self._out = self._it.get_output_details()
        # Map manifest names (signature names) onto interpreter tensors by position.
        self._in_order = sorted(self._in.values(), key=lambda d: d["index"])
        if len(self._in_order) != len(manifest.inputs):
            raise UnsafeInputError(f"{self.model_path}: model has {len(self._in_order)} inputs, "
                                   f"manifest lists {len(manifest.inputs)} (signatures {sig})")

    def _set(self, feeds):
        for spec, det in zip(self.manifest.inputs, self._in_order):
            x = feeds[spec.name]
            if det["dtype"] in (np.int8, np.uint8) and x.dtype.kind == "f":
                x = quantize(x, det)
            self._it.set_tensor(det["index"], x.astype(det["dtype"], copy=False))

    def _run(self, feeds):
        self._set(feeds)
        self._it.invoke()
        out = {}
        for spec, det in zip(self.manifest.outputs, self._out):
            y = self._it.get_tensor(det["index"])
            out[spec.name] = dequantize(y, det) if y.dtype in (np.int8, np.uint8) else y.copy()
        return out

    def prepare(self, inputs):
        super().prepare(inputs)
        self._set(self._prepared)

    def invoke_prepared(self):
        self._it.invoke()


def quantize(x: np.ndarray, det: dict) -> np.ndarray:
    scale, zero = det["quantization"]
    info = np.iinfo(det["dtype"])
    return np.clip(np.round(x / scale + zero), info.min, info.max).astype(det["dtype"])


def dequantize(y: np.ndarray, det: dict) -> np.ndarray:
    scale, zero = det["quantization"]
    return ((y.astype(np.float32) - zero) * scale).astype(np.float32)


class CoremlSession(Session):
    backend = "coreml"

    def __init__(self, artifact_dir, manifest, threads):
        super().__init__(artifact_dir, manifest, threads)
        if (why := formats.get(manifest.format).host_support()) is not None:
            raise EnvironmentMissing(f"{self.model_path}: {why}", needs="macOS")
        ct = require_extra("coremltools", "convert", "running Core ML artifacts on macOS")
        with reading(self.model_path, "the Core ML model with coremltools"):
            self._model = ct.models.MLModel(str(self.model_path))

    def _run(self, feeds):
        return {k: np.asarray(v, dtype=np.float32) for k, v in self._model.predict(feeds).items()}

    def invoke_prepared(self):
        self._model.predict(self._prepared)


# What each session applies besides the thread count lives in its format's registry entry
# (`formats.Format.settings`). Every manifest records it (runtime_hints.settings) and `pocketml profile
# --record` adds the thread count that was measured fastest (runtime_hints.recommended), so an app opens
# the model the way it was validated and measured.
DEFAULT_THREADS = 1
MAX_RECOMMENDED_THREADS = 64     # a manifest is input: a larger "recommendation" is ignored, not obeyed


def valid_thread_count(n) -> bool:
    return isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= MAX_RECOMMENDED_THREADS


def recommended_threads(manifest: Manifest) -> int:
    """The thread count `pocketml profile --record` measured fastest, else DEFAULT_THREADS."""
    n = (manifest.runtime_hints.get("recommended") or {}).get("num_threads")
    return n if valid_thread_count(n) else DEFAULT_THREADS


def resolve_artifact(path: Path) -> Path:
    """An artifact directory, or a model file inside one."""
    path = Path(path)
    if path.is_file() and (path.parent / "manifest.json").is_file():
        return path.parent
    if path.is_dir() and (path / "manifest.json").is_file():
        return path
    if not path.exists():
        raise UsageError(f"{path}: no such file or directory")
    raise UsageError(f"{path} is not a pocketml artifact (no manifest.json beside it)")


def load(path, threads: int | None = None, verify: bool = True):
    """Open an artifact. Checksums are verified first (exit 4 on mismatch). `threads` defaults to the
    manifest's recommended thread count (`pocketml profile --record`), else 1. A tensor model gives a
    Session; a generative model (family registry: `generative`) a `runtime.lm.LanguageModel`."""
    if threads is not None and threads < 1:
        raise UsageError(f"threads must be ≥ 1, got {threads}")
    artifact_dir = resolve_artifact(Path(path))
    manifest = read_manifest(artifact_dir)
    threads = recommended_threads(manifest) if threads is None else threads
    if verify:
        verify_checksums(artifact_dir, manifest)
    precheck_model_file(contained_file(artifact_dir, manifest.model_file), manifest.format)
    fmt = formats.get(manifest.format)
    if (family := for_task(manifest.task)) is not None and family.generative:
        return fmt.lm_load()(artifact_dir, threads=threads)
    return fmt.session()(artifact_dir, manifest, threads)
