"""The gossip protocol over any link: start-up, synchronous rounds with deadlines, catch-up, BYE.

``Protocol`` is the whole board transport but its sockets: it keeps the peer table
(coordinator_free.membership), runs the start-up, buffers params by round, owes resends to rejoiners,
validates every message (coordinator_free.wire) and logs what it drops (coordinator_free.drops). The
rounds are in coordinator_free.exchange, the start-up agreement and summary flooding in
coordinator_free.flooding. Bytes move through a ``Link`` (below): ZeroMQ with CURVE in
coordinator_free.transport, plain TCP in coordinator_free.tcp_transport. docs/design.md, section 7.

A Protocol is not thread-safe: use it from one thread. Received arrays are read-only views of the frames.
"""
from __future__ import annotations

import collections
import logging
import math
import time
from typing import Callable, Protocol as Interface

import numpy as np

from coordinator_free import membership as m
from common.errors import StartTimedOut, UserError
from coordinator_free.drops import DropLog
from coordinator_free.exchange import Exchange
from coordinator_free.flooding import Flooding
from common.compute import DTYPES
from coordinator_free.wire import MAX_HEADER_BYTES, SHARE_EXTRA, Expect, WireError, decode, message

ROUND_WINDOW = 8  # params for rounds up to current + ROUND_WINDOW are buffered; later ones dropped
START_PROGRESS = (5.0, 60.0)  # at start, a line naming the silent neighbours every 5 s, every 60 s after a minute
MISMATCH_GRACE = 3.0  # seconds a start with a mismatched neighbour waits for it to learn of the mismatch too
SENT = type("Sent", (), {"done": True})()  # what a link that copies on send returns: the buffers are free at once
UNKNOWN_KEY = -1  # what a link reports as the sender of a message whose key it does not know

class Link(Interface):
    """What the protocol needs from a carrier: one inbound endpoint, one outbound connection per neighbour."""

    endpoint: str  # where this agent listens, as bound

    def connect(self, pid: int) -> None:
        """(Re)open the connection to neighbour ``pid``: fresh, whatever the old one held."""

    def send(self, pid: int, frames: list, track: bool = False):
        """Queue ``frames`` for ``pid`` without blocking; False if it cannot take them now, else an object
        whose ``done`` says when the frames' buffers are no longer read (``track``)."""

    def receive(self, timeout: float) -> list[tuple[list, int | None]]:
        """Wait up to ``timeout`` seconds; every message that arrived, as (frames, authenticated sender id:
        an id, UNKNOWN_KEY, or None on a link without authentication)."""

    def close(self) -> None: ...


def check_setup(node_id: int, peers: dict[int, str], protocol: dict) -> int:
    """Refuse a transport's arguments a link cannot fix (UserError); return the largest valid frame in bytes,
    for the link's receive limit. Every transport calls this before it opens anything."""
    if node_id in peers:
        raise UserError(f"node {node_id} lists itself among its peers")
    if (dtype := protocol.get("dtype")) not in DTYPES:
        raise UserError(f"dtype {dtype!r} is not {' or '.join(DTYPES)}")
    return max(8 * (math.prod(protocol.get("shape", ())) + SHARE_EXTRA), MAX_HEADER_BYTES)


def _differing(ours, theirs) -> str:
    """The spec keys whose hashes differ, from the HELLOs' ``spec_keys`` (name -> short hash), in a phrase."""
    if not isinstance(ours, dict) or not isinstance(theirs, dict):
        return "it does not say which keys differ"
    keys = sorted(k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k))
    return f"{', '.join(map(str, keys[:8]))}{' ...' if len(keys) > 8 else ''} differ" if keys else "keys differ"


class Protocol(Exchange, Flooding):
    """One agent's side of the gossip with its neighbours ``peers`` (id -> address) over ``link``.

    Counters: ``bytes_sent``, ``bytes_received`` (every message), ``wait_seconds`` (blocked waiting for
    neighbours), ``rounds_alone`` (rounds that mixed nobody's params), ``dropped`` and ``drop_counts``.
    """

    def __init__(self, node_id: int, peers: dict[int, str], link: Link, *, model_hash: str, spec_hash: str,
                 algorithm: str, dtype: str, shape: tuple[int, ...], arrays: int = 1, deadline: float = 10.0,
                 copy_sends: bool = True, start_round: int = 0, logger: logging.Logger | None = None,
                 clock: Callable[[], float] = time.monotonic):
        check_setup(node_id, peers, {"dtype": dtype, "shape": shape})
        self.node_id, self.peers, self.link = node_id, {int(p): a for p, a in peers.items()}, link
        self.model_hash, self.spec_hash, self.algorithm = model_hash, spec_hash, algorithm
        self.dtype, self.shape, self.arrays = np.dtype(dtype), tuple(int(n) for n in shape), int(arrays)
        self.table = m.PeerTable(list(self.peers), float(deadline))
        self.copy_sends, self.clock = bool(copy_sends), clock
        self.log = logger or logging.getLogger(__name__)
        self.drops = DropLog(node_id, self.log, clock)
        self.bytes_sent = self.bytes_received = self.rounds_alone = 0
        self.wait_seconds = 0.0
        self._round, self._starting = int(start_round), True  # params for rounds below _round are stale
        self._sent: dict[int, list] = {}  # the last two rounds' params frames, resent to a rejoiner
        self._owed: dict[int, list[list]] = {}  # neighbour -> frames it is still owed, oldest first
        self._pending: dict[int, dict[int, tuple]] = collections.defaultdict(dict)  # round -> sender -> arrays
        self._snapshots: list[tuple[np.ndarray, list]] = []
        self._degree, self._extra, self._isolated_at, self._join = len(self.peers), {}, None, None
        self._said_bye = self._closed = self._in_handshake = False
        super().__init__()
        now = clock()
        for pid in sorted(self.peers):
            self.table.on_connected(pid, now)

    # -- views for the agent process and results ----------------------------------------------
    @property
    def deadline(self) -> float:
        """Seconds a round waits for its neighbours (the node file's round_deadline); membership counts in it."""
        return self.table.deadline

    @deadline.setter
    def deadline(self, seconds: float) -> None:
        self.table.deadline = float(seconds)

    @property
    def live(self) -> set[int]:
        return self.table.live

    @property
    def suspected(self) -> set[int]:
        return self.table.in_state(m.SUSPECTED)

    @property
    def departed(self) -> set[int]:
        return self.table.in_state(m.DEPARTED)

    @property
    def probation(self) -> set[int]:
        return self.table.in_state(m.PROBATION)

    @property
    def rejoined(self) -> dict[int, int]:
        return {p: r.rejoined for p, r in self.table.peers.items() if r.rejoined}

    @property
    def dropped(self):
        return self.drops.dropped

    @property
    def drop_counts(self):
        return self.drops.counts

    def _names(self, ids) -> str:
        return ", ".join(f"peer {p} ({self.peers[p]})" for p in sorted(ids))

    # -- start-up -----------------------------------------------------------------------------
    def handshake(self, degree: int, timeout: float | None = None, extra: dict | None = None,
                  warn_after: float | None = None) -> dict[int, dict]:
        """Exchange HELLOs (id, degree, hashes, round, ``starting``, ``extra``) until every neighbour is
        confirmed both ways, or, once a confirmed neighbour is training (a running swarm), until the others
        have been silent for START_GRACE deadlines (they start SUSPECTED and are re-admitted when they come).

        Waits as long as it takes, with a progress line naming the silent neighbours, a warning at
        ``warn_after`` seconds, and ``StartTimedOut`` (exit 6) at ``timeout`` (None: no limit). Returns
        neighbour id -> HELLO header of the confirmed ones. A model, spec or protocol mismatch is a UserError.
        """
        extra = dict(extra or {})  # HELLO's optional fields (wire.TYPES): a name it does not know is a ValueError
        message("hello", sender=self.node_id, model_hash=self.model_hash, spec_hash="", degree=0, round=0, heard=[],
                reply=False, **extra)
        self._degree, self._extra = int(degree), extra
        t0, self._in_handshake = self.clock(), True
        try:
            return self._start(degree, timeout, warn_after, t0)
        finally:
            self._in_handshake = False

    def _start(self, degree: int, timeout: float | None, warn_after: float | None, t0: float) -> dict[int, dict]:
        resend, interval, report, training_since, warned = t0, 0.01, t0 + START_PROGRESS[0], None, False
        while True:
            now = self.clock()
            mismatched = [r for _, r in sorted(self.table.peers.items()) if r.mismatch]
            timed_out = timeout is not None and now - t0 >= timeout
            known = all(r.told and r.acked for r in mismatched) and all(
                r.confirmed or r.mismatch for r in self.table.peers.values())  # every neighbour has heard us
            if mismatched and (timed_out or known or now - min(r.heard_at for r in mismatched) >= MISMATCH_GRACE):
                raise UserError("; ".join(r.mismatch for r in mismatched))  # once they know it too
            if training_since is None and self.table.training_neighbour():
                training_since = now
            if self.table.start_ready(now, training_since):
                break
            silent = sorted(p for p, r in self.table.peers.items() if not r.confirmed)
            if timed_out:
                raise StartTimedOut(f"node {self.node_id}: start timed out after {timeout:g} s: "
                                    f"{self._silent_phrase(silent)}. Are those agents running at those addresses?")
            if now >= report:
                self.log.warning("node %d: waiting %.0f s for %s to start", self.node_id, now - t0,
                                 self._silent_phrase(silent))
                report = now + START_PROGRESS[now - t0 >= 60.0]
            if warn_after is not None and not warned and now - t0 >= warn_after:
                warned = True
                self.log.warning("node %d: %s after %g s (handshake_timeout); still waiting%s", self.node_id,
                                 self._silent_phrase(silent), warn_after,
                                 "" if timeout is None else f", up to start_timeout = {timeout:g} s")
            if now >= resend:
                for pid in sorted(self.table.live):
                    self._say_hello(pid, reply=self.table[pid].confirmed)
                interval = min(2 * interval, 0.2)  # fast while peers start, then gentle
                resend = now + interval
            self._pump(max(0.0, min(resend, report) - self.clock()))
        self.table.start_done(self.clock())
        started = [r.round for r in self.table.peers.values() if r.state in (m.LIVE, m.STARTING)]
        self._join = min(started) if started else None  # a resumed agent joins at its slowest neighbour's round
        if late := sorted(self.suspected):
            self.log.warning("node %d: the swarm is running; starting without %s (they join when they come up)",
                             self.node_id, self._names(late))
        return {pid: r.hello for pid, r in sorted(self.table.peers.items()) if r.state != m.SUSPECTED}

    def _silent_phrase(self, ids: list[int]) -> str:
        never = [p for p in ids if self.table[p].hello is None]
        unconfirmed = [p for p in ids if p not in never]
        parts = [f"no HELLO from {self._names(never)}"] if never else []
        return "; ".join(parts + ([f"{self._names(unconfirmed)} never confirmed ours"] if unconfirmed else []))

    def _say_hello(self, pid: int, reply: bool) -> None:
        """Send a HELLO to ``pid``; once one listing ``pid`` is queued, it counts as told."""
        heard = sorted(p for p, r in self.table.peers.items() if r.hello is not None or r.mismatch)
        frames = message("hello", sender=self.node_id, model_hash=self.model_hash, **self._extra,
                         spec_hash=self.spec_hash, degree=self._degree, round=self._round, heard=heard, reply=reply,
                         starting=self._starting)
        if self._send(pid, frames, quiet=True) and pid in heard:
            self.table[pid].told = True

    def _on_hello(self, sender: int, h: dict, problem: str | None) -> None:
        if problem is None and h["spec_hash"] != self.spec_hash:
            problem = (f"another experiment spec: {_differing(self._extra.get('spec_keys'), h.get('spec_keys'))} "
                       f"(spec hash {h['spec_hash']!r:.80}, but ours is {self.spec_hash!r}); all agents must share "
                       f"every spec key but the ones tuned locally")
        if problem is not None:
            if not self._in_handshake:
                return self.drops.drop("invalid", f"HELLO from peer {sender}: {problem}")
            r = self.table[sender]
            if r.mismatch is None:
                r.mismatch, r.heard_at = f"node {self.node_id}: peer {sender} ({self.peers[sender]}) has {problem}", \
                    self.clock()
            r.acked = r.acked or (isinstance(h.get("heard"), list) and self.node_id in h["heard"])
            if h.get("reply") is not True:
                self._say_hello(sender, reply=True)  # so that it learns of the mismatch too
            return
        event = self.table.on_hello(sender, h, self.node_id, self._round, self.clock())
        if event == "readmitted":
            self._readmit(sender)
        elif event == "restarted":  # it lost what we sent its earlier life: our last rounds again
            self.log.warning("node %d: peer %d restarted (it resumes at round %d)", self.node_id, sender,
                             self.table[sender].round)
            self._owe_last_rounds(sender)
        if h.get("reply") is not True and sender in self.table.live:
            self._say_hello(sender, reply=True)

    def _readmit(self, sender: int) -> None:
        """A suspected or departed neighbour is back with a valid HELLO: a new connection (ours may be the
        direction stuck in TCP's retransmission backoff), a HELLO asking for its current round, and our last
        two rounds' params (it may be one behind). docs/design.md, 7. "After a partition"."""
        r = self.table[sender]
        self.log.warning("node %d: peer %d (%s) is back (its round %d, ours %d): re-admitted as %s", self.node_id,
                         sender, self.peers[sender], r.round, self._round, r.state)
        self._reconnect(sender)
        self._say_hello(sender, reply=False)
        self._owe_last_rounds(sender)

    def _reconnect(self, pid: int) -> None:
        self.link.connect(pid)
        self.table.on_connected(pid, self.clock())

    def _owe_last_rounds(self, pid: int) -> None:
        for r in sorted(self._sent):
            self._owed.setdefault(pid, []).append(self._sent[r])
        self._pay_owed()

    def _pay_owed(self) -> None:
        """Send neighbours the frames they are owed (retried every heartbeat and round until sent)."""
        for pid, queue in sorted(self._owed.items()):
            while queue and self._send(pid, queue[0], quiet=True):
                queue.pop(0)
            if not queue:
                del self._owed[pid]

    def _tick(self) -> None:
        """The clock's transitions: expired probation, probes and reconnections (membership.on_tick)."""
        expired, probe, reconnect = self.table.on_tick(self.clock())
        for pid in expired:
            self.log.warning("node %d: peer %d (%s) was not confirmed within %g deadlines of its return; "
                             "suspected again", self.node_id, pid, self.peers[pid], m.PROBATION_DEADLINES)
        for pid in reconnect:
            self._reconnect(pid)
        for pid in probe:
            self._say_hello(pid, reply=False)

    # -- leaving ------------------------------------------------------------------------------
    def bye(self) -> None:
        """Tell every live neighbour that we are leaving (they drop us without suspicion)."""
        if not self._said_bye and not self._closed:
            frames = message("bye", sender=self.node_id, model_hash=self.model_hash)
            for pid in sorted(self.table.live):
                self._send(pid, frames, quiet=True)
            self._said_bye = True

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.drops.summarise()
            self.link.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.bye()
        finally:
            self.close()

    # -- plumbing -----------------------------------------------------------------------------
    def _send(self, pid: int, frames: list, quiet: bool = False, trackers: list | None = None) -> bool:
        tracker = self.link.send(pid, frames, track=trackers is not None)
        if tracker is False:
            self.drops.drop("send", f"to peer {pid}: not connected or queue full",
                            logging.DEBUG if quiet else logging.WARNING)
            return False
        self.bytes_sent += sum(len(f) for f in frames)
        if trackers is not None:
            trackers.append(tracker)
        return True

    def _pump(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for messages, then handle every one that has arrived."""
        for frames, auth in self.link.receive(timeout):
            try:
                self._handle(frames, auth)
            except Exception as e:  # noqa: BLE001 - a message must never take the agent down
                self.drops.drop("invalid", f"message could not be handled ({type(e).__name__}: {str(e):.80})")

    def _forged(self, sender, auth: int | None) -> str | None:
        """Why a message claiming ``sender`` did not come with that neighbour's key (None: it did, or the link
        authenticates nothing). The link looks the key up per message, so a revoked key counts at once."""
        if auth is None:
            return None
        if auth == UNKNOWN_KEY:
            return f"claims peer {sender!r:.20} but its key is unknown or revoked"
        if auth != sender:
            return f"claims peer {sender!r:.20} but was sent with peer {auth}'s key"
        return None

    def _handle(self, frames: list, auth: int | None) -> None:
        self.bytes_received += sum(len(f) for f in frames)
        top = max([self._round, *(r.round for r in self.table.peers.values())]) + ROUND_WINDOW
        expect = Expect(set(self.peers), self.model_hash, self.algorithm, {self.dtype.name}, self.shape, 0, top,
                        self.arrays)
        try:
            msg = decode(frames, expect)
        except WireError as e:
            h = e.header or {}
            if "sender" in h and (forged := self._forged(h["sender"], auth)):
                return self.drops.drop("forged", forged)
            known = h.get("type") == "hello" and type(h.get("sender")) is int and h["sender"] in self.peers
            if known and e.field == "model_hash":
                return self._on_hello(h["sender"], h, f"model hash {h['model_hash']!r:.80} but ours is "
                                                     f"{self.model_hash!r}; all agents must train the same model")
            if known and e.field == "v":
                return self._on_hello(h["sender"], h, f"{e.reason}; upgrade p2pntk so every agent speaks the "
                                                     "same protocol")
            who = f"from peer {h['sender']}: " if isinstance(h.get("sender"), int) else ""
            return self.drops.drop("invalid", who + e.reason)
        if forged := self._forged(msg.sender, auth):
            return self.drops.drop("forged", forged)
        s, now = msg.sender, self.clock()
        if msg.type == "hello":
            return self._on_hello(s, msg.header, None)
        if msg.type == "bye":
            if (event := self.table.on_bye(s, now, starting=self._starting)) == "departed":
                self.log.info("node %d: peer %d said BYE", self.node_id, s)
            elif event:
                self.log.warning("node %d: peer %d (%s) stopped during its start; waiting for it to come back",
                                 self.node_id, s, self.peers[s])
            return
        if msg.type != "params":
            self.table.on_heard(s, now)
            return self._on_flooding(msg)
        if s not in self.suspected and self.table.on_params(s, msg.round, now) == "confirmed":
            self.log.info("node %d: peer %d confirmed (its round-%d params arrived)", self.node_id, s, msg.round)
        if msg.round < self._round:
            return self.drops.drop("stale", f"round {msg.round} from peer {s}, now at {self._round}", logging.DEBUG)
        if s in self._pending[msg.round]:
            return self.drops.drop("duplicate", f"second round-{msg.round} message from peer {s}")
        self._pending[msg.round][s] = msg.arrays  # kept even from a suspected peer: they may overtake its HELLO
