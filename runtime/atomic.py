"""Atomic publishing: an artifact directory appears complete (with its manifest) or not at all.

Work happens in a sibling temporary directory named `.<name>.tmp-<pid>-<rand>`; `publish`
renames it into place. Stale temporaries from killed runs are removed on the next run, but
only when the process that owned them is gone.
"""
from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
from pathlib import Path

from .errors import EnvironmentMissing, UsageError

TMP_MARK = ".tmp-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale(parent: Path) -> list[Path]:
    """Remove `.X.tmp-PID-*` directories in `parent` whose PID is no longer running."""
    removed = []
    if not parent.is_dir():
        return removed
    for p in parent.iterdir():
        if not (p.name.startswith(".") and TMP_MARK in p.name) or p.is_symlink():
            continue
        try:
            pid = int(p.name.split(TMP_MARK, 1)[1].split("-", 1)[0])
        except ValueError:
            continue
        if not _pid_alive(pid):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def ensure_writable_dir(path: Path) -> Path:
    """Create `path` (and parents). Exit 7 when the disk or permissions refuse."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise EnvironmentMissing(f"output directory {path} is not writable: {exc.strerror}", path=str(path)) from exc
    return path


@contextlib.contextmanager
def staging_dir(final: Path):
    """Yield a fresh temporary directory beside `final`; remove it if the block fails.

    The caller publishes with `publish(tmp, final)` inside the block.
    """
    final = Path(final)
    ensure_writable_dir(final.parent)
    clean_stale(final.parent)
    tmp = final.parent / f".{final.name}{TMP_MARK}{os.getpid()}-{secrets.token_hex(3)}"
    try:
        tmp.mkdir()
    except OSError as exc:
        raise EnvironmentMissing(f"cannot create {tmp}: {exc.strerror}") from exc
    try:
        yield tmp
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def publish(tmp: Path, final: Path, replace: bool = True) -> Path:
    """Move a finished staging directory into place. Refuse to clobber non-artifacts."""
    final = Path(final)
    if final.is_symlink():
        raise UsageError(f"refusing to publish over a symlink: {final}")
    if final.exists():
        if not replace:
            raise UsageError(f"{final} exists")
        if final.is_dir() and not (final / "manifest.json").exists():
            raise UsageError(f"{final} exists and is not a pocketml artifact (no manifest.json); "
                             "refusing to overwrite it")
        old = final.parent / f".{final.name}{TMP_MARK}{os.getpid()}-old-{secrets.token_hex(3)}"
        os.replace(final, old)
        try:
            os.replace(tmp, final)
        except OSError:
            os.replace(old, final)
            raise
        shutil.rmtree(old, ignore_errors=True)
        return final
    try:
        os.replace(tmp, final)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EROFS, errno.EACCES):
            raise EnvironmentMissing(f"cannot publish {final}: {exc.strerror}") from exc
        raise
    return final


def write_file_atomic(path: Path, data: bytes) -> Path:
    """Write a single file via a temporary sibling and rename."""
    path = Path(path)
    tmp = path.parent / f".{path.name}{TMP_MARK}{os.getpid()}-{secrets.token_hex(3)}"
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise EnvironmentMissing(f"cannot write {path}: {exc.strerror}") from exc
    return path
