"""An op the target cannot take: exit 3, a table of every rejected op (node, op, target, reason),
and nothing written for the refused formats. (tests/test_convert.py::test_op_a_target_cannot_take_is_named
checks the message; this checks the table's columns for every target.)"""
from __future__ import annotations

import re

import pytest
from conftest import artifact_names, assert_no_partial, run_cli

HEADER = re.compile(r"^\s+node\s+op\s+target\s+reason\s*$")


@pytest.fixture(scope="module")
def det_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("det") / "out"
    return run_cli("convert", "models:det_model", "--to", "tflite,coreml", "-o", out), out


def _tables(output: str) -> dict[str, list[list[str]]]:
    """artifact name → rows (split on runs of 2+ spaces) of its 'rejected ops' table."""
    tables, current = {}, None
    for line in output.splitlines():
        m = re.match(r"^(\S+) rejected ops:$", line)
        if m:
            current = tables.setdefault(m.group(1), [])
        elif current is not None and HEADER.match(line):
            continue
        elif current is not None and line.startswith("  "):
            current.append(re.split(r"\s{2,}|\s(?=\S+\s{2,})", line.strip(), maxsplit=3))
        else:
            current = None
    return tables


def test_unsupported_op_table(det_run):
    r, out = det_run
    assert r.exit_code == 3, r.output
    assert "2 of 2 artifacts not published" in r.output
    assert sum(bool(HEADER.match(line)) for line in r.output.splitlines()) >= 2
    tables = _tables(r.output)
    assert set(tables) == {"tflite-fp32", "coreml-fp32"}, r.output
    expected_op = {"tflite-fp32": "aten._linalg_det", "coreml-fp32": "linalg_det"}
    for name, rows in tables.items():
        assert rows, name
        for row in rows:
            line = " ".join(row)
            target = name.split("-")[0]
            assert expected_op[name] in line and f" {target} " in f" {line} " and "no conversion rule" in line, row
    assert artifact_names(out) == {"reference"}       # nothing for the refused formats
    assert_no_partial(out)


def test_unsupported_op_table_names_the_node(det_run):
    """Every rejected row names the graph node (module path and node) that uses the op."""
    r, _ = det_run
    for rows in _tables(r.output).values():
        for row in rows:
            assert not row[0].startswith("-"), row
