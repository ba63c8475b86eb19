"""The gossip interface of the round loop, and its in-process implementation.

An agent's round (``agent.rounds``) needs one thing from the network: ``exchange(round, arrays)``,
which sends this agent's arrays to its live neighbours and returns theirs for the same round,
``{neighbour id: arrays}``. Implementations: ``coordinator_free.transport.Transport`` (ZeroMQ, real
boards and loopback), ``InProcessHub`` below (the simulator, and fast tests of protocol logic) and
``firmware_profiles.emulation.ShapedGossip`` (a wrapper that shapes the link like a board's).
"""
from __future__ import annotations

import threading
from typing import Protocol

import numpy as np

Arrays = tuple[np.ndarray, ...]


class Gossip(Protocol):
    """What the round loop calls once per round (docs/design.md, section 7)."""

    node_id: int

    def exchange(self, round: int, arrays: Arrays) -> dict[int, Arrays]:
        """Send ``arrays`` as round ``round``; return each live neighbour's round-``round`` arrays."""
        ...


class InProcessHub:
    """Synchronous gossip between agents that run as threads of one process.

    ``endpoint(q)`` is agent q's Gossip. Each round every agent posts its arrays and waits at a barrier
    until all have posted, reads its neighbours', then waits again so that nobody posts the next round
    before everyone has read (the arrays themselves are never copied: the rules never write into a sent
    array). If one agent fails, ``abort()`` releases the others with ``BrokenBarrierError``.
    """

    def __init__(self, neighbours: dict[int, list[int]]) -> None:
        self.neighbours = {q: sorted(ns) for q, ns in neighbours.items()}
        self._posts: dict[int, Arrays] = {}
        self._lock = threading.Lock()
        self._barrier = threading.Barrier(len(self.neighbours))

    def endpoint(self, node_id: int) -> "InProcessGossip":
        return InProcessGossip(self, node_id)

    def abort(self) -> None:
        self._barrier.abort()

    def _exchange(self, node_id: int, arrays: Arrays) -> dict[int, Arrays]:
        with self._lock:
            self._posts[node_id] = arrays
        self._barrier.wait()
        with self._lock:
            got = {r: self._posts[r] for r in self.neighbours[node_id]}
        self._barrier.wait()
        return got


class InProcessGossip:
    """Agent ``node_id``'s endpoint of an ``InProcessHub``."""

    def __init__(self, hub: InProcessHub, node_id: int) -> None:
        self.hub, self.node_id = hub, node_id

    def exchange(self, round: int, arrays: Arrays) -> dict[int, Arrays]:
        return self.hub._exchange(self.node_id, tuple(arrays))
