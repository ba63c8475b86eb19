"""The ZeroMQ board transport: the protocol (coordinator_free.protocol) over PUSH/PULL sockets with CurveZMQ.

This module is the link layer only: sockets, CURVE and their options. Everything a peer's messages
mean lives in the protocol and the peer table (docs/design.md, section 7).

Socket pattern: PUSH/PULL. Each agent binds one PULL socket on its own address and keeps one PUSH socket
connected to each neighbour. Data flows one way per socket, so no identities or envelopes are needed
(ROUTER/DEALER would add both for nothing): the sender id is in the header and checked against the key
that sent it. One PUSH per neighbour keeps the peers' queues apart, so a dead peer never delays a live
one. Every send is non-blocking (NOBLOCK) with IMMEDIATE=1, so nothing queues for a peer that is not
connected, and a small high-water mark: a full queue drops the message (counted) instead of blocking.
Sends are zero-copy with trackers, so the protocol knows when a snapshot buffer is free again. Sockets
close with a bounded linger (LINGER_MS), so a BYE still goes out.
"""
from __future__ import annotations

import math
import socket

import zmq

from common.errors import AddressInUse, UserError
from coordinator_free.gossip import register_transport
from coordinator_free.keys import ZAP_DOMAIN, Curve, start_authenticator
from coordinator_free.protocol import ROUND_WINDOW, UNKNOWN_KEY, Protocol, check_setup

HWM = ROUND_WINDOW + 2  # messages queued per peer and direction before sends are dropped
LINGER_MS = 500  # how long close() may wait for queued messages (e.g. BYE) to go out
FRAME_SLACK = 1024  # bytes allowed above the largest valid frame: CurveZMQ's box, nonce and command name


def free_tcp_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that was free a moment ago on ``host``.

    Racy: another process may take the port between this probe and the bind. Where possible bind to
    "tcp://HOST:*" instead and publish ``endpoint``; otherwise retry on the AddressInUse a bind raises.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class ZmqLink:
    """A PULL socket bound at ``bind`` and one PUSH per neighbour; with ``curve``, every link is CurveZMQ
    and each received message comes with the id its key belongs to."""

    def __init__(self, node_id: int, bind: str, peers: dict[int, str], *, max_frame: int,
                 curve: Curve | None = None, context: zmq.Context | None = None) -> None:
        if curve is not None and context is not None:
            raise ValueError("a CURVE transport runs its own ZAP handler: do not pass a shared context")
        self.node_id, self.peers, self.curve, self._auth = node_id, peers, curve, None
        self._own_context = context is None
        self._ctx = context or zmq.Context()
        self._push: dict[int, zmq.Socket] = {}
        self._pull = self._ctx.socket(zmq.PULL)
        self._closed = False
        try:
            if curve is not None:  # only allow-listed keys get in
                self._auth = start_authenticator(self._ctx, curve.allow)
                self._pull.curve_secretkey, self._pull.curve_publickey = curve.secret, curve.public
                self._pull.zap_domain = ZAP_DOMAIN.encode()
                self._pull.curve_server = True
            self._pull.setsockopt(zmq.LINGER, 0)
            self._pull.setsockopt(zmq.RCVHWM, HWM)
            # Frames larger than a float64 model cannot be valid; ZeroMQ disconnects such a peer. The limit is
            # checked on the frame as it arrives, so under CURVE it includes the encryption's bytes.
            self._pull.setsockopt(zmq.MAXMSGSIZE, max_frame + FRAME_SLACK)
            try:
                self._pull.bind(bind)
            except zmq.ZMQError as e:
                kind = AddressInUse if e.errno == zmq.EADDRINUSE else UserError
                raise kind(f"node {node_id}: cannot bind {bind}: {e}") from None
            self.endpoint: str = self._pull.getsockopt(zmq.LAST_ENDPOINT).decode()
            for pid in sorted(peers):
                self.connect(pid)
        except BaseException:
            self.close()
            raise

    def connect(self, pid: int) -> None:
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

    def send(self, pid: int, frames: list, track: bool = False):
        try:
            tracker = self._push[pid].send_multipart(frames, flags=zmq.NOBLOCK, copy=False, track=track)
        except zmq.Again:
            return False
        return tracker if track else True

    def receive(self, timeout: float) -> list[tuple[list, int | None]]:
        if not self._pull.poll(max(0, math.ceil(timeout * 1000))):
            return []
        out = []
        while True:
            try:
                frames = self._pull.recv_multipart(flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return out
            out.append((frames, self._sender(frames)))

    def _sender(self, frames: list) -> int | None:
        """The neighbour whose key sent ``frames`` (UNKNOWN_KEY if none is, now), or None without CURVE."""
        if self.curve is None:
            return None
        key = frames[0].get("User-Id") if hasattr(frames[0], "get") else None
        bound = self.curve.allow.id_of(key)
        return UNKNOWN_KEY if bound is None else bound

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for sock in [self._pull, *self._push.values()]:
            sock.close(linger=LINGER_MS if sock is not self._pull else 0)
        if self._auth is not None:
            self._auth.stop()
        if self._own_context:
            self._ctx.term()


@register_transport("zmq")
class Transport(Protocol):
    """One agent's ZeroMQ transport: ``Protocol`` over a ``ZmqLink`` bound at ``bind`` ("tcp://127.0.0.1:5555",
    "tcp://*:5555", or "tcp://127.0.0.1:*" for a random port: read ``endpoint``). ``peers`` maps neighbour
    id -> "tcp://host:port". Every keyword but ``curve`` and ``context`` is the protocol's."""

    def __init__(self, node_id: int, bind: str, peers: dict[int, str], *, curve: Curve | None = None,
                 context: zmq.Context | None = None, **protocol):
        biggest = check_setup(node_id, peers, protocol)
        link = ZmqLink(node_id, bind, {int(p): a for p, a in peers.items()}, max_frame=biggest, curve=curve,
                       context=context)
        self.endpoint, self.curve = link.endpoint, curve
        try:
            super().__init__(node_id, peers, link, **protocol)
        except BaseException:
            link.close()
            raise
