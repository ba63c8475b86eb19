"""The loopback launcher: N real agent OS processes on one machine, watched and always cleaned up.

It knows nothing of models: it starts the command lines it is given (``python -m agent NODE``),
follows their per-round JSONL logs for a progress bar, lets the others carry on when one dies,
enforces a timeout and, on any exit path (success, failure, timeout, Ctrl-C, SIGTERM), terminates
every process group it started.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable



@dataclass
class Job:
    """One agent process: its command line, its round log (JSONL), where its stderr goes, and the folder it
    runs in (None: the launcher's)."""

    name: str
    argv: list[str]
    log: Path
    stderr: Path
    cwd: Path | None = None
    delay: float = 0.0  # seconds after the launch before this one starts (a board brought up late)


@dataclass
class Outcome:
    """How one job ended. ``returncode`` is Popen's: negative -N when killed by signal N; None when
    the launcher stopped it (timeout, or another job's start-up failure)."""

    name: str
    returncode: int | None
    stderr_tail: str

    def describe(self) -> str:
        if self.returncode is None:
            return "stopped by the launcher"
        if self.returncode < 0:
            try:
                return f"killed by {signal.Signals(-self.returncode).name}"
            except ValueError:
                return f"killed by signal {-self.returncode}"
        return f"exit status {self.returncode}"


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
           poll: float = 0.2, abort_on: frozenset[int] = frozenset()) -> list[Outcome]:
    """Start every job, wait until all exit (or ``timeout``), and clean up; one Outcome per job.

    ``expected_lines`` is the number of log lines each finished agent writes (rounds + 1); the
    progress callback gets (lines written by all agents, expected_lines * len(jobs)).
    A job that dies does not stop the others: they carry on without it (an agent suspects a silent
    neighbour). Only an exit status in ``abort_on`` (a start-up failure every job would wait on)
    stops the rest at once. At ``timeout`` the jobs still running are stopped and marked so.
    """
    procs: list[subprocess.Popen | None] = [None] * len(jobs)
    handles = []
    stopped: set[int] = set()
    t0 = time.monotonic()

    def start_due() -> None:
        for i, job in enumerate(jobs):
            if procs[i] is None and time.monotonic() - t0 >= job.delay:
                job.stderr.parent.mkdir(parents=True, exist_ok=True)
                fh = open(job.stderr, "w")  # noqa: SIM115 - closed in the finally below
                handles.append(fh)
                procs[i] = subprocess.Popen(job.argv, stdout=subprocess.DEVNULL, stderr=fh, stdin=subprocess.DEVNULL,
                                            start_new_session=True, env=env, cwd=job.cwd)

    try:
        start_due()
        deadline = t0 + timeout
        total = expected_lines * len(jobs)
        while True:
            start_due()
            codes = [p.poll() if p is not None else None for p in procs]
            if progress:
                progress(sum(min(_count_lines(j.log), expected_lines) for j in jobs), total)
            if all(c is not None for c in codes):
                break
            if any(c in abort_on for c in codes) or time.monotonic() > deadline:
                stopped = {i for i, c in enumerate(codes) if c is None}
                _stop([p for p in procs if p is not None], grace=1.0)
                break
            time.sleep(poll)
        return [Outcome(j.name, None if i in stopped or p is None else p.returncode, _tail(j.stderr))
                for i, (j, p) in enumerate(zip(jobs, procs))]
    finally:
        _stop([p for p in procs if p is not None])
        for fh in handles:
            fh.close()
