"""Shared fixtures: the tiny CNN converted once per session, calibration data, CLI helpers."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

TESTS_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS_DIR))   # so `models:tiny_cnn` resolves in-process as it does in subprocesses

import models  # noqa: E402

FORMATS = ("onnx", "tflite", "coreml")
PRECISIONS = ("fp32", "fp16", "int8")
CNN = "models:tiny_cnn"


def pocketml_script() -> str:
    """The installed `pocketml` console script of this interpreter's environment."""
    path = Path(sys.executable).parent / "pocketml"
    return str(path) if path.exists() else shutil.which("pocketml")


def subprocess_env(**extra) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS_DIR), env.get("PYTHONPATH")]))
    env.update(TF_CPP_MIN_LOG_LEVEL="3", **extra)
    return env


def run_cli(*args: str):
    """Run `pocketml ARGS` in-process with click's CliRunner. Returns the click Result."""
    from pocketml.cli.main import cli
    result = CliRunner().invoke(cli, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception   # an internal error is a bug, not an exit code to assert on
    return result


def run_subprocess(cmd: list[str], timeout: float = 300, **env) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout,
                          env=subprocess_env(**env))


def assert_no_partial(out_dir: Path) -> None:
    """Every directory in `out_dir` is a complete artifact (has manifest.json); no .tmp- leftovers."""
    out_dir = Path(out_dir)
    if not out_dir.exists():
        return
    leftovers = [p for p in out_dir.rglob("*") if ".tmp-" in p.name]
    assert not leftovers, f"temporary leftovers: {leftovers}"
    for child in out_dir.iterdir():
        if child.is_dir():
            assert (child / "manifest.json").is_file(), f"{child} is a directory without manifest.json"


def artifact_names(out_dir: Path) -> set[str]:
    return {p.name for p in Path(out_dir).iterdir() if p.is_dir() and (p / "manifest.json").is_file()}


def save_samples(directory: Path, arrays) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for i, a in enumerate(arrays):
        np.save(directory / f"sample_{i:02d}.npy", a)
    return directory


def cnn_samples(n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(models.IMAGE_SHAPE).astype(np.float32) for _ in range(n)]


@pytest.fixture(scope="session")
def calib_dir(tmp_path_factory) -> Path:
    """Sixteen NCHW float32 .npy samples for the tiny CNN."""
    return save_samples(tmp_path_factory.mktemp("calib") / "npy", cnn_samples(16, seed=0))


@pytest.fixture(scope="session")
def cnn_conversion(tmp_path_factory, calib_dir):
    """The tiny CNN converted once to onnx,tflite,coreml × fp32,fp16,int8 through the CLI."""
    out = tmp_path_factory.mktemp("cnn") / "out"
    result = run_cli("convert", CNN, "--task", "image-classification", "--to", ",".join(FORMATS),
                     "--precision", ",".join(PRECISIONS), "--calib", calib_dir, "-o", out)
    return out, result


@pytest.fixture(scope="session")
def cnn_out(cnn_conversion) -> Path:
    out, result = cnn_conversion
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="session")
def torch_cnn():
    return models.tiny_cnn()[0]
