"""An independent float64 torch implementation of docs/design.md sections 3-4, for tests only.

It reads the problem file (X, Y, agent_of_sample, theta0, W) and the spec's hyperparameters (as a
plain dict), writes the model and the DGD/ATC/CTA/GT rules from the design text with torch autograd,
and shares no code with the package.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")


def mlp(theta: torch.Tensor, X: torch.Tensor, d: int, k: int, model: dict) -> torch.Tensor:
    depth = 0 if model["kind"] == "affine" else model["depth"]
    w, act = model["width"], model["activation"]
    sizes = [d] + [w] * depth + [k]
    h, pos = X, 0
    for layer in range(depth + 1):
        n_in, n_out = sizes[layer], sizes[layer + 1]
        Wl = theta[pos:pos + n_in * n_out].reshape(n_in, n_out)
        pos += n_in * n_out
        bl = theta[pos:pos + n_out]
        pos += n_out
        z = model["w_std"] / math.sqrt(n_in) * (h @ Wl) + model["b_std"] * bl
        if layer == depth:
            return z
        h = {"relu": torch.relu, "tanh": torch.tanh, "erf": torch.erf}[act](z)
    raise AssertionError


def half_mse(F: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    return ((F - Y) ** 2).sum() / (2 * F.shape[0])


def reference_run(problem_path: str, spec) -> dict:
    """Train with the design's section 4 rules in float64 torch; return train/test loss per agent per
    round and every agent's final parameters ("theta", (N, P))."""
    spec = spec.to_dict() if hasattr(spec, "to_dict") else spec
    z = np.load(problem_path)
    X, Y = torch.tensor(z["X_train"]), torch.tensor(z["Y_train"])
    Xt, Yt = torch.tensor(z["X_test"]), torch.tensor(z["Y_test"])
    owner = z["agent_of_sample"]
    W = torch.tensor(z["W"])
    N = W.shape[0]
    d, k = X.shape[1], Y.shape[1]
    parts = [(X[torch.tensor(owner == q)], Y[torch.tensor(owner == q)]) for q in range(N)]
    theta = [torch.tensor(z["theta0"]).clone() for _ in range(N)]
    alg, lr = spec["train"]["algorithm"], spec["train"]["lr"]

    def f(th, Xq):
        return mlp(th, Xq, d, k, spec["model"])

    def grad(q, th):
        th = th.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(half_mse(f(th, parts[q][0]), parts[q][1]), th)
        return g

    train = [[] for _ in range(N)]
    test = [[] for _ in range(N)]

    def record():
        with torch.no_grad():
            for q in range(N):
                train[q].append(float(half_mse(f(theta[q], parts[q][0]), parts[q][1])))
                test[q].append(float(half_mse(f(theta[q], Xt), Yt)))

    def mix(vectors, q):
        return sum(W[q, r] * vectors[r] for r in range(N))

    record()
    if alg == "gt":  # y_q(0) = grad L_q(theta_q(0)); g_q: the last gradient of agent q
        y = [grad(q, theta[q]) for q in range(N)]
        g_old = list(y)
    for _ in range(spec["train"]["rounds"]):
        if alg == "gt":
            new = [mix(theta, q) - lr * y[q] for q in range(N)]
            g_new = [grad(q, new[q]) for q in range(N)]
            y = [mix(y, q) + g_new[q] - g_old[q] for q in range(N)]
            g_old = g_new
        elif alg == "dgd":
            new = [sum(W[q, r] * theta[r] for r in range(N)) - lr * grad(q, theta[q]) for q in range(N)]
        elif alg == "atc":
            psi = [theta[r] - lr * grad(r, theta[r]) for r in range(N)]
            new = [sum(W[q, r] * psi[r] for r in range(N)) for q in range(N)]
        else:
            phi = [sum(W[q, r] * theta[r] for r in range(N)) for q in range(N)]
            new = [phi[q] - lr * grad(q, phi[q]) for q in range(N)]
        theta = [t.detach() for t in new]
        record()
    return {"train_loss": train, "test_loss": test, "theta": np.stack([t.numpy() for t in theta])}


def max_rel_err(a, b) -> float:
    """Largest |a - b| / |b| over agents and rounds."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.max(np.abs(a - b) / np.abs(b)))
