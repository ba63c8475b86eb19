"""Forms of the kernel for the forecast at real sizes (docs/forecast-cost.md), all run by
``predictor.dynamics.operator_rounds``: the exact kernel as Jacobian products, K = J J^T in parameter
coordinates (``JacobianOperator``, never a matrix); the output-layer kernel plus the hidden layers'
output-traced kernel spread by the readout, F_out (x) I_k + Theta_h (x) Omega (exact for the affine model and
for one output); and the landmark (Nystrom) factor of the output-traced kernel, Phi Phi^T (x) I_k.
"""
from __future__ import annotations

import copy

import numpy as np

from agent.model import Linearisation, ModelConfig, forward, unflatten
from agent.swarm import Swarm
from predictor.dynamics import SwarmData
from predictor.ntk import DEFAULT_MAX_BYTES, kernel_columns, train_test_ntk

LANDMARK_RTOL = 1e-8  # eigenvalues of K_LL below this fraction of the largest are dropped from the Nystrom factor


class FactoredOperator:
    """K = sum_t B_t B_t'^T (x) Omega_t as an operator: each term a sample kernel times an output mixing.

    ``terms`` is a list of (own (N, m, D), test (T, D), Omega (k, k) or None for I_k): agent q's rows and the
    test rows of the term's sample kernel. Two coordinate systems: ``scatter`` True: c-coordinates, B' = S
    (own[q] = Theta[X_q, X], D = M, and a gradient lands on agent q's own samples); False: feature
    coordinates with one term, B' = B (own[q] = Phi[X_q], D = L features, and a gradient is Phi_q^T times
    the residual). A state row is (D, k) row-major; a vector of outputs is (m, k) row-major, the vec layout
    of ``SwarmData``. ``basis`` = (samples, T_c): the state's c-coefficients live on those training
    samples, c = T_c z (None: the state is c).

    The terms are stored one above the other, own (N, terms m, D) and test (terms T, D), in the kernel's
    dtype, and each term's mixing Omega_t acts on its outputs ((Theta X) Omega = Theta (X Omega)): a round is
    one batched product that reads the kernel once. That read is the round's cost, so a float32 kernel (the
    board default) halves it; the state and the outputs stay float64, and the products' float32 rounding
    (~1e-6 of an output) is far below what the kernel's form itself changes.
    """

    def __init__(self, data: SwarmData, terms: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]],
                 scatter: bool, basis: tuple[np.ndarray, np.ndarray] | None = None, dtype=None) -> None:
        self.data, self.scatter, self.basis = data, scatter, basis
        self.dtype = np.dtype(dtype or terms[0][0].dtype)
        self.D = terms[0][0].shape[2]
        self.mixings = [Om for _, _, Om in terms]
        self.columns = self.mixings[0].shape[0] if self.mixings[0] is not None else data.k
        self.width = self.D * self.columns
        self.own = _stacked([own for own, _, _ in terms], 1, self.dtype)
        self.test = _stacked([test for _, test, _ in terms], 0, self.dtype)
        idx, valid = data.agent_rows()
        self._samples = np.where(valid[:, ::data.k], idx[:, ::data.k] // data.k, len(data.Y))

    def column(self) -> FactoredOperator:
        """The operator on one output column whose kernel has the largest eigenvalues: every Omega_t
        replaced by its top eigenvalue (the Omega_t here are I and one PSD matrix, so the top of
        sum_t Theta_t (x) Omega_t is that of sum_t omega_t Theta_t). ``stability.operator_lr_max`` uses it."""
        def top(Om: np.ndarray | None) -> np.ndarray:
            return np.ones((1, 1)) if Om is None else np.linalg.eigvalsh(Om)[-1:].reshape(1, 1)
        out = copy.copy(self)  # shares the stored kernel; only the mixings and the width differ
        out.mixings, out.columns, out.width = [top(Om) for Om in self.mixings], 1, self.D
        return out

    def _mixed(self, out: np.ndarray, axis: int) -> np.ndarray:
        """sum_t (term t's block of ``out`` along ``axis``) Omega_t, in float64."""
        blocks = np.split(out, len(self.mixings), axis=axis)
        total = 0.0
        for block, Om in zip(blocks, self.mixings):
            total = total + (block if Om is None else block @ Om.astype(self.dtype))
        return np.asarray(total, dtype=np.float64)

    def apply(self, C: np.ndarray) -> np.ndarray:
        """S_q^T K c_q for every agent: (N, D c) -> (N, m c), c output columns."""
        N = C.shape[0]
        out = self.own @ C.reshape(N, self.D, -1).astype(self.dtype)
        return self._mixed(out, axis=1).reshape(N, -1)

    def adjoint(self, R: np.ndarray) -> np.ndarray:
        """The coefficients of S_q R_q: (N, m c) -> (N, D c); padding rows of ``own`` are zero."""
        N, m = self.own.shape[0], self.own.shape[1] // len(self.mixings)
        R3 = R.reshape(N, m, -1)
        if not self.scatter:
            return (self.own.transpose(0, 2, 1) @ R3.astype(self.dtype)).reshape(N, -1).astype(np.float64)
        G = np.zeros((N, self.D + 1, R3.shape[2]), dtype=R.dtype)
        G[np.arange(N)[:, None], self._samples] = R3
        return G[:, :-1].reshape(N, -1)

    def apply_test(self, C: np.ndarray) -> np.ndarray:
        """K(X_test, X) c_q for every agent, one product for the whole swarm: (N, D k) -> (N, T k)."""
        N = C.shape[0]
        Z = np.empty((self.D, N, C.shape[1] // self.D), self.dtype)  # one (D, N k) matrix: one large product
        Z[...] = C.reshape(N, self.D, -1).transpose(1, 0, 2)
        out = (self.test @ Z.reshape(self.D, -1)).reshape(len(self.test), N, -1)  # (terms T, N, k)
        return self._mixed(out, axis=0).transpose(1, 0, 2).reshape(N, -1)

    def coefficients(self, C: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(samples, c): v_q = J(X[samples])^T c_q, c (N, len(samples) k), for theta_q = theta_0 + v_q."""
        N, k = C.shape[0], self.data.k
        if self.basis is None:
            return np.arange(len(self.data.Y)), C
        samples, T_c = self.basis
        return samples, (T_c @ C.reshape(N, self.D, k)).reshape(N, -1)


class JacobianOperator:
    """The exact kernel K = J J^T as products, in parameter coordinates: agent q's state row is
    v_q = theta_q - theta_0 (P,), so apply is J_q v_q on its own samples, adjoint J_q^T R_q (the gradient
    itself) and apply_test J(X_test) v. A round costs one forward- and one reverse-mode pass over every
    agent's own samples (``agent.model.Linearisation``, batched over agents): it grows with M P, where the
    kernel matrix grows with (M k)^2, and it needs no kernel at all. Exact, like ``ExactOperator``; in
    float32 (the board default) its products round at ~1e-6 of an output.
    """

    def __init__(self, swarm: Swarm, dtype=np.float64) -> None:
        p, cfg = swarm.problem, swarm.cfg
        self.theta0, self.dtype = swarm.theta0, np.dtype(dtype)
        self.test = Linearisation(cfg, swarm.theta0, p.X_test, dtype)
        f0 = forward(cfg, np.asarray(swarm.theta0, dtype), p.X_train)
        self.data = _data(swarm, f0, self.test.outputs)
        idx, valid = self.data.agent_rows()
        k = self.data.k
        samples, self._valid = idx[:, ::k] // k, valid[:, ::k]
        X_own = np.vstack([p.X_train, np.zeros((1, p.X_train.shape[1]), p.X_train.dtype)])[samples]
        self.own = Linearisation(cfg, swarm.theta0, X_own, dtype)  # (N, m, d): padding rows are zeros
        self.width, self.columns = cfg.num_params, 1

    def apply(self, V: np.ndarray) -> np.ndarray:
        """S_q^T K c_q = J_q v_q for every agent: (N, P) -> (N, m k), zero on padding."""
        out = self.own.jvp(V) * self._valid[:, :, None]
        return out.reshape(len(V), -1).astype(np.float64)

    def adjoint(self, R: np.ndarray) -> np.ndarray:
        """J_q^T R_q: (N, m k) -> (N, P); padding entries of R are zero."""
        return self.own.vjp(R.reshape(len(R), self._valid.shape[1], -1)).astype(np.float64)

    def apply_test(self, V: np.ndarray) -> np.ndarray:
        """J(X_test) v for every row of V (B, P): (B, T k). Linearisation works through the rows in
        cache-sized groups, so B (16 rounds of every agent) costs no more memory than a few rows."""
        return self.test.jvp(V).reshape(len(V), -1).astype(np.float64)

    def parameters(self, V: np.ndarray) -> np.ndarray:
        """theta_q = theta_0 + v_q: (N, P)."""
        return np.asarray(self.theta0, np.float64) + V


def _stacked(arrays: list[np.ndarray], axis: int, dtype) -> np.ndarray:
    """The arrays concatenated along ``axis``, in ``dtype`` (one array: as it is, if already so)."""
    if len(arrays) == 1:
        return arrays[0].astype(dtype, copy=False)
    return np.concatenate([a.astype(dtype, copy=False) for a in arrays], axis=axis)


def _data(swarm: Swarm, f0: np.ndarray, f0_test: np.ndarray) -> SwarmData:
    p = swarm.problem
    return SwarmData(f0=f0.astype(np.float64), f0_test=f0_test.astype(np.float64), Y=p.Y_train.astype(np.float64),
                     Y_test=p.Y_test.astype(np.float64), agent_of_sample=p.agent_of_sample, W=swarm.W)


def _own_rows(data: SwarmData, rows: np.ndarray) -> np.ndarray:
    """rows[X_q] for every agent, (N, m, D), zero on padding."""
    idx, valid = data.agent_rows()
    k = data.k
    padded = np.vstack([rows, np.zeros((1, rows.shape[1]), rows.dtype)])
    return padded[np.where(valid[:, ::k], idx[:, ::k] // k, len(rows))]


def readout_mixing(cfg: ModelConfig, theta: np.ndarray) -> np.ndarray:
    """Omega = k W_out^T W_out / tr(W_out^T W_out) (k, k): how the hidden layers' kernel couples the outputs
    on average over the units (trace k; I_k in the limit of infinite width)."""
    W_out = unflatten(cfg, np.asarray(theta, dtype=np.float64))[-2]
    G = W_out.T @ W_out
    return G * (cfg.k / np.trace(G))


def traced_operator(swarm: Swarm, max_bytes: int = DEFAULT_MAX_BYTES, dtype=np.float64) -> FactoredOperator:
    """K ~ F_out (x) I_k + Theta_hidden (x) Omega in c-coordinates: the output layer's part is exact, and the
    hidden layers' output-traced kernel is spread over the outputs by the readout's ``readout_mixing``.
    Exact for one output and for the affine model (no hidden layers)."""
    p, cfg = swarm.problem, swarm.cfg
    Theta, Theta_test, f0, f0_test = train_test_ntk(cfg, swarm.theta0, p.X_train, p.X_test, max_bytes=max_bytes,
                                                    dtype=dtype, traced=True)
    data = _data(swarm, f0, f0_test)
    if cfg.hidden_layers == 0 or cfg.k == 1:
        return FactoredOperator(data, [(_own_rows(data, Theta), Theta_test, None)], scatter=True)
    F, F_test, _, _ = train_test_ntk(cfg, swarm.theta0, p.X_train, p.X_test, max_bytes=max_bytes, dtype=dtype,
                                     traced="output")
    Theta -= F
    Theta_test -= F_test
    return FactoredOperator(data, [(_own_rows(data, F), F_test, None),
                                   (_own_rows(data, Theta), Theta_test, readout_mixing(cfg, swarm.theta0))],
                            scatter=True)


def landmarks(agent_of_sample: np.ndarray, count: int, seed: int) -> np.ndarray:
    """``count`` training samples, as evenly spread over the agents as their sizes allow, seeded; sorted."""
    rng = np.random.default_rng([seed, 7727])
    M = len(agent_of_sample)
    if count >= M:
        return np.arange(M)
    order = rng.permutation(M)
    # round-robin over agents in a random order within each: every agent gives count / N landmarks
    rank = np.empty(M, dtype=np.int64)
    for q in np.unique(agent_of_sample):
        mine = order[agent_of_sample[order] == q]
        rank[mine] = np.arange(len(mine))
    chosen = order[np.argsort(rank[order], kind="stable")[:count]]
    return np.sort(chosen)


def landmark_operator(swarm: Swarm, count: int, max_bytes: int = DEFAULT_MAX_BYTES, dtype=np.float64,
                      seed: int = 0) -> FactoredOperator:
    """The Nystrom factor of the output-traced kernel on ``count`` landmark samples, in feature coordinates.

    Theta ~ Theta_XL Theta_LL^+ Theta_LX = Phi Phi^T with Phi = Theta_XL U Lambda^-1/2 (Theta_LL = U Lambda
    U^T, eigenvalues below LANDMARK_RTOL lambda_max dropped). Exact when the landmarks span the kernel's row
    space; otherwise an approximation whose error docs/forecast-cost.md measures.
    """
    p = swarm.problem
    chosen = landmarks(p.agent_of_sample, count, seed)
    X_all = np.concatenate([p.X_train, p.X_test])
    cols, f_all = kernel_columns(swarm.cfg, swarm.theta0, X_all, p.X_train[chosen], max_bytes=max_bytes,
                                 dtype=dtype, traced=True)
    cols = cols.astype(np.float64, copy=False)
    lam, U = np.linalg.eigh(cols[chosen])
    keep = lam > LANDMARK_RTOL * lam[-1]
    T_c = U[:, keep] / np.sqrt(lam[keep])
    Phi = cols @ T_c
    M = len(p.X_train)
    data = _data(swarm, f_all[:M], f_all[M:])
    return FactoredOperator(data, [(_own_rows(data, Phi[:M]), Phi[M:], None)], scatter=False, basis=(chosen, T_c),
                            dtype=dtype)
