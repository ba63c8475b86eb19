"""Stability of the linearised dynamics of every registered algorithm (docs/design.md, section 5):
W doubly stochastic?, Proposition 1 (minimality and the largest real eigenvalue of the reduced A - I),
the discrete spectral radius, and lr_max, the largest stable learning rate, by each algorithm's rule.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from agent.algorithms import ALGORITHMS, algorithm_record
from coordinator_free.topology import check_mixing
from predictor.dynamics import (MAX_FLOW_STATES, KernelProblem, ReducedSystem, eigen_factors, reduced_states,
                                reduced_system)

MAX_SEARCH_STATES = 1500  # a dense lr_max search (~30 eigenvalue problems) above this many states: skipped
DENSE_EIGH = 800  # above this size the top eigenvalue comes from Lanczos (``top_eigenvalue``), not eigvalsh
LANCZOS_TOL = 1e-13  # Ritz residual / Ritz value at which Lanczos stops: the eigenvalue is then that exact


def doubly_stochastic(W: np.ndarray, atol: float = 1e-12) -> bool:
    """W >= 0 with rows and columns summing to 1 (then ||W||_2 <= 1, the premise of Proposition 1)."""
    try:
        return check_mixing(np.asarray(W, dtype=float), doubly=False, atol=atol)["doubly_stochastic"]
    except ValueError:
        return False


def _top_eig(S: np.ndarray) -> float:
    """The largest eigenvalue of the symmetric matrix S."""
    if S.shape[0] <= DENSE_EIGH:
        return float(np.linalg.eigvalsh(S)[-1])
    return top_eigenvalue(lambda x: S @ x, S.shape[0])


def top_eigenvalue(matvec: Callable[[np.ndarray], np.ndarray], n: int, tol: float = LANCZOS_TOL,
                   max_steps: int = 400) -> float:
    """The largest eigenvalue of a symmetric operator on R^n given as ``matvec``, by Lanczos with full
    reorthogonalisation (numpy only: scipy's import would cost a third of a whole ``predict`` run).

    With theta the top Ritz value and r its residual beta_j |s_j|, it stops when r <= tol theta (an
    eigenvalue then lies within r of theta), or, sooner, when the quadratic bound r^2 / gap <= tol theta
    holds with the gap to the second Ritz value, and theta has also moved by less than tol theta in each of
    the last two steps. The error of a converged top Ritz value is about r^2 / gap, so this stops when the
    value is done rather than when the vector is: at 64 agents x 200 samples x 10 classes it took 138 steps
    to the linear test and 40 to this one, for the same value to 1e-7. The start vector is seeded, so runs
    repeat exactly.
    """
    steps = min(n, max_steps)
    Q = np.empty((steps + 1, n))
    q = np.random.default_rng(0).standard_normal(n)
    Q[0] = q / np.linalg.norm(q)
    alpha, beta = np.empty(steps), np.empty(steps)
    history: list[float] = []
    for j in range(steps):
        w = np.asarray(matvec(Q[j]), dtype=np.float64)
        alpha[j] = Q[j] @ w
        for _ in range(2):  # twice is enough (Kahan): the basis stays orthonormal to rounding
            w -= Q[:j + 1].T @ (Q[:j + 1] @ w)
        beta[j] = np.linalg.norm(w)
        T = np.diag(alpha[:j + 1]) + np.diag(beta[:j], 1) + np.diag(beta[:j], -1)
        theta, S = np.linalg.eigh(T)
        history.append(float(theta[-1]))
        scale = tol * max(abs(history[-1]), np.finfo(float).tiny)
        residual = beta[j] * abs(S[-1, -1])
        settled = len(history) >= 3 and max(abs(history[-1] - history[-2]), abs(history[-2] - history[-3])) <= scale
        quadratic = j > 0 and residual * residual <= scale * (theta[-1] - theta[-2])
        if residual <= scale or (settled and quadratic) or beta[j] == 0:
            break
        Q[j + 1] = w / beta[j]
    return history[-1]


def _agent_weighted_kernel(kp: KernelProblem, V: np.ndarray) -> np.ndarray:
    """G (V (x) I_r) G^T in kernel form: entry (a, b) = V[q(a), q(b)] K[a, b] / sqrt(n_q(a) n_q(b))."""
    owner = np.repeat(kp.agent_of_sample, kp.k)
    s = 1.0 / np.sqrt(kp.counts[owner])
    return V[np.ix_(owner, owner)] * kp.K * np.outer(s, s)


def spectral_radius(system: ReducedSystem) -> float:
    """rho(A) of the reduced discrete system; the rounds converge iff rho < 1."""
    A = system.A
    if np.allclose(A, A.T, rtol=0, atol=1e-13 * max(np.abs(A).max(), 1.0)):
        return float(np.abs(np.linalg.eigvalsh(0.5 * (A + A.T))).max())
    return float(np.abs(np.linalg.eigvals(A)).max())


def lr_max(kp: KernelProblem, algorithm: str, verify: bool = False) -> float | None:
    """The largest learning rate alpha for which the discrete rounds are stable (rho(A) < 1).

    The algorithm's record says how (``agent.algorithms.ClosedFormLrMax``, or None: a search on the
    dense reachable system, exact, None when that system has more than MAX_SEARCH_STATES states).
    The closed forms:

    With H = G^T G (G = blkdiag(S_q^T R / sqrt(n_q)), K = R R^T) and a symmetric W with W + I > 0:
    DGD: A = W(x)I - alpha H is symmetric, its largest eigenvalue stays below 1 for every alpha > 0 and
    the smallest reaches -1 at alpha = 1 / lambda_max(G ((W + I)^-1 (x) I) G^T), an (M k) x (M k)
    problem with entries [(W + I)^-1]_{q(a) q(b)} K_ab / sqrt(n_q(a) n_q(b)). Exact.
    ATC / CTA: (W(x)I)(I - alpha H) and (I - alpha H)(W(x)I) have the same eigenvalues; one reaches -1 at
    alpha = 1 / lambda_max(G ((W + I)^-1 W (x) I) G^T), and both are stable below 2 / lambda_max(H)
    (then ||I - alpha H|| <= 1). If W >= 0 the eigenvalues are real and this is exact; otherwise a complex
    pair can leave the unit disc first, so the closed form is an upper bound, and ``verify`` finds the
    edge with dense eigenvalues of the reduced A (also used for a non-symmetric W).
    """
    rule = algorithm_record(algorithm).lr_max
    W = np.asarray(kp.W, dtype=float)
    if rule is None:
        return float(_verified(kp, algorithm, float("inf"))) if reduced_states(kp, algorithm) <= MAX_SEARCH_STATES else None
    if not np.allclose(W, W.T, rtol=0, atol=1e-12):
        return _verified(kp, algorithm, float("inf"))
    if np.linalg.eigvalsh(W)[0] <= -1 + 1e-12:
        return 0.0  # W has the eigenvalue -1: the mixing alone does not contract
    top = _top_eig(_agent_weighted_kernel(kp, rule.weights(W)))
    candidate = 1.0 / top if top > 0 else float("inf")
    if rule.local_floor:
        candidate = max(candidate, 2.0 / _top_local(kp))
    if verify and not rule.exact(W):
        return _verified(kp, algorithm, candidate)
    return candidate


def operator_lr_max(op, algorithm: str) -> float | None:
    """``lr_max`` of a structured kernel operator (``predictor.kernel_operators``), matrix-free.

    The same closed forms: lambda_max of x -> D^-1/2 apply((V (x) I) adjoint(D^-1/2 x)), D = diag(n_q), by
    Lanczos on one output column (every column shares the kernel), and 2 / lambda_max(H) as ATC/CTA's
    floor with V = I. None where the rule needs a dense search (GT, a non-symmetric W).
    """
    rule = algorithm_record(algorithm).lr_max
    W = np.asarray(op.data.W, dtype=float)
    if rule is None or not np.allclose(W, W.T, rtol=0, atol=1e-12):
        return None
    if np.linalg.eigvalsh(W)[0] <= -1 + 1e-12:
        return 0.0
    top = _top_operator_eig(op, rule.weights(W))
    candidate = 1.0 / top if top > 0 else float("inf")
    if rule.local_floor:
        candidate = max(candidate, 2.0 / _top_operator_eig(op, np.eye(len(W))))
    return candidate


def _top_operator_eig(op, V: np.ndarray) -> float:
    """lambda_max of the agent-weighted kernel D^-1/2 S^T K S (V (x) I) D^-1/2 on one output column."""
    # one output column: a structured operator's rows are samples, the exact one's are vec outputs
    op, stride = (op.column(), op.data.k) if hasattr(op, "column") else (op, 1)
    data = op.data
    valid = data.agent_rows()[1][:, ::stride]
    scale = valid / np.sqrt(data.counts)[:, None]
    shape = scale.shape

    def matvec(x: np.ndarray) -> np.ndarray:
        coeffs = op.adjoint(x.reshape(shape) * scale)
        return (op.apply(V @ coeffs) * scale).ravel()

    n = scale.size
    if n <= DENSE_EIGH:
        S = np.column_stack([matvec(e) for e in np.eye(n)])
        return _top_eig(0.5 * (S + S.T))
    # a float32 kernel's products carry ~1e-7 rounding: the residual cannot shrink far below it, and the
    # eigenvalue's error is about residual^2 / gap, so 100 eps stops at the float32 kernel's own accuracy
    return top_eigenvalue(matvec, n, tol=max(LANCZOS_TOL, 100 * np.finfo(getattr(op, "dtype", np.float64)).eps))


def lr_max_exact(W: np.ndarray) -> dict[str, bool]:
    """Whether ``lr_max(..., verify=False)`` is exact for each algorithm, or only an upper bound."""
    return {name: True if alg.lr_max is None else bool(alg.lr_max.exact(W)) for name, alg in ALGORITHMS.items()}


def _top_local(kp: KernelProblem) -> float:
    """max_q lambda_max(K_qq / n_q) = lambda_max(H)."""
    idx, valid, K_own = kp.own
    return max(_top_eig(K_own[q][:, idx[q][valid[q]]][valid[q]] / kp.counts[q]) for q in range(kp.N))


def _verified(kp: KernelProblem, algorithm: str, upper: float, rel: float = 1e-6, grid: int = 8) -> float:
    """The first alpha with rho(A(alpha)) >= 1, from dense eigenvalues of the reduced A.

    The search starts at 2 / lambda_max(H) (stable for ATC/CTA; DGD starts at 0) and scans ``grid``
    points up to the closed-form ``upper``: if all are stable and rho >= 1 just above ``upper``, that is
    the answer. Otherwise the first unstable interval (found by doubling if needed) is bisected to ``rel``.
    """
    def unstable(alpha: float) -> bool:
        return spectral_radius(reduced_system(kp, algorithm, alpha)) >= 1

    rule = algorithm_record(algorithm).lr_max
    lo = 2.0 / _top_local(kp) if rule is not None and rule.local_floor else 0.0
    hi = upper * (1 - rel) if np.isfinite(upper) else 4 * max(lo, 1.0 / _top_local(kp))
    points = np.linspace(lo, hi, grid + 1)[1:]
    first = next((i for i, a in enumerate(points) if unstable(a)), None)
    if first is not None:
        lo, hi = (points[first - 1] if first else lo), points[first]
    elif np.isfinite(upper) and unstable(upper * (1 + rel)):
        return upper
    else:
        lo, hi = hi, 2 * hi
        while not unstable(hi):
            lo, hi = hi, 2 * hi
            if hi > 1e12:
                return float("inf")
    while hi - lo > rel * hi:
        mid = 0.5 * (lo + hi)
        lo, hi = (lo, mid) if unstable(mid) else (mid, hi)
    return lo


def lr_max_all(kp, verify: bool = False, include: tuple[str, ...] = (),
               only: tuple[str, ...] | None = None) -> dict[str, float | None]:
    """lr_max of every registered algorithm (or of those in ``only``), for a ``KernelProblem`` or a
    structured operator (then matrix-free, ``operator_lr_max``). Algorithms that share a closed-form rule
    share one value (ATC and CTA: their A's are similar). Dense searches run only with ``verify`` or if
    named in ``include``; otherwise their entry is absent."""
    def edge(name: str) -> float | None:
        return lr_max(kp, name, verify) if isinstance(kp, KernelProblem) else operator_lr_max(kp, name)

    out: dict[str, float | None] = {}
    by_rule: dict[int, float | None] = {}
    for name, alg in ALGORITHMS.items():
        if (alg.lr_max is None and not (verify or name in include)) or (only is not None and name not in only):
            continue
        key = id(alg.lr_max) if alg.lr_max is not None else id(name)
        if key not in by_rule:
            by_rule[key] = edge(name)
        out[name] = by_rule[key]
    return out


def minimality(system: ReducedSystem, factors: tuple | None = None, tol: float = 1e-8) -> dict:
    """Controllability of (A - I, B) and observability of (A - I, C_out) by the PBH eigenvector test.

    An eigenvalue cluster of A - I (size s, left eigenvectors L, right Q) is controllable iff rank(L B) = s
    and observable iff rank(C_out Q) = s; ranks count singular values above tol * the scale.
    ``factors`` = ``eigen_factors(system.A)`` if already computed. C_out gives each agent's outputs on its
    own data, the quantities its loss is made of.
    """
    lam, Q, Qi = factors if factors is not None else eigen_factors(system.A)
    LB, CQ = Qi @ system.B, system.C_out @ Q
    scale_b = tol * np.linalg.norm(system.B, 2) * np.linalg.norm(Qi, 2)
    scale_c = tol * np.linalg.norm(system.C_out, 2) * np.linalg.norm(Q, 2)
    free = np.ones(len(lam), dtype=bool)
    uncontrollable = unobservable = 0
    for i in range(len(lam)):
        if not free[i]:
            continue
        cluster = free & (np.abs(lam - lam[i]) <= 1e-9 * max(1.0, abs(lam[i])))
        free &= ~cluster
        s = int(cluster.sum())
        uncontrollable += s - int((np.linalg.svd(LB[cluster], compute_uv=False) > scale_b).sum())
        unobservable += s - int((np.linalg.svd(CQ[:, cluster], compute_uv=False) > scale_c).sum())
    return {"controllable": uncontrollable == 0, "observable": unobservable == 0,
            "minimal": uncontrollable == 0 and unobservable == 0,
            "uncontrollable_modes": uncontrollable, "unobservable_modes": unobservable, "states": len(lam)}


def stability_report(kp, algorithm: str, alpha: float) -> dict:
    """The ``p2pntk stability`` keys: doubly_stochastic, minimal, max_real_eig, spectral_radius, lr_max.

    max_real_eig is the largest real part of the eigenvalues of the reduced A - I (the flow's matrix;
    negative means the flow is asymptotically stable), spectral_radius is rho(A) at ``alpha``; both for
    ``algorithm``. The dense parts are skipped (None) when the reduced system has more than
    MAX_FLOW_STATES states, or when ``kp`` is a kernel operator rather than the matrix (a large swarm:
    ``predictor.kernel_operators.JacobianOperator``); lr_max is then the unverified closed form.
    """
    algorithm_record(algorithm)
    W = kp.W if isinstance(kp, KernelProblem) else kp.data.W
    report: dict = {"algorithm": algorithm, "lr": alpha, "doubly_stochastic": doubly_stochastic(W)}
    dense = isinstance(kp, KernelProblem) and reduced_states(kp, algorithm) <= MAX_FLOW_STATES
    if not dense:
        report.update(minimal=None, max_real_eig=None, spectral_radius=None, lr_max=lr_max_all(kp),
                      lr_max_exact=lr_max_exact(W))
        edge = report["lr_max"].get(algorithm)
        report["stable"] = None if edge is None else bool(alpha < edge)
        report["note"] = (f"reduced system larger than {MAX_FLOW_STATES} states: dense checks skipped"
                          if isinstance(kp, KernelProblem) else
                          f"{kp.data.Mk} outputs: lr_max from Jacobian products; the dense checks need the "
                          "kernel matrix and were skipped")
        return report
    system = reduced_system(kp, algorithm, alpha)
    factors = eigen_factors(system.A)
    eig = factors[0]
    report.update(minimality(system, factors))
    report.update(max_real_eig=float(eig.real.max() - 1.0), spectral_radius=float(np.abs(eig).max()),
                  lr_max=lr_max_all(kp, verify=True))
    report["stable"] = bool(report["spectral_radius"] < 1)
    return report
