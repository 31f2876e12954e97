"""Command line: a thin layer that parses options and calls library functions."""

from __future__ import annotations

import sys

import click

from audiorq import __version__


def _not_built(name: str) -> None:
    click.echo(f"audiorq {name}: not built yet in this version", err=True)
    sys.exit(2)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="audiorq")
def main() -> None:
    """audiorq: BYOL-A style audio representations with randomized quantization."""


@main.command(context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def pretrain(args: tuple[str, ...]) -> None:
    """Pretrain an encoder: RECIPE.yaml [key=value ...]."""
    _not_built("pretrain")


@main.command(context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def probe(args: tuple[str, ...]) -> None:
    """Linear-probe an encoder on a downstream task."""
    _not_built("probe")


@main.command(context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def listen(args: tuple[str, ...]) -> None:
    """Hear and see augmented log-mel spectrograms (Griffin-Lim inversion + figure)."""
    _not_built("listen")


@main.group()
def prepare() -> None:
    """One-time dataset conversion (16 kHz wav, task metadata, log-mel shards)."""


if __name__ == "__main__":
    main()
