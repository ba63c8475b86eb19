"""Flooding before training: the start-up agreement on locally tuned values, and summary sharing.

A mixin of ``coordinator_free.protocol.Protocol``: ``agree`` floods the smallest proposals for diameter
steps (header-only ``agree`` messages), ``flood`` relays every board's share (a data summary) through the
graph until each holds all of them (docs/design.md, 7. "What is shared and what is tuned", "Sharing
summaries"). Both wait for neighbours as membership says: a neighbour still starting is waited for while
it is heard; a silent one, or one already training, is left out after a deadline.
"""
from __future__ import annotations

import collections
import logging

import numpy as np

from coordinator_free import membership as m
from coordinator_free.wire import message


class Flooding:
    """Agreement and share flooding over the protocol's links, table and clock."""

    def __init__(self) -> None:
        self._agree: dict[int, dict[int, dict]] = collections.defaultdict(dict)  # step -> sender -> values
        self._shares: dict[int, tuple[dict, tuple[np.ndarray, ...]]] = {}  # origin -> (meta, rows)
        self._shared_done: set[int] = set()  # neighbours that hold every share
        self.share_origins = 0  # shares are taken only from origins 0..share_origins-1 (set before handshake)

    def _on_flooding(self, msg) -> None:
        s, h = msg.sender, msg.header
        if msg.type == "agree":
            self._agree[h["step"]].setdefault(s, h["values"])
        elif msg.type == "share":
            if (origin := h["origin"]) >= self.share_origins:
                self.drops.drop("invalid", f"share of board {origin} from peer {s}: not expected "
                                           f"(taken from boards 0..{self.share_origins - 1} before training)")
            elif origin not in self._shares:
                self._shares[origin] = (h["meta"], tuple(np.array(a) for a in msg.arrays))
                self._relay(origin, s)
        elif msg.type == "shared":
            self._shared_done.add(s)

    def _still_coming(self, pid: int, since: float, now: float) -> bool:
        """Whether a step waits on for ``pid`` past its first deadline: it is starting and heard recently."""
        p = self.table[pid]
        if now - since < self.deadline:
            return True
        return p.state == m.STARTING and now - p.heard_at < m.SILENCE * self.deadline

    def agree(self, values: dict[str, float], steps: int) -> dict[str, float]:
        """The minimum of every agent's ``values`` (name -> positive number), by ``steps`` rounds of flooding:
        each step sends the smallest values seen so far to the live neighbours and takes the minimum with
        theirs. With ``steps`` >= the graph's diameter every agent ends with the swarm's minimum."""
        current = {k: float(v) for k, v in values.items()}
        for step in range(steps):
            frames = message("agree", sender=self.node_id, model_hash=self.model_hash, step=step, values=current)
            for pid in sorted(self.table.live):
                self._send(pid, frames)
            since, got, beat = self.clock(), self._agree[step], self.clock()
            while waiting := {p for p in self.table.live - got.keys()
                              if self._still_coming(p, since, now := self.clock())}:
                if now >= beat:  # a neighbour still in its handshake hears that we are alive
                    for pid in sorted(waiting):
                        self._say_hello(pid, reply=True)
                    beat = now + self.deadline * m.HEARTBEAT
                self._pump(min(0.05, self.deadline))
            for theirs in self._agree.pop(step).values():
                for k in current:
                    if k in theirs:
                        current[k] = min(current[k], float(theirs[k]))
        return current

    def flood(self, meta: dict, rows: tuple[np.ndarray, ...], expected: int, timeout: float
              ) -> dict[int, tuple[dict, tuple[np.ndarray, ...]]]:
        """Every agent's share (``meta``, a small flat dict, and ``rows``, arrays of P + SHARE_EXTRA numbers):
        ours goes to every neighbour, and each share heard for the first time is relayed to every live
        neighbour but the one it came from, so with a connected graph all ``expected`` shares reach everyone.
        Then a ``shared`` message tells the neighbours we are done, and we wait (up to ``timeout`` in all)
        until they are too. Returns origin -> (meta, rows), ours included: all, or what came in time (logged).
        A relayed share is authenticated as its relay's, not its origin's."""
        self.share_origins = max(self.share_origins, expected)
        self._shares[self.node_id] = (dict(meta), tuple(np.array(r) for r in rows))
        self._relay(self.node_id, None)
        end, said_done = self.clock() + timeout, False
        while (now := self.clock()) < end:
            self._pay_owed()
            if not said_done and len(self._shares) >= expected and not self._owed:
                done = message("shared", sender=self.node_id, model_hash=self.model_hash, count=len(self._shares))
                for pid in sorted(self.table.live):
                    self._send(pid, done, quiet=True)
                said_done = True
            if said_done and self.table.live <= self._shared_done:
                break
            self._pump(min(0.05, end - now))
        if len(self._shares) < expected:
            self.log.log(logging.WARNING, "node %d: %d of %d shares after %g s (missing %s)", self.node_id,
                         len(self._shares), expected, timeout, sorted(set(range(expected)) - self._shares.keys()))
        return dict(self._shares)

    def _relay(self, origin: int, source: int | None) -> None:
        """Queue share ``origin`` for every live neighbour but ``source``, under our own sender id (each
        message is bound to its sender's key), retried until sent."""
        meta, rows = self._shares[origin]
        frames = message("share", sender=self.node_id, model_hash=self.model_hash, arrays=rows, origin=origin,
                         meta=meta)
        for pid in sorted(self.table.live - {source, origin}):
            self._owed.setdefault(pid, []).append(frames)
        self._pay_owed()
