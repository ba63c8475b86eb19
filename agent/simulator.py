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
from agent.process import loss_growth
from agent.rounds import RoundTimes, run_rounds
from agent.swarm import Swarm
from common.errors import Diverged
from coordinator_free.gossip import InProcessHub


def simulate(swarm: Swarm, progress: Callable[[int, int], None] | None = None, keep_theta: bool = False) -> dict:
    """Train the swarm for ``train.rounds`` rounds; return the results dict (kind "simulate").

    As on a device, a swarm whose parameters become non-finite stops there: "diverged_at_round" says
    when (the CLI then exits with status 4). ``keep_theta`` adds "theta": every agent's final
    parameters, an (N, P) array.
    """
    swarm.check_memory()
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
            if not np.all(np.isfinite(state[0])):
                diverged[q] = k
                raise Diverged(f"agent {q}: parameters became non-finite at round {k}")
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
    first_error = next((e for e in errors if not isinstance(e, threading.BrokenBarrierError)), None)
    if first_error is not None and not isinstance(first_error, Diverged):
        raise first_error
    total = time.perf_counter() - t0
    merged = {key: [h[key] for h in history] for key in history[0]}
    first = [d for d in diverged if d is not None]
    out = {"kind": "simulate", "spec": swarm.spec.to_dict(), **merged,
            "final_test_accuracy": [h[-1] for h in merged.get("test_accuracy", [])],
            "diverged_at_round": min(first) if first else None,
            "n_params": swarm.cfg.num_params, "model_hash": swarm.cfg.hash(),
            "timings": {"total_s": total, "train_steps_s": max(step_seconds),
                        "per_round_s": max(step_seconds) / max(rounds, 1)}}
    out["loss_growth"] = [loss_growth(h.get("train_loss", [])) for h in history]
    if keep_theta and all(t is not None for t in final):
        out["theta"] = np.stack(final)
    return out
