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

from agent.model import Linearisation, ModelConfig, backward, forward, forward_with_cache
from predictor.ntk import empirical_ntk

SPREAD = 2.0
DENSE_GAP_OUTPUTS = 4096  # the global band's kernel on agent 0 as a matrix up to n k outputs, products above


def output_gap(cfg: ModelConfig, theta0: np.ndarray, X: np.ndarray, Y: np.ndarray, K, alpha: float,
               rounds: int, dtype=np.float64) -> np.ndarray:
    """E(t) = ||f_nonlinear(X) - f_linearised(X)||^2 / (2 n), t = 0..rounds, along gradient descent on (X, Y)
    alone, nonlinear and linearised (the finite-width error in output space, in loss units). K is the empirical
    NTK of X: an (n k, n k) matrix, its output-traced (n, n) form (then applied per output), or anything with
    ``len`` and ``@`` (``_KernelProducts``). The network trains in ``dtype`` (float32 as on a board, at half
    the cost); the linearised residual and the gap are float64."""
    theta = np.asarray(theta0, dtype).copy()
    Y = np.asarray(Y, np.float64)
    n, k = Y.shape
    R = forward(cfg, theta, X) - Y
    out = np.empty(rounds + 1)
    with np.errstate(over="ignore", invalid="ignore"):
        for t in range(rounds + 1):
            F, cache, h_last = forward_with_cache(cfg, theta, X)
            D = F - Y - R  # nonlinear minus linearised residual
            out[t] = float(np.vdot(D, D)) / (2 * n)
            theta -= alpha * backward(cfg, theta, cache, h_last, ((F - Y) / n).astype(dtype))
            Rk = R.astype(getattr(K, "dtype", np.float64))  # a float32 matrix stays float32 in the product
            R = R - alpha / n * ((K @ Rk.ravel()).reshape(n, k) if len(K) == n * k else K @ Rk)
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
                train_loss, dtype=np.float64) -> dict:
    """The 90% band of the global forecast (every agent's train loss, (N, rounds + 1)), which knows all the
    data: its remaining error is the finite width, so h = ``width_term`` of each agent's forecast with the
    output gap E measured on (X, Y), one agent's samples, at the forecast's lr and rounds (the same term as
    the local band's), in ``dtype``. Minibatch noise is not in it."""
    L = np.asarray(train_loss, float)
    # the matrix (~0.04 s at 160 x 10) makes the 100 linearised steps free; products cost a pass each
    dense = Y.size <= DENSE_GAP_OUTPUTS
    K = empirical_ntk(cfg, theta0, X, dtype=dtype) if dense else _KernelProducts(cfg, theta0, X, dtype)
    E = output_gap(cfg, theta0, X, Y, K, alpha, L.shape[1] - 1, dtype)
    h = np.stack([width_term(agent, E) for agent in L])
    return {"level": 0.9, "lower": np.maximum(L * (1 - h), 0.0).tolist(), "upper": (L * (1 + h)).tolist(),
            "relative_half_width": h.tolist()}


class _KernelProducts:
    """The full empirical NTK of X (n k, n k) as products K r = J (J^T r): a reverse- and a forward-mode pass
    (``agent.model.Linearisation``, in ``dtype``) per product, never the matrix (at ten classes building it
    cost seconds). Products come back float64."""

    def __init__(self, cfg: ModelConfig, theta0: np.ndarray, X: np.ndarray, dtype=np.float64) -> None:
        self.lin, self.n, self.k = Linearisation(cfg, theta0, X, dtype), len(X), cfg.k

    def __len__(self) -> int:
        return self.n * self.k

    def __matmul__(self, r: np.ndarray) -> np.ndarray:
        return self.lin.jvp(self.lin.vjp(r.reshape(1, self.n, self.k)))[0].ravel().astype(np.float64)
