"""What a board says while it trains: a throttled progress line on stderr, and one summary line at the end.

``Report`` sees every round's log record (docs/design.md, section 6 "Round log") and prints the first
round, the last, and in between at most one line every ``every`` seconds (``every = 0``: every round,
``p2pntk agent -v``). A line: round/rounds, train and test loss, seconds per round, the share of time
spent waiting for neighbours, suspected peers and the time left. ``enabled = False`` prints nothing
(agents under the loopback launcher, which draws its own progress bar).
"""
from __future__ import annotations

import math
import sys
import time
from typing import TextIO

PROGRESS_SECONDS = 5.0  # at most one progress line this often, besides the first and last round


def duration(seconds: float) -> str:
    """A short human duration: 0.42s, 12s, 3m20s, 1h02m."""
    if seconds < 10:
        return f"{seconds:.2g}s" if seconds < 1 else f"{seconds:.1f}s"
    s = int(round(seconds))
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def peers(ids: list[int]) -> str:
    return ",".join(str(p) for p in ids) if ids else "none"


def number(x: float | None) -> str:
    """A loss for a person: 4 significant digits, "-" for a missing or non-finite value."""
    return f"{x:.4g}" if isinstance(x, (int, float)) and math.isfinite(x) else "-"


class Report:
    """``on_round(record)`` each round, ``summary(results)`` once at the end (agent.process)."""

    def __init__(self, node_id: int, rounds: int, every: float = PROGRESS_SECONDS, enabled: bool = True,
                 stream: TextIO | None = None) -> None:
        self.node_id, self.rounds, self.every, self.enabled = node_id, rounds, every, enabled
        self.stream = stream
        self.start_round: int | None = None
        self.t0 = self.last_print = 0.0
        self.waited = 0.0

    def _say(self, line: str) -> None:
        if self.enabled:
            stream = self.stream or sys.stderr
            stream.write(line + "\n")
            stream.flush()

    def on_round(self, record: dict) -> None:
        """Count the record; print its line if it is the first or last round or ``every`` seconds have passed."""
        now, k = time.perf_counter(), record["round"]
        if self.start_round is None:  # the clock starts at this run's first round, after the handshake
            self.start_round, self.t0, self.last_print = k, now, now - self.every
        else:
            self.waited += record.get("wait_s", 0.0)
        if k == self.start_round or k == self.rounds or now - self.last_print >= self.every:
            self.last_print = now
            self._say(self.progress_line(record, now - self.t0))

    def _pace(self, k: int, elapsed: float) -> tuple[float | None, float]:
        """(seconds per round in this run, or None before the first update; wait share of the wall time)."""
        done = k - (self.start_round or 0)
        return (elapsed / done if done > 0 else None), (self.waited / elapsed if elapsed > 0 else 0.0)

    def progress_line(self, record: dict, elapsed: float) -> str:
        k = record["round"]
        per_round, wait = self._pace(k, elapsed)
        parts = [f"agent {self.node_id}: round {k}/{self.rounds}", f"train loss {number(record['train_loss'])}"]
        if "test_loss" in record:
            parts.append(f"test loss {number(record['test_loss'])}")
        if per_round is not None:
            parts += [f"{per_round:.3g} s/round", f"wait {100 * wait:.0f}%"]
        parts.append(f"suspected {peers(record.get('suspected', []))}")
        if per_round is not None and k < self.rounds:
            parts.append(f"eta {duration(per_round * (self.rounds - k))}")
        return ", ".join(parts)

    def summary(self, results: dict, files: list[str]) -> None:
        """One line: how the run ended, its pace, first and last losses, suspected peers, the files written."""
        self._say(summary_line(results, self.rounds, files))


def summary_line(results: dict, rounds: int, files: list[str]) -> str:
    """The end-of-run line of an agent's results (docs/design.md, section 6)."""
    train, test, acc = (results.get(key) or [] for key in ("train_loss", "test_loss", "test_accuracy"))
    stopped, resumed = results.get("stopped"), results.get("resumed_at_round")
    last = stopped["last_round"] if stopped else rounds
    head = (f"agent {results['id']}: stopped ({stopped['reason']}) at round {last} of {rounds}" if stopped
            else f"agent {results['id']}: finished {rounds} rounds")
    if resumed is not None:
        head += f" (resumed at round {resumed})"
    wall = results.get("wall_s", 0.0)
    parts = [f"{head} in {duration(wall)}"]
    done = last - (resumed or 0)
    if done > 0:
        parts.append(f"{wall / done:.3g} s/round")
    if train:
        parts.append(f"train loss {number(train[0])} -> {number(train[-1])}")
    if test:
        parts.append(f"test loss {number(test[0])} -> {number(test[-1])}")
    if acc and acc[-1] is not None:
        parts.append(f"test accuracy {acc[-1]:.3f}")
    wait = results.get("wait_s", 0.0) / wall if wall > 0 else 0.0
    parts += [f"wait {100 * wait:.0f}%", f"suspected {peers(results.get('suspected', []))}"]
    if alone := results.get("rounds_alone"):
        parts.append(f"{alone} rounds alone")
    return ", ".join(parts) + "; wrote " + ", ".join(files)
