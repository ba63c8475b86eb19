"""Emulated hosts for a rehearsal: one Linux network namespace per board, on a private bridge.

``Hosts(ips, bandwidth_mbit)`` makes, for each board, a namespace with its own IP on a veth pair
whose other end sits on a bridge of its own, and shapes the board's uplink with ``tc tbf`` (netem,
for delay and loss, is not available on these machines). The bridge has no address and no uplink,
so traffic between the namespaces cannot leave them: nothing reaches any other address. ``down`` and
``up`` cut and restore one board's link (a partition). Everything is removed on ``close`` (and the
names carry this process's id, so two rehearsals never share one). Needs root: ``unavailable()`` says
why not, in one line, so callers can fall back to 127.0.0.1.
"""
from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess

from common.errors import UserError


def unavailable() -> str | None:
    """None if namespaces can be made here, else the reason."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"the `{tool}` command (iproute2) is missing"
    return None


def _run(*argv: str) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        raise UserError(f"rehearsal network: `{' '.join(argv)}` failed: {proc.stderr.strip()}")


class Hosts:
    """Namespaces ``p2pntk-<pid>-<i>``, one per entry of ``ips`` (IPv4 addresses of one /24)."""

    def __init__(self, ips: list[str], bandwidth_mbit: list[float | None] | None = None) -> None:
        why = unavailable()
        if why:
            raise UserError(f"rehearsal network: {why}")
        nets = {ipaddress.ip_network(f"{ip}/24", strict=False) for ip in ips}
        if len(nets) != 1 or len(set(ips)) != len(ips):
            raise UserError(f"rehearsal network: the boards' addresses {ips} must be distinct IPv4 addresses of one "
                            "/24 (write the inventory with such addresses to rehearse it)")
        tag = f"{os.getpid() % 100000}"
        self.bridge = f"p2b{tag}"
        self.names = [f"p2pntk-{tag}-{i}" for i in range(len(ips))]
        self._host_ends = [f"p2h{tag}x{i}" for i in range(len(ips))]
        self.ips = list(ips)
        self._made: list[tuple[str, ...]] = []
        try:
            _run("ip", "link", "add", self.bridge, "type", "bridge")
            self._made.append(("ip", "link", "del", self.bridge))
            _run("ip", "link", "set", self.bridge, "up")
            for i, (name, ip) in enumerate(zip(self.names, ips)):
                self._add(name, ip, self._host_ends[i], (bandwidth_mbit or [None] * len(ips))[i])
        except BaseException:
            self.close()
            raise

    def _add(self, name: str, ip: str, host_end: str, mbit: float | None) -> None:
        _run("ip", "netns", "add", name)
        self._made.append(("ip", "netns", "del", name))
        _run("ip", "link", "add", host_end, "type", "veth", "peer", "name", "eth0", "netns", name)
        _run("ip", "link", "set", host_end, "master", self.bridge)
        _run("ip", "link", "set", host_end, "up")
        inside = ("ip", "netns", "exec", name)
        _run(*inside, "ip", "addr", "add", f"{ip}/24", "dev", "eth0")
        _run(*inside, "ip", "link", "set", "eth0", "up")
        _run(*inside, "ip", "link", "set", "lo", "up")
        if mbit:  # the board's uplink: a token bucket at its profile's rate
            burst = max(1600, int(mbit * 1e6 / 8 / 250))  # about 4 ms of traffic at that rate
            _run(*inside, "tc", "qdisc", "add", "dev", "eth0", "root", "tbf", "rate", f"{mbit}mbit",
                 "burst", str(burst), "latency", "400ms")

    def prefix(self, i: int) -> list[str]:
        """The command prefix that runs a program inside host i."""
        return ["ip", "netns", "exec", self.names[i]]

    def down(self, i: int) -> None:
        """Cut host i's link (its bridge port): a partition until ``up``."""
        _run("ip", "link", "set", self._host_ends[i], "down")

    def up(self, i: int) -> None:
        _run("ip", "link", "set", self._host_ends[i], "up")

    def close(self) -> None:
        for undo in reversed(self._made):
            subprocess.run(undo, capture_output=True)
        self._made = []

    def __enter__(self) -> "Hosts":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
