"""The one round loop: what every agent does each round, whatever carries its messages.

``agent_round`` runs one round of a registered algorithm (agent.algorithms) for agent q, given a
gossip (coordinator_free.gossip: ZeroMQ, in-process, or emulated) and q's mixing row; ``run_rounds``
repeats it from theta_0. The agent process and the simulator both call ``run_rounds``; they differ
only in the gossip they pass and in what they do with each round's record (docs/design.md, section 4).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from agent.algorithms import Algorithm, Arrays, combine, round_step
from coordinator_free.gossip import Gossip
from coordinator_free.topology import live_row

log = logging.getLogger("p2pntk.agent")


@dataclass
class RoundTimes:
    """Seconds spent in the last round: computing (``step_s``) and in the gossip (``exchange_s``)."""

    step_s: float = 0.0
    exchange_s: float = 0.0


def agent_round(alg: Algorithm, state: Arrays, grad_at: Callable[[np.ndarray], np.ndarray], alpha: float,
                gossip: Gossip, round_: int, row: dict[int, float], times: RoundTimes | None = None) -> Arrays:
    """Agent ``gossip.node_id``'s next state after round ``round_``.

    ``row`` is its mixing row {r: w_qr} on the full graph; the weight of a neighbour that sent nothing
    this round (suspected or departed) goes to the agent itself (``live_row``), which keeps W symmetric
    and doubly stochastic on the live graph. The combination is over [self, neighbours in id order].
    """
    me = gossip.node_id
    t_start, exchange = time.perf_counter(), 0.0

    def mix(out: Arrays) -> Arrays:
        nonlocal exchange
        t0 = time.perf_counter()
        received = gossip.exchange(round_, out)
        exchange = time.perf_counter() - t0
        weights = live_row(row, set(received), me)
        ids = sorted(received)
        w = np.array([weights[me]] + [weights[r] for r in ids])
        return tuple(combine(w, np.stack([out[i]] + [received[r][i] for r in ids])) for i in range(len(out)))

    state = round_step(alg, state, grad_at, alpha, mix)
    if times is not None:
        times.exchange_s, times.step_s = exchange, time.perf_counter() - t_start - exchange
    return state


def rejoin(alg: Algorithm, state: Arrays, gossip: Gossip, round_: int, row: dict[int, float],
           grad_at: Callable[[np.ndarray], np.ndarray]) -> Arrays:
    """The state with which an agent that fell behind (paused, or resumed from an older checkpoint)
    enters round ``round_``: it first hears its neighbours' round-``round_`` messages without sending
    (``gossip.listen``), then adopts their average, weighted by its mixing row (``alg.adopt``). Its
    stale parameters never enter the mix; its data counts again from this round's gradient step on.
    With nothing heard (its neighbours have finished), it keeps its own state.
    """
    heard = gossip.listen(round_)
    if not heard:
        return state
    ids = sorted(heard)
    w = np.array([row[r] for r in ids])
    w = w / w.sum()
    mixed = tuple(combine(w, np.stack([heard[r][i] for r in ids])) for i in range(len(alg.messages)))
    log.warning("node %d: behind the swarm: adopted the parameters of %s and joined at round %d",
                gossip.node_id, ", ".join(f"peer {r}" for r in ids), round_)
    return alg.adopt(state, mixed, grad_at)


def run_rounds(alg: Algorithm, theta0: np.ndarray, grad: Callable[[np.ndarray, int], np.ndarray], alpha: float,
               rounds: int, gossip: Gossip, row: dict[int, float],
               on_round: Callable[[int, Arrays, RoundTimes], None], start: int = 0,
               state: Arrays | None = None) -> Arrays:
    """Rounds ``start`` .. ``rounds`` - 1 of ``alg`` from theta_0 (or from ``state``); returns the last state.

    ``grad(theta, k)`` is grad L_q on round k's batch. ``on_round(k, state, times)`` is called before
    round k's update (k = rounds: the final state), with the timings of the round that produced it:
    logging, checkpoints, progress and emulation hook in there. The gossip's ``next_round(k)`` may move
    the agent ahead to the swarm's round (a paused or resumed agent catching up): the rounds between
    are skipped, and the agent enters through ``rejoin``.
    """
    state = alg.init(theta0, lambda t: grad(t, start)) if state is None else state
    times, k = RoundTimes(), start
    while True:
        ahead = min(max(k, gossip.next_round(k)), rounds)
        if k < ahead < rounds:
            state = rejoin(alg, state, gossip, ahead, row, lambda t, k=ahead: grad(t, k))
        k = ahead
        on_round(k, state, times)
        if k == rounds:
            return state
        times = RoundTimes()
        state = agent_round(alg, state, lambda t, k=k: grad(t, k), alpha, gossip, k, row, times)
        k += 1
