"""What every command shares: option parsers, the symlinked-output flag, and the one error → exit-code mapping."""
from __future__ import annotations

import contextlib
import sys

import click

from pocketml.runtime.errors import PocketmlError, UnsupportedError


def csv(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def ms(value: str | None) -> float | None:
    """'100ms' / '100' → 100.0 (milliseconds)."""
    if value is None:
        return None
    v = value.strip().lower().removesuffix("ms")
    try:
        return float(v)
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected milliseconds, e.g. 100ms") from None


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
