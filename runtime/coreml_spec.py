"""Core ML's protobuf schema, read without importing coremltools (which imports torch), and an ML
Program package's spec file. Used by the estimator's graph reader and the census. Torch-free."""
from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import json
import os
import sys
from pathlib import Path

from .paths import contained_file

_ALIAS = "_pocketml_coreml_proto"


def proto():
    """coremltools' generated Model_pb2, without importing the coremltools package."""
    if "coremltools.proto.Model_pb2" in sys.modules:
        return sys.modules["coremltools.proto.Model_pb2"]
    if _ALIAS not in sys.modules:
        spec = importlib.util.find_spec("coremltools")
        if spec is None or not spec.submodule_search_locations:
            from .errors import EnvironmentMissing
            raise EnvironmentMissing("estimating Core ML artifacts needs coremltools (its protobuf schema): "
                                     "pip install 'pocketml[convert]'", module="coremltools")
        pkg = importlib.machinery.ModuleSpec(_ALIAS, None, is_package=True)
        pkg.submodule_search_locations = [os.path.join(spec.submodule_search_locations[0], "proto")]
        sys.modules[_ALIAS] = importlib.util.module_from_spec(pkg)
    return importlib.import_module(f"{_ALIAS}.Model_pb2")


def spec_file(path: Path) -> Path:
    """The ML Program spec file of an .mlpackage (through the path validator), or a flat .mlmodel itself."""
    if path.is_file():
        return path
    manifest = json.loads(contained_file(path, "Manifest.json").read_text(encoding="utf-8"))
    item = manifest["itemInfoEntries"][manifest["rootModelIdentifier"]]
    return contained_file(path, "Data/" + item["path"])
