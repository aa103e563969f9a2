"""A runtime-only install (`pip install pocketml`, no torch): `convert` and `demo` exit 7 naming the
'convert' extra, with no traceback and nothing written; `profile` still works.

The install is simulated: every Python process of the run (the CLI, the profiling child, the demo's
workers) starts with a `sitecustomize` whose `sys.meta_path` finder raises ModuleNotFoundError for
`torch` and `torch.*` — what `import torch` does where torch is not installed. It cannot hide torch
from code that reads package metadata (`importlib.metadata`), which is why the version check reports
torch as installed there; pocketml decides "missing" by finding the module (`find_spec`), as the
finder does. The positive control proves the block is live in the child processes too.

Also: every pip extra that pocketml's messages name exists in pyproject.toml, and every package a
`require_dependency` names is one of pocketml's own dependencies.
"""
from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import subprocess_env
from faultkit import W, onnx_with_external, write_artifact, write_reference

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("pocketml", "runtime", "convert", "profiler", "cli")

BLOCK_TORCH = textwrap.dedent('''
    import sys

    class _NoTorch:
        """What a runtime-only install looks like to `import torch`."""
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, _NoTorch())
''')


def _run(tmp_path, *args, cwd=None):
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(BLOCK_TORCH)
    env = subprocess_env()
    env["PYTHONPATH"] = os.pathsep.join([str(site), env["PYTHONPATH"]])
    cmd = [sys.executable, "-c", "import sys; from pocketml.cli.main import main; sys.argv[0] = 'pocketml'; main()",
           *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=cwd or tmp_path)


def test_block_is_live(tmp_path):
    proc = _run(tmp_path, "--version")
    assert proc.returncode == 0
    site = tmp_path / "site"
    env = subprocess_env()
    env["PYTHONPATH"] = os.pathsep.join([str(site), env["PYTHONPATH"]])
    probe = subprocess.run([sys.executable, "-c", "import torch"], capture_output=True, text=True, env=env)
    assert probe.returncode == 1 and "ModuleNotFoundError: No module named 'torch'" in probe.stderr


@pytest.mark.parametrize("command", [["convert", "models:tiny_mlp", "--to", "onnx", "-o", "out"],
                                     ["convert", "efficientnet-lite0", "--to", "tflite", "-o", "out"],
                                     ["demo", "-o", "out"]])
def test_convert_and_demo_without_torch_exit_7(tmp_path, command):
    proc = _run(tmp_path, *command)
    assert proc.returncode == 7, proc.stdout + proc.stderr
    assert "needs torch (the 'convert' extra): pip install 'pocketml[convert]'" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and "ModuleNotFoundError" not in proc.stderr
    assert os.listdir(tmp_path) == ["site"]                # nothing written: no out/, no lock, no reference


def test_profile_works_without_torch(tmp_path):
    """The runtime half: the torch block also holds in the profiling child, which measures fine."""
    arts = tmp_path / "arts"
    write_artifact(arts / "onnx-fp32", onnx_with_external("initializer", "w.bin"), extra={"w.bin": W.tobytes()})
    write_reference(arts)
    proc = _run(tmp_path, "profile", arts / "onnx-fp32", "--runs", "2", "--warmup", "0", "-o", tmp_path / "r")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "r" / "report.json").is_file()


# ------------------------------------------------------------------ the names in the messages exist

def _pyproject() -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:          # Python 3.10
        tomllib = pytest.importorskip("tomli")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _calls(name: str):
    """(file, line, positional string arguments, keyword string arguments) of every call to `name`."""
    for folder in SOURCES:
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == name:
                    args = [a.value if isinstance(a, ast.Constant) else None for a in node.args]
                    kwargs = {k.arg: k.value.value for k in node.keywords if isinstance(k.value, ast.Constant)}
                    yield f"{path.relative_to(ROOT)}:{node.lineno}", args, kwargs


def test_every_named_extra_exists():
    extras = set(_pyproject()["project"]["optional-dependencies"])
    named = {}
    for where, args, kwargs in _calls("require_extra"):
        named[where] = args[1] if len(args) > 1 else kwargs.get("extra")
    for where, _, kwargs in _calls("EnvironmentMissing"):
        if "extra" in kwargs:
            named[where] = kwargs["extra"]
    for folder in (*SOURCES, "docs"):
        for path in (ROOT / folder).rglob("*"):
            if path.suffix in (".py", ".md"):
                for m in re.finditer(r"pocketml\[([\w,-]+)\]", path.read_text()):
                    for extra in m.group(1).split(","):
                        named[f"{path.relative_to(ROOT)}: pocketml[{m.group(1)}]"] = extra
    for m in re.finditer(r"pocketml\[([\w,-]+)\]", (ROOT / "README.md").read_text()):
        named[f"README.md: pocketml[{m.group(1)}]"] = m.group(1)
    assert len([w for w in named if ".py:" in w]) >= 3, named          # the scan found the calls
    wrong = {w: e for w, e in named.items() if e not in extras}
    assert not wrong, f"extras named but not in pyproject's optional-dependencies {sorted(extras)}: {wrong}"


def test_every_required_dependency_is_a_dependency():
    deps = {re.split(r"[<>=!~;\[ ]", d, maxsplit=1)[0].lower() for d in _pyproject()["project"]["dependencies"]}
    calls = list(_calls("require_dependency"))
    assert len(calls) >= 6, calls
    wrong = {w: a[1] for w, a, _ in calls if a[1] is not None and a[1].lower() not in deps}
    assert not wrong, f"require_dependency names packages that are not pocketml dependencies {sorted(deps)}: {wrong}"
