"""A missing optional extra: commands that need it exit 7 naming it; the others still work."""
from __future__ import annotations

import sys

from conftest import CNN, artifact_names, assert_no_partial, run_subprocess

# Run the CLI with coremltools unimportable (as if the package were not installed).
WITHOUT_COREMLTOOLS = (
    "import sys; sys.modules['coremltools'] = None; "
    "sys.argv = ['pocketml'] + sys.argv[1:]; "
    "from pocketml.cli.main import main; main()"
)


def test_coreml_without_coremltools_exits_7(tmp_path):
    out = tmp_path / "out"
    proc = run_subprocess([sys.executable, "-c", WITHOUT_COREMLTOOLS, "convert", CNN, "--to", "onnx,coreml",
                           "-o", out])
    assert proc.returncode == 7, proc.stdout + proc.stderr
    assert "--to coreml needs coremltools" in proc.stderr
    assert "'convert' extra" in proc.stderr and "pip install 'pocketml[convert]'" in proc.stderr
    assert not out.exists() or not artifact_names(out)     # refused before converting anything
    assert_no_partial(out)


def test_onnx_without_coremltools_still_converts(tmp_path):
    out = tmp_path / "out"
    proc = run_subprocess([sys.executable, "-c", WITHOUT_COREMLTOOLS, "convert", CNN, "--to", "onnx",
                           "-o", out])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 artifacts published" in proc.stdout
    assert artifact_names(out) == {"onnx-fp32", "reference"}
    assert_no_partial(out)
