"""Command line: ``faceinpaint <step>``; each DVC stage calls one of these."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from .config import ConfigError, load_config


def _config(params: str, profile: str | None):
    try:
        return load_config(params, profile)
    except ConfigError as err:
        raise click.ClickException(str(err)) from None


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def cli(verbose: bool) -> None:
    """faceinpaint-repro: prepare data, train, evaluate, report, inpaint."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")


params_option = click.option("--params", default="params.yaml", show_default=True, help="Parameters file.")
profile_option = click.option("--profile", type=click.Choice(["smoke", "cpu", "paper"]), default=None, help="Override params.yaml's profile.")


@cli.command()
@params_option
@profile_option
@click.option("--out", default="artifacts/prepared", show_default=True, type=click.Path(file_okay=False))
def prepare(params: str, profile: str | None, out: str) -> None:
    """Face crops at the profile's resolution, square and irregular masks."""
    from .data import DataError, prepare as run_prepare
    from .masks import MaskError

    cfg = _config(params, profile)
    try:
        info = run_prepare(cfg, Path(out))
    except (DataError, MaskError) as err:
        raise click.ClickException(str(err)) from None
    click.echo(f"prepared {info['splits']['train']['count']} train / {info['splits']['test']['count']} test images at {cfg.resolution}x{cfg.resolution} into {out}")


def main() -> None:
    cli(prog_name="faceinpaint")


if __name__ == "__main__":
    sys.exit(main())
