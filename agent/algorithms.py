"""The registry of decentralised algorithms: each one is a single ``Algorithm`` record (docs/design.md,
section 4 "Algorithms"). Adding an algorithm means adding one record here; the spec, the round loop,
the simulator, the wire, the profiles' estimates, the forecast and stability all read ``ALGORITHMS``.

A round on agent q, for any algorithm: ``state = init(theta_0, grad_at)`` once; then each round
``out = outgoing(state, grad, alpha)`` (the arrays sent), ``mixed[i] = sum_r w_qr out_r[i]`` (gossip),
``state = finish(state, mixed, grad_at, alpha, grad)``. ``grad()`` is grad L_q(theta_q) this round,
computed at most once; ``grad_at(x)`` is grad L_q(x). The rules are pure and linear in the messages, so
the same functions run one agent (``round_step``), all agents stacked (``swarm_step``, the simulator's
reference and the predictor's linearised rounds, which pass a kernel-space gradient) and, in closed
form, the reduced linear system of the predictor (``linearised``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from common.errors import UserError

Arrays = tuple[np.ndarray, ...]
GradAt = Callable[[np.ndarray], np.ndarray]   # x -> grad L_q(x) (stacked: row q uses L_q)
Grad = Callable[[], np.ndarray]                # grad L_q(theta_q) this round, computed once


@dataclass(frozen=True)
class LinearForm:
    """The reduced linear system z+ = A z + B u of an algorithm; theta-part x = X z (docs/design.md, section 5)."""

    A: np.ndarray
    B: np.ndarray
    X: np.ndarray


@dataclass(frozen=True)
class ClosedFormLrMax:
    """lr_max = 1 / lambda_max(G (V (x) I) G^T) with V = ``weights(W)`` (and, if ``local_floor``, at least
    2 / lambda_max(H)); ``exact(W)`` says whether that is exact or only an upper bound."""

    weights: Callable[[np.ndarray], np.ndarray]
    local_floor: bool
    exact: Callable[[np.ndarray], bool]


@dataclass(frozen=True)
class Algorithm:
    """One decentralised algorithm: its rule, its linearised form and its lr_max rule.

    ``messages`` names the arrays sent each round (their count is the wire's array count);
    ``linearised(W, H, B0, alpha)`` gives A, B in the reduced coordinates of docs/design.md section 5,
    with Wx = W (x) I_r, H = blkdiag(H_q) and B0 the input map (gradient = H x - B0 u);
    ``lr_max`` is a closed form, or None: the predictor searches the reachable system's spectral radius.
    ``adopt(state, heard, grad_at)`` is the state of an agent that comes back behind its neighbours (paused,
    or resumed from an old checkpoint), given ``heard``, the weighted average of their current messages:
    it replaces its stale parameters by theirs before it sends anything (agent.rounds.rejoin). The default
    takes the first message as theta; an algorithm with more state says how the rest follows.
    """

    name: str
    summary: str
    messages: tuple[str, ...]
    init: Callable[[np.ndarray, GradAt], Arrays]
    outgoing: Callable[[Arrays, Grad, float], Arrays]
    finish: Callable[[Arrays, Arrays, GradAt, float, Grad], Arrays]
    linearised: Callable[[np.ndarray, np.ndarray, np.ndarray, float], LinearForm]
    lr_max: ClosedFormLrMax | None
    full_batch_only: bool = False
    adopt: Callable[[Arrays, Arrays, GradAt], Arrays] = lambda s, heard, grad_at: (heard[0],)


ALGORITHMS: dict[str, Algorithm] = {}


def register(alg: Algorithm) -> Algorithm:
    ALGORITHMS[alg.name] = alg
    return alg


def algorithm_record(algorithm: str) -> Algorithm:
    """The registered algorithm called ``algorithm`` (UserError naming the known ones otherwise)."""
    if algorithm not in ALGORITHMS:
        raise UserError(f"train.algorithm = {algorithm!r}: expected one of {', '.join(ALGORITHMS)}")
    return ALGORITHMS[algorithm]


def once(fn: Callable[[], np.ndarray]) -> Grad:
    """``fn`` called at most once (CTA never calls it; DGD and ATC call it once)."""
    box: list[np.ndarray] = []

    def call() -> np.ndarray:
        if not box:
            box.append(fn())
        return box[0]
    return call


def combine(weights: np.ndarray, messages: np.ndarray) -> np.ndarray:
    """sum_r w_qr m_r: ``weights`` (N_in,) or a mixing matrix (N, N_in), ``messages`` (N_in, P)."""
    return (weights.astype(messages.dtype, copy=False)) @ messages


def round_step(alg: Algorithm, state: Arrays, grad_at: GradAt, alpha: float,
               mix: Callable[[Arrays], Arrays]) -> Arrays:
    """One round of ``alg`` from ``state``; ``mix(out)`` returns (sum_r w_qr out_r[i] for each i)."""
    grad = once(lambda: grad_at(state[0]))
    mixed = mix(alg.outgoing(state, grad, alpha))
    return alg.finish(state, mixed, grad_at, alpha, grad)


def swarm_step(alg: Algorithm, W: np.ndarray, state: Arrays, grad_all: GradAt, alpha: float) -> Arrays:
    """One synchronous round of all N agents stacked: each array of ``state`` is (N, ...), row q agent q's."""
    return round_step(alg, state, grad_all, alpha, lambda out: tuple(combine(W, m) for m in out))


def _wx(W: np.ndarray, r: int) -> np.ndarray:
    return np.kron(W, np.eye(r))


def _symmetric(W: np.ndarray) -> bool:
    return bool(np.allclose(W, W.T, rtol=0, atol=1e-12))


def _psd(W: np.ndarray) -> bool:
    return _symmetric(W) and bool(np.linalg.eigvalsh(W)[0] >= -1e-12)


def _inv_w_plus_i(W: np.ndarray) -> np.ndarray:
    return np.linalg.inv(W + np.eye(W.shape[0]))


def _single(A: np.ndarray, B: np.ndarray) -> LinearForm:
    return LinearForm(A=A, B=B, X=np.eye(A.shape[0]))


# DGD: theta_q+ = sum_r w_qr theta_r - alpha grad L_q(theta_q)
register(Algorithm(
    name="dgd", summary="decentralised gradient descent: combine neighbours' theta, step on own gradient",
    messages=("theta",),
    init=lambda theta, grad_at: (theta,),
    outgoing=lambda s, grad, alpha: (s[0],),
    finish=lambda s, mixed, grad_at, alpha, grad: (mixed[0] - alpha * grad(),),
    linearised=lambda W, H, B0, alpha: _single(_wx(W, H.shape[0] // len(W)) - alpha * H, alpha * B0),
    lr_max=ClosedFormLrMax(weights=_inv_w_plus_i, local_floor=False, exact=_symmetric)))

# ATC and CTA share one rule object: their A's are similar, so lr_max is computed once for both.
_COMBINE_THEN_STEP = ClosedFormLrMax(weights=lambda W: _inv_w_plus_i(W) @ W, local_floor=True, exact=_psd)

# ATC: theta_q+ = sum_r w_qr (theta_r - alpha grad L_r(theta_r))   (adapt, then combine)
register(Algorithm(
    name="atc", summary="adapt then combine: step on own gradient, then average the stepped parameters",
    messages=("psi",),
    init=lambda theta, grad_at: (theta,),
    outgoing=lambda s, grad, alpha: (s[0] - alpha * grad(),),
    finish=lambda s, mixed, grad_at, alpha, grad: (mixed[0],),
    linearised=lambda W, H, B0, alpha: (lambda Wx: _single(Wx @ (np.eye(len(H)) - alpha * H), alpha * (Wx @ B0)))(
        _wx(W, H.shape[0] // len(W))),
    lr_max=_COMBINE_THEN_STEP))

# CTA: phi_q = sum_r w_qr theta_r; theta_q+ = phi_q - alpha grad L_q(phi_q)   (combine, then adapt)
register(Algorithm(
    name="cta", summary="combine then adapt: average neighbours' theta, then step on own gradient there",
    messages=("theta",),
    init=lambda theta, grad_at: (theta,),
    outgoing=lambda s, grad, alpha: (s[0],),
    finish=lambda s, mixed, grad_at, alpha, grad: (mixed[0] - alpha * grad_at(mixed[0]),),
    linearised=lambda W, H, B0, alpha: _single((np.eye(len(H)) - alpha * H) @ _wx(W, H.shape[0] // len(W)),
                                               alpha * B0),
    lr_max=_COMBINE_THEN_STEP))


# GT (gradient tracking, DIGing: Nedic, Olshevsky, Shi 2017). State (theta_q, y_q, g_q), g_q = grad L_q(theta_q):
#   theta_q+ = sum_r w_qr theta_r - alpha y_q
#   y_q+     = sum_r w_qr y_r + grad L_q(theta_q+) - grad L_q(theta_q),   y_q(0) = grad L_q(theta_q(0))
def _gt_finish(s: Arrays, mixed: Arrays, grad_at: GradAt, alpha: float, grad: Grad) -> Arrays:
    theta, y, g = s
    theta_next = mixed[0] - alpha * y
    g_next = grad_at(theta_next)
    return theta_next, mixed[1] + (g_next - g), g_next


def _gt_linearised(W: np.ndarray, H: np.ndarray, B0: np.ndarray, alpha: float) -> LinearForm:
    """State (x, t) with s = y - g(x) = (V (x) I) t, V an orthonormal basis of 1-perp.

    x+ = (Wx - alpha H) x - alpha s + alpha B0 u,  s+ = Wx s + (Wx - I)(H x - B0 u), from (0, 0).
    With a doubly stochastic W, sum_q s_q stays 0: those r modes sit at eigenvalue 1, unreachable, and
    are left out by restricting s to 1-perp (x) I.
    """
    N = len(W)
    r = H.shape[0] // N
    Wx, I = _wx(W, r), np.eye(N * r)
    Vx = np.kron(np.linalg.svd(np.ones((1, N)))[2][1:].T, np.eye(r))  # (N r, (N-1) r): 1-perp, orthonormal
    D = Vx.T @ (Wx - I)
    A = np.block([[Wx - alpha * H, -alpha * Vx], [D @ H, Vx.T @ Wx @ Vx]])
    B = np.vstack([alpha * B0, -(D @ B0)])
    return LinearForm(A=A, B=B, X=np.hstack([I, np.zeros((N * r, Vx.shape[1]))]))


def _gt_adopt(s: Arrays, heard: Arrays, grad_at: GradAt) -> Arrays:
    """Take the neighbours' theta; keep our own tracker, moved by our gradient's change, so that
    sum_q y_q = sum_q grad L_q(theta_q) still holds (taking theirs would bias the fixed point for good)."""
    theta, y, g = s
    g_next = grad_at(heard[0])
    return heard[0], y + (g_next - g), g_next


register(Algorithm(
    name="gt", summary="gradient tracking (DIGing): a tracker of the average gradient; exact with a constant step",
    messages=("theta", "tracker"),
    init=lambda theta, grad_at: (lambda g: (theta, g, g))(grad_at(theta)),
    outgoing=lambda s, grad, alpha: (s[0], s[1]),
    finish=_gt_finish,
    linearised=_gt_linearised,
    lr_max=None,
    full_batch_only=True,
    adopt=_gt_adopt))
