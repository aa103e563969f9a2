"""Fuzz the path validator: every reference either is refused with a PocketmlError or resolves to a
regular file (or directory) strictly inside the root, with no symlink on the way and one link."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from fuzzkit import FUZZ, only_pocketml_errors
from hypothesis import given
from hypothesis import strategies as st

from pocketml.runtime.errors import UnsafeInputError
from pocketml.runtime.paths import check_range, contained_file, open_contained, reference_parts

COMPONENTS = ["a", "b", "f", "link", "dirlink", "hard", "fifo", "..", ".", "", "x" * 300, "\x00", "C:", "a\\b",
              "~", "\udc80", "\ud800", " ", "f:stream", "missing"]


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """root/{f, a/f, a/b/f, link -> a/f, dirlink -> a, hard (2 links), fifo}; outside/secret."""
    base = tmp_path_factory.mktemp("tree")
    root, outside = base / "root", base / "outside"
    (root / "a" / "b").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret").write_text("secret")
    for p in (root / "f", root / "a" / "f", root / "a" / "b" / "f"):
        p.write_text("inside")
    os.symlink(root / "a" / "f", root / "link")
    os.symlink(root / "a", root / "dirlink")
    (root / "hard").write_text("h")
    os.link(root / "hard", outside / "hard-too")
    os.mkfifo(root / "fifo")
    return root.resolve()


def _check_accepted(root: Path, rel: str, result: Path) -> None:
    assert result == root.joinpath(*Path(rel).parts) and root in result.parents
    cur = root
    for part in Path(rel).parts:
        if part == ".":
            continue
        cur = cur / part
        assert not cur.is_symlink()
    st_ = os.lstat(result)
    assert stat.S_ISDIR(st_.st_mode) or (stat.S_ISREG(st_.st_mode) and st_.st_nlink == 1)


@FUZZ
@given(st.lists(st.sampled_from(COMPONENTS) | st.text(max_size=12), min_size=0, max_size=6),
       st.sampled_from(["/", "//", "/./", "\\"]), st.booleans())
def test_contained_file(tree, parts, sep, leading_slash):
    rel = ("/" if leading_slash else "") + sep.join(parts)
    result = only_pocketml_errors(contained_file, tree, rel)
    if result is not None:
        _check_accepted(tree, rel, result)


@FUZZ
@given(st.text(max_size=64) | st.binary(max_size=16).map(lambda b: b.decode("latin-1")))
def test_open_contained_and_reference_parts(tree, rel):
    parts = only_pocketml_errors(reference_parts, tree, rel)
    fh = only_pocketml_errors(open_contained, tree, rel)
    if fh is not None:
        with fh:
            assert parts is not None
            st_ = os.fstat(fh.fileno())
            assert stat.S_ISREG(st_.st_mode) and st_.st_nlink == 1 and fh.read() == b"inside"


@FUZZ
@given(st.one_of(st.integers(), st.booleans(), st.floats(allow_nan=True), st.none(), st.text(max_size=5)),
       st.one_of(st.integers(), st.booleans(), st.none()))
def test_check_range(tree, offset, length):
    try:
        check_range(tree / "f", offset, length)
    except UnsafeInputError:
        return
    assert isinstance(offset, int) and isinstance(length, int)
    assert 0 <= offset and 0 <= length and offset + length <= (tree / "f").stat().st_size


def test_non_string_references_are_refused(tree):
    for rel in (None, 3, b"f", ["f"], Path("f")):
        with pytest.raises(UnsafeInputError):
            reference_parts(tree, rel)
