"""profiler/host: what a measurement says about the machine it ran on, read from this machine."""
from __future__ import annotations

import platform
from pathlib import Path

import pytest

from pocketml.profiler import host


@pytest.mark.skipif(not Path("/proc/cpuinfo").is_file(), reason="needs /proc/cpuinfo (Linux)")
def test_cpu_id_names_the_simd_extensions_present_on_this_cpu():
    flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            flags = set(value.split())
            break
    ident = host.cpu_id()
    assert ident["simd"] == [f for f in host.SIMD_FLAGS if f in flags]
    if platform.machine() == "x86_64":
        assert ident["cpu family"].isdigit() and ident["model"].isdigit()
        assert f"family {ident['cpu family']} model {ident['model']}" in host.cpu_line()
    assert host.cpu_line().startswith(host.cpu_model())
    assert host.info()["cpu_id"] == ident


def test_saturating_host_is_named_only_for_static_int8_of_a_saturating_runtime_on_x86_without_vnni():
    from pocketml.convert.validate import saturating_host
    from pocketml.runtime import cpu, formats
    static = {"method": "static int8, per-channel weights, QDQ, calibrated"}
    saturating = [f for f in formats.FORMAT_NAMES if formats.get(f).int8_saturates_without_vnni]
    assert saturating == ["onnx"]
    for name in formats.FORMAT_NAMES:
        entry = formats.get(name)
        assert saturating_host(entry, {"method": "dynamic int8, per-channel weights"}) is None
        assert saturating_host(entry, None) is None
        why = saturating_host(entry, static)
        assert (why is not None) == (name in saturating and cpu.int8_pairs_saturate())
        if why:
            assert "no VNNI" in why
    expected = platform.machine().lower() in ("x86_64", "amd64") and not set(host.cpu_id()["simd"]) & set(cpu.VNNI_FLAGS)
    assert cpu.int8_pairs_saturate() == expected
