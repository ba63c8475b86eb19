"""One agent's local learning problem: its data, its batches, its gradient and its evaluation.

``LocalLearner`` is what both the in-process simulator (one per agent) and the agent process use,
so the two compute the same gradients and the same logged losses bit for bit.
"""
from __future__ import annotations

import numpy as np

from agent.model import ModelConfig, accuracy, loss_from_outputs
from agent.spec import ModelSection


def batch_indices(n: int, batch: int | str, seed: int, agent: int, round_: int) -> np.ndarray | None:
    """Indices of agent ``agent``'s minibatch at round ``round_`` (None for full batch).

    Seeded by (seed, agent, round) alone, so any process draws the same batch.
    """
    if batch == "full" or int(batch) >= n:
        return None
    rng = np.random.default_rng([seed, agent, round_])
    return np.sort(rng.choice(n, size=int(batch), replace=False))


class LocalLearner:
    """Agent ``agent``'s data (X, Y), the shared test set and a kernel backend."""

    def __init__(self, agent: int, kernels, X: np.ndarray, Y: np.ndarray,
                 X_test: np.ndarray | None = None, Y_test: np.ndarray | None = None,
                 batch: int | str = "full", seed: int = 0) -> None:
        dtype = kernels.dtype
        self.agent, self.kernels, self.batch, self.seed = agent, kernels, batch, seed
        self.X, self.Y = np.ascontiguousarray(X, dtype), np.ascontiguousarray(Y, dtype)
        self.n = len(self.X)
        self.has_test = X_test is not None and len(X_test) > 0
        if self.has_test:
            # one forward pass evaluates both: own training points first, then the test set
            self.X_eval = np.ascontiguousarray(np.concatenate([self.X, X_test]), dtype)
            self.Y_test = np.ascontiguousarray(Y_test, dtype)
        else:
            self.X_eval = self.X

    def grad(self, theta: np.ndarray, round_: int) -> np.ndarray:
        """grad L_q(theta) on this round's batch (the full local set by default)."""
        idx = batch_indices(self.n, self.batch, self.seed, self.agent, round_)
        X, Y = (self.X, self.Y) if idx is None else (self.X[idx], self.Y[idx])
        return self.kernels.loss_and_grad(theta, X, Y)[1]

    def evaluate(self, theta: np.ndarray) -> dict:
        """train_loss on own data, test_loss and test_accuracy on the shared test set (docs/design.md, section 6)."""
        F = self.kernels.forward(theta, self.X_eval)
        out = {"train_loss": loss_from_outputs(F[:self.n], self.Y),
               "train_accuracy": accuracy(F[:self.n], self.Y)}
        if self.has_test:
            out["test_loss"] = loss_from_outputs(F[self.n:], self.Y_test)
            out["test_accuracy"] = accuracy(F[self.n:], self.Y_test)
        return out


def model_config(m: ModelSection, d: int, k: int) -> ModelConfig:
    """ModelConfig from a spec's [model] section and the data's input/output sizes."""
    return ModelConfig(kind=m.kind, d=d, k=k, width=m.width, depth=m.depth,
                       activation=m.activation, w_std=m.w_std, b_std=m.b_std, seed=m.seed)
