"""Typed errors shared by every layer, and the exit status each one means for a command.

The CLI and ``python -m agent`` map an error's *type* to an exit status (``exit_status``), never
its text: a person reads the message, a program (the loopback launcher, systemd) reads the status.

    0 done   1 internal error   2 bad input (UserError)   3 address in use (AddressInUse)
    4 diverged: parameters became non-finite (Diverged)
    5 swarm incomplete: some agents failed; results were written with them marked (SwarmIncomplete)
    6 start timed out: the neighbours were not all up within a start_timeout the operator set
      (StartTimedOut); transient, so the shipped unit restarts the board
    7 storage failed: a write met a full disk or an unwritable path during a run (StorageFailed); the
      last good checkpoint stays, and the unit restarts the board after a pause
    130 interrupted (Ctrl-C, SIGINT)   141 the output pipe closed (``p2pntk predict | head``)
    143 terminated (SIGTERM)
"""
from __future__ import annotations

import contextlib
import signal
import threading


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


class Diverged(Exception):
    """Training produced non-finite parameters (NaN or inf). Exit status 4. Nothing non-finite is
    checkpointed; the results written so far say at which round."""

    exit_status = 4


class SwarmIncomplete(Exception):
    """Some agents of a swarm failed. Exit status 5; the results were written with them marked."""

    exit_status = 5


class StartTimedOut(Exception):
    """The neighbours were not all up within the configured ``start_timeout``. Exit status 6: not bad input,
    so a service manager restarts the board (a late neighbour may be up by then)."""

    exit_status = 6


class StorageFailed(Exception):
    """A write failed during a run (a full disk, an unwritable path); the message names the path. Exit
    status 7; the last good checkpoint is kept."""

    exit_status = 7


class Terminated(BaseException):
    """SIGTERM arrived (``sigterm_unwinds``): handled like Ctrl-C, exit status 143."""

    exit_status = 143


EXIT_BAD_INPUT = UserError.exit_status
EXIT_ADDRESS_IN_USE = AddressInUse.exit_status
EXIT_DIVERGED = Diverged.exit_status
EXIT_START_TIMED_OUT = StartTimedOut.exit_status
EXIT_STORAGE_FAILED = StorageFailed.exit_status
EXIT_INTERRUPTED = 130
EXIT_PIPE_CLOSED = 141  # 128 + SIGPIPE, what a shell reports for a C program cut off by ``head``
EXIT_TERMINATED = Terminated.exit_status


def exit_status(err: BaseException) -> int:
    """The documented exit status for ``err`` (see the module docstring)."""
    if isinstance(err, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    return getattr(err, "exit_status", 1)


@contextlib.contextmanager
def sigterm_unwinds():
    """Within this block SIGTERM raises ``Terminated`` in the main thread, so that it unwinds like
    Ctrl-C: every ``finally`` runs (BYE to peers, checkpoint, results, child processes stopped)."""
    def raise_terminated(signum, frame):
        raise Terminated(f"terminated by signal {signum}")
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def signals_deferred():
    """Within this block SIGTERM and SIGINT wait, so that what the block writes (an agent's last checkpoint
    and results) is written whole; a signal that came takes effect when the block ends (Terminated or
    KeyboardInterrupt, as it would have)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    came: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, frame: came.append(signum))
                for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if came:
        raise KeyboardInterrupt if came[0] == signal.SIGINT else Terminated(f"terminated by signal {came[0]}")
