"""LAN discovery without a server: each agent advertises ``_p2pntk._tcp`` over mDNS (python-zeroconf).

The advert carries the agent's id, degree, model hash and spec hash. An agent browses until it has
seen every neighbour that the spec's topology rule gives it, and builds its peer table from the
discovered addresses. Optional extra: ``pip install 'p2p-ntk[discovery]'``. The default is the
static peer table of the node file. A bind on 127.0.0.1 keeps mDNS on the loopback interface.
"""
from __future__ import annotations

import socket
import time
from urllib.parse import urlparse

from coordinator_free.topology import build_graph
from common.errors import UserError

SERVICE = "_p2pntk._tcp.local."


def topology_neighbours(network, node_id: int) -> list[int]:
    """This agent's neighbours by the spec's topology rule (every agent computes the same graph)."""
    G = build_graph(network.topology, network.agents, network.seed)
    return sorted(G.neighbors(node_id))


class Discovery:
    """Advertise this agent and find its neighbours; keep it open until the run ends (others may still look)."""

    def __init__(self, node_id: int, bind: str, *, network, model_hash: str, spec_hash: str,
                 advertise: str | None = None) -> None:
        try:
            from zeroconf import InterfaceChoice, IPVersion, ServiceInfo, Zeroconf
        except ImportError:
            raise UserError("discovery = \"zeroconf\" needs python-zeroconf: pip install 'p2p-ntk[discovery]'") from None
        url = urlparse(bind)
        if not url.port:
            raise UserError(f"bind = {bind!r}: discovery needs an explicit port")
        host = advertise or (url.hostname if url.hostname not in ("0.0.0.0", "*", None) else
                             socket.gethostbyname(socket.gethostname()))
        try:
            packed = socket.inet_aton(host)
        except OSError:
            raise UserError(f"advertise = {host!r}: expected this board's IPv4 address, e.g. 10.0.0.12") from None
        self.node_id, self.model_hash, self.spec_hash = node_id, model_hash, spec_hash
        self.wanted = topology_neighbours(network, node_id)
        # mDNS on the advertised address's interface (the loopback one for 127.x); all interfaces when the
        # address was guessed from the host name
        chosen = advertise or url.hostname not in ("0.0.0.0", "*", None)
        self.zc = Zeroconf(interfaces=[host] if chosen else InterfaceChoice.All, ip_version=IPVersion.V4Only)
        self.info = ServiceInfo(SERVICE, f"p2pntk-{spec_hash}-{node_id}.{SERVICE}",
                                addresses=[packed], port=url.port,
                                properties={"id": str(node_id), "degree": str(len(self.wanted)),
                                            "model": model_hash, "spec": spec_hash})
        self.zc.register_service(self.info)

    def find_peers(self, timeout: float) -> dict[int, str]:
        """{neighbour id: "tcp://host:port"} for every neighbour of the topology rule, or UserError."""
        from zeroconf import ServiceBrowser
        found: dict[int, str] = {}
        names: set[str] = set()

        class Listener:
            def add_service(self, zc, type_, name):
                names.add(name)

            def update_service(self, zc, type_, name):
                names.add(name)

            def remove_service(self, zc, type_, name):
                names.discard(name)

        browser = ServiceBrowser(self.zc, SERVICE, Listener())
        end = time.monotonic() + timeout
        try:
            while set(self.wanted) - found.keys() and time.monotonic() < end:
                for name in list(names):
                    if not name.startswith(f"p2pntk-{self.spec_hash}-"):
                        continue
                    info = self.zc.get_service_info(SERVICE, name, timeout=500)
                    if info is None or not info.addresses:
                        continue
                    props = {k.decode(): (v or b"").decode() for k, v in info.properties.items()}
                    pid = int(props.get("id", -1))
                    if pid in self.wanted and props.get("model") == self.model_hash:
                        found[pid] = f"tcp://{socket.inet_ntoa(info.addresses[0])}:{info.port}"
                time.sleep(0.1)
        finally:
            browser.cancel()
        missing = sorted(set(self.wanted) - found.keys())
        if missing:
            raise UserError(f"node {self.node_id}: zeroconf discovery found no neighbour(s) {missing} "
                            f"within {timeout:g} s (same spec and model, service {SERVICE})")
        return found

    def close(self) -> None:
        try:
            self.zc.unregister_service(self.info)
        finally:
            self.zc.close()
