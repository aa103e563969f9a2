"""Fuzz the device-profile parser: devices.check on arbitrary and mutated profiles, devices.load on
arbitrary TOML text and bytes. Only a PocketmlError (UsageError, exit 2) may come out."""
from __future__ import annotations

import copy

from fuzzkit import FUZZ, only_pocketml_errors
from hypothesis import given
from hypothesis import strategies as st

from pocketml.profiler import devices

REAL = devices.load("pixel-7")
scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=12)
PATHS = sorted(devices.REQUIRED) + [f"cpu.clusters.0.{k}" for k in devices.CLUSTER] + ["cpu.clusters.0"]


def _set(d, dotted, value):
    parts = dotted.split(".")
    for part in parts[:-1]:
        d = d[int(part)] if isinstance(d, list) else d.setdefault(part, {})
        if not isinstance(d, (dict, list)):
            return
    if isinstance(d, list):
        d[int(parts[-1])] = value
    else:
        d[parts[-1]] = value


@FUZZ
@given(values)
def test_check_on_arbitrary_values(value):
    only_pocketml_errors(devices.check, value if isinstance(value, dict) else {"x": value}, "fuzz.toml")


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(PATHS), values), min_size=1, max_size=4))
def test_check_on_mutated_real_profile(edits):
    prof = copy.deepcopy(REAL)
    for path, value in edits:
        try:
            _set(prof, path, value)
        except (KeyError, IndexError, TypeError, ValueError):
            pass
    only_pocketml_errors(devices.check, prof, "fuzz.toml")


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v) if v == v and abs(v) != float("inf") else "nan"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return '"?"'


def _toml_doc(d: dict) -> bytes:
    return "\n".join(k if k.startswith("[") else f"{k} = {_toml_value(v)}" for k, v in d.items()).encode()


@FUZZ
@given(st.binary(max_size=512)
       | st.dictionaries(st.sampled_from(["schema", "name", "targets", "cpu", "[cpu]", "[[cpu.clusters]]"]),
                         scalars.filter(lambda v: v is not None), max_size=6).map(_toml_doc)
       | st.integers(1, 5000).map(lambda n: b"x = " + b"[" * n + b"]" * n))
def test_load_on_arbitrary_toml(tmp_path_factory, raw):
    path = tmp_path_factory.mktemp("prof") / "fuzz.toml"
    path.write_bytes(raw)
    only_pocketml_errors(devices.load, str(path))
