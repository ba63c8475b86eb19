"""The DGD, ATC and CTA update rules of DESIGN section 4, written once.

A round on agent q has three pure steps: ``outgoing`` (what q sends: theta_q, or for ATC
psi_q = theta_q - alpha grad L_q(theta_q)), the combination sum_r w_qr m_r of what it received
(``combine``), and ``finish`` (the local step after combining). ``swarm_step`` applies the same
three steps to all agents stacked in one array; the simulator uses it on the real model and the
predictor on the linearised one, by passing a different gradient function.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

ALGORITHMS = ("dgd", "atc", "cta")

GradFn = Callable[[np.ndarray], np.ndarray]  # theta -> grad L_q(theta) (one agent)
StackedGradFn = Callable[[np.ndarray], np.ndarray]  # (N, P) -> (N, P), row q uses L_q


def outgoing(algorithm: str, theta: np.ndarray, grad: Callable[[], np.ndarray], alpha: float) -> np.ndarray:
    """The message agent q sends this round: theta_q (DGD, CTA) or psi_q = theta_q - alpha g (ATC).

    ``grad`` is called lazily so that CTA, which needs no gradient at theta_q, never computes one.
    """
    if algorithm == "atc":
        return theta - alpha * grad()
    return theta


def combine(weights: np.ndarray, messages: np.ndarray) -> np.ndarray:
    """sum_r w_qr m_r: ``weights`` (N_in,) or a mixing matrix (N, N_in), ``messages`` (N_in, P)."""
    return (weights.astype(messages.dtype, copy=False)) @ messages


def finish(algorithm: str, theta: np.ndarray, mixed: np.ndarray, grad_at: GradFn, alpha: float,
           grad_theta: np.ndarray | None = None) -> np.ndarray:
    """theta_q+ from the combined messages.

    DGD: mixed - alpha grad L_q(theta_q) (pass ``grad_theta`` if it was already computed);
    ATC: mixed; CTA: phi = mixed, then phi - alpha grad L_q(phi).
    """
    if algorithm == "dgd":
        g = grad_at(theta) if grad_theta is None else grad_theta
        return mixed - alpha * g
    if algorithm == "atc":
        return mixed
    if algorithm == "cta":
        return mixed - alpha * grad_at(mixed)
    raise ValueError(f"unknown algorithm {algorithm!r}; expected one of {ALGORITHMS}")


def swarm_step(algorithm: str, W: np.ndarray, Theta: np.ndarray, grad_all: StackedGradFn,
               alpha: float) -> np.ndarray:
    """One synchronous round for all N agents: Theta (N, P) -> Theta+ (N, P).

    ``grad_all`` maps stacked states to stacked local gradients (row q: grad L_q at row q).
    """
    g = None if algorithm == "cta" else grad_all(Theta)
    messages = outgoing(algorithm, Theta, lambda: g, alpha)
    mixed = combine(W, messages)
    return finish(algorithm, Theta, mixed, grad_all, alpha, grad_theta=g)
