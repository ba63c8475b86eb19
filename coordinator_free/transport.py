"""ZeroMQ transport between graph neighbours: handshake, synchronous rounds with deadlines, BYE.

No coordinator: each agent binds one socket and connects one to each neighbour (docs/design.md,
section 7). ``Transport`` is the real-socket implementation of ``coordinator_free.gossip.Gossip``.

Socket pattern: PUSH/PULL. Each agent binds one PULL socket on its own address and keeps one
PUSH socket connected to each neighbour. Data flows one way per socket, so no identities or
envelopes are needed (ROUTER/DEALER would add both for nothing): the sender id is in the header
and checked against the neighbour set. One PUSH per neighbour keeps the peers' queues apart, so
a dead peer never delays a live one. Every send is non-blocking (NOBLOCK) with IMMEDIATE=1, so
nothing queues for a peer that is not connected, and a small high-water mark: a full queue drops
the message and counts it instead of blocking. Sockets close with a bounded linger (LINGER_MS).

Handshake: HELLO carries the ids this agent has heard from. An agent is done when it has every
neighbour's HELLO, every neighbour's HELLO lists it, and it has sent each neighbour a HELLO
listing that neighbour, so both ends know the other is up. A non-reply HELLO is always answered
with a reply HELLO (also during `exchange`), so a peer still waiting for our confirmation gets
it; replies are never answered, so there is no ping-pong.

Deadlines: a neighbour silent past a round's deadline is suspected. A neighbour that is late
only because it is itself waiting (on a dead peer, or still in its handshake) is not: while
blocked in `exchange` an agent sends a small heartbeat (a reply HELLO) every deadline/4, as it
does to finished peers every 0.2 s during its handshake, and a missing neighbour heard from
within deadline/2 gets extra time (up to MAX_WAIT x deadline; so use deadlines > 0.4 s). Without this, one dead agent
would make its neighbours late, their neighbours would suspect them, and so on: a cascade.

Suspicion and rejoin: a suspected neighbour is no longer sent to or waited for (its params are kept
for when it is back). Because we stop sending, it misses our next message and suspects us too, so the
live graph is symmetric again one round later. Every deadline an agent sends a HELLO to its suspected
neighbours; a valid HELLO from a suspected (or departed) neighbour re-admits it, on both sides, over a
new connection, and on probation (sent to, not waited for) until its fresh params show that it hears
us too: after a partition the two directions of a link come back seconds apart (docs/design.md,
section 7, "After a partition"). An agent that suspects every neighbour is cut off itself (a
partition): it waits for one to come back, up to the handshake timeout, instead of training alone to
the end. HELLOs carry the sender's round: the one behind (a paused board, a restarted one) skips ahead
to the other's round (`next_round`); before it sends anything there it hears its neighbours' messages
of that round (`listen`) and adopts their average (agent.rounds.rejoin), so its stale parameters never
enter the mix. The one ahead resends its last two rounds' params. A live neighbour already past our
round is not waited for (we catch up with it instead). A peer that sends BYE leaves the live set
without suspicion (and may come back the same way).

Sharing: before training, `flood` gives every agent every other agent's share (a data summary),
relayed through the graph (docs/design.md, section 7, "Sharing summaries").

A Transport is not thread-safe: use it from one thread. Received arrays are read-only views of
the ZeroMQ frames (no copy); copy them before writing.
"""
from __future__ import annotations

import collections
import logging
import math
import socket
import time

import numpy as np
import zmq

from coordinator_free.wire import MAX_HEADER_BYTES, SHARE_EXTRA, Expect, WireError, decode, encode
from coordinator_free.common.compute import DTYPES
from coordinator_free.common.errors import AddressInUse, UserError
from coordinator_free.gossip import register_transport
from coordinator_free.keys import ZAP_DOMAIN, Curve, start_authenticator

ROUND_WINDOW = 8  # params for rounds up to current + ROUND_WINDOW are buffered; later ones dropped
HWM = ROUND_WINDOW + 2  # messages queued per peer and direction before sends are dropped
SNAPSHOTS = 3  # snapshot buffers kept for reuse once ZeroMQ is done sending them
MAX_WAIT = 3  # a live-but-late neighbour is waited for at most MAX_WAIT x deadline
LINGER_MS = 500  # how long close() may wait for queued messages (e.g. BYE) to go out
PROBATION = 6  # a re-admitted peer not confirmed within this many deadlines is suspected again (see _readmit)
RECONNECT_AFTER = 4  # a suspected peer silent for this many deadlines gets a fresh connection (see _probe)
FRAME_SLACK = 1024  # bytes allowed above the largest valid frame: CurveZMQ's box, nonce and command name
LOG_BURST = 5  # dropped-message warnings logged per LOG_INTERVAL; the rest are counted and summarised
LOG_INTERVAL = 10.0
_HELLO_KEYS = {"v", "type", "sender", "round", "model_hash", "spec_hash", "degree", "heard",
               "reply", "algorithm", "dtype", "shape", "arrays"}


def _differing(ours, theirs) -> str:
    """The spec keys whose hashes differ, from the HELLOs' ``spec_keys`` (name -> short hash), in a phrase."""
    if not isinstance(ours, dict) or not isinstance(theirs, dict):
        return "it does not say which keys differ"
    keys = sorted(k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k))
    return f"{', '.join(map(str, keys[:8]))}{' ...' if len(keys) > 8 else ''} differ" if keys else "keys differ"


def free_tcp_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that was free a moment ago on `host`.

    Racy: another process may take the port between this probe and the bind. Where possible bind
    to "tcp://HOST:*" instead and publish `Transport.endpoint`; otherwise retry on the UserError
    that Transport raises when its bind fails.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@register_transport("zmq")
class Transport:
    """One agent's sockets: a PULL bound at `bind` and a PUSH to each neighbour in `peers`.

    `bind` is e.g. "tcp://127.0.0.1:5555", "tcp://*:5555" or "tcp://127.0.0.1:*" (random port;
    read `endpoint`). `peers` maps neighbour id -> "tcp://host:port". Counters: `bytes_sent`,
    `bytes_received` (header + payload, every message), `wait_seconds` (blocked in exchange),
    `last_round_stats`, `dropped` (last 1000 (category, reason) pairs) and `drop_counts`.
    """

    def __init__(self, node_id: int, bind: str, peers: dict[int, str], *, model_hash: str,
                 spec_hash: str, algorithm: str, dtype: str, shape: tuple[int, ...], arrays: int = 1,
                 deadline: float = 10.0, copy_sends: bool = True, curve: Curve | None = None, start_round: int = 0,
                 logger: logging.Logger | None = None, context: zmq.Context | None = None):
        if node_id in peers:
            raise UserError(f"node {node_id} lists itself among its peers")
        if dtype not in DTYPES:
            raise UserError(f"dtype {dtype!r} is not float32 or float64")
        self.node_id, self.peers = node_id, {int(p): a for p, a in peers.items()}
        self.model_hash, self.spec_hash, self.algorithm = model_hash, spec_hash, algorithm
        self.dtype, self.shape, self.arrays = np.dtype(dtype), tuple(int(n) for n in shape), int(arrays)
        self.deadline, self.copy_sends = float(deadline), bool(copy_sends)
        self.log = logger or logging.getLogger(__name__)
        self.suspected: set[int] = set()
        self.departed: set[int] = set()
        self.dropped: collections.deque[tuple[str, str]] = collections.deque(maxlen=1000)
        self.drop_counts: collections.Counter[str] = collections.Counter()
        self._log_window, self._logged = time.monotonic(), 0
        self._suppressed: collections.Counter[str] = collections.Counter()
        self.bytes_sent = self.bytes_received = 0
        self.wait_seconds = 0.0
        self.last_round_stats: dict = {}
        self.isolation_wait = 60.0  # seconds a cut-off agent waits for a neighbour (set by handshake)
        self._round = int(start_round)  # params for rounds below this are stale
        self.catch_up = self._round  # the highest round a neighbour's HELLO reported (see next_round)
        self.rejoined: collections.Counter[int] = collections.Counter()  # re-admissions per peer
        self.probation: dict[int, int] = {}  # re-admitted peer -> the round its params must reach to confirm it
        self._probation_since: dict[int, float] = {}  # when each was put on probation (monotonic)
        self._connected_at: dict[int, float] = {}  # monotonic time each PUSH socket was (re)opened
        self._next_probe = 0.0  # monotonic time of the next HELLO to suspected peers (every deadline, see _probe)
        self._peer_round: dict[int, int] = {}  # each peer's latest known round
        self._sent: dict[int, list] = {}  # the last two rounds' params frames, resent to a rejoiner
        self._owed: dict[int, list[list]] = {}  # rejoiner -> params frames it is still owed, oldest first
        self._pending: dict[int, dict[int, np.ndarray]] = collections.defaultdict(dict)
        self._agree: dict[int, dict[int, dict]] = collections.defaultdict(dict)  # step -> sender -> values
        self._shares: dict[int, tuple[dict, tuple[np.ndarray, ...]]] = {}  # origin -> (meta, rows): see flood
        self._shared_done: set[int] = set()  # neighbours that hold every share
        self.share_origins = 0  # shares are taken only from origins 0..share_origins-1 (set it before handshake)
        self._hellos: dict[int, dict] = {}
        self._mismatch: dict[int, str] = {}
        self._acked: set[int] = set()  # peers whose HELLO lists us
        self._told: set[int] = set()  # peers we have sent a HELLO listing them
        self._last_heard: dict[int, float] = {}  # monotonic time of each peer's last valid message
        self._snapshots: list[tuple[np.ndarray, list[zmq.MessageTracker]]] = []
        self._handshaking, self._said_bye, self._closed = False, False, False
        self._degree, self._extra = len(self.peers), {}
        if curve is not None and context is not None:
            raise ValueError("a CURVE transport runs its own ZAP handler: do not pass a shared context")
        self.curve, self._auth = curve, None
        self._own_context = context is None
        self._ctx = context or zmq.Context()
        self._push: dict[int, zmq.Socket] = {}
        self._pull = self._ctx.socket(zmq.PULL)
        try:
            if curve is not None:  # every link is CurveZMQ: encrypted, and only allow-listed keys get in
                self._auth = start_authenticator(self._ctx, curve.allow)
                self._pull.curve_secretkey, self._pull.curve_publickey = curve.secret, curve.public
                self._pull.zap_domain = ZAP_DOMAIN.encode()
                self._pull.curve_server = True
            self._pull.setsockopt(zmq.LINGER, 0)
            self._pull.setsockopt(zmq.RCVHWM, HWM)
            # Frames larger than a float64 model cannot be valid; ZeroMQ disconnects such a peer. The
            # limit is checked on the frame as it arrives, so under CURVE it includes the encryption's
            # few dozen bytes per frame: without FRAME_SLACK a float64 model's own params are refused.
            self._pull.setsockopt(zmq.MAXMSGSIZE, max(8 * (math.prod(self.shape) + SHARE_EXTRA), MAX_HEADER_BYTES)
                                  + FRAME_SLACK)
            try:
                self._pull.bind(bind)
            except zmq.ZMQError as e:
                kind = AddressInUse if e.errno == zmq.EADDRINUSE else UserError
                raise kind(f"node {node_id}: cannot bind {bind}: {e}") from None
            self.endpoint: str = self._pull.getsockopt(zmq.LAST_ENDPOINT).decode()
            for pid in sorted(self.peers):
                self._connect(pid)
        except BaseException:
            self.close()
            raise

    def _connect(self, pid: int) -> None:
        """(Re)open the PUSH socket to neighbour ``pid``: a fresh TCP connection, whatever the old one held."""
        if (old := self._push.pop(pid, None)) is not None:
            old.close(linger=0)
        push = self._push[pid] = self._ctx.socket(zmq.PUSH)
        push.setsockopt(zmq.SNDHWM, HWM)
        push.setsockopt(zmq.IMMEDIATE, 1)
        push.setsockopt(zmq.LINGER, LINGER_MS)
        if self.curve is not None:
            push.curve_secretkey, push.curve_publickey = self.curve.secret, self.curve.public
            push.curve_serverkey = self.curve.allow.public_key(pid)
        try:
            push.connect(self.peers[pid])
        except zmq.ZMQError as e:
            raise UserError(f"node {self.node_id}: bad address {self.peers[pid]!r} for peer {pid}: {e}") from None
        self._connected_at[pid] = time.monotonic()

    @property
    def live(self) -> set[int]:
        """Neighbours neither suspected nor departed: the ones sent to and waited for."""
        return set(self.peers) - self.suspected - self.departed

    # -- handshake ---------------------------------------------------------------------------
    def handshake(self, degree: int, timeout: float, extra: dict | None = None) -> dict[int, dict]:
        """Exchange HELLOs (id, degree, model hash, spec hash, `extra`) with every neighbour.

        Returns neighbour id -> its HELLO header (with "degree" and the neighbour's `extra` keys).
        Raises UserError on a model or spec hash mismatch (naming the peer and both hashes) or
        when `timeout` seconds pass without all neighbours (the message names the missing ones).
        """
        extra = dict(extra or {})
        if clash := _HELLO_KEYS & extra.keys():
            raise ValueError(f"handshake extra uses reserved keys {sorted(clash)}")
        self._degree, self._extra = int(degree), extra
        self.isolation_wait = float(timeout)
        end, resend, interval = time.monotonic() + timeout, 0.0, 0.01
        self._handshaking = True
        try:
            while True:
                needed = set(self.peers) - self.departed
                done = needed <= self._hellos.keys() | self._mismatch.keys() and \
                    needed <= self._acked & self._told
                if done or time.monotonic() >= end:
                    break
                if time.monotonic() >= resend:  # peers already done get a heartbeat (reply)
                    for pid in sorted(needed):
                        self._say_hello(pid, reply=pid in self._acked & self._told)
                    interval = min(2 * interval, 0.2)  # fast while peers start, then gentle
                    resend = time.monotonic() + interval
                self._pump(min(resend, end) - time.monotonic())
        finally:
            self._handshaking = False
        if self._mismatch:
            raise UserError("; ".join(self._mismatch[p] for p in sorted(self._mismatch)))
        if done and needed:  # join the swarm at its slowest neighbour's round (all have its messages from there)
            self.catch_up = max(self.catch_up, min(int(self._hellos[p]["round"]) for p in needed))
        if not done:
            silent = sorted(needed - self._hellos.keys())
            unconfirmed = sorted(needed - (self._acked & self._told) - set(silent))
            parts = [f"no HELLO from {self._names(silent)}"] if silent else []
            parts += [f"{self._names(unconfirmed)} never confirmed ours"] if unconfirmed else []
            raise UserError(f"node {self.node_id}: handshake timed out after {timeout:g} s: "
                            f"{'; '.join(parts)}. Are those agents running at those addresses?")
        return {pid: self._hellos[pid] for pid in sorted(needed)}

    def _names(self, ids: list[int]) -> str:
        return ", ".join(f"peer {p} ({self.peers[p]})" for p in ids)

    def _say_hello(self, pid: int, reply: bool) -> None:
        """Send a HELLO to `pid`; once one listing `pid` is queued on a live connection, `pid` is
        in `_told` (a reply lost to a not-yet-connected socket is retried, not forgotten)."""
        heard = sorted(self._hellos.keys() | self._mismatch.keys())
        frames = encode({**self._extra, "type": "hello", "sender": self.node_id,
                         "model_hash": self.model_hash, "spec_hash": self.spec_hash,
                         "degree": self._degree, "round": self._round, "heard": heard, "reply": reply})
        if self._send(pid, frames, quiet=True) and pid in heard:
            self._told.add(pid)

    def _on_hello(self, sender: int, h: dict, problem: str | None) -> None:
        if problem is None and h["spec_hash"] != self.spec_hash:
            problem = (f"another experiment spec: {_differing(self._extra.get('spec_keys'), h.get('spec_keys'))} "
                       f"(spec hash {h['spec_hash']!r:.80}, but ours is {self.spec_hash!r}); all agents must share "
                       f"every spec key but the ones tuned locally")
        if problem is not None and not self._handshaking:
            self._drop("invalid", f"HELLO from peer {sender}: {problem}", logging.WARNING)
            return
        if problem is not None:
            self._mismatch[sender] = f"node {self.node_id}: peer {sender} ({self.peers[sender]}) " \
                                     f"has {problem}"
        else:
            self._hellos[sender] = h
            back = sender in self.suspected or sender in self.departed
            if self._handshaking or back or h["round"] >= self._round + 2:
                # a neighbour two rounds ahead moved on without us (we were paused, or are resuming):
                # we catch up with it. One round ahead is normal: its message for ours is on the way.
                self._peer_round[sender] = max(self._peer_round.get(sender, 0), h["round"])
                if not self._handshaking:  # a handshake catches up with its slowest neighbour, at the end
                    self.catch_up = max(self.catch_up, h["round"])
            if back:
                self._readmit(sender, int(h["round"]))
        if isinstance(h.get("heard"), list) and self.node_id in h["heard"]:
            self._acked.add(sender)
        if h.get("reply") is not True and sender in self.live:
            self._say_hello(sender, reply=True)

    def _readmit(self, sender: int, its_round: int) -> None:
        """A suspected (or departed) neighbour is back with a valid HELLO: live again from this round.

        Its weight returns to its place in our row (the round loop mixes over whoever answered), and so
        does ours in its row once it has our HELLO too. If we already sent this round's params, it gets
        them now; it catches up to our round (``next_round``) and sends its own for this round.

        It is on probation until its params for a round two past both ours and ``its_round`` (the round
        its HELLO reported) arrive: we send to it and mix its params when they come, but wait for it only
        when no confirmed neighbour is left to pace our rounds, and never suspect it for being late. Its
        HELLO proves only that its direction of the link works; after a partition our direction can stay
        down for seconds more, and it sends params only once it has our HELLO. Waiting for them cost a
        deadline and a second suspicion, a flap (design.md, 7. After a partition). Earlier params prove nothing:
        they may have sat in a queue through the partition, sent before it suspected us (at most one round
        past the round in which we suspected it). A peer not confirmed within PROBATION x deadline is
        suspected again (its next HELLO re-admits it).
        """
        self.suspected.discard(sender)
        self.departed.discard(sender)
        self.probation[sender] = max(self._round, its_round) + 2
        self._probation_since[sender] = time.monotonic()
        self.rejoined[sender] += 1
        self.log.warning("node %d: peer %d (%s) is back (its round %d, ours %d): re-admitted", self.node_id,
                         sender, self.peers[sender], self._peer_round.get(sender, 0), self._round)
        # Its direction of the link works; ours may be stuck in TCP's retransmission backoff, which after an
        # outage of a few seconds keeps a healed link silent for seconds more. A new connection is up at once.
        self._connect(sender)
        self._push[sender].poll(int(125 * self.deadline), zmq.POLLOUT)  # give its handshake a moment
        # ask for an answer: it carries the peer's current round, which a HELLO that sat in a queue through
        # a partition does not (it would hold us waiting for a round the peer has long left behind)
        self._say_hello(sender, reply=False)
        for r in sorted(self._sent):  # the last two rounds: it may be one behind the round we are in
            self._owed.setdefault(sender, []).append(self._sent[r])
        self._pay_owed()

    def _pay_owed(self) -> None:
        """Send re-admitted peers the round's frames they missed (retried every heartbeat and every round
        until sent: the link to a restarted peer takes a moment to reconnect)."""
        for pid, queue in sorted(self._owed.items()):
            while queue and self._send(pid, queue[0], quiet=True):
                queue.pop(0)
            if not queue:
                del self._owed[pid]

    def next_round(self, round: int) -> int:
        """The round to run after ``round``'s predecessor: ``round``, or later if a neighbour that (re)joined
        reported a later one (a resumed or paused agent catches up with the swarm, skipping rounds)."""
        return max(round, self.catch_up)

    def listen(self, round: int, deadline: float | None = None) -> dict[int, tuple[np.ndarray, ...]]:
        """Live neighbours' round-`round` params, collected for at most `deadline` (default: half the round
        deadline) without sending ours: a rejoiner that is behind hears the swarm before it speaks
        (agent.rounds.rejoin). Returns copies; the messages stay buffered for `exchange(round)`."""
        if round < self._round:
            raise ValueError(f"round {round!r}: rounds must be ints >= {self._round}")
        end = time.monotonic() + (self.deadline / 2 if deadline is None else deadline)
        got = self._pending[round]
        while (self.live - got.keys() - self._ahead(round)) and (now := time.monotonic()) < end:
            self._pay_owed()  # what we owe a neighbour we have re-admitted
            self._pump(min(0.05, end - now))
        return {p: tuple(np.array(a) for a in arrays) for p, arrays in sorted(got.items()) if p not in self.suspected}

    def agree(self, values: dict[str, float], steps: int, deadline: float | None = None) -> dict[str, float]:
        """The minimum of every agent's ``values`` (name -> positive number), by ``steps`` rounds of
        flooding: each step sends the smallest values seen so far to the live neighbours and takes the
        minimum with theirs. With ``steps`` >= the graph's diameter every agent ends with the swarm's
        minimum. A neighbour silent for a step's ``deadline`` is left out of that step (not suspected)."""
        deadline = self.deadline if deadline is None else deadline
        current = {k: float(v) for k, v in values.items()}
        for step in range(steps):
            frames = encode({"type": "agree", "sender": self.node_id, "model_hash": self.model_hash,
                             "step": step, "values": current})
            for pid in sorted(self.live):
                self._send(pid, frames)
            end = time.monotonic() + deadline
            got = self._agree[step]
            while (self.live - got.keys()) and (now := time.monotonic()) < end:
                self._pump(min(0.05, end - now))
            for theirs in self._agree.pop(step).values():
                for k in current:
                    if k in theirs:
                        current[k] = min(current[k], float(theirs[k]))
        return current

    def flood(self, meta: dict, rows: tuple[np.ndarray, ...], expected: int, timeout: float
              ) -> dict[int, tuple[dict, tuple[np.ndarray, ...]]]:
        """Every agent's share (``meta``, a small flat dict, and ``rows``, arrays of P + SHARE_EXTRA numbers),
        by flooding before training: ours goes to every neighbour, and each share heard for the first time is
        relayed to every live neighbour but the one it came from, so with a connected graph all ``expected``
        shares reach everyone. Then a ``shared`` message tells the neighbours we are done, and we wait (up to
        ``timeout`` in all) until they are too, relaying what they may still need. Returns origin -> (meta,
        rows), ours included: all of them, or what arrived in time (logged). A relayed share is authenticated
        as its relay's, not its origin's (docs/design.md, 7. Sharing summaries)."""
        self.share_origins = max(self.share_origins, expected)
        self._shares[self.node_id] = (dict(meta), tuple(np.array(r) for r in rows))
        self._relay(self.node_id, None)
        end, said_done = time.monotonic() + timeout, False
        while (now := time.monotonic()) < end:
            self._pay_owed()
            if not said_done and len(self._shares) >= expected and not self._owed:
                done = encode({"type": "shared", "sender": self.node_id, "model_hash": self.model_hash,
                               "count": len(self._shares)})
                for pid in sorted(self.live):
                    self._send(pid, done, quiet=True)
                said_done = True
            if said_done and self.live <= self._shared_done:
                break
            self._pump(min(0.05, end - now))
        if len(self._shares) < expected:
            self.log.warning("node %d: %d of %d shares after %g s (missing %s)", self.node_id, len(self._shares),
                             expected, timeout, sorted(set(range(expected)) - self._shares.keys()))
        return dict(self._shares)

    def _relay(self, origin: int, source: int | None) -> None:
        """Queue share ``origin`` for every live neighbour but ``source``, under our own sender id (each
        message is bound to its sender's key), retried until sent (``_pay_owed``)."""
        meta, rows = self._shares[origin]
        frames = encode({"type": "share", "sender": self.node_id, "model_hash": self.model_hash, "origin": origin,
                         "meta": meta}, rows)
        for pid in sorted(self.live - {source, origin}):
            self._owed.setdefault(pid, []).append(frames)
        self._pay_owed()

    def _wait_for_company(self, round: int) -> None:
        """Every neighbour is suspected: we are cut off (a partition, our own link down). Rather than train
        alone to the end, wait, probing every deadline, until one is back (then we catch up with it as a
        rejoiner) or until ``isolation_wait`` (the handshake timeout) has passed, then go on alone."""
        self.log.warning("node %d: cut off from every neighbour (%s) at round %d: waiting up to %g s for one to "
                         "come back", self.node_id, self._names(sorted(self.suspected)), round, self.isolation_wait)
        t0 = time.monotonic()
        end = t0 + self.isolation_wait
        while self.suspected == set(self.peers) and (now := time.monotonic()) < end:
            self._probe()
            self._pump(min(self._next_probe, end) - now)
        self.wait_seconds += time.monotonic() - t0
        if self.suspected == set(self.peers):
            self.log.warning("node %d: no neighbour came back in %g s: going on alone", self.node_id,
                             self.isolation_wait)

    def _probe(self) -> None:
        """Every deadline (whatever the rounds' length), a HELLO to suspected neighbours and to those on
        probation, so that one that comes back is re-admitted on both sides."""
        if (now := time.monotonic()) < self._next_probe:
            return
        self._next_probe = now + self.deadline
        for pid in sorted(self.suspected | (self.probation.keys() & self.live)):
            if pid in self.suspected and now - max(self._connected_at[pid], self._last_heard.get(pid, -math.inf)) \
                    >= RECONNECT_AFTER * self.deadline:  # silent: our connection may be the one stuck in backoff
                self._connect(pid)
            self._say_hello(pid, reply=False)

    # -- rounds ------------------------------------------------------------------------------
    def exchange(self, round: int, arrays: tuple[np.ndarray, ...] | np.ndarray, deadline: float | None = None,
                 *, copy: bool | None = None) -> dict[int, tuple[np.ndarray, ...]]:
        """Send `arrays` (the algorithm's `self.arrays` messages) as round `round` to every live
        neighbour, then collect their round-`round` params for at most `deadline` seconds (counted
        from this call; see the module docstring for the extra time given to neighbours that are
        alive but late; None: the transport's `deadline`). A single array may be passed for a
        one-message algorithm.

        Returns neighbour id -> tuple of read-only arrays (shape `shape`, dtype `dtype`). Neighbours
        that miss the deadline join `suspected`. Sends are zero-copy, so ZeroMQ may still be reading
        the sent buffers after this returns: with `copy=True` (default: `copy_sends`) they are private snapshots
        (one memcpy into reused buffers, shared by all neighbours) and the caller may overwrite
        `arrays` at once. `copy=False` sends `arrays` themselves; then never modify them in place
        afterwards (fresh arrays per round, as the pure update rules produce, are safe).
        """
        if self._closed:
            raise RuntimeError(f"node {self.node_id}: exchange on a closed transport")
        if not isinstance(round, int) or round < self._round:
            raise ValueError(f"round {round!r}: rounds must be ints >= {self._round}")
        arrays = (arrays,) if isinstance(arrays, np.ndarray) else tuple(arrays)
        deadline = self.deadline if deadline is None else deadline
        copy = self.copy_sends if copy is None else copy
        if len(arrays) != self.arrays or any(a.dtype != self.dtype or a.shape != self.shape for a in arrays):
            raise ValueError(f"exchange got {[(a.dtype.name, list(a.shape)) for a in arrays]}, transport carries "
                             f"{self.arrays} x {self.dtype} {list(self.shape)}")
        sent0, recv0, drops0 = self.bytes_sent, self.bytes_received, sum(self.drop_counts.values())
        self._round = round
        if self.peers and self.suspected == set(self.peers):  # cut off from every neighbour (none has finished)
            self._wait_for_company(round)
        start = time.monotonic()  # the round's deadline counts from here, not from before a cut-off wait
        for old in [r for r in self._pending if r < round]:
            del self._pending[old]
        trackers = None
        if copy:
            arrays, trackers = self._snapshot(arrays)
        self._pay_owed()
        self._probe()
        frames = self._params_frames(round, arrays)
        self._sent = {r: f for r, f in self._sent.items() if r == round - 1}
        self._sent[round] = frames
        for pid in sorted(self.live):
            self._send(pid, frames, trackers=trackers)
        waiting = time.monotonic()
        self._collect(round, start, deadline)
        waited = time.monotonic() - waiting
        self.wait_seconds += waited
        got = {p: a for p, a in sorted(self._pending.pop(round).items())
               if p not in self.suspected}  # buffered before the sender became suspected
        now = time.monotonic()
        late = sorted(p for p in self._awaited(round) - got.keys()
                      if p not in self.probation or now - self._probation_since[p] >= PROBATION * deadline)
        for pid in late:
            self.log.warning("node %d: peer %d (%s) missed the %.3g s deadline of round %d; "
                             "suspected from now on", self.node_id, pid, self.peers[pid], deadline,
                             round)
        self.suspected.update(late)
        for pid in late:
            self.probation.pop(pid, None)
        self.last_round_stats = {
            "round": round, "bytes_sent": self.bytes_sent - sent0,
            "bytes_received": self.bytes_received - recv0, "wait_seconds": waited,
            "seconds": time.monotonic() - start, "received_from": sorted(got),
            "newly_suspected": late, "dropped": sum(self.drop_counts.values()) - drops0}
        return got

    def _params_frames(self, round: int, arrays: tuple[np.ndarray, ...]) -> list:
        return encode({"type": "params", "sender": self.node_id, "round": round,
                       "algorithm": self.algorithm, "model_hash": self.model_hash}, arrays)

    def message_bytes(self, round: int, arrays: tuple[np.ndarray, ...]) -> int:
        """The exact bytes one round-`round` params message with `arrays` puts on the wire."""
        return sum(len(f) for f in self._params_frames(round, arrays))

    def _snapshot(self, arrays: tuple[np.ndarray, ...]) -> tuple[tuple[np.ndarray, ...], list[zmq.MessageTracker]]:
        """Copy `arrays` into buffers ZeroMQ no longer reads (their send trackers are done).

        Reusing warm buffers avoids paging in fresh memory every round; a buffer still queued
        for a slow peer is left alone and a new one is used.
        """
        for buf, trackers in self._snapshots:
            if all(t.done for t in trackers):
                break
        else:
            buf, trackers = np.empty((self.arrays, *self.shape), self.dtype.newbyteorder("<")), []
            if len(self._snapshots) < SNAPSHOTS:
                self._snapshots.append((buf, trackers))
        for i, a in enumerate(arrays):
            np.copyto(buf[i], a)
        trackers.clear()
        return tuple(buf), trackers

    def _collect(self, round: int, start: float, deadline: float) -> None:
        """Pump until every live neighbour's round-`round` params are in, or the deadline.

        Past the deadline, keep waiting (up to MAX_WAIT x deadline) for missing neighbours heard
        from in the last deadline/2: they are alive, blocked on a dead peer of their own, and
        send heartbeats (reply HELLOs) every deadline/4 while they wait, as we do here.
        """
        got, beat = self._pending[round], max(deadline / 4, 0.01)
        end, hard_end, next_beat = start + deadline, start + MAX_WAIT * deadline, start + beat
        while missing := self._awaited(round) - got.keys():
            now = time.monotonic()
            self._probe()
            if now >= end:
                self._pump(0)  # take what has arrived before deciding
                missing = self._awaited(round) - got.keys()
                if not missing or now >= hard_end or all(p in self.probation or
                                                         now - self._last_heard.get(p, -math.inf) >= deadline / 2
                                                         for p in missing):
                    return
            if now >= next_beat:
                for pid in sorted(self.live):
                    self._say_hello(pid, reply=True)
                self._pay_owed()
                next_beat = now + beat
            self._pump(min(next_beat, end if now < end else hard_end) - now)

    def _awaited(self, round: int) -> set[int]:
        """The neighbours a round waits for: live ones not ahead of us, and of those only the confirmed ones
        (not on probation, see ``_readmit``) while any is left."""
        live = self.live - self._ahead(round)
        return (live - self.probation.keys()) or live

    def _ahead(self, round: int) -> set[int]:
        """Live neighbours two or more rounds past ``round``: they moved on without us and will not send it;
        we catch up with them instead. (One round ahead is normal: its message for ``round`` is on the way.)"""
        return {p for p in self.live if self._peer_round.get(p, -1) >= round + 2}

    def bye(self) -> None:
        """Tell every live neighbour that we are leaving (they drop us without suspicion)."""
        if not self._said_bye and not self._closed:
            frames = encode({"type": "bye", "sender": self.node_id, "model_hash": self.model_hash})
            for pid in sorted(self.live):
                self._send(pid, frames, quiet=True)
            self._said_bye = True

    def close(self) -> None:
        """Close the sockets, waiting at most LINGER_MS for queued messages to go out."""
        if self._closed:
            return
        self._closed = True
        self._summarise_drops()
        for sock in [self._pull, *self._push.values()]:
            sock.close(linger=LINGER_MS if sock is not self._pull else 0)
        if self._auth is not None:
            self._auth.stop()
        if self._own_context:
            self._ctx.term()

    def __enter__(self) -> Transport:
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.bye()
        finally:
            self.close()

    # -- plumbing ----------------------------------------------------------------------------
    def _send(self, pid: int, frames: list, quiet: bool = False,
              trackers: list[zmq.MessageTracker] | None = None) -> bool:
        """Queue `frames` for `pid` without blocking; append a send tracker to `trackers`."""
        try:
            tracker = self._push[pid].send_multipart(frames, flags=zmq.NOBLOCK, copy=False,
                                                     track=trackers is not None)
        except zmq.Again:
            level = logging.DEBUG if quiet else logging.WARNING
            self._drop("send", f"to peer {pid}: not connected or queue full", level)
            return False
        self.bytes_sent += sum(len(f) for f in frames)
        if trackers is not None:
            trackers.append(tracker)
        return True

    def _drop(self, category: str, reason: str, level: int) -> None:
        """Count a dropped message; log it, at most LOG_BURST warnings per LOG_INTERVAL (then a summary)."""
        self.dropped.append((category, reason))
        self.drop_counts[category] += 1
        if level < logging.WARNING:
            self.log.log(level, "node %d: dropped message (%s): %s", self.node_id, category, reason)
            return
        if time.monotonic() - self._log_window >= LOG_INTERVAL:
            self._summarise_drops()
        if self._logged < LOG_BURST:
            self._logged += 1
            self.log.log(level, "node %d: dropped message (%s): %s", self.node_id, category, reason)
        else:
            self._suppressed[category] += 1

    def _summarise_drops(self) -> None:
        """One line for the warnings held back in the current interval, then a new interval."""
        if self._suppressed:
            counts = ", ".join(f"{c}: {n}" for c, n in sorted(self._suppressed.items()))
            self.log.warning("node %d: %d more dropped messages in the last %.0f s (%s); totals so far %s",
                             self.node_id, sum(self._suppressed.values()), time.monotonic() - self._log_window,
                             counts, dict(self.drop_counts))
        self._suppressed.clear()
        self._log_window, self._logged = time.monotonic(), 0

    def _pump(self, timeout: float) -> None:
        """Wait up to `timeout` seconds for messages, then handle every one that has arrived."""
        if not self._pull.poll(max(0, math.ceil(timeout * 1000))):
            return
        while True:
            try:
                frames = self._pull.recv_multipart(flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            self._handle(frames)

    def _forged(self, frames: list, sender) -> str | None:
        """Why a message claiming ``sender`` did not come from that neighbour's key (None: it did, or no CURVE).

        The ZAP handler let the connection in; this binds each message to the key that sent it, and sees
        a revocation at once (the allow-list re-reads its key files), without a restart.
        """
        if self.curve is None:
            return None
        key = frames[0].get("User-Id") if hasattr(frames[0], "get") else None
        bound = self.curve.allow.id_of(key)
        if bound is None:
            return f"claims peer {sender!r:.20} but its key is unknown or revoked"
        if bound != sender:
            return f"claims peer {sender!r:.20} but was sent with peer {bound}'s key"
        return None

    def _handle(self, frames: list) -> None:
        """Handle one received message; nothing a peer sends can raise out of here."""
        try:
            self._handle_checked(frames)
        except Exception as e:  # noqa: BLE001 - a message must never take the agent down
            self._drop("invalid", f"message could not be handled ({type(e).__name__}: {str(e):.80})",
                       logging.WARNING)

    def _handle_checked(self, frames: list) -> None:
        self.bytes_received += sum(len(f) for f in frames)
        expect = Expect(set(self.peers), self.model_hash, self.algorithm, {self.dtype.name},
                        self.shape, 0, max(self._round, self.catch_up, *self._peer_round.values()) + ROUND_WINDOW,
                        self.arrays)
        try:
            msg = decode(frames, expect)
        except WireError as e:
            h = e.header or {}
            if "sender" in h and (forged := self._forged(frames, h["sender"])):
                return self._drop("forged", forged, logging.WARNING)
            if e.field == "model_hash" and h.get("type") == "hello":
                problem = f"model hash {h['model_hash']!r:.80} but ours is {self.model_hash!r}; " \
                          f"all agents must train the same model"
                return self._on_hello(h["sender"], h, problem)
            if e.field == "v" and h.get("type") == "hello" and type(h.get("sender")) is int and h["sender"] in self.peers:
                return self._on_hello(h["sender"], h, f"{e.reason}; upgrade p2pntk so every agent "
                                                      "speaks the same protocol")
            who = f"from peer {h['sender']}: " if isinstance(h.get("sender"), int) else ""
            return self._drop("invalid", who + e.reason, logging.WARNING)
        if forged := self._forged(frames, msg.sender):
            return self._drop("forged", forged, logging.WARNING)
        s = msg.sender
        self._last_heard[s] = time.monotonic()
        if msg.type == "params" and msg.round >= self.probation.get(s, math.inf) and s not in self.suspected:
            del self.probation[s]  # it has re-admitted us too: both directions of the link work
            self.log.info("node %d: peer %d confirmed (its round-%d params arrived)", self.node_id, s, msg.round)
        if msg.type == "hello":
            self._on_hello(s, msg.header, None)
        elif msg.type == "agree":
            self._agree[msg.header["step"]].setdefault(s, msg.header["values"])
        elif msg.type == "share":
            if (origin := msg.header["origin"]) >= self.share_origins:
                self._drop("invalid", f"share of board {origin} from peer {s}: not expected "
                                      f"(taken from boards 0..{self.share_origins - 1} before training)", logging.WARNING)
            elif origin not in self._shares:
                self._shares[origin] = (msg.header["meta"], tuple(np.array(a) for a in msg.arrays))
                self._relay(origin, s)
        elif msg.type == "shared":
            self._shared_done.add(s)
        elif msg.type == "bye":
            if s not in self.departed:
                self.departed.add(s)
                self.log.info("node %d: peer %d said BYE", self.node_id, s)
        elif msg.round < self._round:
            self._drop("stale", f"round {msg.round} from peer {s}, now at {self._round}",
                       logging.DEBUG)
        elif s in self._pending[msg.round]:
            self._drop("duplicate", f"second round-{msg.round} message from peer {s}",
                       logging.WARNING)
        else:  # kept even from a suspected peer: after a partition its resent params may overtake its HELLO,
            # and they are what we adopt once it is re-admitted (exchange and listen take live peers' only)
            self._pending[msg.round][s] = msg.arrays
            self._peer_round[s] = max(self._peer_round.get(s, 0), msg.round)
