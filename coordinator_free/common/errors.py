"""Typed errors shared by every layer, and the exit status each one means for a command.

The CLI and ``python -m agent`` map an error's *type* to an exit status (``exit_status``), never
its text: a person reads the message, a program (the loopback launcher) reads the status.
"""
from __future__ import annotations


class UserError(Exception):
    """Bad input from a person or a file: a spec, node file, profile or data file.

    The message names the culprit (the key, file or value) and, where possible, the fix.
    Exit status 2.
    """

    exit_status = 2


class AddressInUse(UserError):
    """A bind address is already taken by another process. Exit status 3: the loopback launcher
    retries with fresh ports on it."""

    exit_status = 3


EXIT_BAD_INPUT = UserError.exit_status
EXIT_ADDRESS_IN_USE = AddressInUse.exit_status
EXIT_INTERRUPTED = 130


def exit_status(err: BaseException) -> int:
    """The documented exit status for ``err``: 2 bad input, 3 address in use, 130 interrupted."""
    if isinstance(err, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    return getattr(err, "exit_status", 1)
