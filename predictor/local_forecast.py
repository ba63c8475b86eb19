"""On-device forecast: agent q predicts its own loss trajectory from its own data, the topology and W.

No other agent's data leaves its device, so agent q builds a *replica swarm*. Assumption (reported
with every forecast): every other agent's data is statistically like q's own, with balanced classes.
Concretely, agent r != q holds a class-balanced resample of q's samples, and the kernel between
samples of *different* agents keeps only the shared part of q's empirical NTK,
C = U max(Lambda - delta, 0) U^T (K_qq = U Lambda U^T): the components below delta are specific to
each agent's samples and independent across agents. delta = delta_scale * mean(diag K_qq).
The replica swarm then runs through the same kernel-space dynamics as the global predictor: as a dense
kernel while it is small, and above that as ``ReplicaOperator``, the output-traced kernel Theta (x) I_k
applied through one eigendecomposition of q's own Theta, so that it costs about N products with q's
(n, n) kernel per round instead of an (N n k)^2 matrix.
With ``summaries`` from other boards (agent.summaries) those boards hold their rows instead (predictor.summary_swarm).
``recalibrate`` refits two knobs to the losses observed in the first rounds of real training:
delta_scale, and rho, how far the replicas' targets lie from q's own towards the class-balanced
mean (rho = 0: iid; rho = 1: the others' labels, on average, carry no information about q's classes,
as in a by-label split).
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
from scipy import sparse

from agent.model import ModelConfig
from agent.summaries import Summary, jacobian
from predictor.bands import band as train_band, output_gap
from predictor.dynamics import KernelProblem, SwarmData, operator_rounds, discrete_rounds
from predictor.forecast import EXACT_MAX_OUTPUTS, loss_curves
from predictor.ntk import train_test_ntk
from predictor.summary_swarm import summary_problem

ASSUMPTION = ("replica swarm: every other agent's data is statistically like this agent's own, with balanced "
              "classes; kernel components below delta are specific to each agent")
SUMMARY_ASSUMPTION = ("summary swarm: boards that sent a summary hold their class-mean and eigen rows; their "
                      "unshared directions are left out; boards without one are replicas of this board's data")
DELTA_SCALES = (0.0, 0.1, 0.25, 0.5, 1.0)
RHOS = (0.0, 0.25, 0.5, 0.75, 1.0)
DEFAULT_DELTA_SCALE = 0.25


class LocalForecaster:
    """Agent q's replica swarm; the empirical NTK of its own samples is computed once.

    ``cfg``, ``theta0``: the shared model; ``X``, ``Y`` (n, d), (n, k): q's own data; ``W`` (N, N): the
    mixing matrix from the spec's topology rule (or the agent's row and its neighbours' degrees);
    ``X_test``, ``Y_test``: q's own held-out data (optional).
    """

    def __init__(self, cfg: ModelConfig, theta0: np.ndarray, X: np.ndarray, Y: np.ndarray, W: np.ndarray, q: int,
                 X_test: np.ndarray | None = None, Y_test: np.ndarray | None = None, seed: int = 0,
                 balance: bool = True, summaries: dict[int, Summary] | None = None) -> None:
        self.q, self.W, self.k = q, np.asarray(W, np.float64), Y.shape[1]
        self.cfg, self.theta0, self.X = cfg, np.asarray(theta0, np.float64), np.asarray(X, np.float64)
        self.summaries = {r: s for r, s in (summaries or {}).items() if r != q}
        self.Y = np.asarray(Y, np.float64)
        Xt = X[:1] if X_test is None else X_test
        self.Y_test = self.Y[:1] if Y_test is None else np.asarray(Y_test, np.float64)
        self.has_test = X_test is not None
        # the dense replica kernel has (N n k)^2 entries: above EXACT_MAX_OUTPUTS outputs, the traced operator
        self.traced = self.W.shape[0] * len(X) * self.k > EXACT_MAX_OUTPUTS and not self.summaries
        K, Kt, self.f0, self.f0_test = train_test_ntk(cfg, np.asarray(theta0, np.float64), X, Xt, traced=self.traced)
        self.K, self.K_test = K, Kt
        lam, self.U = np.linalg.eigh(K)
        self.lam = np.maximum(lam, 0.0)
        self.diag_mean = float(np.mean(np.diag(K)))
        self.samples = self._replica_samples(seed, balance)
        if self.summaries:  # q's Jacobians, for the kernel against the received rows
            self.J, self.J_test = jacobian(cfg, theta0, X)[0], jacobian(cfg, theta0, Xt)[0]

    def _replica_samples(self, seed: int, balance: bool) -> list[np.ndarray]:
        """Sample indices (into q's own data) that each agent of the replica swarm holds.

        balance=False gives every agent an exact copy of q's samples (then, with delta = 0, the replica
        swarm is plain gradient descent on q's own data, whatever the topology).
        """
        n, N = len(self.Y), self.W.shape[0]
        if not balance:
            return [np.arange(n) for _ in range(N)]
        labels = self.Y[:, 0] > 0 if self.k == 1 else self.Y.argmax(axis=1)
        groups = [np.flatnonzero(labels == c) for c in np.unique(labels)]
        rng = np.random.default_rng([seed, self.q, 4242])
        out = []
        for r in range(N):
            if r == self.q:
                out.append(np.arange(n))
                continue
            sizes = np.full(len(groups), n // len(groups))
            sizes[:n % len(groups)] += 1
            out.append(np.concatenate([rng.choice(g, s, replace=True) for g, s in zip(groups, sizes)]))
        return out

    def kernel_problem(self, delta_scale: float = DEFAULT_DELTA_SCALE, rho: float = 0.0):
        """The replica swarm (M = N n samples, built from q's kernel alone): a dense ``KernelProblem`` while
        it is small, a ``ReplicaOperator`` (output-traced) above EXACT_MAX_OUTPUTS outputs."""
        k = self.k
        if self.summaries:
            return self._summary_problem(delta_scale, rho)
        idx = np.concatenate(self.samples)
        owner = np.repeat(np.arange(len(self.samples)), [len(s) for s in self.samples])
        Y = self.Y[idx].copy()
        others = owner != self.q
        Y[others] = (1 - rho) * Y[others] + rho * (0.0 if k == 1 else 1.0 / k)
        shared = np.maximum(self.lam - delta_scale * self.diag_mean, 0.0)
        if self.traced:
            data = SwarmData(f0=self.f0[idx], f0_test=self.f0_test, Y=Y, Y_test=self.Y_test, agent_of_sample=owner,
                             W=self.W)
            return ReplicaOperator(data, self.U, shared, self.lam - shared, self.samples, self.K_test)
        C = (self.U * shared) @ self.U.T
        vec = (idx[:, None] * k + np.arange(k)).ravel()          # output-major vec indices
        own = np.repeat(owner, k)
        same = own[:, None] == own[None, :]
        K = np.where(same, self.K[np.ix_(vec, vec)], C[np.ix_(vec, vec)])
        return KernelProblem(K=K, K_test=self.K_test[:, vec], f0=self.f0[idx], f0_test=self.f0_test,
                             Y=Y, Y_test=self.Y_test, agent_of_sample=owner, W=self.W)

    def _summary_problem(self, delta_scale: float, rho: float, summaries: dict[int, Summary] | None = None
                         ) -> KernelProblem:
        """The swarm with the received summaries (``predictor.summary_swarm``); boards without one are replicas."""
        shared = np.maximum(self.lam - delta_scale * self.diag_mean, 0.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            root = np.where(self.lam > 0, np.sqrt(shared / self.lam), 0.0)
        Y = (1 - rho) * self.Y + rho * (0.0 if self.k == 1 else 1.0 / self.k)
        replicas = {r: s for r, s in enumerate(self.samples) if r != self.q and r not in self.summaries}
        return summary_problem(self.q, self.W, self.J, self.J_test, self.K, self.K_test, self.f0, self.f0_test,
                               self.Y, self.Y_test, self.summaries if summaries is None else summaries, replicas, Y,
                               (self.U * root) @ self.U.T,
                               (self.U * shared) @ self.U.T)

    def _curves(self, kp, algorithm: str, alpha: float, rounds: int, batch: int | str, seed: int) -> dict:
        if isinstance(kp, KernelProblem):
            own, test, _ = discrete_rounds(kp, algorithm, alpha, rounds, batch=batch, seed=seed)
        else:
            own, test, _ = operator_rounds(kp, algorithm, alpha, rounds, batch=batch, seed=seed)
            kp = kp.data
        return loss_curves(kp, own, test)

    def forecast(self, algorithm: str, alpha: float, rounds: int, delta_scale: float = DEFAULT_DELTA_SCALE,
                 rho: float = 0.0, batch: int | str = "full", seed: int = 0, band: bool = False,
                 observed: list[float] | None = None) -> dict:
        """This agent's forecast: {"train_loss": [...], "test_loss": [...] (if a test set), ...}. With summaries
        also "swarm_train_loss", the swarm's mean train loss as this board sees it (what ``tune`` minimises then).

        ``band``: also "train_loss_band" {"lower", "upper"}, the 90% band of ``predictor.bands``, narrowed by
        the ``observed`` train losses of rounds 0..R if given.
        """
        curves = self._curves(self.kernel_problem(delta_scale, rho), algorithm, alpha, rounds, batch, seed)
        out = {"agent": self.q, "train_loss": curves["train_loss"][self.q], "delta_scale": delta_scale,
               "rho": rho, "assumption": SUMMARY_ASSUMPTION if self.summaries else ASSUMPTION,
               "summaries_from": sorted(self.summaries)}
        if self.summaries:  # each other board's loss on its shared rows, plus the constant unshared remainder
            rest = [self.summaries[r].rest_energy / (2 * self.summaries[r].n) if r in self.summaries else 0.0
                    for r in range(len(curves["train_loss"]))]
            out["swarm_train_loss"] = np.mean([np.asarray(c) + e for c, e in zip(curves["train_loss"], rest)], axis=0)
        if self.has_test:
            out["test_loss"] = curves["test_loss"][self.q]
            out["test_accuracy"] = curves["test_accuracy"][self.q]
        if band:
            less = self._less_known(delta_scale)
            F_less = self._curves(less, algorithm, alpha, rounds, batch, seed)["train_loss"][self.q]
            E = output_gap(self.cfg, self.theta0, self.X, self.Y, self.K, alpha, rounds)
            lower, upper = train_band(out["train_loss"], F_less, E, observed)
            out["train_loss_band"] = {"level": 0.9, "lower": lower.tolist(), "upper": upper.tolist()}
        return out

    def _less_known(self, delta_scale: float):
        """The forecast's swarm with less knowledge (the band's spread): every summary without its last row, the
        increment that bounds what its unshared rows still hold (dropping all eigen rows instead moved a by-label
        forecast about twice as far as the unshared data did: a band 9-17x its error); replicas at rho = 1 (the
        others' labels carry no information about this board's)."""
        if not self.summaries:
            return self.kernel_problem(delta_scale, 1.0)
        keep = {r: replace(s, rows=s.rows[:-1], targets=s.targets[:-1], row_label=s.row_label[:-1])
                for r, s in self.summaries.items()}
        return self._summary_problem(delta_scale, 1.0, keep)

    def recalibrate(self, observed_train_loss: list[float], algorithm: str, alpha: float,
                    batch: int | str = "full", seed: int = 0, gain: float = 4.0) -> tuple[float, float]:
        """(delta_scale, rho) whose forecast best fits the train losses observed so far (log error, rounds 0..R).

        With fewer than 2 observed rounds it returns the defaults (the iid assumption), and it keeps
        them unless another choice fits the observed rounds at least ``gain`` times better: a few
        early rounds barely tell the knobs apart, and a small win there is noise.
        """
        obs = np.asarray(observed_train_loss, float)
        R = len(obs) - 1
        if R < 2:
            return DEFAULT_DELTA_SCALE, 0.0
        best, best_err, default_err = (DEFAULT_DELTA_SCALE, 0.0), np.inf, np.inf
        for s in DELTA_SCALES:
            for rho in RHOS:
                f = np.asarray(self.forecast(algorithm, alpha, R, s, rho, batch, seed)["train_loss"])
                with np.errstate(divide="ignore", invalid="ignore"):
                    err = float(np.nansum((np.log(f) - np.log(obs)) ** 2))
                if (s, rho) == (DEFAULT_DELTA_SCALE, 0.0):
                    default_err = err
                if err < best_err:
                    best, best_err = (s, rho), err
        return best if best_err * gain < default_err else (DEFAULT_DELTA_SCALE, 0.0)


class ReplicaOperator:
    """The replica swarm's output-traced kernel as an operator for ``operator_rounds`` (c-coordinates).

    Between samples of one replica agent the kernel is q's Theta = U diag(lam) U^T, between two agents its
    shared part U diag(shared) U^T, so (specific = lam - shared) agent r's outputs are
    U[i_r] (shared * U^T a_r + specific * U[i_r]^T c_rr), with a_r the coefficients of every replica sample
    summed onto q's n data points and c_rr those on r's own samples: O(N n^2 k) per round, never (N n k)^2.
    """

    def __init__(self, data: SwarmData, U: np.ndarray, shared: np.ndarray, specific: np.ndarray,
                 samples: list[np.ndarray], test: np.ndarray) -> None:
        self.data, self.U, self.shared, self.specific, self.test = data, U, shared, specific, test
        n, M = U.shape[0], len(data.Y)
        self.columns, self.width = data.k, M * data.k
        idx = np.concatenate(samples)
        self._to_points = sparse.csr_matrix((np.ones(M), (idx, np.arange(M))), shape=(n, M))
        self._samples = np.stack(samples)                                 # (N, n_r): every agent holds n_r = n
        self._own = np.stack([np.flatnonzero(data.agent_of_sample == r) for r in range(data.N)])
        self._own_mask = (data.agent_of_sample[None, :] == np.arange(data.N)[:, None])[:, :, None]

    def column(self) -> ReplicaOperator:
        """One output column (every column shares the kernel); ``stability.operator_lr_max`` uses it."""
        return self

    def _points(self, C3: np.ndarray) -> np.ndarray:
        """Coefficients summed onto q's n data points, agents side by side: (N, M, c) -> (n, N c)."""
        M = C3.shape[1]
        return self._to_points @ C3.transpose(1, 0, 2).reshape(M, -1)

    def apply(self, C: np.ndarray) -> np.ndarray:
        N, M = C.shape[0], len(self.data.Y)
        C3 = C.reshape(N, M, -1)
        c = C3.shape[2]
        mixed = self.shared[:, None] * (self.U.T @ self._points(C3))
        mixed += self.specific[:, None] * (self.U.T @ self._points(C3 * self._own_mask))
        out = (self.U @ mixed).reshape(-1, N, c)                          # (n, N, c): every point, every agent
        return out[self._samples, np.arange(N)[:, None]].reshape(N, -1)

    def adjoint(self, R: np.ndarray) -> np.ndarray:
        N, M = R.shape[0], len(self.data.Y)
        R3 = R.reshape(N, self._own.shape[1], -1)
        G = np.zeros((N, M, R3.shape[2]), dtype=R.dtype)
        G[np.arange(N)[:, None], self._own] = R3
        return G.reshape(N, -1)

    def apply_test(self, C: np.ndarray) -> np.ndarray:
        N, k = C.shape[0], self.data.k
        points = self._points(C.reshape(N, -1, k))
        return (self.test @ points).reshape(-1, N, k).transpose(1, 0, 2).reshape(N, -1)
