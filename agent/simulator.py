"""The in-process swarm simulator: every agent in one process, on the real nonlinear model.

Each agent runs the same round loop as a device (``agent.rounds.run_rounds``), in its own thread,
with an in-process gossip (``coordinator_free.gossip.InProcessHub``) in place of ZeroMQ; so simulate
and loopback compute the same numbers. It records the results JSON of docs/design.md, section 6.
"""
from __future__ import annotations

import threading
import time
from typing import Callable

import numpy as np

from agent.algorithms import ALGORITHMS, Arrays
from agent.rounds import RoundTimes, run_rounds
from agent.swarm import Swarm
from coordinator_free.gossip import InProcessHub


def simulate(swarm: Swarm, progress: Callable[[int, int], None] | None = None, keep_theta: bool = False) -> dict:
    """Train the swarm for ``train.rounds`` rounds; return the results dict (kind "simulate").

    ``keep_theta`` adds "theta": every agent's final parameters, an (N, P) array.
    """
    train = swarm.spec.train
    alg, rounds, N = ALGORITHMS[train.algorithm], train.rounds, swarm.n_agents
    learners = swarm.learners()
    theta0 = swarm.theta0.astype(swarm.dtype)
    hub = InProcessHub({q: list(swarm.graph.neighbors(q)) for q in range(N)})
    rows = swarm.rows()
    history: list[dict[str, list[float]]] = [{} for _ in range(N)]
    diverged: list[int | None] = [None] * N
    step_seconds = [0.0] * N
    final: list[np.ndarray | None] = [None] * N
    errors: list[BaseException] = []

    def agent(q: int) -> None:
        def on_round(k: int, state: Arrays, times: RoundTimes) -> None:
            step_seconds[q] += times.step_s
            for key, value in learners[q].evaluate(state[0]).items():
                history[q].setdefault(key, []).append(value)
            if diverged[q] is None and not np.all(np.isfinite(state[0])):
                diverged[q] = k
            if progress and q == 0 and k > 0:
                progress(k, rounds)
            if k == rounds:
                final[q] = state[0]
        try:
            with np.errstate(over="ignore", invalid="ignore"):
                run_rounds(alg, theta0, learners[q].grad, float(train.lr), rounds, hub.endpoint(q), rows[q], on_round)
        except BaseException as err:  # noqa: BLE001 - re-raised in the caller's thread
            errors.append(err)
            hub.abort()

    t0 = time.perf_counter()
    threads = [threading.Thread(target=agent, args=(q,), name=f"agent{q}", daemon=True) for q in range(N)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise next((e for e in errors if not isinstance(e, threading.BrokenBarrierError)), errors[0])
    total = time.perf_counter() - t0
    merged = {key: [h[key] for h in history] for key in history[0]}
    first = [d for d in diverged if d is not None]
    out = {"kind": "simulate", "spec": swarm.spec.to_dict(), **merged,
            "final_test_accuracy": [h[-1] for h in merged.get("test_accuracy", [])],
            "diverged_at_round": min(first) if first else None,
            "n_params": swarm.cfg.num_params, "model_hash": swarm.cfg.hash(),
            "timings": {"total_s": total, "train_steps_s": max(step_seconds),
                        "per_round_s": max(step_seconds) / max(rounds, 1)}}
    if keep_theta:
        out["theta"] = np.stack(final)
    return out
