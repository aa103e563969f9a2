"""A pickled checkpoint whose unpickling would run code: never unpickled by pocketml.

The payload's `__reduce__` creates a sentinel file. The control test proves the payload is live
(plain `pickle.load` does create it); pocketml refuses the bare checkpoint (exit 2, a factory is
the supported way), and a factory that loads it the documented way — torch.load(weights_only=True)
— gets an UnpicklingError, with the sentinel absent in both cases.
"""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import assert_no_partial, run_cli, subprocess_env


class _Payload:
    def __init__(self, sentinel):
        self.sentinel = str(sentinel)

    def __reduce__(self):
        return exec, (f"open({self.sentinel!r}, 'w').write('pwned')",)


def _checkpoint(path, sentinel):
    torch.save({"state_dict": {"w": torch.zeros(2)}, "extra": _Payload(sentinel)}, path)
    assert not sentinel.exists()
    return path


def test_control_the_payload_is_live(tmp_path):
    sentinel = tmp_path / "sentinel-control"
    ckpt = _checkpoint(tmp_path / "evil.pt", sentinel)
    torch.load(ckpt, weights_only=False)          # what an unsafe loader would do
    assert sentinel.read_text() == "pwned"


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".bin", ".ckpt", ".pkl"])
def test_bare_checkpoint_is_refused_and_never_unpickled(tmp_path, suffix):
    sentinel = tmp_path / "sentinel"
    ckpt = _checkpoint(tmp_path / f"evil{suffix}", sentinel)
    out = tmp_path / "out"
    r = run_cli("convert", ckpt, "--to", "onnx", "-o", out)
    assert r.exit_code == 2, r.output
    assert str(ckpt) in r.output and "factory" in r.output and "weights_only=True" in r.output
    assert not sentinel.exists()
    assert not out.exists() or not any(out.iterdir())
    assert_no_partial(out)


def test_factory_loading_it_with_weights_only_raises(tmp_path):
    sentinel = tmp_path / "sentinel"
    ckpt = _checkpoint(tmp_path / "evil.pt", sentinel)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        torch.load(ckpt, weights_only=True)
    assert not sentinel.exists()


def test_factory_through_the_cli_never_unpickles(tmp_path):
    """The same factory named on the command line: conversion fails, nothing is written, no sentinel."""
    sentinel = tmp_path / "sentinel"
    ckpt = _checkpoint(tmp_path / "evil.pt", sentinel)
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "evilfactory.py").write_text(textwrap.dedent(f"""
        import torch
        def build():
            state = torch.load({str(ckpt)!r}, weights_only=True)
            model = torch.nn.Linear(2, 2)
            model.load_state_dict(state["state_dict"])
            return model, torch.zeros(1, 2)
    """))
    out = tmp_path / "out"
    env = subprocess_env()
    env["PYTHONPATH"] = os.pathsep.join([str(pkg), env["PYTHONPATH"]])
    proc = subprocess.run([sys.executable, "-c", "from pocketml.cli.main import main; main()", "convert",
                           "evilfactory:build", "--to", "onnx", "-o", str(out)],
                          capture_output=True, text=True, timeout=300, env=env)
    # Exit 1 today: convert/sources.load_factory lets the factory's own exception through as an
    # internal error. Any non-zero exit is right here; what matters is that nothing was unpickled.
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "Weights only load failed" in proc.stderr
    assert not sentinel.exists()
    assert not out.exists() or not any(p.name != "reference" for p in out.iterdir())
    assert_no_partial(out)
