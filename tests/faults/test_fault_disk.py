"""A read-only or full output disk: exit 7 naming the cause, every temporary removed, nothing partial.

Two mechanisms, both run where possible:

- real file systems: a tmpfs mounted read-only, and a tiny tmpfs filled until only 16 KiB are free, so
  the conversion hits a genuine ENOSPC part-way. Needs root with mount rights (CAP_SYS_ADMIN); skipped
  otherwise. (chmod 0o555 is no test here: the suite runs as root, which ignores it.)
- simulated, always: the conversion runs in a subprocess with a `sitecustomize` that makes every
  write-mode open/mkdir/rename under the output directory fail with EROFS, or every write into the
  ONNX artifact's staging and work directories fail with ENOSPC — mid-artifact, after the
  reference set was published.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
from conftest import CNN, artifact_names, assert_no_partial, run_cli, subprocess_env

SITECUSTOMIZE = textwrap.dedent('''
    import builtins, errno, io, os
    _OUT = os.path.abspath(os.environ["POCKETML_TEST_FS_OUT"])
    _MODE = os.environ["POCKETML_TEST_FS_MODE"]            # "rofs" or "full"
    _ERR = errno.EROFS if _MODE == "rofs" else errno.ENOSPC
    _MARKS = (".onnx-fp32.tmp-", ".work.tmp-")

    def _hit(path):
        try:
            p = os.path.abspath(os.fsdecode(os.fspath(path)))
        except TypeError:
            return False
        if not (p == _OUT or p.startswith(_OUT + os.sep)):
            return False
        return _MODE == "rofs" or any(m in p for m in _MARKS)

    def _fail(path):
        raise OSError(_ERR, os.strerror(_ERR), os.fsdecode(os.fspath(path)))

    _open = io.open
    def _patched_open(file, mode="r", *args, **kwargs):
        if not isinstance(file, int) and any(c in mode for c in "wax+") and _hit(file):
            _fail(file)
        return _open(file, mode, *args, **kwargs)
    builtins.open = io.open = _patched_open

    _os_open = os.open
    def _patched_os_open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and _hit(path):
            _fail(path)
        return _os_open(path, flags, *args, **kwargs)
    os.open = _patched_os_open

    if _MODE == "rofs":
        for _name in ("mkdir", "replace", "rename"):
            def _wrap(real):
                def patched(src, *args, **kwargs):
                    if _hit(src):
                        _fail(src)
                    return real(src, *args, **kwargs)
                return patched
            setattr(os, _name, _wrap(getattr(os, _name)))
''')


def _simulated(tmp_path, mode: str, out):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = subprocess_env(POCKETML_TEST_FS_OUT=str(out), POCKETML_TEST_FS_MODE=mode)
    env["PYTHONPATH"] = os.pathsep.join([str(site), env["PYTHONPATH"]])
    return subprocess.run([sys.executable, "-c", "import sys; from pocketml.cli.main import main; "
                           "sys.argv[0] = 'pocketml'; main()", "convert", CNN, "--to", "onnx", "-o", str(out)],
                          capture_output=True, text=True, timeout=300, env=env)


def test_simulated_read_only_output_dir(tmp_path):
    out = tmp_path / "out"
    proc = _simulated(tmp_path, "rofs", out)
    assert proc.returncode == 7, proc.stdout + proc.stderr
    assert f"output directory {out} is not writable: Read-only file system" in proc.stderr
    assert not out.exists()


def test_simulated_disk_full_mid_artifact(tmp_path):
    out = tmp_path / "out"
    proc = _simulated(tmp_path, "full", out)
    assert proc.returncode == 7, proc.stdout + proc.stderr
    assert f"cannot write {out / 'onnx-fp32'}: No space left on device (ENOSPC)" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert artifact_names(out) == {"reference"}          # published before the disk "filled"
    assert "onnx-fp32" not in os.listdir(out)
    assert_no_partial(out)                               # staging and work directories removed


# ------------------------------------------------------------------------------- real file systems

@pytest.fixture
def tmpfs(tmp_path):
    mounted = []

    def mount(name: str, options: str):
        if os.geteuid() != 0:
            pytest.skip("mounting a tmpfs needs root")
        mnt = tmp_path / name
        mnt.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "pocketml-test", str(mnt)],
                           capture_output=True, text=True)
        if r.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
        mounted.append(mnt)
        return mnt

    yield mount
    for mnt in mounted:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_real_read_only_file_system(tmpfs):
    ro = tmpfs("ro", "ro,size=1m")
    out = ro / "out"
    r = run_cli("convert", CNN, "--to", "onnx", "-o", out)
    assert r.exit_code == 7, r.output
    assert f"output directory {out} is not writable: Read-only file system" in r.output
    assert not out.exists() and os.listdir(ro) == []


def test_real_full_disk(tmpfs):
    disk = tmpfs("full", "size=1m")
    st = os.statvfs(disk)
    (disk / "filler").write_bytes(b"\0" * (st.f_bavail * st.f_frsize - 16 * 1024))
    out = disk / "out"
    r = run_cli("convert", CNN, "--to", "onnx", "-o", out)
    assert r.exit_code == 7, r.output
    assert "No space left on device" in r.output
    assert "onnx-fp32" not in artifact_names(out) if out.exists() else True
    assert_no_partial(out)
    assert sorted(os.listdir(disk)) in (["filler"], ["filler", "out"])
