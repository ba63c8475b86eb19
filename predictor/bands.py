"""90% bands on forecasts (docs/predictor.md, "Bands"): from what a board does not know (the others' data beyond
their summaries) and from the finite width, each measured rather than assumed. Arrays in, arrays out.

Local forecast, relative half-width h(t) (the band is F (1 -/+ h)), two roughly independent errors in quadrature:

    h(t) = sqrt( (SPREAD |F(t) - F_less(t)| / F(t))^2 + (2 sqrt(x(t)) + x(t))^2 ),   x(t) = max_{s <= t} E(s) / F(t)

F is the forecast and F_less the forecast with every summary's last row dropped (replicas at rho = 1): if the
forecast converges as rows are added, the last row's increment measures what the unshared rows still hold.
E is the board's own finite-width error in output space: ||f_nonlinear - f_linearised||^2 / (2 n) along its own
gradient descent (``output_gap``). A loss L = ||r||^2 / (2 n) whose residual moves by e changes by
|<r, e> / n + ||e||^2 / (2 n)| <= 2 sqrt(L E) + E, hence the second term, with F as L. Observed rounds 0..R
re-anchor the forecast on obs(R) and leave sqrt(h(t)^2 - h(R)^2), the error the terms add after R (``band``).
The global forecast's band (``global_band``) is the second term alone: it knows all the data.
"""
from __future__ import annotations

import numpy as np

from agent.model import ModelConfig, backward, forward, forward_with_cache, jvp

SPREAD = 2.0


def output_gap(cfg: ModelConfig, theta0: np.ndarray, X: np.ndarray, Y: np.ndarray, K, alpha: float,
               rounds: int) -> np.ndarray:
    """E(t) = ||f_nonlinear(X) - f_linearised(X)||^2 / (2 n), t = 0..rounds, along gradient descent on (X, Y)
    alone, nonlinear and linearised (the finite-width error in output space, in loss units). K is the empirical
    NTK of X: an (n k, n k) matrix, its output-traced (n, n) form (then applied per output), or anything with
    ``len`` and ``@`` (``_KernelProducts``)."""
    theta = np.asarray(theta0, np.float64).copy()
    Y = np.asarray(Y, np.float64)
    n, k = Y.shape
    R = forward(cfg, theta, X) - Y
    out = np.empty(rounds + 1)
    with np.errstate(over="ignore", invalid="ignore"):
        for t in range(rounds + 1):
            F, cache, h_last = forward_with_cache(cfg, theta, X)
            D = F - Y - R  # nonlinear minus linearised residual
            out[t] = float(np.vdot(D, D)) / (2 * n)
            theta -= alpha * backward(cfg, theta, cache, h_last, (F - Y) / n)
            R = R - alpha / n * ((K @ R.ravel()).reshape(n, k) if len(K) == n * k else K @ R)
    return np.nan_to_num(out, nan=np.inf)


def width_term(center, out_gap) -> np.ndarray:
    """2 sqrt(x) + x, x(t) = max_{s <= t} E(s) / F(t): the bound on |L_nonlinear - L_linear| / L of the module
    docstring, with the board's own output gap E (``output_gap``) as the residual's move. The running maximum:
    own descent converges and its E can shrink, while the swarm keeps moving away from theta_0."""
    F = np.asarray(center, float)
    E = np.maximum.accumulate(np.asarray(out_gap, float))
    with np.errstate(divide="ignore", invalid="ignore"):
        x = np.where(F > 0, E / F, 0.0)
    return 2 * np.sqrt(x) + x


def relative_half_width(center, less, out_gap) -> np.ndarray:
    """h(t) of the module docstring: the band's half-width as a fraction of the forecast."""
    F, G = np.asarray(center, float), np.asarray(less, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        spread = SPREAD * np.where(F > 0, np.abs(F - G) / F, 0.0)
    return np.hypot(spread, width_term(F, out_gap))


def band(center, less, out_gap, observed=None) -> tuple[np.ndarray, np.ndarray]:
    """(lower, upper) per round of the 90% band around ``center`` (``less``: F_less, ``out_gap``: E).

    ``observed`` losses at rounds 0..R (recalibration) narrow it: those rounds are the band, and beyond R the
    forecast is rescaled to pass through obs(R) with the relative half-width sqrt(h(t)^2 - h(R)^2), what the
    error terms add after R when the error at R is known (the terms add in quadrature, so their increments do).
    Relative, not absolute: the loss decays, so an absolute half[R] would swallow every later one.
    """
    h = relative_half_width(center, less, out_gap)
    return anchored_band(np.asarray(center, float), h, observed)


def anchored_band(F: np.ndarray, h: np.ndarray, observed=None) -> tuple[np.ndarray, np.ndarray]:
    """F (1 -/+ h), re-anchored on ``observed`` rounds 0..R as ``band`` describes."""
    F = np.array(F, float)
    if observed is not None and len(observed) > 1:
        obs = np.asarray(observed, float)
        R = min(len(obs), len(F)) - 1
        F *= obs[R] / F[R] if F[R] > 0 else 1.0
        h = np.where(np.arange(len(F)) <= R, 0.0, np.sqrt(np.maximum(h * h - h[R] ** 2, 0.0)))
        F[:R + 1] = obs[:R + 1]
    return np.maximum(F * (1 - h), 0.0), F * (1 + h)


def global_band(cfg: ModelConfig, theta0: np.ndarray, X: np.ndarray, Y: np.ndarray, alpha: float,
                train_loss) -> dict:
    """The 90% band of the global forecast (every agent's train loss, (N, rounds + 1)), which knows all the
    data: its remaining error is the finite width, so h = ``width_term`` of each agent's forecast with the
    output gap E measured on (X, Y), one agent's samples, at the forecast's lr and rounds (the same term as
    the local band's). Minibatch noise is not in it."""
    L = np.asarray(train_loss, float)
    E = output_gap(cfg, theta0, X, Y, _KernelProducts(cfg, theta0, X), alpha, L.shape[1] - 1)
    h = np.stack([width_term(agent, E) for agent in L])
    return {"level": 0.9, "lower": np.maximum(L * (1 - h), 0.0).tolist(), "upper": (L * (1 + h)).tolist(),
            "relative_half_width": h.tolist()}


class _KernelProducts:
    """The full empirical NTK of X (n k, n k) as products K r = J (J^T r): a backward and a forward-mode pass
    (``agent.model.jvp``) per product, never the matrix (at ten classes building it cost seconds)."""

    def __init__(self, cfg: ModelConfig, theta0: np.ndarray, X: np.ndarray) -> None:
        self.cfg, self.theta0, self.X = cfg, np.asarray(theta0, np.float64), np.asarray(X, np.float64)
        _, self.cache, self.h_last = forward_with_cache(cfg, self.theta0, self.X)

    def __len__(self) -> int:
        return len(self.X) * self.cfg.k

    def __matmul__(self, r: np.ndarray) -> np.ndarray:
        grad = backward(self.cfg, self.theta0, self.cache, self.h_last, r.reshape(len(self.X), self.cfg.k))
        return jvp(self.cfg, self.theta0, self.X, grad).ravel()
