"""``p2pntk bench faults``: the field faults, measured against a fault-free run of the same swarm.

Eight agents on a cycle (width 512, 60 rounds, float64, 2 s deadline) are started by hand from their
node files, as on real boards, and one of them (agent 3) meets a fault at round 20:

- ``kill -9``: the survivors go on without it;
- ``kill -9 under loopback``: the same through the launcher, whose RUN.json must hold all 8;
- ``SIGSTOP`` for 3x the deadline, then ``SIGCONT``: it must rejoin;
- ``kill -9`` and a restart 2 s later: it must resume from its checkpoint and rejoin.

Each row gives every agent's final train loss against the fault-free run (worst agent, worst
survivor), the longest a healthy agent waited in one round, and who ended suspecting whom.
``--quick`` runs 4 agents at width 256 with a 1 s deadline. The numbers are what docs/design.md (section 7) and the
README quote; the fault tests in tests/test_faults.py assert the same properties on smaller swarms.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FAULT_ROUND = 20
PROFILE = "raspberry-pi-zero-2w"  # emulated: its 20 Mbit/s link paces rounds like a board's (about 0.5 s)
VICTIM = 3


def _spec(agents: int, width: int, rounds: int):
    from agent.spec import load_spec
    return load_spec(None, [f"network.agents={agents}", f"model.width={width}", f"train.rounds={rounds}",
                            "train.dtype='float64'", "data.samples_per_agent=30"])


def _swarm_files(work: Path, agents: int, width: int, rounds: int, deadline: float) -> list[Path]:
    from host.loopback import loopback_addresses, write_node_files
    from agent.swarm import Swarm
    swarm = Swarm.from_spec(_spec(agents, width, rounds))
    return write_node_files(swarm, work, loopback_addresses(agents), round_deadline=deadline,
                            extra={"checkpoint_every": 1, "profile": PROFILE, "emulate": True})


def _wait_rounds(log: Path, n: int, timeout: float = 120) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if log.exists() and log.read_text().count('"train_loss"') >= n:
            return
        time.sleep(0.02)
    raise RuntimeError(f"{log} never reached round {n}")


def _by_hand(work: Path, agents: int, fault: str | None, deadline: float) -> None:
    from host.loopback import agent_environment
    env = agent_environment(agents)
    nodes = [work / f"node{q}.toml" for q in range(agents)]

    def start(q: int) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "agent", str(nodes[q])], env=env, cwd=work,
                                stderr=open(work / f"agent{q}.stderr", "a"))  # noqa: SIM115

    procs = [start(q) for q in range(agents)]
    try:
        if fault:
            _wait_rounds(work / f"agent{VICTIM}.jsonl", FAULT_ROUND)
            victim = procs[VICTIM]
            if fault == "sigstop":
                victim.send_signal(signal.SIGSTOP)
                time.sleep(3 * deadline)
                victim.send_signal(signal.SIGCONT)
            else:
                victim.kill()
                victim.wait()
                if fault == "restart":
                    time.sleep(2.0)
                    procs[VICTIM] = start(VICTIM)
        for p in procs:
            p.wait(timeout=600)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()


def _under_loopback(work: Path, agents: int, width: int, rounds: int, deadline: float) -> dict:
    args = [sys.executable, "-m", "p2pntk", "loopback", "--quiet", "--workdir", str(work), "--out",
            str(work / "RUN.json"), "--round-deadline", str(deadline)]
    for kv in (f"network.agents={agents}", f"model.width={width}", f"train.rounds={rounds}",
               "train.dtype='float64'", "data.samples_per_agent=30"):
        args += ["--set", kv]
    args += ["--profiles", PROFILE]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_rounds(work / f"agent{VICTIM}.jsonl", FAULT_ROUND)
        out = subprocess.run(["pgrep", "-f", "--", f"-m agent {work}/node{VICTIM}.toml"], capture_output=True,
                             text=True).stdout.split()
        os.kill(int(out[0]), signal.SIGKILL)
        proc.communicate(timeout=600)
    finally:
        proc.kill()
    run = json.loads((work / "RUN.json").read_text())
    return {"code": proc.returncode, "run": run}


def _finals(work: Path, agents: int) -> list[float | None]:
    from agent.roundlog import read_round_log
    out = []
    for q in range(agents):
        records = read_round_log(work / f"agent{q}.jsonl")
        out.append(records[max(records)]["train_loss"] if records else None)
    return out


def _longest_wait(work: Path, q: int) -> float:
    from agent.roundlog import read_round_log
    return max((r.get("wait_s", 0.0) for r in read_round_log(work / f"agent{q}.jsonl").values()), default=0.0)


def _log_kept(log: Path) -> bool:
    """Its round log still starts at round 0 (appended across a restart, never overwritten)."""
    rounds = [json.loads(line)["round"] for line in log.read_text().splitlines() if '"train_loss"' in line]
    return bool(rounds) and rounds[0] == 0


def _results(work: Path, agents: int) -> list[dict]:
    return [json.loads(p.read_text()) if (p := work / f"agent{q}.json").exists() else {} for q in range(agents)]


FAULTS = ("kill", "loopback-kill", "sigstop", "restart")


def run_faults(quick: bool = False, faults: tuple[str, ...] = FAULTS) -> dict:
    """Run the fault-free swarm and each of ``faults``; return the table (tests/test_faults.py asserts on it)."""
    agents, width, rounds, deadline = (4, 256, 60, 1.0) if quick else (8, 512, 60, 2.0)
    rows = {}
    with tempfile.TemporaryDirectory(prefix="p2pntk-faults-") as tmp:
        clean_dir = Path(tmp) / "clean"
        _swarm_files(clean_dir, agents, width, rounds, deadline)
        t0 = time.perf_counter()
        _by_hand(clean_dir, agents, None, deadline)
        clean_s = time.perf_counter() - t0
        clean = _finals(clean_dir, agents)
        for fault in faults:
            work = Path(tmp) / fault
            t0 = time.perf_counter()
            extra = {}
            if fault == "loopback-kill":
                got = _under_loopback(work, agents, width, rounds, deadline)
                marked = [a["id"] for a in got["run"]["agents"] if a.get("failed")]
                extra = {"launcher_exit": got["code"], "agents_in_run_json": len(got["run"]["agents"]),
                         "marked_failed": marked}
            else:
                _swarm_files(work, agents, width, rounds, deadline)
                _by_hand(work, agents, fault, deadline)
            finals = _finals(work, agents)
            res = _results(work, agents)
            err = [abs(f - c) / c if f is not None else None for f, c in zip(finals, clean)]
            if fault.endswith("kill"):
                err[VICTIM] = None  # it died at round 20: its last loss is no final loss
            survivors = [e for q, e in enumerate(err) if q != VICTIM]
            healthy = [q for q in range(agents) if q != VICTIM]
            rows[fault] = {
                "seconds": time.perf_counter() - t0,
                "worst_all_pct": 100 * max(e for e in err if e is not None),
                "worst_survivor_pct": 100 * max(survivors),
                "victim_pct": None if err[VICTIM] is None else 100 * err[VICTIM],
                "longest_wait_s": max(_longest_wait(work, q) for q in healthy),
                "suspected": {q: r.get("suspected") for q, r in enumerate(res) if r.get("suspected")},
                "rejoined": {q: r.get("rejoined") for q, r in enumerate(res) if r.get("rejoined")},
                "victim_resumed_at": res[VICTIM].get("resumed_at_round") if res[VICTIM] else None,
                "victim_log_kept": _log_kept(work / f"agent{VICTIM}.jsonl"),
                **extra}
    return {"agents": agents, "width": width, "rounds": rounds, "deadline_s": deadline, "fault_round": FAULT_ROUND,
            "fault_free_seconds": clean_s, "fault_free_final_loss": clean, "faults": rows}


def cli(quick: bool = False, out: str | None = None) -> None:
    table = run_faults(quick)
    print(f"{table['agents']} agents on a cycle, width {table['width']}, {table['rounds']} rounds, float64, "
          f"deadline {table['deadline_s']:g} s, agent {VICTIM} faulted at round {FAULT_ROUND}; fault-free run "
          f"{table['fault_free_seconds']:.1f} s")
    print(f"{'fault':<14} {'worst agent':>11} {'survivors':>10} {'victim':>8} {'longest wait':>13}  notes")
    for name, r in table["faults"].items():
        victim = "dead" if r["victim_pct"] is None else f"{r['victim_pct']:.2f}%"
        notes = {k: r[k] for k in ("suspected", "rejoined", "victim_resumed_at", "marked_failed",
                                   "agents_in_run_json") if r.get(k) not in (None, {}, [])}
        print(f"{name:<14} {r['worst_all_pct']:>10.2f}% {r['worst_survivor_pct']:>9.2f}% {victim:>8} "
              f"{r['longest_wait_s']:>11.2f} s  {notes}")
    if out:
        from common.files import write_json
        write_json(out, table)
