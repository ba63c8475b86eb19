"""The gossip interface of the round loop, the registry of board transports, and the in-process gossip.

An agent's round (``agent.rounds``) needs three calls from the network, all of them in ``Gossip``:
``exchange(round, arrays)`` sends this agent's arrays to its live neighbours and returns theirs for the
same round, ``{neighbour id: arrays}``; ``next_round(round)`` says whether the agent fell behind and must
skip ahead; ``listen(round)`` hears the neighbours' arrays of a round without sending (a rejoiner).
Implementations: ``coordinator_free.protocol.Protocol`` over a link (``transport.Transport``: ZeroMQ, boards
and loopback; ``tcp_transport.TcpTransport``: plain TCP), ``InProcessHub`` below (the simulator's lockstep
threads) and ``firmware_profiles.emulation.ShapedGossip`` (a wrapper that shapes the link like a board's).

A transport a board can run (``BoardTransport``) registers itself under the name a node file's
``transport`` key uses, with ``@register_transport("name")``, in a module of this package whose name ends
in ``transport``; ``transports()`` finds those modules, so adding a transport means adding one file.
"""
from __future__ import annotations

import importlib
import pkgutil
import threading
from typing import Callable, Protocol

import numpy as np

from common.errors import UserError

Arrays = tuple[np.ndarray, ...]
DEFAULT_TRANSPORT = "zmq"
_TRANSPORTS: dict[str, Callable[..., "BoardTransport"]] = {}


class Gossip(Protocol):
    """What the round loop calls (docs/design.md, section 7). Nothing else is looked up."""

    node_id: int

    def exchange(self, round: int, arrays: Arrays) -> dict[int, Arrays]:
        """Send ``arrays`` as round ``round``; return each live neighbour's round-``round`` arrays."""
        ...

    def next_round(self, round: int) -> int:
        """``round``, or the later round the swarm is at when this agent has fallen behind it."""
        ...

    def listen(self, round: int) -> dict[int, Arrays]:
        """The neighbours' round-``round`` arrays, heard without sending ours (copies); {} if none come."""
        ...


class BoardTransport(Gossip, Protocol):
    """What the agent process needs from a transport besides ``exchange`` (``Transport`` is the model).

    Built as ``cls(node_id, bind, peers, *, model_hash, spec_hash, algorithm, dtype, shape, arrays,
    deadline, copy_sends, curve, start_round, logger)`` and used as a context manager (BYE, then closing its
    sockets on exit). ``coordinator_free.protocol.Protocol`` implements all of it over a link.
    """

    live: set[int]
    suspected: set[int]
    rejoined: dict[int, int]
    share_origins: int
    bytes_sent: int
    bytes_received: int
    wait_seconds: float
    rounds_alone: int
    drop_counts: dict[str, int]

    def handshake(self, degree: int, timeout: float | None = None, extra: dict | None = None,
                  warn_after: float | None = None) -> dict[int, dict]: ...

    def flood(self, meta: dict, rows: Arrays, expected: int, timeout: float) -> dict[int, tuple[dict, Arrays]]: ...

    def agree(self, values: dict[str, float], steps: int) -> dict[str, float]:
        """The swarm's minimum of each value, by ``steps`` rounds of flooding (see Transport.agree)."""
        ...

    def message_bytes(self, round: int, arrays: Arrays) -> int: ...

    def bye(self) -> None: ...


def register_transport(name: str):
    """Class decorator: make a BoardTransport available to node files as ``transport = "name"``."""
    def register(cls):
        _TRANSPORTS[name] = cls
        return cls
    return register


def transports() -> dict[str, Callable[..., BoardTransport]]:
    """Every registered board transport, by name (imports this package's ``*transport`` modules once)."""
    package = __name__.rpartition(".")[0]
    for module in pkgutil.iter_modules(importlib.import_module(package).__path__):
        if module.name.endswith("transport"):
            importlib.import_module(f"{package}.{module.name}")
    return dict(_TRANSPORTS)


def check_transport(name: object) -> str:
    """A node file's ``transport`` value, checked against the registry."""
    known = transports()
    if name not in known:
        raise UserError(f"transport = {name!r}: expected one of {', '.join(sorted(known))}")
    return name


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

    def next_round(self, round: int) -> int:
        return round  # lockstep: nobody falls behind

    def listen(self, round: int) -> dict[int, Arrays]:
        return {}
