"""Atomic publishing: an artifact directory appears complete (with its manifest) or not at all.

Work happens in a sibling temporary directory named `.<name>.tmp-<pid>-<rand>`; `publish`
renames it into place (replacing an older artifact with one atomic exchange where the OS has
renameat2(RENAME_EXCHANGE)). Every temporary pocketml creates in an output directory — staging
directories, the work directory, write probes, single files being written — carries the
`.tmp-<pid>-` mark, so:

- SIGINT (Ctrl-C) unwinds through `staging_dir`'s cleanup: nothing of this run is left (the cleanup
  and the replace-an-artifact renames hold SIGINT/SIGTERM, so a second Ctrl-C cannot cut them short);
- SIGKILL leaves only marked temporaries, never a directory that looks like an artifact; the
  next run removes them (`clean_stale`), but only once the process that owned them is gone;
- a full or read-only disk (ENOSPC, EDQUOT, EROFS, EACCES/EPERM on write) raised anywhere inside
  a staging block — even wrapped by a converter in another error — becomes EnvironmentMissing
  (exit 7) after the temporaries are removed.
"""
from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import signal
import stat
import threading
from pathlib import Path

from .errors import EnvironmentMissing, UnsafeInputError, UsageError
from .paths import output_dir

TMP_MARK = ".tmp-"
DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}


def disk_error(exc: BaseException) -> OSError | None:
    """The OSError meaning "this disk cannot take the output", if `exc` is or wraps one."""
    for _ in range(16):      # explicit causes only (`raise X from oserror`), as converters wrap errors
        if exc is None:
            break
        if isinstance(exc, OSError) and exc.errno in DISK_ERRNOS:
            return exc
        exc = exc.__cause__
    return None


def _disk_failure(where: Path, err: OSError) -> EnvironmentMissing:
    code = errno.errorcode.get(err.errno, err.errno)
    return EnvironmentMissing(f"cannot write {where}: {err.strerror or err} ({code}); free some space or "
                              "choose a writable output directory", path=str(where), errno=code)


@contextlib.contextmanager
def uninterrupted():
    """Hold SIGINT/SIGTERM while a cleanup or a two-step rename runs; a Ctrl-C pressed meanwhile is
    delivered (as KeyboardInterrupt) right after the block, not half-way through it."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


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
        if not (p.name.startswith(".") and TMP_MARK in p.name):
            continue
        try:
            pid = int(p.name.split(TMP_MARK, 1)[1].split("-", 1)[0])
        except ValueError:
            continue
        if pid <= 0 or _pid_alive(pid):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                p.unlink()
        removed.append(p)
    return removed


def ensure_writable_dir(path: Path, allow_symlinks: bool = False) -> Path:
    """Create `path` (and parents) after `paths.output_dir` checked it (a symlink on the way: exit 4,
    nothing created). Exit 7 when the disk or permissions refuse. Returns the path to write to."""
    path = output_dir(path, allow_symlinks)
    probe = path / f".write-probe{TMP_MARK}{os.getpid()}-{secrets.token_hex(3)}"
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        with contextlib.suppress(OSError):
            probe.unlink()
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
    except Exception as exc:
        err = disk_error(exc)
        if err is not None and not isinstance(exc, EnvironmentMissing):
            raise _disk_failure(final, err) from exc
        raise
    finally:   # also on KeyboardInterrupt (SIGINT) and SystemExit
        with uninterrupted():
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)


def publish(tmp: Path, final: Path, replace: bool = True) -> Path:
    """Move a finished staging directory into place. Refuse to clobber non-artifacts."""
    final = Path(final)
    if final.is_symlink():
        raise UsageError(f"refusing to publish over a symlink: {final}")
    normalise_modes(tmp)
    try:
        if final.exists():
            if not replace:
                raise UsageError(f"{final} exists")
            if final.is_dir() and not (final / "manifest.json").exists():
                raise UsageError(f"{final} exists and is not a pocketml artifact (no manifest.json); "
                                 "refusing to overwrite it")
            with uninterrupted():
                if _exchange(tmp, final):       # one atomic step: `final` is never missing
                    shutil.rmtree(tmp, ignore_errors=True)
                    return final
                old = final.parent / f".{final.name}{TMP_MARK}{os.getpid()}-old-{secrets.token_hex(3)}"
                os.replace(final, old)
                try:
                    os.replace(tmp, final)
                except BaseException:
                    os.replace(old, final)
                    raise
                shutil.rmtree(old, ignore_errors=True)
            return final
        os.replace(tmp, final)
    except OSError as exc:
        if exc.errno in DISK_ERRNOS:
            raise _disk_failure(final, exc) from exc
        raise
    return final


FILE_MODE, DIR_MODE = 0o644, 0o755


def open_lock(path: Path):
    """Open (create) a lock file in an output directory without following a planted symlink and
    without blocking on a planted FIFO. Returns a text file object to `flock`."""
    path = Path(path)
    flags = (os.O_WRONLY | os.O_CREAT | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0)
             | getattr(os, "O_CLOEXEC", 0))
    try:
        fd = os.open(path, flags, FILE_MODE)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENXIO):
            raise UnsafeInputError(f"{path}: a symlink or FIFO where pocketml keeps its lock file; "
                                   "refusing to write through it") from None
        raise EnvironmentMissing(f"cannot create {path}: {exc.strerror}", path=str(path)) from exc
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UnsafeInputError(f"{path}: not a regular file where pocketml keeps its lock file")
    return os.fdopen(fd, "w")


def _umask() -> int:
    """The process umask, read without changing it (Linux /proc); 0o022 where unreadable."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def normalise_modes(root: Path) -> None:
    """Published files are 0o644 and directories 0o755 (less what the umask takes away), whatever
    mode a converter created them with: ai-edge-quantizer writes through `os.open(path, O_CREAT)`
    with Python's default mode 0o777, which made every fp16 / dynamic-int8 .tflite executable."""
    mask = _umask()
    for dirpath, dirnames, filenames in os.walk(root):
        os.chmod(dirpath, DIR_MODE & ~mask)
        for name in filenames:
            p = os.path.join(dirpath, name)
            if not os.path.islink(p):
                os.chmod(p, FILE_MODE & ~mask)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two directories (Linux renameat2 RENAME_EXCHANGE). False where unsupported."""
    import sys
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def write_file_atomic(path: Path, data: bytes) -> Path:
    """Write a single file via a temporary sibling and rename."""
    path = Path(path)
    tmp = path.parent / f".{path.name}{TMP_MARK}{os.getpid()}-{secrets.token_hex(3)}"
    try:
        with open(tmp, "xb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise EnvironmentMissing(f"cannot write {path}: {exc.strerror}") from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
