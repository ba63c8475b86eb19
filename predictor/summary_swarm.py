"""Board q's swarm built from the summaries it received (agent.summaries): q holds its real samples, board r
with a summary holds its pseudo-samples (rows S_r = U_r^T J_r, targets b_r), and a board without one falls
back to the replica assumption of ``predictor.local_forecast``. Every kernel entry is a dot product of q's
own Jacobian and the received rows (docs/predictor.md, "Summaries").

Weights: the dynamics divide agent r's gradient by its sample count (here the count c_r of pseudo-samples),
while r's real gradient is S_r^T (S_r v - b_r) / n_r; rows and targets are therefore scaled by
a_r = sqrt(c_r / n_r), which makes the two equal with no change to ``predictor.dynamics``.
"""
from __future__ import annotations

import numpy as np

from agent.summaries import MIN_MIX, Summary, class_labels
from common.errors import UserError
from predictor.dynamics import KernelProblem


def class_means(summaries: dict[int, Summary], J_q: np.ndarray, Y_q: np.ndarray, res_q: np.ndarray
                ) -> dict[int, tuple[np.ndarray, float]]:
    """{c k + j: (mean gradient of output j over class c's samples (P,), mean residual y - f0)} pooled over
    q's own samples and every class row received (row = sqrt(n_c) g_c, target = sqrt(n_c) (y_c - mean f0))."""
    k = Y_q.shape[1]
    sums: dict[int, list] = {}
    labels = class_labels(Y_q)
    for c in np.unique(labels):
        g = np.flatnonzero(labels == c)
        for j in range(k):
            sums[c * k + j] = [J_q[g * k + j].sum(axis=0), float(res_q[g * k + j].sum()), len(g)]
    for s in summaries.values():
        for row, b, tag in zip(s.rows, s.targets, s.row_label):
            if tag >= 0:
                n_c = s.class_counts[tag // k]
                acc = sums.setdefault(int(tag), [np.zeros(J_q.shape[1]), 0.0, 0])
                acc[0] = acc[0] + np.sqrt(n_c) * row
                acc[1] += np.sqrt(n_c) * b
                acc[2] += n_c
    return {t: (g / n, r / n) for t, (g, r, n) in sums.items() if n}


def completed_rows(s: Summary, means: dict[int, tuple[np.ndarray, float]]) -> tuple[np.ndarray, np.ndarray]:
    """Board r's rows and targets with its small classes filled in: a class with 0 < n_c < min_mix samples
    is shared only as a count, so it gets the pooled class mean, sqrt(n_c) g_c and sqrt(n_c) (y_c - f0_c)
    (summaries with class rows only; an eigen summary is used as it is)."""
    rows, targets = [s.rows], [s.targets]
    if s.kind != "eigen":
        k = s.k
        for c, n_c in enumerate(s.class_counts):
            if 0 < n_c < s.meta.get("min_mix", MIN_MIX):
                for j in range(k):
                    if c * k + j in means:
                        g, r = means[c * k + j]
                        rows.append(np.sqrt(n_c) * g[None]), targets.append(np.array([np.sqrt(n_c) * r]))
    return np.concatenate(rows), np.concatenate(targets)


def pseudo_samples(rows: np.ndarray, targets: np.ndarray, n: int, k: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(a S (c k, P), a b (c, k), c): the m rows padded with zero rows to c k = k ceil(m / k) outputs (a zero
    row adds nothing to a gradient), scaled by a = sqrt(c / n)."""
    m = len(targets)
    c = max(-(-m // k), 1)
    S = np.zeros((c * k, rows.shape[1]))
    S[:m] = rows
    b = np.zeros(c * k)
    b[:m] = targets
    a = np.sqrt(c / n)
    return a * S, (a * b).reshape(c, k), c


def summary_problem(q: int, W: np.ndarray, J_q: np.ndarray, J_test: np.ndarray, K: np.ndarray, K_test: np.ndarray,
                    f0: np.ndarray, f0_test: np.ndarray, Y: np.ndarray, Y_test: np.ndarray,
                    summaries: dict[int, Summary], replicas: dict[int, np.ndarray], replica_Y: np.ndarray,
                    shared_root: np.ndarray, shared: np.ndarray) -> KernelProblem:
    """The dense ``KernelProblem`` of q's swarm.

    J_q (n k, P), J_test (T k, P): q's Jacobians; K = J_q J_q^T and K_test = J_test J_q^T; f0, Y (n, k) and
    f0_test, Y_test: q's outputs and targets. ``summaries``: {r: Summary} for boards r != q; ``replicas``: {r:
    sample indices into q's data} for the others, with targets ``replica_Y`` (n, k) (rho already applied).
    The replica model's cross-agent kernel is C = ``shared`` (n k, n k), the shared part of K, and
    ``shared_root`` P_sh (n k, n k) maps q's Jacobian to its shared features (P_sh K P_sh^T = C).
    """
    N, k = W.shape[0], Y.shape[1]
    bad = [r for r in summaries if not 0 <= r < N or r == q]
    if bad:
        raise UserError(f"summaries for boards {bad}: the swarm has boards 0..{N - 1} and this board is {q}")
    for r, s in summaries.items():
        if s.rows.shape[1] != J_q.shape[1] or s.k != k:
            raise UserError(f"summary of board {r}: {s.rows.shape[1]} parameters and k = {s.k}, this model has "
                            f"{J_q.shape[1]} and k = {k}")
    means = class_means(summaries, J_q, Y, (Y - f0).ravel())
    pseudo = {r: pseudo_samples(*completed_rows(s, means), s.n, k) for r, s in summaries.items()}
    S = np.concatenate([pseudo[r][0] for r in sorted(pseudo)] or [np.zeros((0, J_q.shape[1]))])
    cols = {}
    start = 0
    for r in sorted(pseudo):
        cols[r] = np.arange(start, start + len(pseudo[r][0]))
        start += len(pseudo[r][0])
    Z, Z_test, SS = J_q @ S.T, J_test @ S.T, S @ S.T       # q-to-pseudo, test-to-pseudo, pseudo-to-pseudo
    Z_sh = shared_root @ Z                                  # a replica's shared features against the pseudo rows

    def vec(idx: np.ndarray) -> np.ndarray:
        return (idx[:, None] * k + np.arange(k)).ravel()

    # each agent's block: ("own" | "pseudo" | "replica", output indices into its source)
    blocks = []
    for r in range(N):
        if r == q:
            blocks.append(("own", np.arange(len(Y) * k)))
        elif r in pseudo:
            blocks.append(("pseudo", cols[r]))
        elif r in replicas:
            blocks.append(("replica", vec(replicas[r])))
        else:
            raise UserError(f"board {r} has neither a summary nor a replica")

    def cross(a, b, same: bool) -> np.ndarray:
        (ka, ia), (kb, ib) = a, b
        if ka == "pseudo" and kb == "pseudo":
            return SS[np.ix_(ia, ib)]
        if ka == "pseudo":
            return cross(b, a, same).T
        if kb == "pseudo":
            return (Z if ka == "own" else Z_sh)[np.ix_(ia, ib)]
        if same or (ka == "own" and kb == "own"):
            return K[np.ix_(ia, ib)]
        return shared[np.ix_(ia, ib)]

    Kfull = np.block([[cross(a, b, i == j) for j, b in enumerate(blocks)] for i, a in enumerate(blocks)])
    test = [K_test[:, ix] if kind != "pseudo" else Z_test[:, ix] for kind, ix in blocks]
    f0s, Ys, owner = [], [], []
    for r, (kind, ix) in enumerate(blocks):
        if kind == "own":
            f0s.append(f0), Ys.append(Y)
        elif kind == "pseudo":
            f0s.append(np.zeros_like(pseudo[r][1])), Ys.append(pseudo[r][1])
        else:
            f0s.append(f0[replicas[r]]), Ys.append(replica_Y[replicas[r]])
        owner.append(np.full(len(Ys[-1]), r))
    return KernelProblem(K=Kfull, K_test=np.concatenate(test, axis=1), f0=np.concatenate(f0s), f0_test=f0_test,
                         Y=np.concatenate(Ys), Y_test=Y_test, agent_of_sample=np.concatenate(owner), W=W)
