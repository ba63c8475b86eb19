"""The ``p2pntk`` command line: one subcommand per user task, each in ``predictor/commands/``.

User errors (UserError, a missing file) print one line ``p2pntk: error: ...`` and exit with
status 2, without a traceback; the other statuses are in ``coordinator_free.common.errors``.
Ctrl-C exits with 130 and SIGTERM with 143, after the commands have cleaned up.
"""
from __future__ import annotations

import argparse
import sys
from importlib import metadata

from coordinator_free.common.errors import Diverged, SwarmIncomplete, Terminated, UserError, exit_status, sigterm_unwinds
from predictor.commands import (bench, compare, demo, export_onnx, fleet, keys, loopback, predict, profiles,
                                reproduce, simulate, stability, tune)

# Each module defines register(subparsers), which sets ``func`` on its parser; this is the help order.
COMMANDS = (demo, simulate, predict, stability, compare, reproduce, bench, export_onnx, loopback, keys, profiles,
            tune, fleet)


def version() -> str:
    """The installed p2p-ntk's version (the package metadata's, so it cannot drift from pyproject.toml)."""
    try:
        return metadata.version("p2p-ntk")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="p2pntk",
        description="Peer-to-peer training of wide networks over ZeroMQ, with NTK forecasts of every agent's loss.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}",
                        help="print the version of p2p-ntk and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for command in COMMANDS:
        command.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with sigterm_unwinds():  # SIGTERM unwinds like Ctrl-C: the loopback launcher stops every agent it started
            return int(args.func(args) or 0)
    except (UserError, Diverged, SwarmIncomplete) as err:
        print(f"p2pntk: error: {err}", file=sys.stderr)
        return exit_status(err)
    except (KeyboardInterrupt, Terminated) as err:
        print(f"p2pntk: {'terminated' if isinstance(err, Terminated) else 'interrupted'}", file=sys.stderr)
        return exit_status(err)


if __name__ == "__main__":
    sys.exit(main())
