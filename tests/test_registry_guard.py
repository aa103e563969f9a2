"""The registries are the one place that knows a format or a model family: a guard over the source.

Outside the format registry and each format's own modules (exporter, session, pre-check, graph reader),
no code compares a value with a format name or keeps a table keyed by one; outside the family registry
and the family modules (model sources), none does so with a family name or a family kind (the capability
column a family selects in the format registry).
The check reads the AST, so a format name in a list of package names or in a message is not a branch.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from pocketml.runtime import families, formats

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("convert", "runtime", "profiler", "cli")

FORMAT_NAMES = set(formats.REGISTRY)
FAMILY_NAMES = set(families.FAMILIES) | {f.kind for f in families.FAMILIES.values()}

# Each format's own modules, and the registry itself.
FORMAT_HOMES = {
    "runtime/formats.py", "runtime/session.py", "runtime/prechecks.py", "runtime/onnx_checks.py",
    "runtime/coreml_spec.py", "runtime/census.py", "runtime/model_file.py",
    "convert/exporters/onnx.py", "convert/exporters/onnx_weights.py", "convert/exporters/tflite.py",
    "convert/exporters/tflite_graph.py", "convert/exporters/cnn_int8.py", "convert/exporters/coreml.py",
    "profiler/estimate/graph_onnx.py", "profiler/estimate/graph_tflite.py", "profiler/estimate/graph_coreml.py",
}
# Files that name a format for another reason, and why.
NOT_FORMAT_BRANCHES = {"runtime/versions.py": "minimum versions keyed by pip package name (`onnx` is a package)"}
# The family registry and the model sources that define which family a model belongs to.
FAMILY_HOMES = {"runtime/families.py", "runtime/formats.py", "convert/sources.py", "convert/builtins.py"}


def sources() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def _names_in(node) -> set[str]:
    """String constants of a comparison operand: `"onnx"`, or a literal tuple/list/set of them."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value}
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return {e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)}
    return set()


def branches_on(tree, names: set[str]) -> list[tuple[int, str]]:
    """(line, what) for each comparison with, lookup by, or table keyed by one of `names`."""
    hits = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            for operand in [node.left, *node.comparators]:
                hits += [(node.lineno, f"compares with {n!r}") for n in _names_in(operand) & names]
        elif isinstance(node, ast.Dict):
            keys = {k.value for k in node.keys if isinstance(k, ast.Constant) and isinstance(k.value, str)}
            hits += [(node.lineno, f"a table keyed by {n!r}") for n in sorted(keys & names)]
        elif isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
            if node.slice.value in names:
                hits.append((node.lineno, f"looks up [{node.slice.value!r}]"))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get":
            hits += [(node.lineno, f".get({a.value!r})") for a in node.args[:1]
                     if isinstance(a, ast.Constant) and a.value in names]
    return hits


def violations(names: set[str], homes: set[str]) -> list[str]:
    out = []
    for path in sources():
        rel = path.relative_to(ROOT).as_posix()
        if rel in homes:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=rel)
        out += [f"{rel}:{line}: {what}" for line, what in branches_on(tree, names)]
    return out


@pytest.mark.parametrize("what, names, homes", [
    ("format", FORMAT_NAMES, FORMAT_HOMES | set(NOT_FORMAT_BRANCHES)),
    ("family or family kind", FAMILY_NAMES, FAMILY_HOMES),
])
def test_no_code_branches_on_a_name_outside_its_registry(what, names, homes):
    found = violations(names, homes)
    assert not found, f"code branching on a {what} name outside its registry:\n" + "\n".join(found)


def test_the_guard_catches_a_branch():
    tree = ast.parse('if fmt == "coreml":\n    pass\nX = {"onnx": 1}\ny = table["tflite"]\n'
                     'z = fmt in ("onnx", "tflite")\nw = d.get("coreml")\n')
    assert [line for line, _ in branches_on(tree, FORMAT_NAMES)] == [1, 3, 4, 5, 5, 6]


def test_homes_exist():
    missing = [h for h in FORMAT_HOMES | FAMILY_HOMES if not (ROOT / h).is_file()]
    assert not missing, missing


def test_torch_free_packages_do_not_import_torch():
    """pocketml.runtime and pocketml.profiler run without torch (a runtime-only install)."""
    heavy = {"torch", "transformers", "litert_torch", "torch_pruning"}
    found = []
    for pkg in ("runtime", "profiler"):
        for path in sorted((ROOT / pkg).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                mods = ([a.name for a in node.names] if isinstance(node, ast.Import)
                        else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
                found += [f"{path.relative_to(ROOT)}:{node.lineno}: {m}" for m in mods if m.split(".")[0] in heavy]
    assert not found, found


def test_convert_does_not_import_the_profiler_or_the_cli():
    """The walls: convert reads the registries, metrics and sessions from pocketml.runtime only."""
    found = []
    for path in sorted((ROOT / "convert").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(("pocketml.profiler", "pocketml.cli")):
                found.append(f"{rel}:{node.lineno}: {node.module}")
    allowed = {"convert/calibration_zoo.py"}        # fit-time tool: builds the estimator's cost tables
    assert [f for f in found if f.split(":")[0] not in allowed] == []


def test_reuse_digest_covers_every_module_a_conversion_imports(cnn_out):
    """After a real conversion (the session's tiny CNN, converted in this process), every pocketml module
    loaded outside the CLI is hashed into the artifact-reuse key, and changing any one changes the key."""
    import sys

    from pocketml.convert.pipeline import digest_files, digest_of
    files = digest_files()
    covered = {p.resolve() for p in files.values()}
    loaded = {Path(m.__file__).resolve() for name, m in list(sys.modules.items())
              if name.startswith("pocketml.") and not name.startswith("pocketml.cli")
              and getattr(m, "__file__", None) and m.__file__.endswith(".py")}
    assert loaded and loaded <= covered, sorted(str(p) for p in loaded - covered)
    sources = {label: path.read_bytes() for label, path in files.items()}
    base = digest_of(sources)
    for label in sources:
        assert digest_of({**sources, label: sources[label] + b"\n# changed"}) != base, label
