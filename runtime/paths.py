"""The one path validator: every file reference pocketml follows from a file goes through here.

A reference (a manifest's `model_file` / `checksums` keys, an ONNX tensor's external-data
`location`, a Core ML package member, a tokenizer file) is a relative POSIX path inside a root
directory. It is refused (UnsafeInputError, exit 4) when it is empty, absolute, a drive path,
contains `..`, a backslash or a NUL byte, is too long, or when any component on disk is a
symlink, the final file has more than one hard link, or it is not a regular file / directory.

Reads go through `open_contained`, which walks the path one component at a time with
`openat(..., O_NOFOLLOW)`, so a symlink swapped in after the check cannot redirect the read
(no time-of-check/time-of-use gap). `check_range` bounds (offset, length) pairs by the real
file size in checked arithmetic.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path, PurePosixPath

from .errors import UnsafeInputError

MAX_REFERENCE_CHARS = 4096
MAX_COMPONENT_CHARS = 255
MAX_COMPONENTS = 64

_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)   # never block opening a FIFO planted as a "file"


def reference_parts(root, rel) -> tuple[str, ...]:
    """Lexical checks on a file reference; returns its components. No file-system access."""
    where = f"{root}: file reference {rel!r}"
    if not isinstance(rel, str):
        raise UnsafeInputError(f"{root}: file reference {rel!r} is a {type(rel).__name__}, not a string")
    if not rel:
        raise UnsafeInputError(f"{root}: empty file reference")
    if len(rel) > MAX_REFERENCE_CHARS:
        raise UnsafeInputError(f"{root}: file reference of {len(rel)} characters (cap {MAX_REFERENCE_CHARS})")
    if "\x00" in rel:
        raise UnsafeInputError(f"{where} contains a NUL byte")
    try:
        os.fsencode(rel)
    except UnicodeEncodeError:
        raise UnsafeInputError(f"{where} is not encodable as a file name") from None
    if rel.startswith(("/", "\\")) or os.path.isabs(rel) or ":" in rel:
        raise UnsafeInputError(f"{where} is absolute or names a drive/stream (':'); only paths inside "
                               "the artifact are allowed")
    if "\\" in rel:
        raise UnsafeInputError(f"{where} contains a backslash; references are POSIX paths inside the artifact")
    parts = PurePosixPath(rel).parts
    if ".." in parts:
        raise UnsafeInputError(f"{where} leaves the artifact directory")
    if not parts or parts == (".",):
        raise UnsafeInputError(f"{where} names the artifact directory itself, not a file in it")
    if len(parts) > MAX_COMPONENTS or any(len(os.fsencode(p)) > MAX_COMPONENT_CHARS
                                          for p in parts):
        raise UnsafeInputError(f"{where} has too many or too long components")
    return parts


def _walk(root: Path, rel: str, parts: tuple[str, ...]) -> tuple[int, int]:
    """Open every component from `root` down with O_NOFOLLOW, each relative to the directory before it.
    Returns (fd of the last directory, fd of the target). The caller closes both."""
    try:
        dfd = os.open(root, os.O_RDONLY | _O_DIRECTORY | _O_CLOEXEC)
    except OSError as exc:
        raise UnsafeInputError(f"{root}: cannot open the artifact directory ({exc.strerror})") from None
    try:
        for i, part in enumerate(parts[:-1]):
            nfd = _open_at(dfd, part, os.O_RDONLY | _O_DIRECTORY, root, rel, parts[: i + 1])
            os.close(dfd)
            dfd = nfd
        tfd = _open_at(dfd, parts[-1], os.O_RDONLY | _O_NONBLOCK, root, rel, parts)
    except BaseException:
        os.close(dfd)
        raise
    return dfd, tfd


def _open_at(dfd: int, name: str, flags: int, root: Path, rel: str, upto: tuple[str, ...]) -> int:
    here = "/".join(upto)
    try:
        st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        raise UnsafeInputError(f"{root}: referenced file {rel!r} does not exist ({here} is missing)") from None
    except NotADirectoryError:
        raise UnsafeInputError(f"{root}: file reference {rel!r}: {here} is not inside a directory") from None
    except OSError as exc:
        raise UnsafeInputError(f"{root}: file reference {rel!r}: cannot stat {here} ({exc.strerror})") from None
    if stat.S_ISLNK(st.st_mode):
        raise UnsafeInputError(f"{root}: file reference {rel!r} goes through a symlink ({root / here})")
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):   # never open a FIFO or a device
        raise UnsafeInputError(f"{root}: file reference {rel!r}: {here} is not a regular file or directory")
    try:
        return os.open(name, flags | _O_NOFOLLOW | _O_CLOEXEC, dir_fd=dfd)
    except OSError as exc:   # ELOOP: became a symlink after the stat; ENOTDIR: not a directory
        raise UnsafeInputError(f"{root}: file reference {rel!r}: cannot open {here} without following "
                               f"links ({exc.strerror})") from None


def _check_target(fd: int, root: Path, rel: str, allow_dir: bool) -> os.stat_result:
    st = os.fstat(fd)
    if stat.S_ISDIR(st.st_mode):
        if not allow_dir:
            raise UnsafeInputError(f"{root}: file reference {rel!r} is a directory, expected a file")
        return st
    if not stat.S_ISREG(st.st_mode):
        raise UnsafeInputError(f"{root}: file reference {rel!r} is not a regular file")
    if st.st_nlink > 1:
        raise UnsafeInputError(f"{root}: referenced file {rel!r} is hard-linked ({st.st_nlink} links)")
    return st


def _root(root) -> Path:
    try:
        return Path(root).resolve(strict=True)
    except (OSError, RuntimeError) as exc:   # missing, or a symlink loop
        raise UnsafeInputError(f"{root}: cannot resolve the directory ({exc})") from None


def contained_file(root: Path, rel: str, must_exist: bool = True, allow_dir: bool = True) -> Path:
    """Resolve `rel` under `root`, refusing absolute paths, `..` escapes, symlinks in any
    component, hard-linked files and special files. Returns the canonical path.

    `must_exist=False` is for output paths: lexical checks plus "no existing component is a
    symlink"; the caller creates the file. `allow_dir` admits a directory target (a Core ML
    `.mlpackage`)."""
    root = _root(root)
    parts = reference_parts(root, rel)
    if not must_exist:
        cur = root
        for part in parts:
            cur = cur / part
            if cur.is_symlink():
                raise UnsafeInputError(f"{root}: file reference {rel!r} goes through a symlink ({cur})")
            if not cur.exists():
                break
        return root.joinpath(*parts)
    dfd, tfd = _walk(root, rel, parts)
    try:
        _check_target(tfd, root, rel, allow_dir)
    finally:
        os.close(tfd)
        os.close(dfd)
    return root.joinpath(*parts)


def open_contained(root: Path, rel: str):
    """Open the regular file `rel` under `root` for reading, every component with O_NOFOLLOW.
    Returns a binary file object; its `fstat` is what was checked."""
    root = _root(root)
    parts = reference_parts(root, rel)
    dfd, tfd = _walk(root, rel, parts)
    os.close(dfd)
    try:
        _check_target(tfd, root, rel, allow_dir=False)
        os.set_blocking(tfd, True)
        return os.fdopen(tfd, "rb")
    except BaseException:
        os.close(tfd)
        raise


def open_regular(path: Path):
    """Open a file the user named (or a path `contained_file` returned) for reading: the last
    component must not be a symlink, and it must be a regular file."""
    path = Path(path)
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            raise UnsafeInputError(f"{path}: not a regular file (a symlink, directory, FIFO or device)")
        fd = os.open(path, os.O_RDONLY | _O_NOFOLLOW | _O_CLOEXEC | _O_NONBLOCK)
    except FileNotFoundError:
        raise UnsafeInputError(f"{path}: no such file") from None
    except OSError as exc:
        raise UnsafeInputError(f"{path}: cannot open without following links ({exc.strerror})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafeInputError(f"{path}: not a regular file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def check_range(path: Path, offset: int, length: int, size: int | None = None) -> None:
    """Bound an (offset, length) read by the real file size, in checked arithmetic."""
    if size is None:
        size = Path(path).stat().st_size
    for name, v in (("offset", offset), ("length", length)):
        if not isinstance(v, int) or isinstance(v, bool):
            raise UnsafeInputError(f"{path}: range {name} {v!r} is not an integer")
    if offset < 0 or length < 0 or offset > size or length > size - offset:
        raise UnsafeInputError(f"{path}: range offset={offset} length={length} exceeds file size {size}")


# ------------------------------------------------------------------ output paths

OUTPUT_FLAG = "--allow-symlinked-output"


def output_dir(path, allow_symlinks: bool = False) -> Path:
    """Check a directory pocketml is about to write into (`-o`), before anything is created.

    Every component the path names is looked at with lstat — for a relative path from the current
    directory down (getcwd is already physical), for an absolute path from `/` down, or from the
    current directory when it lies below it (as getcwd or the shell's $PWD spell it) — and the final
    one too. A symlink is refused (UnsafeInputError, exit 4) naming the link and where it points,
    unless `allow_symlinks` (`--allow-symlinked-output`). The one exemption: a root-owned symlink
    directly in a root-only `/` (macOS `/tmp` → `private/tmp`, `/var`) is the system's layout.

    Returns the path to write to: `path` itself, or its resolved form when a link was followed, so
    later checks of the same directory (each staging directory's parent) see no link again."""
    path = Path(path)
    try:
        cwd = Path(os.getcwd())
    except OSError as exc:
        raise UnsafeInputError(f"output path {path}: cannot determine the current directory "
                               f"({exc.strerror})") from None
    start, parts = _output_start(path, cwd)
    cur, followed = start, False
    for part in parts:
        if part == "..":            # `cur` is physical here (no link so far, or resolved), so `..` is too
            cur = cur.parent
            continue
        cur = cur / part
        try:
            st = os.lstat(cur)
        except OSError:             # missing (pocketml creates it) or not a directory (mkdir says so, exit 7)
            continue
        if not stat.S_ISLNK(st.st_mode):
            continue
        if not (allow_symlinks or _system_link(cur, st)):
            raise UnsafeInputError(_symlink_refusal(path, cur), path=str(path), link=str(cur),
                                   target=_readlink(cur))
        cur, followed = Path(os.path.realpath(cur)), True
    return cur if followed else path


def _output_start(path: Path, cwd: Path) -> tuple[Path, tuple[str, ...]]:
    """Where the walk starts and the components it checks."""
    if not path.is_absolute():
        return cwd, path.parts
    for base in (cwd, _shell_pwd(cwd)):
        if base is not None and (path == base or base in path.parents):
            return cwd, path.relative_to(base).parts
    return Path(path.anchor), path.parts[1:]


def _shell_pwd(cwd: Path) -> Path | None:
    """$PWD when it names the current directory (the shell's spelling, possibly through links)."""
    pwd = os.environ.get("PWD")
    try:
        return Path(pwd) if pwd and os.path.isabs(pwd) and os.path.samefile(pwd, cwd) else None
    except OSError:
        return None


def _system_link(link: Path, st: os.stat_result) -> bool:
    if link.parent != Path(link.anchor) or st.st_uid != 0:
        return False
    root = os.lstat(link.anchor)
    return root.st_uid == 0 and not root.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def _readlink(link: Path) -> str:
    try:
        return os.readlink(link)
    except OSError as exc:
        return f"? ({exc.strerror})"


def _symlink_refusal(path: Path, link: Path) -> str:
    target = _readlink(link)
    where = target if os.path.isabs(target) else f"{target} (= {os.path.realpath(link)})"
    return (f"output path {path} goes through a symlink: {link} -> {where}; pocketml does not write "
            f"through symlinks (a planted link redirects the output). Remove the link, choose another "
            f"directory, or pass {OUTPUT_FLAG} to write there anyway (manifests and reports record it)")
