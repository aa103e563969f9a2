"""pocketml: PyTorch / Hugging Face model → phone. Subpackages map to the repository's top-level folders:
pocketml.convert → convert/, pocketml.runtime → runtime/, pocketml.profiler → profiler/, pocketml.cli → cli/,
pocketml.profiles → profiles/ (device profiles, data).

An install (pyproject's package-dir mapping) puts them inside this package's folder. In a checkout they
are this folder's siblings: `_checkout_root` adds the checkout root to `__path__`, so Python started in a
checkout (which imports this folder before any installed copy) finds them there too — the checkout's
code, whole, never half of it.
"""
import os as _os

__version__ = "0.1.0"

# onnxruntime ≥ 1.2x on Linux keeps a telemetry device id and an SQLite event store under
# $XDG_CACHE_HOME or ~/.cache/Microsoft/DeveloperTools/.onnxruntime/ (and can upload it); it reads
# this variable once, when it is imported. A non-empty setting of the user's is left alone.
if not _os.environ.get("ORT_DISABLE_TELEMETRY"):
    _os.environ["ORT_DISABLE_TELEMETRY"] = "1"


def _checkout_root() -> "str | None":
    root = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
    try:
        with open(_os.path.join(root, "pyproject.toml"), encoding="utf-8") as fh:
            ours = 'name = "pocketml"' in fh.read(65536)
    except OSError:
        return None
    return root if ours and _os.path.isfile(_os.path.join(root, "runtime", "__init__.py")) else None


if (_root := _checkout_root()) is not None and _root not in __path__:
    __path__.append(_root)
