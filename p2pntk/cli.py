"""The ``p2pntk`` command line: one subcommand per user task, each in ``p2pntk/commands/``.

Only the chosen command's module is imported (``p2pntk predict`` never loads ZeroMQ, onnxruntime or the
fleet tools): a whole ``predict`` run is about a second, and imports were half of it. ``p2pntk --help``, or
a name that is no command, imports them all, so argparse lists every command and suggests the close ones.

User errors (UserError, a missing file) print one line ``p2pntk: error: ...`` and exit with
status 2, without a traceback; the other statuses are in ``common.errors``.
Ctrl-C exits with 130 and SIGTERM with 143, after the commands have cleaned up.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from importlib import metadata

from host.memory import keep_freed_memory
from common.errors import (EXIT_PIPE_CLOSED, Diverged, StartTimedOut, StorageFailed, SwarmIncomplete,
                                            Terminated, UserError, exit_status, sigterm_unwinds)

# The modules of p2pntk/commands in help order, each with the subcommands its register(subparsers) adds
# (and sets ``func`` on); tests/test_cli.py checks that these names are exactly what the modules register.
COMMANDS = {"demo": ("demo",), "simulate": ("simulate",), "predict": ("predict",), "stability": ("stability",),
            "compare": ("compare",), "reproduce": ("reproduce",), "bench": ("bench",),
            "export_onnx": ("export-onnx",), "loopback": ("loopback", "agent"), "keys": ("keys",),
            "profiles": ("profiles",), "tune": ("tune", "predict-local", "summarise"),
            "fleet": ("fleet", "rehearse")}


def version() -> str:
    """The installed p2p-ntk's version (the package metadata's, so it cannot drift from pyproject.toml)."""
    try:
        return metadata.version("p2p-ntk")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def _modules_for(argv: list[str] | None) -> list[str]:
    """The command modules to import for ``argv``: the one that owns its subcommand; none for a bare
    ``--version``; else all of them."""
    first = next((a for a in (argv or []) if not a.startswith("-")), None)
    if argv and first is None and "--version" in argv and not {"-h", "--help"} & set(argv):
        return []
    owner = [module for module, names in COMMANDS.items() if first in names]
    return owner or list(COMMANDS)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser for ``argv`` (only its subcommand registered), or with every subcommand (argv None)."""
    parser = argparse.ArgumentParser(
        prog="p2pntk",
        description="Peer-to-peer training of wide networks over ZeroMQ, with NTK forecasts of every agent's loss.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}",
                        help="print the version of p2p-ntk and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module in _modules_for(argv):
        importlib.import_module(f"p2pntk.commands.{module}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    keep_freed_memory()  # fewer page faults in the forecast's and training's rounds (host.memory)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    try:
        with sigterm_unwinds():  # SIGTERM unwinds like Ctrl-C: the loopback launcher stops every agent it started
            return int(args.func(args) or 0)
    except (UserError, Diverged, SwarmIncomplete, StartTimedOut, StorageFailed) as err:
        print(f"p2pntk: error: {err}", file=sys.stderr)
        return exit_status(err)
    except (KeyboardInterrupt, Terminated) as err:
        print(f"p2pntk: {'terminated' if isinstance(err, Terminated) else 'interrupted'}", file=sys.stderr)
        return exit_status(err)
    except BrokenPipeError:  # the reader went away (| head): files are written first, so nothing is lost
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        return EXIT_PIPE_CLOSED


if __name__ == "__main__":
    sys.exit(main())
