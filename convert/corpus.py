"""Offline English text for distilling text models: sentences from the docstrings of installed packages.

The packages' source files are parsed with `ast` (nothing is imported or executed). Sentences are
filtered like scripts/extract_sentences.py (8–40 words, prose, no code), deduplicated, and any
sentence of the built-in evaluation split (CPython docstrings, convert/data/sentences.txt) is
removed, so training text and evaluation text stay disjoint.
"""
from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import random
import re
import warnings
from pathlib import Path

# Installed with pocketml's [convert] extra; sorted traversal → the same text for the same versions.
PACKAGES = ("transformers", "torch", "sklearn", "numpy", "skimage", "onnx", "coremltools", "onnxruntime")
DISTRIBUTIONS = {"sklearn": "scikit-learn", "skimage": "scikit-image"}
BANNED = (">>>", "::", "__", "()", "=", "\\", "*", "`", "[", "{", "http", "TODO")
SPLIT = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def prose_sentences(doc: str):
    for s in SPLIT.split(re.sub(r"\s+", " ", doc)):
        s = s.strip()
        words = s.split()
        if not (8 <= len(words) <= 40 and s.endswith(".") and s[0].isupper()):
            continue
        if sum(c.isalpha() or c == " " for c in s) / len(s) < 0.9 or any(b in s for b in BANNED):
            continue
        yield s


def file_docstrings(path: Path):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
    except (SyntaxError, ValueError, RecursionError):
        return
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=True)
            if doc:
                yield doc


def package_root(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def version(name: str) -> str:
    try:
        return importlib.metadata.version(DISTRIBUTIONS.get(name, name))
    except importlib.metadata.PackageNotFoundError:
        return "?"


def docstring_sentences(limit: int, exclude: set[str], packages=PACKAGES, seed: int = 0) -> tuple[list[str], str]:
    """Up to `limit` distinct sentences (shuffled with `seed`) and a description of where they came from."""
    seen = {s.lower() for s in exclude}
    found: dict[str, list[str]] = {}
    for name in packages:
        root = package_root(name)
        if root is None:
            continue
        out = found.setdefault(name, [])
        for path in sorted(root.rglob("*.py")):
            for doc in file_docstrings(path):
                for s in prose_sentences(doc):
                    if s.lower() not in seen:
                        seen.add(s.lower())
                        out.append(s)
    pool = [s for name in packages for s in found.get(name, [])]
    random.Random(seed).shuffle(pool)
    used = sorted(found)
    source = (f"{min(limit, len(pool))} sentences from docstrings of installed packages "
              f"({', '.join(f'{n} {version(n)}' for n in used)}), disjoint from the evaluation sentences")
    return pool[:limit], source
