"""Device profiles: every shipped profile loads; bad names and bad files are refused with exit 2."""
from __future__ import annotations

import json
import re

import pytest
from conftest import run_cli

from pocketml.profiler import devices
from pocketml.runtime.errors import UsageError

SHIPPED = devices.available()


def test_profiles_are_shipped():
    assert len(SHIPPED) >= 10
    assert {"pixel-7", "iphone-15-pro", "budget-a55"} <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_profile_loads(name):
    p = devices.load(name)
    assert p["name"] == name                                 # profiles/README.md: name = file name
    assert p["schema"] == 1 and p["os"] in ("android", "ios", "linux")
    t = p["targets"]
    assert t["p90_latency_ms"] > 0 and 0 < t["max_accuracy_drop"] < 1 and t["max_size_mb"] > 0
    assert p["cpu"]["clusters"] and all(c["count"] >= 1 for c in p["cpu"]["clusters"])
    assert {"soc", "cpu", "memory", "caches"} <= set(p["sources"])
    assert all(re.match(r"https?://", url) for url in p["sources"].values())


def test_devices_command_lists_every_profile():
    r = run_cli("devices", "--json")
    assert r.exit_code == 0, r.output
    listed = json.loads(r.output)
    assert [p["name"] for p in listed] == SHIPPED
    table = run_cli("devices")
    assert table.exit_code == 0 and "Google Pixel 7" in table.output


def test_unknown_device_suggests_names(cnn_out, tmp_path):
    r = run_cli("profile", cnn_out / "onnx-fp32", "--device", "pixel7", "-o", tmp_path)
    assert r.exit_code == 2, r.output
    assert "unknown device profile 'pixel7'" in r.output
    assert "Did you mean pixel-7" in r.output
    assert not (tmp_path / "report.json").exists()


def _profile_without(tmp_path, line_prefix: str, section: str):
    text = (devices.profiles_dir() / "pixel-7.toml").read_text()
    lines, current = [], None
    for line in text.splitlines():
        if line.startswith("["):
            current = line.strip()
        if current == section and line.startswith(line_prefix):
            continue
        lines.append(line)
    path = tmp_path / "broken-phone.toml"
    path.write_text("\n".join(lines) + "\n")
    assert path.read_text() != text
    return path


def test_profile_missing_a_target_names_the_field(cnn_out, tmp_path):
    path = _profile_without(tmp_path, "p90_latency_ms", "[targets]")
    with pytest.raises(UsageError, match=r"missing field 'targets.p90_latency_ms'"):
        devices.load(str(path))
    r = run_cli("profile", cnn_out / "onnx-fp32", "--device", path, "-o", tmp_path / "reports")
    assert r.exit_code == 2, r.output
    assert str(path) in r.output and "targets.p90_latency_ms" in r.output
    assert not (tmp_path / "reports").exists()


def test_profile_missing_a_cluster_field_names_it(tmp_path):
    path = _profile_without(tmp_path, "int8_dot", "[[cpu.clusters]]")
    with pytest.raises(UsageError, match=r"cpu.clusters\[0\].int8_dot"):
        devices.load(str(path))


def test_profile_with_a_wrong_type_names_the_field(tmp_path):
    text = (devices.profiles_dir() / "pixel-7.toml").read_text().replace("ram_gb = 8", 'ram_gb = "8"')
    path = tmp_path / "typo.toml"
    path.write_text(text)
    with pytest.raises(UsageError, match=r"field 'memory.ram_gb' is str '8'"):
        devices.load(str(path))


def test_profile_that_is_not_toml(tmp_path):
    path = tmp_path / "junk.toml"
    path.write_text("this is [not toml\n")
    with pytest.raises(UsageError, match="not valid TOML"):
        devices.load(str(path))
