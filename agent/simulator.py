"""The in-process swarm simulator: every agent in one process, on the real nonlinear model.

It applies ``agent.algorithms.swarm_step`` to the stacked parameters (N, P), with each row's
gradient from that agent's ``LocalLearner``, and records the results JSON of DESIGN section 6.
"""
from __future__ import annotations

import time
from typing import Callable

import numpy as np

from agent.algorithms import swarm_step
from agent.swarm import Swarm


def simulate(swarm: Swarm, progress: Callable[[int, int], None] | None = None) -> dict:
    """Train the swarm for ``train.rounds`` rounds; return the results dict (kind "simulate")."""
    train = swarm.spec["train"]
    learners = swarm.learners()
    dtype = swarm.dtype
    W = swarm.W.astype(dtype)
    alpha = float(train["lr"])
    Theta = np.tile(swarm.theta0.astype(dtype), (swarm.n_agents, 1))
    history: dict[str, list[list[float]]] = {}
    round_ = 0
    diverged: int | None = None

    def grad_all(T: np.ndarray) -> np.ndarray:
        return np.stack([ln.grad(T[q], round_) for q, ln in enumerate(learners)])

    def record() -> None:
        for q, ln in enumerate(learners):
            for key, value in ln.evaluate(Theta[q]).items():
                history.setdefault(key, [[] for _ in learners])[q].append(value)

    t0 = time.perf_counter()
    record()
    step_seconds = 0.0
    for round_ in range(train["rounds"]):
        ts = time.perf_counter()
        Theta = swarm_step(train["algorithm"], W, Theta, grad_all, alpha)
        step_seconds += time.perf_counter() - ts
        if diverged is None and not np.all(np.isfinite(Theta)):
            diverged = round_ + 1
        record()
        if progress:
            progress(round_ + 1, train["rounds"])
    total = time.perf_counter() - t0
    return {"kind": "simulate", "spec": swarm.spec, **history,
            "final_test_accuracy": [h[-1] for h in history.get("test_accuracy", [])],
            "diverged_at_round": diverged,
            "n_params": swarm.cfg.num_params, "model_hash": swarm.cfg.hash(),
            "timings": {"total_s": total, "train_steps_s": step_seconds,
                        "per_round_s": step_seconds / max(train["rounds"], 1)}}
