"""Minimum versions of the libraries that parse untrusted files, checked at start-up.

`check_versions()` is run by the commands that load files (`pocketml convert`, `pocketml profile`).
An installed version below its minimum is refused with EnvironmentMissing (exit 7) naming the
package, the version found, the minimum and the CVE it fixes. A package that is not installed
is not this check's business (the extras check names it when it is needed). Versions are read
from package metadata: nothing is imported.
"""
from __future__ import annotations

import re
from importlib import metadata

from .errors import EnvironmentMissing

# package → list of (release line, minimum, CVEs fixed by it). The release line is the major
# version a minimum applies to (None: every line); a version on an older line than any listed is
# refused with the first entry.
MINIMUMS: dict[str, list[tuple[int | None, str, str]]] = {
    "onnx": [(None, "1.21.0", "CVE-2026-27489, CVE-2026-34445, CVE-2026-34446 (external-data path traversal "
                              "via symlinks / hard links, attribute injection)")],
    "protobuf": [(5, "5.29.6", "CVE-2026-0994 (recursion-limit bypass: nested Any messages crash the parser)"),
                 (6, "6.33.5", "CVE-2026-0994 (recursion-limit bypass: nested Any messages crash the parser)")],
    "torch": [(None, "2.10.0", "CVE-2025-32434, CVE-2026-24747 (torch.load(weights_only=True) bypasses that "
                               "run code from a checkpoint)")],
}
RUNTIME_PACKAGES = ("onnx", "protobuf")
CONVERT_PACKAGES = ("onnx", "protobuf", "torch")

_VERSION = re.compile(r"^\s*v?(\d+(?:\.\d+)*)(.*)$")


def parse_version(text: str) -> tuple[tuple[int, ...], bool]:
    """(release numbers, is_final). "2.13.0+cpu" → ((2, 13, 0), True); "1.21.0rc1" → ((1, 21, 0), False).
    Anything unparsable is ((0,), False): refused rather than guessed."""
    m = _VERSION.match(text or "")
    if not m:
        return (0,), False
    release = tuple(int(x) for x in m.group(1).split("."))
    while len(release) > 1 and release[-1] == 0:
        release = release[:-1]
    rest = m.group(2).lower().lstrip(".-_")
    final = rest == "" or rest.startswith("+") or rest.startswith("post")
    return release, final


def at_least(found: str, minimum: str) -> bool:
    f_rel, f_final = parse_version(found)
    m_rel, _ = parse_version(minimum)
    return f_rel > m_rel or (f_rel == m_rel and f_final)


def requirement(package: str, found: str) -> tuple[str, str] | None:
    """(minimum, CVEs) that `found` fails, or None when it is recent enough."""
    rules = MINIMUMS[package]
    major = parse_version(found)[0][0]
    lines = [r for r in rules if r[0] is not None]
    if not lines:
        _, minimum, cves = rules[0]
        return None if at_least(found, minimum) else (minimum, cves)
    for line, minimum, cves in lines:
        if major == line:
            return None if at_least(found, minimum) else (minimum, cves)
    if major < min(r[0] for r in lines):
        return rules[0][1], rules[0][2]
    return None     # a newer release line than any listed carries the fixes


def installed(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def check_versions(packages=RUNTIME_PACKAGES) -> None:
    problems = []
    for package in packages:
        found = installed(package)
        if found is None:
            continue
        failed = requirement(package, found)
        if failed:
            minimum, cves = failed
            problems.append((package, found, minimum, cves))
    if problems:
        lines = [f"{p} {found} is older than {minimum}, which fixes {cves}" for p, found, minimum, cves in problems]
        upgrade = " ".join(f"'{p}>={m}'" for p, _, m, _ in problems)
        raise EnvironmentMissing("refusing to load model files with vulnerable libraries: " + "; ".join(lines)
                                 + f". Upgrade: pip install -U {upgrade}",
                                 packages=[p for p, *_ in problems])
