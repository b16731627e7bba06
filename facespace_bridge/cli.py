"""The `facespace-bridge` command line. Each command lives in `facespace_bridge/commands/`.

Expected failures end with one line on stderr and an exit code (2: bad input,
1: a failure at run time); no Python traceback reaches the user.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import click

from facespace_bridge._version import __version__
from facespace_bridge.client.errors import FaceSpaceError

PROG = "facespace-bridge"


class DefaultGroup(click.Group):
    """Default command `run`: `facespace-bridge --broker kafka` means `run --broker kafka`;
    `facespace-bridge` alone prints the usage."""

    default_command = "run"

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args:  # nothing to run yet: what there is to run, as kcat and git say it (exit 2)
            click.echo(ctx.get_help(), err=True)
            ctx.exit(2)
        first = args[0]
        if (
            first not in self.commands
            and first not in ("--help", "-h", "--version")
            and (self.default_command in self.commands)
        ):
            args = [self.default_command, *args]
        return super().parse_args(ctx, args)


@click.group(cls=DefaultGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name=PROG)
def cli() -> None:
    """FaceSpace sightings into Kafka, MQTT (Home Assistant), webhooks and files.

    Without a command, runs the bridge (`run`).
    """


def _register() -> None:
    # Imported here so that `cli` exists before the commands attach themselves.
    from facespace_bridge.commands import load_all

    for command in load_all():
        cli.add_command(command)


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point."""
    _register()
    try:
        code = cli.main(args=list(argv) if argv is not None else None, prog_name=PROG, standalone_mode=False)
    except click.UsageError as exc:  # includes BadParameter, NoSuchOption, MissingParameter
        click.echo(f"{PROG}: error: {exc.format_message()}", err=True)
        sys.exit(2)
    except click.ClickException as exc:
        click.echo(f"{PROG}: error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except (click.Abort, KeyboardInterrupt):
        click.echo(f"{PROG}: interrupted", err=True)
        sys.exit(130)
    except FaceSpaceError as exc:
        click.echo(f"{PROG}: error: {exc}", err=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
