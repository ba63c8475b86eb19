"""Make a fast host behave like a profiled board: a link shaper for sends, compute padding.

The model is the one ``apply.estimate_round_time`` computes: each message costs
latency + 8 nbytes / bandwidth on the sender's single uplink, sends are serial; compute is
stretched to the profile's effective GFLOPS. Pure timing logic; the agent does the wiring.
"""
from __future__ import annotations

import functools
import threading
import time
from typing import Callable

from common.errors import UserError
from firmware_profiles.profile import Profile

HOST_BENCHMARK_SECONDS = 0.2


class LinkShaper:
    """Paces sends through one uplink of ``bandwidth_mbit`` (10**6 bit/s) and ``latency_ms``.

    ``wait_before_send(nbytes)`` sleeps until the message would have arrived at the receiver:
    the link is a queue with no burst allowance (a token bucket of zero depth), busy until
    ``busy_until``; a send starts when the link is free and holds it for latency +
    transmission time. Sends through one shaper are therefore serial, and n back-to-back sends
    of B bytes take n (latency + 8 B / bandwidth), the comm_s of ``estimate_round_time``.
    Thread-safe: concurrent senders queue behind each other.

    Examples
    --------
    >>> LinkShaper(80, 0).send_delay(1_000_000)   # 1 MB at 80 Mbit/s
    0.1
    """

    def __init__(self, bandwidth_mbit: float, latency_ms: float, *,
                 clock: Callable[[], float] = time.perf_counter,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if not bandwidth_mbit > 0:
            raise UserError(f"bandwidth_mbit = {bandwidth_mbit!r}: expected a positive number")
        if not latency_ms >= 0:
            raise UserError(f"latency_ms = {latency_ms!r}: expected a number >= 0")
        self.bits_per_second = float(bandwidth_mbit) * 1e6
        self.latency_s = float(latency_ms) / 1e3
        self._clock, self._sleep = clock, sleep
        self._lock = threading.Lock()
        self.busy_until = -float("inf")
        self.bytes_sent = 0
        self.seconds_waited = 0.0

    @classmethod
    def from_profile(cls, profile: Profile, **kw) -> LinkShaper:
        return cls(profile.bandwidth_mbit, profile.latency_ms, **kw)

    def send_delay(self, nbytes: int) -> float:
        """Seconds one message of ``nbytes`` takes on an idle link: latency + 8 nbytes / bandwidth."""
        return self.latency_s + 8.0 * nbytes / self.bits_per_second

    def wait_before_send(self, nbytes: int) -> float:
        """Sleep until a message of ``nbytes`` sent now would arrive; return the seconds slept."""
        with self._lock:
            now = self._clock()
            self.busy_until = max(now, self.busy_until) + self.send_delay(nbytes)
            wait = self.busy_until - now
            self.bytes_sent += int(nbytes)
            self.seconds_waited += wait
        if wait > 0:
            self._sleep(wait)
        return wait


class ComputeThrottle:
    """Stretches host compute to a slower profile's speed; never speeds anything up.

    ``pad(step_seconds)`` returns the sleep that makes a step of ``step_seconds`` on the host
    last step_seconds * host_gflops / profile_gflops: that is
    max(0, step_seconds * (host_gflops / profile_gflops - 1)). Both figures must be measured
    the same way: the profile's effective GFLOPS and ``host_gflops()`` are both sustained
    float32 matmul rates at numpy sizes. ``compute_pad`` instead pads to the estimate's compute_s.
    """

    def __init__(self, profile_gflops_effective: float, host_gflops: float) -> None:
        for name, value in (("profile_gflops_effective", profile_gflops_effective),
                            ("host_gflops", host_gflops)):
            if not value > 0:
                raise UserError(f"{name} = {value!r}: expected a positive number")
        self.profile_gflops = float(profile_gflops_effective)
        self.host_gflops = float(host_gflops)
        self.slowdown = max(1.0, self.host_gflops / self.profile_gflops)

    @classmethod
    def from_profile(cls, profile: Profile, host: float | None = None) -> ComputeThrottle:
        """Throttle to ``profile.effective_gflops``; ``host`` defaults to ``host_gflops()``."""
        return cls(profile.effective_gflops, host_gflops() if host is None else host)

    def pad(self, step_seconds: float) -> float:
        """Seconds to sleep after a host step of ``step_seconds`` (0 if the host is slower)."""
        return max(0.0, step_seconds) * (self.slowdown - 1.0)


def compute_pad(step_seconds: float, compute_s: float) -> float:
    """Seconds to sleep after a host step of ``step_seconds`` so that it lasts ``compute_s`` in all: the
    compute_s of ``apply.estimate_round_time`` (flops / effective FLOPS), whatever the host's speed on this
    particular step. 0 if the step already took that long: emulation never speeds anything up.

    Examples
    --------
    >>> compute_pad(0.25, 1.0), compute_pad(2.0, 1.0)
    (0.75, 0.0)
    """
    return max(0.0, compute_s - step_seconds)


@functools.lru_cache(maxsize=1)
def host_gflops() -> float:
    """Sustained float32 GFLOPS of this host at numpy sizes, measured once per process (~0.2 s).

    Best of repeated ``calibrate.REFERENCE_SHAPE`` matmuls, with the BLAS threads in force at
    the first call (call ``apply.apply_threads`` first to measure with the profile's threads).
    """
    from firmware_profiles.calibrate import REFERENCE_SHAPE, matmul_gflops
    return matmul_gflops(*REFERENCE_SHAPE, seconds=HOST_BENCHMARK_SECONDS)


class ShapedGossip:
    """A gossip (``coordinator_free.gossip.Gossip``) whose sends go through a board's link.

    Before each exchange it waits, on one uplink, for one message per live neighbour of exactly the
    size ``inner.message_bytes(round, arrays)`` puts on the wire (the real encoded bytes, header
    included), then delegates. ``next_round`` and ``listen`` are the inner one's (listening sends nothing).
    """

    def __init__(self, inner, shaper: LinkShaper) -> None:
        self.inner, self.shaper = inner, shaper
        self.node_id = inner.node_id

    def next_round(self, round: int) -> int:
        return self.inner.next_round(round)

    def listen(self, round: int):
        return self.inner.listen(round)

    def exchange(self, round: int, arrays, *args, **kw):
        nbytes = self.inner.message_bytes(round, arrays)
        for _ in self.inner.live:  # one uplink: the board sends its messages one after another
            self.shaper.wait_before_send(nbytes)
        return self.inner.exchange(round, arrays, *args, **kw)
