"""Libraries below the versions that fix known file-parsing CVEs: `convert` and `profile` refuse to
start (exit 7), naming the package, the version found, the minimum and the CVE; nothing is written."""
from __future__ import annotations

import pytest
from conftest import CNN, run_cli

from pocketml.runtime import versions
from pocketml.runtime.errors import EnvironmentMissing


def _pretend(monkeypatch, **found):
    real = versions.installed
    monkeypatch.setattr(versions, "installed", lambda pkg: found.get(pkg, real(pkg)))


@pytest.mark.parametrize("package, old, minimum, cve", [
    ("onnx", "1.20.1", "1.21.0", "CVE-2026-27489"),
    ("protobuf", "5.29.5", "5.29.6", "CVE-2026-0994"),
    ("protobuf", "6.33.4", "6.33.5", "CVE-2026-0994"),
    ("protobuf", "4.25.8", "5.29.6", "CVE-2026-0994"),
    ("torch", "2.9.1", "2.10.0", "CVE-2026-24747"),
])
def test_convert_refuses_vulnerable_library(tmp_path, monkeypatch, package, old, minimum, cve):
    _pretend(monkeypatch, **{package: old})
    out = tmp_path / "out"
    r = run_cli("convert", CNN, "--to", "onnx", "-o", out)
    assert r.exit_code == 7, r.output
    text = " ".join(r.output.split())
    assert f"{package} {old} is older than {minimum}" in text and cve in text
    assert f"pip install -U '{package}>={minimum}'" in text
    assert not out.exists()


@pytest.mark.parametrize("package, old, cve", [("onnx", "1.19.0", "CVE-2026-34446"),
                                               ("protobuf", "5.28.0", "CVE-2026-0994")])
def test_profile_refuses_vulnerable_library(cnn_out, tmp_path, monkeypatch, package, old, cve):
    _pretend(monkeypatch, **{package: old})
    reports = tmp_path / "reports"
    r = run_cli("profile", cnn_out / "onnx-fp32", "--runs", "2", "-o", reports)
    assert r.exit_code == 7, r.output
    assert package in r.output and old in r.output and cve in r.output
    assert not reports.exists()


def test_profile_does_not_need_torch_recent(cnn_out, tmp_path, monkeypatch):
    """torch is only checked where it is used: converting."""
    _pretend(monkeypatch, torch="2.5.0")
    r = run_cli("profile", cnn_out / "onnx-fp32", "--runs", "2", "--warmup", "0", "--max-latency", "10000ms",
                "--max-drop", "100%", "-o", tmp_path / "reports")
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("found, ok", [("1.21.0", True), ("1.21", True), ("1.23.2", True), ("1.21.0rc1", False),
                                       ("1.21.0.post1", True), ("1.20.99", False), ("junk", False), ("", False)])
def test_version_comparison(found, ok):
    assert (versions.requirement("onnx", found) is None) == ok


def test_missing_package_is_not_this_checks_business(monkeypatch):
    monkeypatch.setattr(versions, "installed", lambda pkg: None)
    versions.check_versions(versions.CONVERT_PACKAGES)          # no raise


def test_all_problems_are_named_at_once(monkeypatch):
    _pretend(monkeypatch, onnx="1.18.0", protobuf="5.29.0")
    with pytest.raises(EnvironmentMissing) as err:
        versions.check_versions()
    assert err.value.exit_code == 7 and err.value.details["packages"] == ["onnx", "protobuf"]
