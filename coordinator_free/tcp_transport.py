"""A second board transport: the same protocol (coordinator_free.protocol) over plain TCP sockets.

The link layer only, with the standard library's sockets and selectors, so the protocol is shown to
depend on nothing of ZeroMQ. It has no encryption and no authentication: a node file selects it with
``transport = "tcp"`` together with ``insecure = true``. One listening socket takes every neighbour's
connection; one outgoing connection per neighbour carries our messages. A message on the wire is a
little-endian u32 frame count, then each frame as a u64 length and its bytes. Sends never block: a
neighbour not yet connected, or one with HWM messages unsent, has the message dropped (counted by the
protocol), as ZeroMQ's IMMEDIATE and high-water mark do. A dropped connection is retried every RETRY s.
"""
from __future__ import annotations

import errno
import selectors
import socket
import struct
import time

from common.errors import AddressInUse, UserError
from coordinator_free.gossip import register_transport
from coordinator_free.protocol import ROUND_WINDOW, SENT, Protocol, check_setup

HWM = ROUND_WINDOW + 2  # unsent messages kept per neighbour before sends are dropped
RETRY = 0.1  # seconds between attempts to (re)connect to a neighbour
LINGER = 0.5  # seconds close() may spend sending what is queued (a BYE)
MAX_FRAMES = 65  # a share has at most 64 rows and a header
_COUNT, _LENGTH = struct.Struct("<I"), struct.Struct("<Q")


def _address(url: str, what: str) -> tuple[str, int]:
    """("host", port) from "tcp://host:port" ("*" as host: every interface; as port: any free one)."""
    if not url.startswith("tcp://") or ":" not in url[6:]:
        raise UserError(f"{what} {url!r}: expected tcp://HOST:PORT")
    host, _, port = url[6:].rpartition(":")
    try:
        return ("0.0.0.0" if host == "*" else host), (0 if port == "*" else int(port))
    except ValueError:
        raise UserError(f"{what} {url!r}: the port is not a number") from None


class _Outgoing:
    """Our connection to one neighbour, with the bytes not yet written."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.address, self.sock, self.up, self.retry_at = address, None, False, 0.0
        self.queue: list[memoryview] = []


class TcpLink:
    """Plain TCP: a listening socket at ``bind`` and one outgoing connection per neighbour in ``peers``."""

    def __init__(self, node_id: int, bind: str, peers: dict[int, str], *, max_frame: int) -> None:
        self.node_id, self.max_frame = node_id, max_frame
        self._sel = selectors.DefaultSelector()
        self._out = {pid: _Outgoing(_address(a, f"node {node_id}: bad address for peer {pid}"))
                     for pid, a in peers.items()}
        self._in: dict[socket.socket, bytearray] = {}
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        host, port = _address(bind, f"node {node_id}: bind")
        try:
            self._listener.bind((host, port))
        except OSError as e:
            self._listener.close()
            kind = AddressInUse if e.errno == errno.EADDRINUSE else UserError
            raise kind(f"node {node_id}: cannot bind {bind}: {e.strerror}") from None
        self._listener.listen(64)
        self._listener.setblocking(False)
        self._sel.register(self._listener, selectors.EVENT_READ)
        self.endpoint = f"tcp://{host}:{self._listener.getsockname()[1]}"
        for pid in sorted(peers):
            self.connect(pid)

    def connect(self, pid: int) -> None:
        out = self._out[pid]
        self._drop_outgoing(out)
        out.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        out.sock.setblocking(False)
        out.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if out.sock.connect_ex(out.address) not in (0, errno.EINPROGRESS):
            self._drop_outgoing(out)
            return
        self._sel.register(out.sock, selectors.EVENT_WRITE, pid)

    def _drop_outgoing(self, out: _Outgoing) -> None:
        if out.sock is not None:
            self._sel.unregister(out.sock)
            out.sock.close()
        out.sock, out.up, out.retry_at = None, False, time.monotonic() + RETRY
        out.queue.clear()

    def send(self, pid: int, frames: list, track: bool = False):
        out = self._out[pid]
        if not out.up or len(out.queue) >= HWM:
            return False
        parts = [_COUNT.pack(len(frames))]
        for f in frames:
            parts += [_LENGTH.pack(len(f)), bytes(f)]
        out.queue.append(memoryview(b"".join(parts)))
        self._flush(pid, out)
        return SENT  # the bytes are copied: the caller's buffers are free at once

    def _flush(self, pid: int, out: _Outgoing) -> None:
        try:
            while out.queue:
                n = out.sock.send(out.queue[0])
                out.queue[0] = out.queue[0][n:]
                if len(out.queue[0]):
                    break
                out.queue.pop(0)
        except BlockingIOError:
            pass
        except OSError:  # the neighbour went away: reconnect later
            self._drop_outgoing(out)
            return
        self._sel.modify(out.sock, selectors.EVENT_READ | (selectors.EVENT_WRITE if out.queue else 0), pid)

    def receive(self, timeout: float) -> list[tuple[list, int | None]]:
        now = time.monotonic()
        for pid, out in self._out.items():
            if out.sock is None and now >= out.retry_at:
                self.connect(pid)
        got: list[tuple[list, int | None]] = []
        for key, events in self._sel.select(max(0.0, min(timeout, RETRY))):
            sock = key.fileobj
            if sock is self._listener:
                self._accept()
            elif key.data is not None:  # an outgoing connection: up, writable, or closed by the neighbour
                out = self._out[key.data]
                if not out.up:
                    if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                        self._drop_outgoing(out)
                        continue
                    out.up = True
                if events & selectors.EVENT_READ and not self._still_open(sock):
                    self._drop_outgoing(out)
                    continue
                self._flush(key.data, out)
            else:
                self._read(sock, got)
        return got

    def _still_open(self, sock: socket.socket) -> bool:
        try:
            return sock.recv(1, socket.MSG_PEEK) != b""
        except BlockingIOError:
            return True
        except OSError:
            return False

    def _accept(self) -> None:
        try:
            sock, _ = self._listener.accept()
        except OSError:
            return
        sock.setblocking(False)
        self._in[sock] = bytearray()
        self._sel.register(sock, selectors.EVENT_READ, None)

    def _read(self, sock: socket.socket, got: list) -> None:
        buf = self._in[sock]
        try:
            data = sock.recv(1 << 20)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            return self._close_incoming(sock)
        buf += data
        while (message := self._parse(buf)) is not None:
            if message is False:  # over the limits: the neighbour is cut off, as ZeroMQ's MAXMSGSIZE does
                return self._close_incoming(sock)
            got.append((message, None))

    def _parse(self, buf: bytearray):
        """The first whole message in ``buf`` (removed from it), None if it is not all there, False if it
        breaks the limits."""
        if len(buf) < _COUNT.size:
            return None
        (count,), at, frames = _COUNT.unpack_from(buf), _COUNT.size, []
        if not 1 <= count <= MAX_FRAMES:
            return False
        for _ in range(count):
            if len(buf) < at + _LENGTH.size:
                return None
            (n,) = _LENGTH.unpack_from(buf, at)
            if n > self.max_frame:
                return False
            if len(buf) < at + _LENGTH.size + n:
                return None
            frames.append(bytes(buf[at + _LENGTH.size:at + _LENGTH.size + n]))
            at += _LENGTH.size + n
        del buf[:at]
        return frames

    def _close_incoming(self, sock: socket.socket) -> None:
        self._sel.unregister(sock)
        sock.close()
        del self._in[sock]

    def close(self) -> None:
        end = time.monotonic() + LINGER
        while any(o.queue and o.up for o in self._out.values()) and time.monotonic() < end:
            self.receive(0.01)
        for out in self._out.values():
            self._drop_outgoing(out)
        for sock in list(self._in):
            self._close_incoming(sock)
        self._sel.unregister(self._listener)
        self._listener.close()
        self._sel.close()


@register_transport("tcp")
class TcpTransport(Protocol):
    """``Protocol`` over a ``TcpLink``: plain TCP, for networks where ZeroMQ cannot be installed. It refuses a
    CURVE setting, since it cannot honour it: use it with ``insecure = true``."""

    def __init__(self, node_id: int, bind: str, peers: dict[int, str], *, curve=None, **protocol):
        if curve is not None:
            raise UserError(f"node {node_id}: transport = 'tcp' has no encryption or authentication; set "
                            "insecure = true to run it anyway, or use transport = 'zmq'")
        biggest = check_setup(node_id, peers, protocol)
        link = TcpLink(node_id, bind, {int(p): a for p, a in peers.items()}, max_frame=biggest)
        self.endpoint = link.endpoint
        try:
            super().__init__(node_id, peers, link, **protocol)
        except BaseException:
            link.close()
            raise
