"""The 90% band of a local forecast (docs/predictor.md, "Bands"): from what the board does not know (the others'
data beyond their summaries) and from the finite width. Arrays in, arrays out.

half(t) = SPREAD * |F(t) - F_less(t)| + WIDTH * max_{s <= t} gap(s) * F(t)

F is the forecast, F_less the forecast with less knowledge (summaries without their eigen rows, replicas at
rho = 1), and gap the relative distance between the board's own nonlinear and linearised gradient descent
(a measurement of the finite-width error on its own data). SPREAD and WIDTH were calibrated on the
acceptance runs of ``benchmarks/bench_local.py`` (90% coverage there); observed rounds narrow the band.
"""
from __future__ import annotations

import numpy as np

from agent.model import ModelConfig, forward, loss_and_grad

SPREAD = 1.5
WIDTH = 2.0


def linearisation_gap(cfg: ModelConfig, theta0: np.ndarray, X: np.ndarray, Y: np.ndarray, K: np.ndarray,
                      alpha: float, rounds: int) -> np.ndarray:
    """|L_nonlinear(t) - L_linear(t)| / L_linear(t), t = 0..rounds, for gradient descent on (X, Y) alone.

    K is the empirical NTK of X, (n k, n k), or its output-traced (n, n) form (then applied per output).
    """
    theta = np.asarray(theta0, np.float64).copy()
    Y = np.asarray(Y, np.float64)
    n, k = Y.shape
    R = forward(cfg, theta, X) - Y
    out = np.empty(rounds + 1)
    with np.errstate(over="ignore", invalid="ignore"):
        for t in range(rounds + 1):
            value, grad = loss_and_grad(cfg, theta, X, Y)
            linear = float(np.vdot(R, R)) / (2 * n)
            out[t] = abs(value - linear) / linear if linear > 0 else 0.0
            theta -= alpha * grad
            R = R - alpha / n * ((K @ R.ravel()).reshape(n, k) if len(K) == n * k else K @ R)
    return np.nan_to_num(out, nan=np.inf)


def band(center, less, gap, observed=None) -> tuple[np.ndarray, np.ndarray]:
    """(lower, upper) per round of the 90% band around ``center``.

    ``observed`` losses at rounds 0..R (recalibration) narrow it: those rounds are known, and beyond R the
    forecast is rescaled to pass through obs(R), with only what the terms add after R as its half-width.
    """
    F, G = np.asarray(center, float), np.asarray(less, float)
    half = SPREAD * np.abs(F - G) + WIDTH * np.maximum.accumulate(np.asarray(gap, float)) * F
    if observed is not None and len(observed) > 1:
        obs = np.asarray(observed, float)
        R = min(len(obs), len(F)) - 1
        scale = obs[R] / F[R] if F[R] > 0 else 1.0
        half = np.where(np.arange(len(F)) <= R, 0.0, scale * np.maximum(half - half[R], 0.0))
        F = scale * F
        F[:R + 1] = obs[:R + 1]
    return np.maximum(F - half, 0.0), F + half
