"""Loopback swarm round time against raw pyzmq for the same payload, as ratios, plus bytes per round.

Two agent processes on 127.0.0.1 exchange a ~1M-parameter float32 model each round. The
exchange part of a round (exchange_s in the agents' logs: Transport.exchange, send to receive) is compared with a raw
pyzmq echo of the same bytes measured in the same run (benchmarks/bench_transport.py).

    python benchmarks/bench_loopback.py [--quick]        (also: p2pntk bench loopback)
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from host.loopback import run_loopback  # noqa: E402
from agent.swarm import Swarm  # noqa: E402
from benchmarks.bench_transport import _raw  # noqa: E402
from agent.spec import load_spec  # noqa: E402


def run(width: int = 15151, rounds: int = 20, agents: int = 2) -> dict:
    """d = 64, k = 1: P = 66 width + 1, so the default width gives 1,000,000 parameters."""
    spec = load_spec(None, [f"model.width={width}", f"train.rounds={rounds}", f"network.agents={agents}",
                            "network.topology=path", "data.samples_per_agent=20", "data.test_samples=20"])
    swarm = Swarm.from_spec(spec)
    work = Path(tempfile.mkdtemp(prefix="p2pntk-bench-loopback-"))
    results = run_loopback(swarm, work)
    logs = [[json.loads(line) for line in (work / f"agent{q}.jsonl").read_text().splitlines()][2:]
            for q in range(agents)]  # skip round 0 and the first exchange (start-up skew)
    comm = float(np.median([r["exchange_s"] for lg in logs for r in lg]))
    round_s = float(np.median([r["round_s"] for lg in logs for r in lg]))
    payload = np.zeros(swarm.cfg.num_params, np.float32)
    echo = float(np.median([_raw(payload, swap=False) for _ in range(5)]))
    return {"params": swarm.cfg.num_params, "payload_bytes": payload.nbytes, "agents": agents,
            "round_s": round_s, "comm_s": comm, "raw_echo_s": echo,
            "comm_over_echo": comm / echo, "round_over_echo": round_s / echo,
            "bytes_per_round": results["bytes_per_round"]}


def cli(quick: bool = False, out: str | None = None) -> dict:
    r = run(width=1515 if quick else 15151, rounds=10 if quick else 20)
    print(f"loopback bench: {r['agents']} agent processes, {r['params']:,} float32 parameters "
          f"({r['payload_bytes'] / 1e6:.1f} MB per message)")
    print(f"  round (compute + exchange) : {r['round_s'] * 1e3:8.2f} ms")
    print(f"  exchange part of a round   : {r['comm_s'] * 1e3:8.2f} ms")
    print(f"  raw pyzmq echo, same bytes : {r['raw_echo_s'] * 1e3:8.2f} ms")
    print(f"  exchange / echo            : {r['comm_over_echo']:8.2f}")
    print(f"  round / echo               : {r['round_over_echo']:8.2f}")
    print(f"  bytes on the wire per round: {r['bytes_per_round'] / 1e6:8.2f} MB (all agents)")
    if out:
        Path(out).write_text(json.dumps(r, indent=1))
    return r


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    cli(a.quick, a.json)
