"""Paths pocketml writes: an output path through a symlink is refused before anything is created.

`runtime/paths.output_dir` is the one check (convert, demo, profile reports, the lock file and work
directory inside an output directory). Each case asserts the exit code, that the message names the
link and where it points, that nothing was created anywhere (the whole temporary tree is compared
before and after; the link's target stays empty), and that `--allow-symlinked-output` writes there and
is recorded. Also here: reports never land inside an artifact, published files are not executable,
and a conversion writes nothing under $HOME.
"""
from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest
from conftest import artifact_names, assert_no_partial, run_cli
from faultkit import W, one_line, write_artifact, write_reference

MLP = "models:tiny_mlp"
FLAG = "--allow-symlinked-output"


def tree(root) -> set[str]:
    """Every path under `root` (links not followed), relative to it."""
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.fixture
def site(tmp_path, monkeypatch):
    """cwd = tmp_path/work (holding a hand-built ONNX artifact `arts/onnx-fp32` with a reference set),
    and tmp_path/elsewhere: the empty directory the planted links point to."""
    from faultkit import onnx_with_external
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    elsewhere.mkdir()
    write_artifact(work / "arts" / "onnx-fp32", onnx_with_external("initializer", "w.bin"),
                   extra={"w.bin": W.tobytes()})
    write_reference(work / "arts")
    monkeypatch.chdir(work)
    return work, elsewhere


def _refused(result, link, target) -> None:
    text = one_line(result.output)
    assert result.exit_code == 4, result.output
    assert f"goes through a symlink: {link} -> {target}" in text, text
    assert FLAG in text and "Traceback" not in result.output


# ------------------------------------------------------------------ convert

@pytest.mark.parametrize("layout", ["final", "intermediate", "absolute"])
def test_convert_refuses_symlinked_output(site, tmp_path, layout):
    work, elsewhere = site
    link = work / ("out" if layout != "intermediate" else "link")
    link.symlink_to("../elsewhere" if layout == "intermediate" else elsewhere)
    out = {"final": "out", "intermediate": "link/sub/out", "absolute": str(work / "out")}[layout]
    before = tree(tmp_path)
    r = run_cli("convert", MLP, "--to", "onnx", "-o", out)
    _refused(r, link, elsewhere if layout != "intermediate" else f"../elsewhere (= {elsewhere})")
    assert tree(tmp_path) == before                    # nothing created anywhere
    assert list(elsewhere.iterdir()) == []


def test_convert_refuses_planted_lock_file_link(site, tmp_path):
    """Inside a real output directory: the reference lock file is opened with O_NOFOLLOW."""
    work, elsewhere = site
    (work / "out").mkdir()
    victim = elsewhere / "victim"
    victim.write_text("keep me")
    (work / "out" / ".reference.lock").symlink_to(victim)
    r = run_cli("convert", MLP, "--to", "onnx", "-o", "out")
    assert r.exit_code == 4, r.output
    assert "out/.reference.lock: a symlink or FIFO" in one_line(r.output)
    assert victim.read_text() == "keep me"
    assert artifact_names(work / "out") == set()
    assert_no_partial(work / "out")


def test_convert_with_flag_writes_through_link_and_records_it(site):
    work, elsewhere = site
    (work / "out").symlink_to(elsewhere)
    r = run_cli("convert", MLP, "--to", "onnx", "-o", "out", FLAG)
    assert r.exit_code == 0, r.output
    assert artifact_names(elsewhere) == {"onnx-fp32", "reference"}
    manifest = json.loads((elsewhere / "onnx-fp32" / "manifest.json").read_text())
    assert manifest["recipe"]["options"]["allow_symlinked_output"] is True
    assert_no_partial(elsewhere)


def test_demo_refuses_symlinked_output(site, tmp_path):
    work, elsewhere = site
    (work / "out").symlink_to(elsewhere)
    before = tree(tmp_path)
    r = run_cli("demo", "-o", "out")
    _refused(r, work / "out", elsewhere)
    assert tree(tmp_path) == before


# ------------------------------------------------------------------ the rule itself (runtime/paths.output_dir)

def test_output_rule_for_absolute_paths(site, tmp_path, monkeypatch):
    """Outside the current directory every component from `/` is checked; below it (spelled as getcwd
    or as the shell's $PWD through a link) only the components from the current directory down."""
    from pocketml.runtime.errors import UnsafeInputError
    from pocketml.runtime.paths import output_dir
    work, elsewhere = site
    (tmp_path / "hop").symlink_to(elsewhere)
    with pytest.raises(UnsafeInputError, match=f"{tmp_path / 'hop'} -> {elsewhere}"):
        output_dir(tmp_path / "hop" / "out")                       # absolute, outside cwd
    assert output_dir(tmp_path / "hop" / "out", allow_symlinks=True) == elsewhere / "out"
    (tmp_path / "alias").symlink_to(work)                          # the shell cd'ed through a link
    monkeypatch.setenv("PWD", str(tmp_path / "alias"))
    assert output_dir(tmp_path / "alias" / "out") == tmp_path / "alias" / "out"
    (work / "out").symlink_to(elsewhere)
    with pytest.raises(UnsafeInputError, match="out -> "):
        output_dir(tmp_path / "alias" / "out")                     # final component still checked
    with pytest.raises(UnsafeInputError):
        output_dir("sub/../out")                                   # `..` does not hide a component
    assert list(elsewhere.iterdir()) == []


def test_output_rule_exempts_root_owned_links_in_root():
    """macOS `/tmp` → `private/tmp`, merged-/usr `/lib` → `usr/lib`: root-owned links directly in a
    root-only `/` are the system's layout. Nothing is created by the check."""
    from pocketml.runtime.paths import output_dir
    links = [p for p in ("/lib", "/bin", "/tmp", "/var") if os.path.islink(p) and os.lstat(p).st_uid == 0]
    if not links:
        pytest.skip("no root-owned symlink directly in / on this system")
    missing = os.path.join(links[0], "pocketml-no-such-dir", "out")
    assert output_dir(missing) == Path(os.path.realpath(missing))
    assert not os.path.exists(os.path.dirname(missing))


# ------------------------------------------------------------------ profile reports

@pytest.mark.parametrize("layout", ["final", "intermediate"])
def test_profile_refuses_symlinked_report_dir(site, tmp_path, layout):
    work, elsewhere = site
    link = work / ("reports" if layout == "final" else "link")
    link.symlink_to(elsewhere)
    before = tree(tmp_path)
    r = run_cli("profile", "arts/onnx-fp32", "--runs", "2", "--warmup", "0",
                "-o", "reports" if layout == "final" else "link/reports")
    _refused(r, link, elsewhere)
    assert "Latency" not in r.output                   # refused before profiling
    assert tree(tmp_path) == before
    assert list(elsewhere.iterdir()) == []


def test_profile_with_flag_writes_through_link_and_records_it(site):
    work, elsewhere = site
    (work / "reports").symlink_to(elsewhere)
    r = run_cli("profile", "arts/onnx-fp32", "--runs", "2", "--warmup", "0", "-o", "reports", FLAG)
    assert r.exit_code == 0, r.output
    report = json.loads((elsewhere / "report.json").read_text())
    assert report["settings"]["allow_symlinked_output"] is True
    assert sorted(os.listdir(elsewhere)) == ["report.json", "report.md"]


def test_profile_default_reports_beside_the_artifact_not_inside(site):
    work, _ = site
    art = work / "arts" / "onnx-fp32"
    before = sorted(os.listdir(art))
    r = run_cli("profile", "arts/onnx-fp32", "--runs", "2", "--warmup", "0")
    assert r.exit_code == 0, r.output
    assert sorted(os.listdir(art)) == before             # the checksummed artifact is untouched
    assert (work / "arts" / "report.json").is_file() and (work / "arts" / "report.md").is_file()


@pytest.mark.parametrize("where", ["arts/onnx-fp32", "arts/onnx-fp32/sub", "arts/reference"])
def test_profile_refuses_reports_inside_an_artifact(site, tmp_path, where):
    work, _ = site
    before = tree(tmp_path)
    r = run_cli("profile", "arts/onnx-fp32", "--runs", "2", "--warmup", "0", "-o", where)
    assert r.exit_code == 2, r.output
    assert "is inside the artifact" in one_line(r.output) and where.split("/sub")[0] in r.output
    assert tree(tmp_path) == before


# ------------------------------------------------------------------ what gets published

def test_publish_normalises_modes(tmp_path):
    """ai-edge-quantizer creates its .tflite with mode 0o777 (os.open's default): published files are
    0o644 and directories 0o755, less the umask."""
    from pocketml.runtime.atomic import normalise_modes, publish
    mask = os.umask(0o022)
    os.umask(mask)
    tmp = tmp_path / ".a.tmp-1-x"
    (tmp / "pkg").mkdir(parents=True)
    for p in (tmp / "model.tflite", tmp / "pkg" / "weight.bin"):
        p.write_bytes(b"x")
        p.chmod(0o777)
    (tmp / "pkg").chmod(0o700)
    final = publish(tmp, tmp_path / "a")
    assert stat.S_IMODE((final / "model.tflite").stat().st_mode) == 0o644 & ~mask
    assert stat.S_IMODE((final / "pkg" / "weight.bin").stat().st_mode) == 0o644 & ~mask
    assert stat.S_IMODE((final / "pkg").stat().st_mode) == 0o755 & ~mask
    normalise_modes(final)                      # idempotent on a published tree
    assert stat.S_IMODE((final / "model.tflite").stat().st_mode) == 0o644 & ~mask


def test_tflite_fp16_is_not_executable(tmp_path):
    out = tmp_path / "out"
    r = run_cli("convert", MLP, "--to", "tflite", "--precision", "fp16", "-o", out)
    assert r.exit_code == 0, r.output
    files = [p for p in out.rglob("*") if p.is_file()]
    assert files and not [p for p in files if p.stat().st_mode & 0o111], files


def _env_without_telemetry_setting(home):
    from conftest import subprocess_env
    env = subprocess_env(HOME=str(home), XDG_CACHE_HOME=str(home / ".cache"))
    env.pop("ORT_DISABLE_TELEMETRY", None)
    env.pop("CI", None)        # onnxruntime keeps no telemetry when CI is set (measured): a user's shell has no CI
    return env


def test_conversion_and_profile_write_nothing_under_home(tmp_path):
    """onnxruntime (1.2x, Linux) keeps a telemetry device id and event database under
    $XDG_CACHE_HOME (~/.cache)/Microsoft/DeveloperTools/.onnxruntime/ unless ORT_DISABLE_TELEMETRY is set
    before it is imported; pocketml sets it (pocketml/__init__.py). The control shows the probe is live:
    a bare onnxruntime session with the same empty HOME does write there."""
    import subprocess
    art = write_artifact(tmp_path / "arts" / "onnx-fp32", _plain_onnx())
    control = tmp_path / "control-home"
    control.mkdir()
    subprocess.run([sys.executable, "-c", f"import onnxruntime as o; o.InferenceSession({str(art / 'model.onnx')!r})"],
                   env=_env_without_telemetry_setting(control), check=True, capture_output=True, timeout=120)
    assert any(p.name == "onnxruntime.db" for p in control.rglob("*")), list(control.rglob("*"))

    home, out = tmp_path / "home", tmp_path / "out"
    home.mkdir()
    env = _env_without_telemetry_setting(home)
    cli = [sys.executable, "-c", "import sys; from pocketml.cli.main import main; sys.argv[0] = 'pocketml'; main()"]
    for args in (["convert", MLP, "--to", "onnx", "-o", out],
                 ["profile", out / "onnx-fp32", "--runs", "2", "--warmup", "0", "-o", tmp_path / "r"]):
        proc = subprocess.run(cli + [str(a) for a in args], env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    assert list(home.rglob("*")) == []


def _plain_onnx() -> bytes:
    from onnx import TensorProto as T
    from onnx import helper as h
    x, y = (h.make_tensor_value_info(n, T.FLOAT, [1, 4]) for n in ("x", "y"))
    graph = h.make_graph([h.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 18)], ir_version=9).SerializeToString()
