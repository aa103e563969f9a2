"""The one path validator: every file reference pocketml follows from a file goes through here."""
from __future__ import annotations

import os
import stat
from pathlib import Path

from .errors import UnsafeInputError


def contained_file(root: Path, rel: str, must_exist: bool = True) -> Path:
    """Resolve `rel` under `root`, refusing absolute paths, `..` escapes, symlinks in any
    component, and hard-linked files. Returns the canonical path."""
    root = Path(root).resolve(strict=True)
    if not rel or os.path.isabs(rel) or rel.startswith(("/", "\\")) or ":" in Path(rel).parts[0]:
        raise UnsafeInputError(f"{root}: file reference {rel!r} is absolute; only paths inside the artifact are allowed")
    parts = Path(rel).parts
    if ".." in parts:
        raise UnsafeInputError(f"{root}: file reference {rel!r} leaves the artifact directory")
    cur = root
    for part in parts:
        cur = cur / part
        if cur.is_symlink():
            raise UnsafeInputError(f"{root}: file reference {rel!r} goes through a symlink ({cur})")
    if not must_exist:
        return cur
    try:
        st = os.lstat(cur)
    except FileNotFoundError:
        raise UnsafeInputError(f"{root}: referenced file {rel!r} does not exist") from None
    if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
        raise UnsafeInputError(f"{root}: referenced file {rel!r} is hard-linked ({st.st_nlink} links)")
    resolved = cur.resolve(strict=True)
    if root not in resolved.parents and resolved != root:
        raise UnsafeInputError(f"{root}: file reference {rel!r} resolves outside the artifact")
    return resolved


def check_range(path: Path, offset: int, length: int) -> None:
    """Bound an (offset, length) read by the real file size, in checked arithmetic."""
    size = Path(path).stat().st_size
    if offset < 0 or length < 0 or offset > size or length > size - offset:
        raise UnsafeInputError(f"{path}: range offset={offset} length={length} exceeds file size {size}")
