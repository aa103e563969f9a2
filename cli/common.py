"""What every command shares: option parsers, the symlinked-output flag, and the one error → exit-code mapping."""
from __future__ import annotations

import contextlib
import sys

import click

from pocketml.runtime.errors import PocketmlError, UnsupportedError


def csv(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def ms(value: str | None) -> float | None:
    """'100ms' / '100' → 100.0; '1s' → 1000.0 (milliseconds)."""
    if value is None:
        return None
    v, scale = value.strip().lower(), 1.0
    if v.endswith("ms"):
        v = v[:-2]
    elif v.endswith("s"):
        v, scale = v[:-1], 1000.0
    return _number(v, value, "milliseconds, e.g. 100ms (or seconds, e.g. 1s)") * scale


def megabytes(value: str | None) -> float | None:
    """'400' / '400MB' → 400.0; '1.5GB' → 1500.0 (MB, 10^6 bytes)."""
    if value is None:
        return None
    v, scale = value.strip().lower(), 1.0
    if v.endswith("gb"):
        v, scale = v[:-2], 1000.0
    elif v.endswith("mb"):
        v = v[:-2]
    return _number(v, value, "megabytes, e.g. 400MB or 1GB") * scale


def tokens_per_s(value: str | None) -> float | None:
    """'15tok/s' / '15' → 15.0 (tokens per second)."""
    if value is None:
        return None
    v = value.strip().lower()
    for unit in ("tokens/s", "tok/s", "t/s"):
        if v.endswith(unit):
            v = v[:-len(unit)]
            break
    return _number(v, value, "tokens per second, e.g. 15tok/s")


def _number(text: str, given: str, expected: str) -> float:
    """A finite number ≥ 0 (after its unit was taken off), else a usage error naming what was expected."""
    try:
        x = float(text.strip())
    except ValueError:
        x = float("nan")
    if not (x >= 0 and x != float("inf")):
        raise click.BadParameter(f"{given!r}: expected {expected}")
    return x


def fraction(value: str | None) -> float | None:
    """'1%' / '0.01' → 0.01."""
    if value is None:
        return None
    v = value.strip()
    try:
        return float(v[:-1]) / 100 if v.endswith("%") else float(v)
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected a fraction or a percentage, e.g. 1%") from None


ALLOW_SYMLINKED_OUTPUT = click.option(
    "--allow-symlinked-output", is_flag=True,
    help="Write even where the output path goes through a symlink (refused by default, exit 4; recorded).")


def fail(exc: PocketmlError) -> None:
    """Print the error on one line (and the rejected-op table) and exit with its code (docs/EXIT_CODES.md)."""
    click.secho(f"error: {exc}", fg="red", err=True)
    if isinstance(exc, UnsupportedError) and exc.rejected:
        click.echo("rejected ops:\n" + exc.table(), err=True)
    sys.exit(exc.exit_code)


@contextlib.contextmanager
def exits_on_error():
    """Inside a command: a PocketmlError ends the command with its exit code, never a traceback."""
    try:
        yield
    except PocketmlError as exc:
        fail(exc)


def verbose(ctx: click.Context) -> bool:
    root = ctx.find_root()
    return bool(root.params.get("verbose"))
