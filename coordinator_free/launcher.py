"""The loopback launcher: N real agent OS processes on one machine, watched and always cleaned up.

It knows nothing of models: it starts the command lines it is given (``python -m agent NODE``),
follows their per-round JSONL logs for a progress bar, enforces a timeout and, on any exit path
(success, failure, timeout, Ctrl-C), terminates every process group it started.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from coordinator_free.common.errors import UserError


@dataclass
class Job:
    """One agent process: its command line, its round log (JSONL) and where its stderr goes."""

    name: str
    argv: list[str]
    log: Path
    stderr: Path


@dataclass
class Outcome:
    name: str
    returncode: int | None  # None: killed by the launcher
    stderr_tail: str


def _count_lines(path: Path) -> int:
    try:
        with open(path, "rb") as fh:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 16), b""))
    except FileNotFoundError:
        return 0


def _tail(path: Path, n: int = 3) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except FileNotFoundError:
        return ""
    return " | ".join(lines[-n:])


def _stop(procs: list[subprocess.Popen], grace: float = 3.0) -> None:
    """SIGTERM every live process group, then SIGKILL what is left after ``grace`` seconds."""
    for p in procs:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    end = time.monotonic() + grace
    for p in procs:
        try:
            p.wait(timeout=max(end - time.monotonic(), 0.01))
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()


def launch(jobs: list[Job], *, expected_lines: int, timeout: float,
           progress: Callable[[int, int], None] | None = None, env: dict | None = None,
           poll: float = 0.2) -> list[Outcome]:
    """Start every job, wait until all exit (or one fails, or ``timeout``), and clean up.

    ``expected_lines`` is the number of log lines each finished agent writes (rounds + 1); the
    progress callback gets (lines written by all agents, expected_lines * len(jobs)).
    A failing agent stops the whole swarm: the others would only wait for it.
    Raises UserError on timeout; returns one Outcome per job otherwise.
    """
    procs: list[subprocess.Popen] = []
    handles = []
    try:
        for job in jobs:
            job.stderr.parent.mkdir(parents=True, exist_ok=True)
            fh = open(job.stderr, "w")
            handles.append(fh)
            procs.append(subprocess.Popen(job.argv, stdout=subprocess.DEVNULL, stderr=fh, stdin=subprocess.DEVNULL,
                                          start_new_session=True, env=env))
        deadline = time.monotonic() + timeout
        total = expected_lines * len(jobs)
        while True:
            codes = [p.poll() for p in procs]
            if progress:
                progress(sum(min(_count_lines(j.log), expected_lines) for j in jobs), total)
            if all(c is not None for c in codes) or any(c not in (None, 0) for c in codes):
                break
            if time.monotonic() > deadline:
                raise UserError(f"loopback: agents still running after {timeout:g} s "
                                f"({sum(c is None for c in codes)} of {len(jobs)}); raise --timeout or lower rounds")
            time.sleep(poll)
        # let the survivors of a failure notice and exit on their own for a moment
        if any(c not in (None, 0) for c in codes):
            _stop(procs, grace=1.0)
        return [Outcome(j.name, p.returncode if p.returncode is not None and p.returncode >= 0 else None,
                        _tail(j.stderr)) for j, p in zip(jobs, procs)]
    finally:
        _stop(procs)
        for fh in handles:
            fh.close()
