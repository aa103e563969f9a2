"""Offline English text for distilling text models: sentences from the docstrings of the Python standard
library and of installed packages.

The source files are parsed with `ast` (nothing is imported or executed). Sentences are filtered like
scripts/extract_sentences.py (8–40 words, prose, no code) and deduplicated. The built-in evaluation
split (CPython docstrings, convert/data/sentences.txt) stays out of training: every docstring that holds
one of its sentences, or a near-duplicate of one (word-set Jaccard ≥ 0.6), is left out whole.
"""
from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import platform
import random
import re
import sysconfig
import warnings
from pathlib import Path

# Installed with pocketml's [convert] extra; sorted traversal → the same text for the same versions.
STDLIB = "stdlib"           # the Python standard library's own source (Lib/, without site-packages)
PACKAGES = (STDLIB, "transformers", "torch", "sklearn", "numpy", "skimage", "onnx", "coremltools", "onnxruntime")
NEAR_DUPLICATE = 0.6
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
    if name == STDLIB:
        return Path(sysconfig.get_paths()["stdlib"])
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def version(name: str) -> str:
    if name == STDLIB:
        return platform.python_version()
    try:
        return importlib.metadata.version(DISTRIBUTIONS.get(name, name))
    except importlib.metadata.PackageNotFoundError:
        return "?"


def source_files(name: str, root: Path):
    """The package's .py files in sorted order; for the standard library without installed packages."""
    for path in sorted(root.rglob("*.py")):
        if name == STDLIB and {"site-packages", "dist-packages"} & set(path.relative_to(root).parts):
            continue
        yield path


def _words(sentence: str) -> frozenset[str]:
    return frozenset(re.findall(r"[a-z0-9]+", sentence.lower()))


class NearDuplicates:
    """Is a sentence (nearly) one of the excluded ones? Word-set Jaccard ≥ NEAR_DUPLICATE, so a training
    sentence that restates an evaluation sentence ("Return True if obj is a coroutine." vs "Return true
    if the object is a coroutine.") is left out too."""

    def __init__(self, exclude: set[str]):
        self.sets = [_words(s) for s in exclude]
        self.index: dict[str, list[int]] = {}
        for i, ws in enumerate(self.sets):
            for w in ws:
                self.index.setdefault(w, []).append(i)

    def __contains__(self, sentence: str) -> bool:
        ws = _words(sentence)
        shared: dict[int, int] = {}
        for w in ws:
            for i in self.index.get(w, ()):
                shared[i] = shared.get(i, 0) + 1
        return any(n / len(ws | self.sets[i]) >= NEAR_DUPLICATE for i, n in shared.items())


def docstring_sentences(limit: int, exclude: set[str], packages=PACKAGES, seed: int = 0) -> tuple[list[str], str]:
    """Up to `limit` distinct sentences (shuffled with `seed`) and a description of where they came from.
    A docstring holding an excluded sentence is left out whole, and so is every near-duplicate of one."""
    excluded = {s.lower() for s in exclude}
    seen = set(excluded)
    near = NearDuplicates(exclude)
    found: dict[str, list[str]] = {}
    dropped = 0
    for name in packages:
        root = package_root(name)
        if root is None:
            continue
        out = found.setdefault(name, [])
        for path in source_files(name, root):
            for doc in file_docstrings(path):
                sentences = list(prose_sentences(doc))
                if any(s.lower() in excluded or s in near for s in sentences):
                    dropped += 1                # the evaluation text's context stays out of training
                    continue
                for s in sentences:
                    if s.lower() not in seen:
                        seen.add(s.lower())
                        out.append(s)
    pool = [s for name in packages for s in found.get(name, [])]
    random.Random(seed).shuffle(pool)
    used = sorted(found)
    source = (f"{min(limit, len(pool))} sentences from docstrings of installed packages "
              f"({', '.join(f'{n} {version(n)}' for n in used)}), disjoint from the evaluation sentences "
              f"({dropped} docstrings holding one or a near-duplicate left out whole)")
    return pool[:limit], source
