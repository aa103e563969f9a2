"""`pocketml devices`: the device profiles and their budgets."""
from __future__ import annotations

import json

import click

from ..common import exits_on_error


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the profiles as JSON.")
def devices(as_json):
    """List the device profiles (phone-class targets) and their default budgets.

    \b
    Example:
      pocketml devices
    """
    from pocketml.profiler.estimates import device_profiles
    from pocketml.profiler.report import print_devices

    with exits_on_error():
        profiles = device_profiles("all")
    if as_json:
        click.echo(json.dumps(profiles, indent=2))
    else:
        print_devices(profiles)
