"""The `pocketml` command: a click group and one module per command (cli/commands/). Exit codes: docs/EXIT_CODES.md."""
from __future__ import annotations

import click

from pocketml.runtime.errors import PocketmlError
from pocketml.runtime.quiet import quiet

from .commands.convert import convert
from .commands.demo import demo
from .commands.devices import devices
from .commands.estimate import estimate
from .commands.generate import chat, generate
from .commands.profile import profile
from .common import fail

COMMANDS = (convert, profile, estimate, devices, demo, generate, chat)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--verbose", is_flag=True, help="Show converter progress and library logs.")
@click.version_option(package_name="pocketml")
def cli(verbose: bool) -> None:
    """pocketml: take a PyTorch or Hugging Face model to a phone.

    \b
    Exit codes: 0 ok, 2 usage/bad data, 3 unsupported model or op, 4 unsafe or corrupt
    input refused, 5 validation failed, 6 target missed, 7 device/environment, 1 internal.
    """
    quiet(verbose)


for command in COMMANDS:
    cli.add_command(command)


def main() -> None:
    try:
        cli(standalone_mode=True)
    except PocketmlError as exc:  # pragma: no cover - commands catch their own
        fail(exc)


if __name__ == "__main__":
    main()
