"""Benchmark: one Transport round exchange vs. raw pyzmq moving the same bytes on 127.0.0.1.

Both sides run as threads of this process, each with its own zmq.Context (as separate agents
would), over TCP loopback. One sample of a method = wall time of `rounds` consecutive
iterations / `rounds`, at endpoint A, after warm-up: a period, not a single call, because the
peer may run up to one iteration ahead. The methods' samples are interleaved, so that a change
in machine load hits all alike, and each figure is the median of `repeats` samples:

* raw_echo: A sends P params' bytes, B receives and sends them back, A receives (one copy=False
  PUSH/PULL round trip). Each side sends one payload and receives one, in sequence.
* raw_swap: A and B each send their payload, then receive the other's (the raw-pyzmq form of a
  round: same bytes as the echo, but both directions at once).
* exchange: `Transport.exchange` between two handshaken transports (JSON header, snapshot copy,
  full validation incl. the finiteness scan, buffering). Same bytes per side as the echo.
  Also timed with copy=False (no snapshot; the caller promises not to mutate the array).

ratio = exchange / raw_echo (the target: <= 1.5); ratio_vs_swap = exchange / raw_swap isolates
the transport's own overhead, because it removes the echo's serialisation of the two directions.

CURVE (what agents run by default): curve_raw_echo_s is the raw echo with CurveZMQ on both links
(encryption, no allow-list), curve_exchange_s the agents' exchange (copy=False) between CURVE
transports with their ZAP allow-lists and per-message key binding; curve_ratio = their ratio
(the target: <= 1.3).
Run: python benchmarks/bench_transport.py [--params N] [--repeats R] [--dtype float32|float64]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a source checkout
from common.compute import DTYPES  # noqa: E402
from coordinator_free.keys import Curve, new_keypair, read_keypair  # noqa: E402
from coordinator_free.transport import Transport, free_tcp_port  # noqa: E402

KEYS = Path(tempfile.mkdtemp(prefix="p2pntk-bench-keys-"))
for _name in ("a", "b"):
    new_keypair(KEYS, _name)

WARMUP = 3
ROUNDS = 10  # iterations per sample


def _secure(server: zmq.Socket, client: zmq.Socket, server_name: str, client_name: str) -> None:
    public, secret = read_keypair(KEYS / f"{server_name}.key_secret")
    server.curve_publickey, server.curve_secretkey, server.curve_server = public, secret, True
    client.curve_publickey, client.curve_secretkey = read_keypair(KEYS / f"{client_name}.key_secret")
    client.curve_serverkey = public


def _pair(ctx_a: zmq.Context, ctx_b: zmq.Context, curve: bool = False):
    """Two PUSH/PULL links A->B and B->A on random loopback ports (with CurveZMQ if ``curve``)."""
    pull_a, pull_b = ctx_a.socket(zmq.PULL), ctx_b.socket(zmq.PULL)
    push_a, push_b = ctx_a.socket(zmq.PUSH), ctx_b.socket(zmq.PUSH)
    if curve:
        _secure(pull_b, push_a, "b", "a")
        _secure(pull_a, push_b, "a", "b")
    port_a = pull_a.bind_to_random_port("tcp://127.0.0.1")
    port_b = pull_b.bind_to_random_port("tcp://127.0.0.1")
    push_a.connect(f"tcp://127.0.0.1:{port_b}")
    push_b.connect(f"tcp://127.0.0.1:{port_a}")
    return (push_a, pull_a), (push_b, pull_b)


def _raw(payload: np.ndarray, swap: bool, curve: bool = False) -> float:
    ctx_a, ctx_b = zmq.Context(), zmq.Context()
    (push_a, pull_a), (push_b, pull_b) = _pair(ctx_a, ctx_b, curve)
    n = WARMUP + ROUNDS

    def peer_b():
        other = payload.copy()
        for _ in range(n):
            if swap:
                push_b.send(other, copy=False)
                pull_b.recv(copy=False)
            else:
                push_b.send(pull_b.recv(copy=False), copy=False)  # echo the frame back

    thread = threading.Thread(target=peer_b, daemon=True)
    thread.start()
    for i in range(n):
        if i == WARMUP:
            t0 = time.perf_counter()
        push_a.send(payload, copy=False)
        pull_a.recv(copy=False)
    period = (time.perf_counter() - t0) / ROUNDS
    thread.join()
    for s in (push_a, pull_a, push_b, pull_b):
        s.close(linger=0)
    ctx_a.term()
    ctx_b.term()
    return period


def _exchange(payload: np.ndarray, copy: bool = True, curve: bool = False) -> float:
    port_a, port_b = (f"tcp://127.0.0.1:{free_tcp_port()}" for _ in range(2))
    kw = dict(model_hash="bench", spec_hash="bench", algorithm="dgd", dtype=payload.dtype.name,
              shape=payload.shape)
    a = Transport(0, port_a, {1: port_b}, curve=Curve(KEYS / "a.key_secret", {1: KEYS / "b.key"}) if curve else None,
                  **kw)
    b = Transport(1, port_b, {0: port_a}, curve=Curve(KEYS / "b.key_secret", {0: KEYS / "a.key"}) if curve else None,
                  **kw)
    n = WARMUP + ROUNDS

    def peer_b():
        b.handshake(1, timeout=10)
        other = payload.copy()
        for k in range(n):
            b.exchange(k, other, deadline=30, copy=copy)

    thread = threading.Thread(target=peer_b, daemon=True)
    thread.start()
    a.handshake(1, timeout=10)
    for k in range(n):
        if k == WARMUP:
            t0 = time.perf_counter()
        got = a.exchange(k, payload, deadline=30, copy=copy)
        assert list(got) == [1], f"round {k}: peer missed the deadline"
    period = (time.perf_counter() - t0) / ROUNDS
    thread.join()
    for t in (a, b):
        t.close()
    return period


def run(params: int, repeats: int, dtype: str = "float32") -> dict:
    """Time raw echo, raw swap and Transport.exchange (with and without copy) for `params`
    parameters; return the medians of `repeats` interleaved samples (seconds) and the ratios."""
    payload = np.random.default_rng(0).standard_normal(params).astype(dtype)
    methods = {"raw_echo_s": lambda: _raw(payload, swap=False),
               "raw_swap_s": lambda: _raw(payload, swap=True),
               "exchange_s": lambda: _exchange(payload),
               "exchange_nocopy_s": lambda: _exchange(payload, copy=False),
               "curve_raw_echo_s": lambda: _raw(payload, swap=False, curve=True),
               "curve_exchange_s": lambda: _exchange(payload, copy=False, curve=True)}
    samples: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(repeats):
        for name, method in methods.items():
            samples[name].append(method())
    r = {name: statistics.median(t) for name, t in samples.items()}
    return {"params": params, "dtype": dtype, "payload_bytes": payload.nbytes,
            "repeats": repeats, "rounds_per_sample": ROUNDS, **r,
            "ratio": r["exchange_s"] / r["raw_echo_s"],
            "ratio_vs_swap": r["exchange_s"] / r["raw_swap_s"],
            "ratio_nocopy": r["exchange_nocopy_s"] / r["raw_echo_s"],
            "curve_ratio": r["curve_exchange_s"] / r["curve_raw_echo_s"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--dtype", choices=DTYPES, default="float32")
    args = parser.parse_args(argv)
    report(run(args.params, args.repeats, args.dtype))
    return 0


def report(r: dict) -> None:
    print(f"transport bench: {r['params']} {r['dtype']} params ({r['payload_bytes'] / 1e6:.1f} MB),"
          f" median of {r['repeats']} samples x {r['rounds_per_sample']} rounds")
    print(f"  raw pyzmq echo round trip : {r['raw_echo_s'] * 1e3:8.3f} ms")
    print(f"  raw pyzmq swap            : {r['raw_swap_s'] * 1e3:8.3f} ms")
    print(f"  Transport.exchange        : {r['exchange_s'] * 1e3:8.3f} ms")
    print(f"  exchange(copy=False)      : {r['exchange_nocopy_s'] * 1e3:8.3f} ms")
    print(f"  ratio exchange / echo     : {r['ratio']:8.2f}   (target <= 1.5)")
    print(f"  ratio exchange / swap     : {r['ratio_vs_swap']:8.2f}")
    print(f"  ratio copy=False / echo   : {r['ratio_nocopy']:8.2f}")
    print(f"  CURVE raw pyzmq echo      : {r['curve_raw_echo_s'] * 1e3:8.3f} ms")
    print(f"  CURVE agents' exchange    : {r['curve_exchange_s'] * 1e3:8.3f} ms")
    print(f"  ratio CURVE exchange/echo : {r['curve_ratio']:8.2f}   (target <= 1.3)")


if __name__ == "__main__":
    sys.exit(main())


def cli(quick: bool = False, out: str | None = None) -> dict:
    """``p2pntk bench transport``: 1M float32 parameters (100k with --quick)."""
    r = run(100_000 if quick else 1_000_000, 3 if quick else 7)
    report(r)
    if out:
        Path(out).write_text(json.dumps(r, indent=1))
    return r
