"""Dropped network messages: counted by category, logged at a bounded rate (docs/design.md, 7. Validation).

A bad message is never an error of ours: it is dropped, counted (``invalid``, ``forged``, ``stale``,
``duplicate``, ``send``) and logged at WARNING with its reason, at most ``LOG_BURST`` lines per
``LOG_INTERVAL`` seconds, then one summary line for the rest.
"""
from __future__ import annotations

import collections
import logging
from typing import Callable

LOG_BURST = 5
LOG_INTERVAL = 10.0


class DropLog:
    """``drop(category, reason, level)`` counts and (rate-limited) logs one dropped message."""

    def __init__(self, node_id: int, log: logging.Logger, clock: Callable[[], float]) -> None:
        self.node_id, self.log, self.clock = node_id, log, clock
        self.dropped: collections.deque[tuple[str, str]] = collections.deque(maxlen=1000)  # the last 1000
        self.counts: collections.Counter[str] = collections.Counter()
        self._window, self._logged = clock(), 0
        self._suppressed: collections.Counter[str] = collections.Counter()

    def drop(self, category: str, reason: str, level: int = logging.WARNING) -> None:
        self.dropped.append((category, reason))
        self.counts[category] += 1
        if level < logging.WARNING:
            self.log.log(level, "node %d: dropped message (%s): %s", self.node_id, category, reason)
            return
        if self.clock() - self._window >= LOG_INTERVAL:
            self.summarise()
        if self._logged < LOG_BURST:
            self._logged += 1
            self.log.log(level, "node %d: dropped message (%s): %s", self.node_id, category, reason)
        else:
            self._suppressed[category] += 1

    def summarise(self) -> None:
        """One line for the warnings held back in the current interval, then a new interval."""
        if self._suppressed:
            counts = ", ".join(f"{c}: {n}" for c, n in sorted(self._suppressed.items()))
            self.log.warning("node %d: %d more dropped messages in the last %.0f s (%s); totals so far %s",
                             self.node_id, sum(self._suppressed.values()), self.clock() - self._window,
                             counts, dict(self.counts))
        self._suppressed.clear()
        self._window, self._logged = self.clock(), 0
