"""Exporters: one module per target format (named by the format registry, imported lazily).

What each format can do at each precision for each family kind is data in the format registry
(`pocketml.runtime.formats`, typed `Capability` rows), so a request is refused before any heavy
converter is imported.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from pocketml.runtime import formats
from pocketml.runtime.formats import Capability



def capability(fmt: str, precision: str, spec) -> Capability:
    """The format registry's row for this model's family kind (typed: calibrated / static / refused)."""
    return formats.capability(fmt, precision, spec.kind)


def method_for(fmt: str, precision: str, spec) -> str:
    """The quantization method, in words for people (manifests, docs). Never branch on it."""
    return capability(fmt, precision, spec).method


def refusal(fmt: str, precision: str, spec) -> str | None:
    """Why `fmt` cannot take `precision` for this model family, or None when it can."""
    return capability(fmt, precision, spec).refused


def needs_calibration(fmt: str, precision: str, spec) -> bool:
    return capability(fmt, precision, spec).calibrated


observer_for = formats.observer_for


@dataclass
class ExportResult:
    model_file: str                      # relative to the artifact directory
    inputs: list[dict]                   # name, shape, dtype, layout, quantization
    outputs: list[dict]
    quantization: dict
    notes: list[str] = field(default_factory=list)
    runtime_hints: dict = field(default_factory=dict)


def get_exporter(fmt: str):
    return formats.get(fmt).exporter_module()
