"""The installed layout and the checkout agree.

A plain `pip install .` maps the top-level folders into the package (pyproject's package-dir). Python
started in a checkout imports the checkout's `pocketml/` folder first; `pocketml/__init__.py` then adds
the checkout root to `__path__`, so `pocketml.runtime` etc. come from the checkout — whole, never half
of it. Here: a real non-editable build (`pip install --target`, offline, about 3 s) of a copy of the
sources, imported with that on sys.path, from the copy's root and from elsewhere. `python -S` keeps
this environment's editable-install finder (a `.pth` file) out of the way.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULES = ("pocketml.runtime", "pocketml.runtime.paths", "pocketml.convert.pipeline", "pocketml.profiler.estimate",
           "pocketml.cli.main", "pocketml.profiles")
PROBE = ("import importlib, json, sys; mods = {m: importlib.import_module(m).__file__ for m in sys.argv[1:]}; "
         "from pocketml.profiler import devices; print(json.dumps([mods, len(devices.available())]))")


def _pyproject() -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:          # Python 3.10
        tomllib = pytest.importorskip("tomli")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(a copy of the checkout's package sources, a `pip install --target` of it)."""
    base = tmp_path_factory.mktemp("packaging")
    src, target = base / "checkout", base / "site"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for folder in sorted(set(_pyproject()["tool"]["setuptools"]["package-dir"].values())):
        shutil.copytree(ROOT / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                           "--no-index", "--target", str(target), str(src)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not (target / "runtime").exists() and (target / "pocketml" / "runtime" / "__init__.py").is_file()
    return src, target


def _import_from(cwd: Path, target: Path) -> tuple[dict, int]:
    import json
    libs = {sysconfig.get_paths()[k] for k in ("purelib", "platlib")}
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = os.pathsep.join([str(target), *sorted(libs)])
    proc = subprocess.run([sys.executable, "-S", "-c", PROBE, *MODULES], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    mods, n_profiles = json.loads(proc.stdout.strip().splitlines()[-1])
    return {m: Path(f) for m, f in mods.items()}, n_profiles


def test_checkout_root_imports_the_checkout_whole(installed):
    src, target = installed
    mods, n_profiles = _import_from(src, target)
    assert all(src in f.parents for f in mods.values()), mods      # nothing mixed in from the install
    assert mods["pocketml.runtime"] == src / "runtime" / "__init__.py"
    assert n_profiles > 0


def test_elsewhere_imports_the_install(installed, tmp_path):
    src, target = installed
    mods, n_profiles = _import_from(tmp_path, target)
    assert all(target / "pocketml" in f.parents for f in mods.values()), mods
    assert n_profiles > 0


def test_every_subpackage_is_listed():
    """pyproject lists packages one by one (the package-dir mapping rules out `find:`): a folder of Python
    files that is not listed would import in a checkout and be missing from every install."""
    tool = _pyproject()["tool"]["setuptools"]
    listed = set(tool["packages"])
    found = set()
    for name, folder in tool["package-dir"].items():
        for py in (ROOT / folder).rglob("*.py"):
            rel = py.parent.relative_to(ROOT / folder)
            if "__pycache__" not in rel.parts:
                found.add(".".join([name, *rel.parts]))
    assert found - listed == set(), f"subpackages missing from pyproject's [tool.setuptools] packages: " \
                                    f"{sorted(found - listed)}"
