"""The loopback swarm: a spec's agents as real OS processes on 127.0.0.1, and their results.

``write_node_files`` writes what each device needs (its data .npz, the shared test set, the spec
and its node file); ``run_loopback`` starts them as OS processes through host.launcher
and gathers their logs into the results JSON of docs/design.md, section 6.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

from agent.device import THREAD_CAP_VAR
from agent.node import NodeConfig, node_table
from agent.roundlog import HISTORY_KEYS, history_from_log, read_round_log
from agent.swarm import Swarm
from common.errors import EXIT_ADDRESS_IN_USE, EXIT_BAD_INPUT, UserError
from common.files import write_npz, write_toml
from coordinator_free.keys import new_keypair
from host.launcher import Job, Outcome, launch
from coordinator_free.transport import free_tcp_port


def write_node_files(swarm: Swarm, workdir: Path, addresses: list[str], *, round_deadline: float = 30.0,
                     handshake_timeout: float = 60.0, extra: dict | None = None,
                     per_agent: list[dict] | None = None) -> list[Path]:
    """Write spec.toml, test.npz and, per agent q, agentQ.npz, a CurveZMQ keypair (keys/agentQ.key and
    .key_secret) and nodeQ.toml under ``workdir``.

    ``addresses[q]`` is agent q's bind address; its peers are its graph neighbours' addresses, and
    its [peer_keys] their public keys, so the loopback swarm runs the secure path of real boards.
    ``extra`` adds keys to every node file and ``per_agent[q]`` to agent q's only (e.g. a profile).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    for q in range(swarm.n_agents):
        if not (workdir / "keys" / f"agent{q}.key_secret").exists():
            new_keypair(workdir / "keys", f"agent{q}")
    write_toml(workdir / "spec.toml", swarm.spec.to_dict())
    p = swarm.problem
    write_npz(workdir / "test.npz", X=p.X_test, Y=p.Y_test)
    paths = []
    for q in range(swarm.n_agents):
        X, Y = p.agent_data(q)
        write_npz(workdir / f"agent{q}.npz", X=X, Y=Y)
        node = NodeConfig(id=q, bind=addresses[q], data=f"agent{q}.npz", test="test.npz", spec="spec.toml",
                          out=f"agent{q}.json", log=f"agent{q}.jsonl", checkpoint=f"agent{q}.ckpt.npz",
                          checkpoint_every=10, round_deadline=round_deadline, handshake_timeout=handshake_timeout,
                          peers={r: addresses[r] for r in sorted(swarm.graph.neighbors(q))},
                          secret_key=f"keys/agent{q}.key_secret",
                          peer_keys={r: f"keys/agent{r}.key" for r in sorted(swarm.graph.neighbors(q))})
        node = node.replace(**(extra or {}), **(per_agent[q] if per_agent and q < len(per_agent) else {}))
        paths.append(write_toml(workdir / f"node{q}.toml", node_table(node)))
    return paths


def loopback_addresses(n: int) -> list[str]:
    """n distinct free ports on 127.0.0.1 (racy: ``run_loopback`` retries if one is taken)."""
    ports: set[int] = set()
    while len(ports) < n:
        ports.add(free_tcp_port())
    return [f"tcp://127.0.0.1:{port}" for port in sorted(ports)]


THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def agent_environment(n_agents: int) -> dict:
    """Environment for agents sharing this host: BLAS threads capped to cores / agents (at least 1).

    Multithreaded OpenBLAS on an oversubscribed host is catastrophic: a 40 x 1024 gradient step
    measured 0.3 ms with one thread and 30 ms with two on a busy 2-core machine.
    P2PNTK_THREAD_CAP (``agent.device.THREAD_CAP_VAR``) tells an agent with a device profile not to
    raise its threads above this.
    """
    cap = str(max(1, (os.cpu_count() or 1) // n_agents))
    return {**os.environ, **{v: cap for v in THREAD_VARS}, THREAD_CAP_VAR: cap}


def run_loopback(swarm: Swarm, workdir: Path, *, timeout: float = 600.0, round_deadline: float = 30.0,
                 progress: Callable[[int, int], None] | None = None, attempts: int = 3,
                 extra: dict | None = None, per_agent: list[dict] | None = None) -> dict:
    """Run the swarm as N agent processes on 127.0.0.1; return the results dict (kind "loopback").

    An agent that dies does not stop the others; the results then hold every agent, the failed ones
    marked (how they ended, their last round) and listed in "failed_agents". Start-up failures that
    every agent would wait on (bad input, 2) stop the swarm and raise UserError; a taken port (3) is
    retried with fresh ports.
    """
    rounds = swarm.spec.train.rounds
    device = swarm.spec.device
    if device.profiles and per_agent is None:
        per_agent = [{"profile": device.profiles[q % len(device.profiles)], "emulate": device.emulate}
                     for q in range(swarm.n_agents)]
    for attempt in range(attempts):
        nodes = write_node_files(swarm, workdir, loopback_addresses(swarm.n_agents), round_deadline=round_deadline,
                                 extra=extra, per_agent=per_agent)
        # --quiet: the launcher draws one progress bar for the swarm; agents' stderr keeps only warnings and errors
        jobs = [Job(f"agent{q}", [sys.executable, "-m", "agent", str(path), "--quiet"], workdir / f"agent{q}.jsonl",
                    workdir / f"agent{q}.stderr") for q, path in enumerate(nodes)]
        for job in jobs:  # a fresh run: no log, results or checkpoint of an earlier one (it would resume)
            for leftover in (job.log, workdir / f"{job.name}.json", workdir / f"{job.name}.ckpt.npz",
                             workdir / f"{job.name}.params.npz"):
                leftover.unlink(missing_ok=True)
        t0 = time.perf_counter()
        outcomes = launch(jobs, expected_lines=rounds + 2, timeout=timeout, progress=progress,  # start line + rounds
                          env=agent_environment(swarm.n_agents), abort_on=frozenset({EXIT_BAD_INPUT, EXIT_ADDRESS_IN_USE}))
        wall = time.perf_counter() - t0
        if any(o.returncode == EXIT_ADDRESS_IN_USE for o in outcomes) and attempt + 1 < attempts:
            continue  # a port was taken between probing and binding: try fresh ports
        bad = next((o for o in outcomes if o.returncode in (EXIT_BAD_INPUT, EXIT_ADDRESS_IN_USE)), None)
        if bad is not None:
            raise UserError(f"loopback: {bad.name} could not start ({bad.describe()}): {bad.stderr_tail} "
                            f"(logs in {workdir})")
        return collect_results(swarm, workdir, wall, outcomes)
    raise AssertionError("unreachable")


def agent_summary(q: int, workdir: Path, outcome: Outcome | None) -> dict:
    """Agent q's results: its own results file or, if it died before writing one, its round log."""
    log = [r for _, r in sorted(read_round_log(workdir / f"agent{q}.jsonl").items())]
    path = workdir / f"agent{q}.json"
    own = json.loads(path.read_text()) if path.exists() else {}
    out = {key: own.get(key, logged) for key, logged in history_from_log(workdir / f"agent{q}.jsonl").items()}
    out["id"] = q
    for key in ("bytes_sent", "bytes_received", "wait_s"):
        out[key] = own.get(key, float(sum(r.get(key, 0) for r in log)))
    out["suspected"] = own.get("suspected", log[-1]["suspected"] if log else [])
    for key in ("wall_s", "dropped", "neighbours", "profile", "stopped", "loss_growth", "rejoined", "rounds_alone",
                "resumed_at_round"):
        if key in own:
            out[key] = own[key]
    round_s = [r["round_s"] for r in log[1:]]
    out["mean_round_s"] = float(np.mean(round_s)) if round_s else 0.0
    out["last_round"] = log[-1]["round"] if log else None
    out["exit"] = "exit status 0" if outcome is None else outcome.describe()
    out["failed"] = outcome is not None and outcome.returncode != 0
    return out


def collect_results(swarm: Swarm, workdir: Path, wall: float, outcomes: list[Outcome] | None = None) -> dict:
    """Merge every agent's results (or round log, for one that died) into the results JSON of
    docs/design.md, section 6; failed agents are marked and listed in "failed_agents"."""
    per = [agent_summary(q, workdir, outcomes[q] if outcomes else None) for q in range(swarm.n_agents)]
    out = {"kind": "loopback", "spec": swarm.spec.to_dict()}
    for key in HISTORY_KEYS:  # round[q][i]: the round of entry i
        out[key] = [a.pop(key) for a in per]
    out["final_test_accuracy"] = [acc[-1] if acc else None for acc in out["test_accuracy"]]
    rounds = max(swarm.spec.train.rounds, 1)
    out["bytes_per_round"] = float(np.sum([a["bytes_sent"] for a in per]) / rounds)
    out["n_params"], out["model_hash"] = swarm.cfg.num_params, swarm.cfg.hash()
    out["agents"] = per
    out["failed_agents"] = [a["id"] for a in per if a["failed"]]
    out["timings"] = {"total_s": wall,
                      "per_round_s": float(np.mean([a["mean_round_s"] for a in per if a["mean_round_s"]] or [0.0])),
                      "wait_per_round_s": float(np.mean([a["wait_s"] for a in per]) / rounds)}
    out["workdir"] = str(workdir)
    return out


def failure_summary(results: dict) -> str:
    """One line naming each failed agent, how it ended and its last round."""
    parts = [f"agent {a['id']} ({a['exit']}, last round {a['last_round']})"
             for a in results["agents"] if a["failed"]]
    return f"{len(parts)} of {len(results['agents'])} agents failed: " + "; ".join(parts)
