"""Error taxonomy shared by every stage. Each error carries its process exit code.

The codes are part of the public contract (README, docs/EXIT_CODES):
2 usage, 3 unsupported model/op, 4 unsafe or corrupt input refused,
5 validation failed, 6 target missed, 7 device/environment, 1 internal.
"""
from __future__ import annotations


class PocketmlError(Exception):
    """Base class. `exit_code` is what the CLI exits with."""

    exit_code = 1
    kind = "internal"

    def __init__(self, message: str, **details):
        super().__init__(message)
        self.details = details

    def as_dict(self) -> dict:
        return {"kind": self.kind, "exit_code": self.exit_code, "message": str(self), **self.details}


class UsageError(PocketmlError):
    """Bad arguments or bad user data (wrong shape, NaN, missing --calib...)."""

    exit_code = 2
    kind = "usage"


class UnsupportedError(PocketmlError):
    """A model, op or precision the target cannot take. `rejected` lists every op with a reason."""

    exit_code = 3
    kind = "unsupported"

    def __init__(self, message: str, rejected: list[dict] | None = None, **details):
        super().__init__(message, rejected=rejected or [], **details)
        self.rejected = rejected or []

    def table(self) -> str:
        rows = [f"  {r.get('node', '?'):<28} {r.get('op', '?'):<24} {r.get('target', '?'):<8} {r.get('reason', '')}"
                for r in self.rejected]
        head = f"  {'node':<28} {'op':<24} {'target':<8} reason"
        return "\n".join([head, *rows]) if rows else ""


class UnsafeInputError(PocketmlError):
    """Refused to load: corrupt, truncated, tampered or code-executing input."""

    exit_code = 4
    kind = "unsafe-input"


class ValidationFailed(PocketmlError):
    """A converted artifact disagrees with the fp32 reference beyond its tolerance."""

    exit_code = 5
    kind = "validation"


class TargetMissed(PocketmlError):
    exit_code = 6
    kind = "target-missed"


class EnvironmentMissing(PocketmlError):
    """A device, OS or optional extra that this machine lacks (e.g. Core ML off macOS)."""

    exit_code = 7
    kind = "environment"


def require_extra(module: str, extra: str, purpose: str):
    """Import `module` or raise EnvironmentMissing naming the pip extra that provides it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise EnvironmentMissing(
            f"{purpose} needs the '{extra}' extra ({module} is not installed): "
            f"pip install 'pocketml[{extra}]'",
            module=module, extra=extra) from exc


def require_dependency(module: str, package: str, purpose: str):
    """Import `module` from one of pocketml's own dependencies (pyproject `dependencies`, which every
    install has), or raise EnvironmentMissing naming the package: a broken install, not a missing extra."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise EnvironmentMissing(
            f"{purpose} needs {package}, a dependency of pocketml itself, which cannot be imported "
            f"({module}: {exc}): pip install '{package}' (or reinstall pocketml)",
            module=module, package=package) from exc
