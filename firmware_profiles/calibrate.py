"""Measure this machine and write its profile: matmul GFLOPS, memory, threads, and optionally the
bandwidth and latency to a peer running the echo server (``p2pntk profiles echo-server``).

Echo protocol (ZeroMQ REQ/REP, never pickled): [b"ping", payload] -> [payload];
[b"sink", payload] -> [ascii length of payload]. pyzmq is imported only when a peer is used.
"""
from __future__ import annotations

import math
import os
import platform
import socket
import statistics
import time
from pathlib import Path

import numpy as np

from common.compute import BACKENDS, DTYPES
from common.errors import UserError
from common.files import dumps_toml, write_text
from firmware_profiles.profile import ARCHITECTURES, MIB, Profile, parse_profile

# (m, k, n) of the "numpy-size" matmul behind every effective GFLOPS figure: a 256-row
# minibatch through a 1024-wide layer.
REFERENCE_SHAPE = (256, 1024, 1024)
PEAK_SIZES = (1024, 1536, 2048)
MAX_ECHO_BYTES = 64 * MIB
_ARCH_ALIASES = {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64", "armv8l": "aarch64"}


def matmul_gflops(m: int, k: int, n: int, *, seconds: float, dtype=np.float32) -> float:
    """Best GFLOPS (2 m k n / time) of A(m, k) @ B(k, n) over repeats for about ``seconds`` (>= 2 runs)."""
    rng = np.random.default_rng(0)
    A = rng.standard_normal((m, k)).astype(dtype)
    B = rng.standard_normal((k, n)).astype(dtype)
    C = np.empty((m, n), dtype)
    best, start, runs = math.inf, time.perf_counter(), 0
    while runs < 2 or time.perf_counter() - start < seconds:
        t = time.perf_counter()
        np.matmul(A, B, out=C)
        best = min(best, time.perf_counter() - t)
        runs += 1
    return 2.0 * m * k * n / best / 1e9


def peak_matmul_gflops(seconds: float) -> tuple[float, int]:
    """(best GFLOPS, its size n) over square float32 n x n matmuls within about ``seconds``.

    512 runs first (warm-up, and the answer when time is short); each of PEAK_SIZES runs only
    if two products of that size fit in the time left at the best rate so far.
    """
    start, best, best_n = time.perf_counter(), 0.0, 0
    sizes = (512,) + PEAK_SIZES
    for i, n in enumerate(sizes):
        left = seconds - (time.perf_counter() - start)
        if best and 2 * (2 * n**3 / (best * 1e9)) > left:
            break
        g = matmul_gflops(n, n, n, seconds=left / (len(sizes) - i))
        if g > best:
            best, best_n = g, n
    return best, best_n


def memory_mb() -> tuple[float, float]:
    """(total, available) memory in MiB, from /proc/meminfo or else os.sysconf."""
    try:
        info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines()
                    if ":" in line)
        total = int(info["MemTotal"].split()[0]) / 1024
        avail = int(info.get("MemAvailable", info["MemTotal"]).split()[0]) / 1024
        return total, avail
    except (OSError, KeyError, ValueError):
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / MIB
        return total, total


def usable_threads() -> int:
    """CPUs this process may run on: the affinity mask, capped by a cgroup v2 CPU quota."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            n = min(n, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return n


def architecture() -> str:
    machine = platform.machine().lower()
    arch = _ARCH_ALIASES.get(machine, machine)
    if arch not in ARCHITECTURES:
        raise UserError(f"calibrate: architecture {platform.machine()!r} is not one of "
                        f"{', '.join(ARCHITECTURES)}")
    return arch


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model") and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


# -- the network: a REQ/REP echo ------------------------------------------------------------

class EchoServer:
    """The other end of ``measure_link``: a REP socket bound at ``bind`` (read ``endpoint``)."""

    def __init__(self, bind: str) -> None:
        import zmq
        self._zmq = zmq
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.REP)
        self.sock.setsockopt(zmq.MAXMSGSIZE, MAX_ECHO_BYTES + 1024)
        self.sock.setsockopt(zmq.LINGER, 0)
        try:
            self.sock.bind(bind)
        except zmq.ZMQError as err:
            self.close()
            raise UserError(f"echo-server --bind {bind}: {err}") from None
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)

    def serve(self, stop=None, poll_ms: int = 100) -> int:
        """Answer requests until ``stop`` (a threading.Event) is set; return how many were answered."""
        answered = 0
        while stop is None or not stop.is_set():
            if not self.sock.poll(poll_ms):
                continue
            frames = self.sock.recv_multipart(copy=False)
            kind = bytes(frames[0].buffer) if frames else b""
            if kind == b"ping" and len(frames) == 2:
                self.sock.send(frames[1], copy=False)
            elif kind == b"sink" and len(frames) == 2:
                self.sock.send(str(len(frames[1].buffer)).encode())
            else:
                self.sock.send(b"error: expected [ping|sink, payload]")
            answered += 1
        return answered

    def close(self) -> None:
        self.sock.close(linger=0)
        self.ctx.term()


def measure_link(peer: str, seconds: float = 2.0, timeout: float = 5.0) -> tuple[float, float]:
    """(bandwidth Mbit/s, one-way latency ms) to an echo server at ``peer`` (tcp://HOST:PORT).

    Latency is half the median round trip of 1-byte pings. Bandwidth is 8 S / (t_sink - t_ping)
    for S-byte uploads (S doubles from 64 kB until one takes >= 50 ms or reaches 16 MB), best
    of the repeats that fit in ``seconds``.
    """
    import zmq
    if not peer.startswith("tcp://"):
        raise UserError(f"--peer {peer!r}: expected tcp://HOST:PORT")
    ctx = zmq.Context()
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, int(timeout * 1000))
    try:
        sock.connect(peer)

        def rtt(kind: bytes, payload: bytes) -> float:
            t = time.perf_counter()
            sock.send_multipart([kind, payload], copy=False)
            sock.recv()
            return time.perf_counter() - t

        try:
            rtt(b"ping", b"x")  # connect and warm up
        except zmq.Again:
            raise UserError(f"--peer {peer}: no reply within {timeout:g} s; run `p2pntk profiles "
                            f"echo-server --bind tcp://*:PORT` on that host") from None
        start = time.perf_counter()
        pings = [rtt(b"ping", b"x") for _ in range(20)]
        ping = statistics.median(pings)
        size = 64 * 1024
        while True:
            took = rtt(b"sink", bytes(size))
            if took >= 0.05 or size >= 16 * MIB:
                break
            size *= 2
        payload, rates = bytes(size), [8 * size / max(took - ping, 1e-9)]
        while time.perf_counter() - start < seconds:
            rates.append(8 * size / max(rtt(b"sink", payload) - ping, 1e-9))
        return max(rates) / 1e6, max(ping / 2 * 1e3, 1e-3)
    except zmq.Again:
        raise UserError(f"--peer {peer}: the peer stopped answering (timeout {timeout:g} s)") from None
    finally:
        sock.close(linger=0)
        ctx.term()


# -- the profile ----------------------------------------------------------------------------

def calibrate(out: str | Path, *, name: str | None = None, peer: str | None = None,
              seconds: float = 3.0) -> Profile:
    """Measure this machine, write a profile TOML to ``out`` and return it (validated).

    ``seconds`` bounds the measurements (about 70% matmul, 30% network with a peer).
    Without a peer the link is a generic Gigabit Ethernet figure, marked "estimated".
    GPU figures are not measured: add a [gpu] section by hand.
    """
    if not seconds > 0:
        raise UserError(f"--seconds {seconds!r}: expected a positive number")
    name = name or "calibrated-" + "".join(c if c.isalnum() or c in "-_" else "-"
                                           for c in socket.gethostname().lower())
    arch, cores, threads = architecture(), os.cpu_count() or 1, usable_threads()
    total, avail = memory_mb()
    matmul_s = seconds * (0.7 if peer else 1.0)
    peak, peak_n = peak_matmul_gflops(matmul_s * 0.6)
    effective = matmul_gflops(*REFERENCE_SHAPE, seconds=matmul_s * 0.4)
    peak = max(peak, effective)
    if peer:
        bandwidth, latency = measure_link(peer, seconds * 0.3)
        link = f"measured to {peer}"
        net_src = f"measured: ZeroMQ REQ/REP echo with {peer}"
        bw_src, lat_src = net_src + ", best upload rate", net_src + ", half the median ping round trip"
    else:
        bandwidth, latency, link = 940.0, 0.2, "Gigabit Ethernet (not measured)"
        bw_src = lat_src = "estimated: no --peer given; generic Gigabit Ethernet"
    m, k, n = REFERENCE_SHAPE
    when = time.strftime("%Y-%m-%d")
    budget = max(1.0, min(total, 0.5 * avail))
    fields = {
        "device": {"name": name, "description": f"{platform.node()} calibrated on {when}",
                   "architecture": arch, "cores": max(cores, threads), "threads": threads},
        "memory": {"total_mb": round(total, 1), "budget_mb": round(budget, 1)},
        "cpu": {"model": cpu_model(), "peak_gflops": round(peak, 3),
                "effective_fraction": round(min(1.0, effective / peak), 4)},
        "kernels": {"preferred": BACKENDS[0], "providers": ["CPUExecutionProvider"], "dtype": DTYPES[0]},
        "network": {"link": link, "bandwidth_mbit": round(bandwidth, 3),
                    "latency_ms": round(latency, 4)},
        "sources": {
            "device.cores": "measured: os.cpu_count()",
            "device.threads": "measured: CPUs in this process's affinity mask and cgroup quota",
            "memory.total_mb": "measured: MemTotal in /proc/meminfo",
            "memory.budget_mb": "estimated: half of MemAvailable at calibration time",
            "cpu.peak_gflops": f"measured: numpy float32 {peak_n}x{peak_n} matmul, best run",
            "cpu.effective_fraction": f"measured: numpy float32 ({m}x{k}) @ ({k}x{n}) best run / peak",
            "network.bandwidth_mbit": bw_src, "network.latency_ms": lat_src},
    }
    text = f"# Written by `p2pntk profiles calibrate` on {when}.\n" + dumps_toml(fields)
    profile = parse_profile(text, str(out))
    write_text(out, text)
    return profile
