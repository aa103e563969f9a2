"""Optional coverage-guided fuzzing with atheris (libFuzzer). Not run by pytest.

    pip install atheris
    python tests/fuzz/atheris_harness.py TARGET [libFuzzer flags]     # TARGET: tflite | onnx | manifest | toml
    python tests/fuzz/atheris_harness.py tflite -max_total_time=300 -rss_limit_mb=4096 corpus/tflite

Each input is fed to the same pre-check the runtime runs before LiteRT / onnxruntime / the manifest
and device-profile parsers; a PocketmlError is a refusal (fine), any other exception is reported by
libFuzzer as a crash together with the input that caused it. The seeds are the tiny generated models
of fuzzkit.py, so the fuzzer starts from files that load.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent))

with atheris.instrument_imports():
    from pocketml.profiler import devices
    from pocketml.runtime import manifest, prechecks
    from pocketml.runtime.errors import PocketmlError

import fuzzkit  # noqa: E402

WORK = Path(tempfile.mkdtemp(prefix="pocketml-atheris-"))
(WORK / "w.bin").write_bytes(fuzzkit.W.tobytes())


def _model(fmt: str):
    def target(data: bytes) -> None:
        path = WORK / f"model.{fmt}"
        path.write_bytes(data)
        try:
            prechecks.precheck_model_file(path, fmt)
        except PocketmlError:
            pass
    return target


def _manifest(data: bytes) -> None:
    art = WORK / "art"
    art.mkdir(exist_ok=True)
    (art / "manifest.json").write_bytes(data)
    try:
        manifest.read_manifest(art)
    except PocketmlError:
        pass


def _toml(data: bytes) -> None:
    path = WORK / "fuzz.toml"
    path.write_bytes(data)
    try:
        devices.load(str(path))
    except PocketmlError:
        pass


TARGETS = {"tflite": (_model("tflite"), [fuzzkit.tiny_tflite(), fuzzkit.tiny_tflite("w.bin")]),
           "onnx": (_model("onnx"), [fuzzkit.tiny_onnx(), fuzzkit.tiny_onnx("w.bin")]),
           "manifest": (_manifest, [b'{"schema": "pocketml.manifest/1"}']),
           "toml": (_toml, [devices.profiles_dir().joinpath("pixel-7.toml").read_bytes()])}


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        sys.exit(f"usage: {sys.argv[0]} {{{','.join(TARGETS)}}} [libFuzzer flags] [corpus dir]")
    name = sys.argv.pop(1)
    target, seeds = TARGETS[name]
    corpus = [a for a in sys.argv[1:] if not a.startswith("-")]
    if not corpus:                       # seed a fresh corpus directory with files that load
        seed_dir = WORK / f"corpus-{name}"
        seed_dir.mkdir()
        for i, seed in enumerate(seeds):
            (seed_dir / f"seed{i}").write_bytes(seed)
        sys.argv.append(str(seed_dir))
    atheris.Setup(sys.argv, target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
