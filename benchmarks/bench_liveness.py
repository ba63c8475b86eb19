"""``p2pntk bench liveness``: the swarm's own members as faults, with real processes and real signals.

Three scenarios, each against the fault-free run of the same float64 swarm (``simulate``, which a
fault-free loopback run equals to 1e-8):

- ``restart``: 4 boards on a cycle (width 64, unpaced rounds of a few ms, 2 s deadline); board 1 gets
  kill -9 once it has logged round 60 of 300 and is restarted at once, resuming from its checkpoint. No
  healthy board may adopt another's parameters or suspect anyone at the end; every final loss within 2%.
- ``isolated``: 3 boards on a path, the middle one killed at round 20 of 200 (1 s deadline): both leaves
  train on alone, each round after the kill taking 1x to 2x the deadline, and say how many rounds alone.
- ``late``: 4 bundles from ``fleet init`` with handshake_timeout 10 s, board 1 started 90 s after the
  others (``rehearse --fault late:1:90``): no board exits, all train every round together, losses equal
  simulate to 1e-8.

``--quick`` shortens each (the default test suite runs that; ``-m slow`` and this benchmark the full size,
the restart ten times). tests/test_liveness.py asserts on the tables ``run_*`` return.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _swarm(agents: int, topology: str, width: int, rounds: int):
    from agent.spec import load_spec
    from agent.swarm import Swarm
    return Swarm.from_spec(load_spec(None, [f"network.agents={agents}", f"network.topology='{topology}'",
                                            f"model.width={width}", f"train.rounds={rounds}", "train.dtype='float64'",
                                            "data.samples_per_agent=20", "data.test_samples=40"]))


def _fault_free(swarm) -> list[list[float]]:
    from agent.simulator import simulate
    return simulate(swarm)["train_loss"]


def _logged(log: Path) -> int:
    """The highest round a log holds (-1 if none)."""
    from agent.roundlog import read_round_log
    rounds = read_round_log(log) if log.exists() else {}
    return max(rounds, default=-1)


def _wait_round(log: Path, k: int, timeout: float = 300.0) -> None:
    end = time.time() + timeout
    while _logged(log) < k:
        if time.time() > end:
            raise RuntimeError(f"{log} never reached round {k}")
        time.sleep(0.005)


def _start(work: Path, q: int, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "agent", str(work / f"node{q}.toml")], env=env, cwd=work,
                            stderr=open(work / f"agent{q}.stderr", "a"), stdin=subprocess.DEVNULL)  # noqa: SIM115


def _run_by_hand(work: Path, swarm, deadline: float, fault, handshake_timeout: float = 60.0) -> list[dict]:
    """Write the node files, start every agent by hand as a board would be, apply ``fault(procs)``, wait for all;
    return their results (``exit`` added)."""
    from host.loopback import agent_environment, loopback_addresses, write_node_files
    n = swarm.n_agents
    write_node_files(swarm, work, loopback_addresses(n), round_deadline=deadline, handshake_timeout=handshake_timeout)
    env = agent_environment(n)
    procs = [_start(work, q, env) for q in range(n)]
    try:
        fault(procs, lambda q: _start(work, q, env))
        codes = [p.wait(timeout=900) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    out = []
    for q in range(n):
        path = work / f"agent{q}.json"
        res = json.loads(path.read_text()) if path.exists() else {}
        res["exit"], res["stderr"] = codes[q], (work / f"agent{q}.stderr").read_text()
        out.append(res)
    return out


def _rel(got: float, want: float) -> float:
    return abs(got - want) / abs(want)


def run_restart(runs: int = 10, rounds: int = 300, kill_after: int = 60, width: int = 64, deadline: float = 2.0,
                say=print) -> dict:
    """Board 1 of a 4-cycle killed once it logged ``kill_after`` and restarted at once, ``runs`` times."""
    swarm = _swarm(4, "cycle", width, rounds)
    clean = _fault_free(swarm)
    rows = []
    with tempfile.TemporaryDirectory(prefix="p2pntk-liveness-") as tmp:
        for run in range(runs):
            work = Path(tmp) / f"restart{run}"

            def fault(procs, start):
                _wait_round(work / "agent1.jsonl", kill_after)
                procs[1].kill()
                procs[1].wait()
                procs[1] = start(1)

            t0 = time.perf_counter()
            res = _run_by_hand(work, swarm, deadline, fault)
            healthy = [0, 2, 3]
            row = {"seconds": time.perf_counter() - t0, "exits": [r["exit"] for r in res],
                   "worst_pct": 100 * max(_rel(r["train_loss"][-1], clean[q][-1]) for q, r in enumerate(res)),
                   "adopted": [q for q in healthy if "adopted the parameters" in res[q]["stderr"]],
                   "suspected": {q: res[q]["suspected"] for q in range(4) if res[q].get("suspected")},
                   "resumed_at": res[1].get("resumed_at_round"),
                   "rounds": [len(r["train_loss"]) for r in res]}
            rows.append(row)
            say(f"restart run {run + 1}/{runs}: worst final loss {row['worst_pct']:.3f}% off, adopted by healthy "
                f"{row['adopted']}, suspected at the end {row['suspected']}, exits {row['exits']}, "
                f"{row['seconds']:.1f} s")
    return {"rounds": rounds, "kill_after": kill_after, "width": width, "deadline_s": deadline, "runs": rows}


def run_isolated(rounds: int = 200, kill_at: int = 20, deadline: float = 1.0, handshake_timeout: float = 4.0,
                 say=print) -> dict:
    """The middle board of a 3-path killed at ``kill_at``: the leaves' pace and rounds alone after it."""
    from agent.roundlog import read_round_log
    swarm = _swarm(3, "path", 32, rounds)
    with tempfile.TemporaryDirectory(prefix="p2pntk-liveness-") as tmp:
        work = Path(tmp) / "isolated"

        def fault(procs, start):
            _wait_round(work / "agent1.jsonl", kill_at)
            procs[1].kill()

        t0 = time.perf_counter()
        res = _run_by_hand(work, swarm, deadline, fault, handshake_timeout)
        died_after = _logged(work / "agent1.jsonl")  # the kill lands a few fast rounds after kill_at
        leaves = {}
        for q in (0, 2):
            log = read_round_log(work / f"agent{q}.jsonl")
            after = [log[k]["round_s"] for k in sorted(log) if k > died_after + 2]  # once it has suspected 1
            leaves[q] = {"exit": res[q]["exit"], "rounds": len(res[q]["train_loss"]) - 1,
                         "rounds_alone": res[q].get("rounds_alone"), "min_round_s": min(after),
                         "max_round_s": max(after), "summary": res[q]["stderr"].strip().splitlines()[-1:]}
    say(f"isolated: {time.perf_counter() - t0:.1f} s; " + "; ".join(
        f"leaf {q}: {v['rounds']} rounds, {v['rounds_alone']} alone, rounds after the kill "
        f"{v['min_round_s']:.2f}-{v['max_round_s']:.2f} s" for q, v in leaves.items()))
    return {"rounds": rounds, "kill_at": kill_at, "died_after": died_after, "deadline_s": deadline, "leaves": leaves}


def run_late(delay: float = 90.0, handshake_timeout: float = 10.0, rounds: int = 30, say=print) -> dict:
    """Four fleet bundles, board 1 started ``delay`` s after the others, through ``p2pntk rehearse``."""
    from host.rehearse import Fault, rehearse
    from common.files import read_toml, write_toml
    with tempfile.TemporaryDirectory(prefix="p2pntk-liveness-") as tmp:
        tmp = Path(tmp)
        (tmp / "boards.txt").write_text("".join(f"{i} 10.77.0.{i + 1}\n" for i in range(4)))
        init = subprocess.run([sys.executable, "-m", "p2pntk", "fleet", "init", str(tmp / "boards.txt"),
                               "--rehearsal-data", "--round-deadline", "1", "--out", str(tmp / "b"),
                               "--set", f"train.rounds={rounds}", "--set", "train.dtype=float64",
                               "--set", "model.width=32", "--set", "data.samples_per_agent=20",
                               "--set", "data.test_samples=40"], capture_output=True, text=True)
        if init.returncode:
            raise RuntimeError(init.stderr)
        for q in range(4):
            node = tmp / "b" / f"board-{q}" / "node.toml"
            write_toml(node, {**read_toml(node, str(node)), "handshake_timeout": handshake_timeout})
        t0 = time.perf_counter()
        result = rehearse(tmp / "b", faults=(Fault("late", 1, 0, delay),), timeout=delay + 600, say=lambda s: None)
        wall = time.perf_counter() - t0
        from agent.spec import load_spec
        from agent.swarm import Swarm
        clean = _fault_free(Swarm.from_spec(load_spec(tmp / "b" / "board-0" / "spec.toml")))
        boards = []
        for q in range(4):
            res = json.loads((tmp / "b" / f"board-{q}" / "results.json").read_text())
            boards.append({"exit": result["boards"][q]["exit"], "suspected": res["suspected"],
                           "rounds_alone": res["rounds_alone"], "rounds": res["round"],
                           "max_abs_diff": float(np.max(np.abs(np.array(res["train_loss"]) - np.array(clean[q]))))})
    say(f"late start: board 1 started {delay:g} s late (handshake_timeout {handshake_timeout:g} s); {wall:.1f} s; "
        + "; ".join(f"board {q}: {b['exit']}, max |loss - simulate| {b['max_abs_diff']:.1e}" for q, b in
                    enumerate(boards)))
    return {"delay_s": delay, "handshake_timeout_s": handshake_timeout, "rounds": rounds, "wall_s": wall,
            "mode": result["mode"], "boards": boards}


def cli(quick: bool = False, out: str | None = None) -> None:
    if quick:
        table = {"restart": run_restart(runs=1), "isolated":
                 run_isolated(rounds=40, kill_at=10, deadline=0.5, handshake_timeout=2.0),
                 "late": run_late(delay=12.0, handshake_timeout=3.0, rounds=15)}
    else:
        table = {"restart": run_restart(), "isolated": run_isolated(), "late": run_late()}
    r = table["restart"]["runs"]
    print(f"restart: {sum(not x['adopted'] and not x['suspected'] and x['worst_pct'] < 2 for x in r)} of {len(r)} "
          f"runs clean; worst final loss {max(x['worst_pct'] for x in r):.3f}% off the fault-free run")
    if out:
        from common.files import write_json
        write_json(out, table)
