"""The linearised dynamics of every registered algorithm in kernel space (docs/design.md, section 5):
exact discrete rounds through ``agent.algorithms.swarm_step`` and the paper's gradient flow with
Phi(t, t0) in closed form, from each algorithm's ``linearised`` form. Arrays in, arrays out: the
kernel problem below holds everything the linear systems need.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from agent.algorithms import swarm_step, algorithm_record
from agent.local import batch_indices
from common.errors import UserError

MAX_FLOW_STATES = 6000  # N * rank(K) above this: the dense closed form costs too much; use discrete rounds
RTOL = 1e-10            # eigenvalues of K below RTOL * lambda_max span the null space of J^T (dropped)
TEST_CHUNK = 16         # rounds whose test outputs operator_rounds computes in one product


@dataclass(frozen=True)
class SwarmData:
    """What every form of the linearised swarm shares: outputs at theta_0, targets, owners and W.

    f0 (M, k) and f0_test (T, k) the outputs at theta_0, Y (M, k) and Y_test (T, k) the targets,
    agent_of_sample (M,) and W (N, N) the mixing matrix. Vectors of outputs are row-major: entry i*k + j
    is output j of sample i.
    """

    f0: np.ndarray
    f0_test: np.ndarray
    Y: np.ndarray
    Y_test: np.ndarray
    agent_of_sample: np.ndarray
    W: np.ndarray

    def __post_init__(self) -> None:
        M, k = self.Y.shape
        T = self.Y_test.shape[0]
        for name, shape in self._shapes(M, k, T).items():
            if getattr(self, name).shape != shape:
                raise ValueError(f"{type(self).__name__}.{name} has shape {getattr(self, name).shape}, expected {shape}")
        if np.any(self.counts == 0):
            raise UserError(f"agents {np.flatnonzero(self.counts == 0).tolist()} have no training samples")

    def _shapes(self, M: int, k: int, T: int) -> dict[str, tuple[int, ...]]:
        return {"f0": (M, k), "f0_test": (T, k), "agent_of_sample": (M,), "W": (self.N, self.N)}

    @property
    def N(self) -> int:
        return self.W.shape[0]

    @property
    def k(self) -> int:
        return self.Y.shape[1]

    @property
    def Mk(self) -> int:
        return self.Y.size

    @cached_property
    def counts(self) -> np.ndarray:
        """n_q, the number of training samples of each agent, (N,)."""
        return np.bincount(self.agent_of_sample, minlength=self.N)

    @cached_property
    def residual0(self) -> np.ndarray:
        """r0 = vec(f0 - Y), (M k,)."""
        return (self.f0 - self.Y).ravel()

    def padded(self, v: np.ndarray) -> np.ndarray:
        """A vector over the M k outputs with a trailing 0, so that indexing by padded indices gives 0."""
        return np.append(v, 0.0)

    def agent_rows(self, samples: list[np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(idx, valid), both (N, m): the vec indices of each agent's outputs, padded to a common m.

        ``samples[q]`` picks a subset of agent q's own samples (a minibatch; positions within the agent);
        None takes them all. Padding entries have valid False and index M k (one past the end).
        """
        if samples is None:
            return self._all_rows
        return self._rows(samples)

    @cached_property
    def _all_rows(self) -> tuple[np.ndarray, np.ndarray]:
        return self._rows(None)

    def _rows(self, samples: list[np.ndarray] | None) -> tuple[np.ndarray, np.ndarray]:
        k, own = self.k, [np.flatnonzero(self.agent_of_sample == q) for q in range(self.N)]
        if samples is not None:
            own = [o[s] for o, s in zip(own, samples)]
        m = max(len(o) for o in own) * k
        idx = np.full((self.N, m), self.Mk, dtype=np.int64)
        for q, o in enumerate(own):
            idx[q, :len(o) * k] = (o[:, None] * k + np.arange(k)).ravel()
        return idx, idx < self.Mk

    @cached_property
    def own_f0(self) -> np.ndarray:
        """S_q^T f0 for every agent, (N, m), zero on padding."""
        return self.padded(self.f0.ravel())[self.agent_rows()[0]]


@dataclass(frozen=True)
class KernelProblem(SwarmData):
    """The linearised swarm in kernel space: the full empirical NTK K (M k, M k) = J J^T on the training
    set and K_test (T k, M k) = J(X_test) J^T, with the ``SwarmData``.
    """

    K: np.ndarray
    K_test: np.ndarray

    def _shapes(self, M: int, k: int, T: int) -> dict[str, tuple[int, ...]]:
        return {"K": (M * k, M * k), "K_test": (T * k, M * k), **super()._shapes(M, k, T)}

    @cached_property
    def basis(self) -> tuple[np.ndarray, np.ndarray]:
        """(R, R_inv) of ``reduced_basis(K)``, computed once."""
        return reduced_basis(self.K)

    @cached_property
    def own(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(idx, valid, K_own): K_own[q] = S_q^T K, agent q's rows of K, (N, m, M k), zero on padding."""
        idx, valid = self.agent_rows()
        return idx, valid, gather_rows(self.K, idx, valid)


def gather_rows(K: np.ndarray, idx: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """K[idx] with padding rows zeroed: (N, m, M k)."""
    return K[np.where(valid, idx, 0)] * valid[..., None]


def own_outputs(kp: KernelProblem, C: np.ndarray, KC: np.ndarray | None = None) -> np.ndarray:
    """f_q(X_q) = f0_q + S_q^T K c_q for every agent: C (..., N, M k) -> (..., N, m), zero on padding.

    Pass ``KC`` = S_q^T K c_q if already computed.
    """
    return ((kp.own[2] @ C[..., None])[..., 0] if KC is None else KC) + kp.own_f0


def outputs_on_test(kp: KernelProblem, C: np.ndarray) -> np.ndarray:
    """f_q(X_test) = f0_test + K(X_test, X) c_q: C (..., N, M k) -> (..., N, T k)."""
    return C @ kp.K_test.T + kp.f0_test.ravel()


class ExactOperator:
    """The full kernel as an operator for ``operator_rounds``: agent q's rows S_q^T K (gathered once), state
    c_q (M k,) per agent. The other forms (output-traced, landmarks, the replica swarm) live in
    ``predictor.kernel_operators`` and ``predictor.local_forecast`` with the same four members.
    """

    def __init__(self, kp: KernelProblem) -> None:
        self.data, self.kp, self.width, self.columns = kp, kp, kp.Mk, 1  # rows are vec outputs

    def apply(self, C: np.ndarray) -> np.ndarray:
        """S_q^T K c_q for every agent: C (N, M k) -> (N, m), zero on padding."""
        return (self.kp.own[2] @ C[:, :, None])[..., 0]

    def adjoint(self, R: np.ndarray) -> np.ndarray:
        """S_q R_q for every agent: (N, m) -> (N, M k); padding entries are dropped."""
        G = np.zeros((R.shape[0], self.width + 1), dtype=R.dtype)
        G[np.arange(R.shape[0])[:, None], self.kp.agent_rows()[0]] = R
        return G[:, :-1]

    def apply_test(self, C: np.ndarray) -> np.ndarray:
        """K(X_test, X) c_q for every agent: (N, M k) -> (N, T k)."""
        return C @ self.kp.K_test.T


class OperatorGradient:
    """grad_all for ``swarm_step`` in the operator's coordinates: row q = adjoint(S_q^T K c_q + f0_q - y_q) / n_q.

    (grad L_q(theta_0 + J^T c_q) = J^T S_q (...) / n_q, so every gradient, and every tracker built from
    gradients, stays in the row space of J and is carried by its coefficients.)

    With a minibatch size, only the round's batch (``agent.local.batch_indices``, the same draw as the real
    learners) counts and n_q is the batch size. Set ``round`` before each step.
    """

    def __init__(self, op, batch: int | str = "full", seed: int = 0) -> None:
        data = op.data
        self.op, self.batch, self.seed, self.round = op, batch, seed, 0
        self._full = batch == "full" or int(batch) >= data.counts.max()
        idx, valid = data.agent_rows()
        self._r0 = data.padded(data.residual0)[idx]  # 0 on padding
        self._weights = valid / data.counts[:, None]
        self._last: tuple[np.ndarray, np.ndarray] | None = None

    def weights(self) -> np.ndarray:
        """1 / n_q on the outputs of this round's samples, 0 elsewhere: (N, m)."""
        if self._full:
            return self._weights
        data, k = self.op.data, self.op.data.k
        out = np.zeros_like(self._weights)
        for q, n in enumerate(data.counts):
            pick = batch_indices(int(n), self.batch, self.seed, q, self.round)
            pick = np.arange(n) if pick is None else pick
            out[q, (pick[:, None] * k + np.arange(k)).ravel()] = 1.0 / len(pick)
        return out

    def __call__(self, C: np.ndarray) -> np.ndarray:
        return self.op.adjoint((self.products(C) + self._r0) * self.weights())

    def products(self, C: np.ndarray) -> np.ndarray:
        """S_q^T K c_q for every agent, (N, m); the last product is reused for the same C."""
        if self._last is None or self._last[0] is not C:
            self._last = (C, self.op.apply(C))
        return self._last[1]


def operator_rounds(op, algorithm: str, alpha: float, rounds: int, *, batch: int | str = "full", seed: int = 0,
                    keep: tuple[int, ...] = ()) -> tuple[np.ndarray, np.ndarray, dict[int, np.ndarray]]:
    """The linearised rounds with the kernel as an operator (``ExactOperator`` or a structured form):
    state(k+1) = swarm_step(algorithm, W, state(k), gradient in the operator's coordinates, alpha).

    The state's first array C (N, op.width) holds agent q's coefficients in row q, from C(0) = 0
    (theta_q = theta_0); other arrays (GT's tracker) are coefficients too. This is v(k+1) = A v(k) + B u
    of docs/design.md section 5 without forming A. Returns (own, test, kept): each agent's outputs on its
    own data (rounds+1, N, m) and on the test set (rounds+1, N, T k), and C at the rounds in ``keep``.
    """
    alg, data = algorithm_record(algorithm), op.data
    grad = OperatorGradient(op, batch, seed)
    own = np.empty((rounds + 1, data.N, data.agent_rows()[0].shape[1]))
    test = np.empty((rounds + 1, data.N, data.f0_test.size))
    f0_test = data.f0_test.ravel()
    kept: dict[int, np.ndarray] = {}
    # test outputs for TEST_CHUNK rounds in one product: a few agents' rows at a time re-read K(X_test, X)
    # from memory every round (the exact kernel's is (T k, M k)), which cost more than the rounds themselves
    chunk, first = np.empty((min(TEST_CHUNK, rounds + 1), data.N, op.width)), 0
    with np.errstate(over="ignore", invalid="ignore"):
        state = alg.init(np.zeros((data.N, op.width)), grad)
        for r in range(rounds + 1):
            C = state[0]
            own[r] = grad.products(C) + data.own_f0
            chunk[r - first] = C
            if r - first + 1 == len(chunk) or r == rounds:
                done = r - first + 1
                test[first:r + 1] = op.apply_test(chunk[:done].reshape(done * data.N, -1)).reshape(
                    done, data.N, -1) + f0_test
                first = r + 1
            if r in keep:
                kept[r] = C.copy()
            if r < rounds:
                grad.round = r
                state = swarm_step(alg, data.W, state, grad, alpha)
    return own, test, kept


def discrete_rounds(kp: KernelProblem, algorithm: str, alpha: float, rounds: int, *,
                    batch: int | str = "full", seed: int = 0, keep: tuple[int, ...] = ()
                    ) -> tuple[np.ndarray, np.ndarray, dict[int, np.ndarray]]:
    """The exact linearised rounds on the full kernel: ``operator_rounds`` of ``ExactOperator(kp)``.

    C (N, M k) holds c_q in row q (v_q = J^T c_q); see ``own_outputs`` for the layout of own.
    """
    return operator_rounds(ExactOperator(kp), algorithm, alpha, rounds, batch=batch, seed=seed, keep=keep)


@dataclass(frozen=True)
class ReducedSystem:
    """z(k+1) = A z(k) + B u in reduced kernel coordinates z_q = Sigma U^T c_q, with K = U Sigma^2 U^T.

    R = U Sigma (M k, r) and R_inv = U Sigma^-1 map between z and c (c_q = R_inv z_q, K c_q = R z_q);
    u = y - f0 (M k,), B (n, M k), X (N r, n) picks the theta part x = X z of the state (the identity
    for one-message algorithms; GT's state also holds its tracking error), and the output
    C_out (N m, n) gives each agent's own outputs. Every mode is one of v = J^T c: the null space of K,
    whose modes are marginal, is gone, and so are modes the input can never reach (GT's invariant).
    """

    A: np.ndarray
    B: np.ndarray
    u: np.ndarray
    C_out: np.ndarray
    R: np.ndarray
    R_inv: np.ndarray
    X: np.ndarray


def reduced_basis(K: np.ndarray, rtol: float = RTOL) -> tuple[np.ndarray, np.ndarray]:
    """(R, R_inv) with R R^T = K restricted to the eigenvalues above rtol * lambda_max."""
    lam, U = np.linalg.eigh(K)
    keep = lam > rtol * max(lam[-1], 0.0)
    root = np.sqrt(lam[keep])
    return U[:, keep] * root, U[:, keep] / root


def reduced_system(kp: KernelProblem, algorithm: str, alpha: float) -> ReducedSystem:
    """A and B of docs/design.md section 5 in reduced coordinates, with H_q = G_q^T G_q / n_q, G_q = S_q^T R.

    The algorithm's record gives them from W (x) I, H and B0 (block row q of B0 = G_q^T S_q^T / n_q;
    the gradient is H x - B0 u). DGD: A = W(x)I - alpha H,  ATC: A = (W(x)I)(I - alpha H),
    CTA: A = (I - alpha H)(W(x)I); GT: see ``agent.algorithms``.
    """
    import scipy.linalg as sl  # scipy only where it is used: its import is a third of a whole predict run
    alg = algorithm_record(algorithm)
    R, R_inv = kp.basis
    idx, valid = kp.agent_rows()
    N, r = kp.N, R.shape[1]
    G = np.append(R, np.zeros((1, r)), axis=0)[idx]  # (N, m, r), zero on padding
    n = kp.counts.astype(float)
    H = sl.block_diag(*[G[q].T @ G[q] / n[q] for q in range(N)])
    B0 = np.zeros((N, r, kp.Mk + 1))
    for q in range(N):
        B0[q][:, idx[q]] = G[q].T / n[q]   # padding lands in the extra last column
    B0 = B0[:, :, :-1].reshape(N * r, kp.Mk)
    form = alg.linearised(kp.W, H, B0, alpha)
    return ReducedSystem(A=form.A, B=form.B, u=-kp.residual0, C_out=sl.block_diag(*G) @ form.X, R=R, R_inv=R_inv,
                         X=form.X)


def eigen_factors(A: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lambda, Q, Q^-1) with A = Q diag(lambda) Q^-1: eigh (Q^-1 = Q^T) if A is symmetric, else eig."""
    if np.allclose(A, A.T, rtol=0, atol=1e-13 * max(np.abs(A).max(), 1.0)):
        lam, Q = np.linalg.eigh(0.5 * (A + A.T))
        return lam, Q, Q.T
    lam, Q = np.linalg.eig(A)
    return lam, Q, np.linalg.solve(Q, np.eye(len(lam)))


def _phi1(x: np.ndarray) -> np.ndarray:
    """(e^x - 1) / x, with its series near 0."""
    small = np.abs(x) < 1e-6
    safe = np.where(small, 1.0, x)
    return np.where(small, 1 + x / 2 + x * x / 6, np.expm1(safe) / safe)


class Flow:
    """The gradient flow dz/dt = (A - I) z + B u of the discrete system, t in rounds (the paper's eq.).

    Phi(t, t0) = expm((A - I)(t - t0)); z(t) = Phi(t, t0) z(t0) + int_{t0}^t Phi(t, s) B u ds, in closed
    form from one eigendecomposition of A - I, computed once and cached on the object. For DGD with a
    symmetric W, A - I is symmetric in these coordinates (the K-weighted symmetrisation), so eigh is used;
    ATC and CTA use eig, and expm if the eigenvectors are too ill-conditioned.
    """

    def __init__(self, kp: KernelProblem, algorithm: str, alpha: float) -> None:
        n = reduced_states(kp, algorithm)
        if n > MAX_FLOW_STATES:
            raise UserError(f"--flow: the reduced system has about {n} states (N = {kp.N}, rank(K) = "
                            f"{kp.basis[0].shape[1]}), more than {MAX_FLOW_STATES} for the dense closed form; "
                            "use the discrete forecast")
        self.kp, self.system = kp, reduced_system(kp, algorithm, alpha)
        self.n = self.system.A.shape[0]

    @cached_property
    def factors(self) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """(lambda, Q, Q^-1) with A - I = Q diag(lambda) Q^-1, or None if Q is too ill-conditioned."""
        lam, Q, Qi = eigen_factors(self.system.A)
        if Qi is not Q.T and np.linalg.cond(Q) > 1e10:
            return None
        return lam - 1.0, Q, Qi

    def phi(self, t, t0: float = 0.0) -> np.ndarray:
        """Phi(t, t0) = expm((A - I)(t - t0)): (n, n) for a scalar t, (len(t), n, n) for an array."""
        tau = np.atleast_1d(np.asarray(t, dtype=float)) - t0
        if self.factors is None:
            import scipy.linalg as sl
            out = np.stack([sl.expm((self.system.A - np.eye(self.n)) * s) for s in tau])
        else:
            lam, Q, Qi = self.factors
            out = np.real(np.einsum("ij,tj,jk->tik", Q, np.exp(np.outer(tau, lam)), Qi))
        return out if np.ndim(t) else out[0]

    def state(self, t, t0: float = 0.0, z0: np.ndarray | None = None) -> np.ndarray:
        """z(t) for every t (vectorised), from z(t0) = z0 (default 0, i.e. theta_q = theta_0): (len(t), n)."""
        tau = np.atleast_1d(np.asarray(t, dtype=float)) - t0
        Bu = self.system.B @ self.system.u
        z0 = np.zeros(self.n) if z0 is None else z0
        if self.factors is None:
            import scipy.linalg as sl
            Mx = np.zeros((self.n + 1, self.n + 1))  # augmented [[A - I, Bu], [0, 0]] carries the input
            Mx[:-1, :-1], Mx[:-1, -1] = self.system.A - np.eye(self.n), Bu
            x0 = np.append(z0, 1.0)
            return np.stack([sl.expm(Mx * s) @ x0 for s in tau])[:, :-1]
        lam, Q, Qi = self.factors
        x = np.outer(tau, lam)
        modal = np.exp(x) * (Qi @ z0) + tau[:, None] * _phi1(x) * (Qi @ Bu)
        return np.real(modal @ Q.T)

    def coefficients(self, t, t0: float = 0.0) -> np.ndarray:
        """C(t) (len(t), N, M k): row q is c_q(t) = R_inv z_q(t), so that v_q(t) = J^T c_q(t)."""
        x = self.state(t, t0) @ self.system.X.T
        return x.reshape(-1, self.kp.N, self.system.R.shape[1]) @ self.system.R_inv.T


def reduced_states(kp: KernelProblem, algorithm: str) -> int:
    """About how many states the reduced system of ``algorithm`` has: N rank(K) per message array."""
    return kp.N * kp.basis[0].shape[1] * len(algorithm_record(algorithm).messages)
