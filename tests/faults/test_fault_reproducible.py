"""Same model, same bytes: converting one model from two directories gives identical model files.

The model's source file is copied into each directory (as a user's package would sit in their
checkout), so the exporters see different absolute paths — the stack traces torch.onnx used to store
in every node's metadata. Each run has a different working directory AND a different -o path
(relative vs absolute). Every model file (ONNX, TFLite, Core ML spec, weights and package manifest)
must hash the same and hold no absolute path of the build: not the directories, not the checkout,
not the Python environment.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TESTS_DIR, cnn_samples, pocketml_script, save_samples, subprocess_env

# A user's package: forward() written here, so torch.onnx's stack traces point into this file's path.
MYPKG = """
import torch
from torch import nn


class Cnn(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.body = nn.Conv2d(16, 16, 3, stride=2, padding=1)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        x = torch.relu(self.body(torch.relu(self.stem(x))))
        return self.head(x.mean(dim=(2, 3)))


class Mlp(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(64, 64)
        self.fc2 = nn.Linear(64, 32)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def cnn():
    torch.manual_seed(0)
    return Cnn().eval(), torch.randn(1, 3, 16, 16)


def mlp():
    torch.manual_seed(0)
    return Mlp().eval(), torch.randn(1, 64)
"""
CONVERSIONS = {  # output subdirectory -> (factory in the copied package, args): every format and precision
    "cnn": ("mypkg:cnn", ["--task", "image-classification", "--to", "onnx,tflite,coreml",
                               "--precision", "fp32,fp16,int8", "--calib", "calib"]),
    "mlp": ("mypkg:mlp", ["--to", "onnx,tflite,coreml", "--precision", "int8,int8w,int4"]),
}
NOT_MODEL_FILES = {"manifest.json", "inputs.npz", "outputs.npz", ".reference.lock"}


def _convert(cwd: Path, out: str) -> Path:
    (cwd / "mypkg.py").write_text(MYPKG)
    save_samples(cwd / "calib", cnn_samples(8, seed=0))
    env = subprocess_env(PYTHONPATH=str(cwd), POCKETML_QUIET="1")
    for sub, (ref, args) in CONVERSIONS.items():
        r = subprocess.run([pocketml_script(), "convert", ref, *args, "-o", f"{out}/{sub}"], cwd=cwd, env=env,
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stdout + r.stderr
    return (cwd / out).resolve()


def _model_files(out: Path) -> dict[str, str]:
    return {p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.rglob("*")) if p.is_file() and p.name not in NOT_MODEL_FILES}


@pytest.fixture(scope="module")
def two_builds(tmp_path_factory):
    one = tmp_path_factory.mktemp("build_one")
    two = tmp_path_factory.mktemp("build_two") / "somewhere" / "else"
    two.mkdir(parents=True)
    elsewhere = tmp_path_factory.mktemp("elsewhere") / "artifacts"
    return (one, _convert(one, "out")), (two, _convert(two, str(elsewhere)))


def test_same_model_same_bytes_from_two_directories(two_builds):
    (_, out1), (_, out2) = two_builds
    h1, h2 = _model_files(out1), _model_files(out2)
    assert set(h1) == set(h2)
    kinds = {Path(p).suffix or Path(p).name for p in h1}
    assert {".onnx", ".tflite", ".mlmodel", ".bin", ".json"} <= kinds, kinds     # Core ML spec, weights, package
    assert len([p for p in h1 if p.endswith(("model.onnx", "model.tflite", "Manifest.json"))]) == 18
    differ = sorted(p for p in h1 if h1[p] != h2[p])
    assert not differ, f"model files differ between the two builds: {differ}"


def test_model_files_hold_no_build_paths(two_builds):
    (cwd1, out1), (cwd2, out2) = two_builds
    leaks = {str(cwd1), str(cwd2), str(out1), str(out2), str(TESTS_DIR.parent), sys.prefix,
             os.path.expanduser("~"), "site-packages", "stack_trace"}
    for out in (out1, out2):
        for rel in _model_files(out):
            data = (out / rel).read_bytes()
            found = [s for s in leaks if s.encode() in data]
            assert not found, f"{rel} holds {found}"


def test_onnx_metadata_is_stripped_and_counted(two_builds):
    import json

    import onnx
    (_, out1), _ = two_builds
    arts = sorted(out1.glob("*/onnx-*"))
    assert len(arts) == 6
    for art in arts:
        model = onnx.load(str(art / "model.onnx"))
        assert not model.metadata_props and not model.graph.metadata_props
        assert not any(n.metadata_props or n.doc_string for n in model.graph.node), art
        notes = json.loads((art / "manifest.json").read_text())["runtime_hints"]["notes"]
        assert any("build-machine metadata entries removed" in n for n in notes), notes
