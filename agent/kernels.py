"""Kernel backends: the compute a device runs for the forward pass and the loss + gradient.

``make_kernels(name, cfg, dtype, **settings)`` returns an object with ``forward(theta, X)`` and
``loss_and_grad(theta, X, Y)``; the caller applies the update rule. ``numpy`` is the
hand-written reference in ``agent.model``;
``onnx`` (ONNX Runtime graphs built by the project) is selected with ``[train] kernels = "onnx"``.
"""
from __future__ import annotations

import numpy as np

from agent import model
from agent.model import ModelConfig
from coordinator_free.common.errors import UserError


class NumpyKernels:
    """The numpy backend: ``agent.model``'s forward and hand-written backward."""

    name = "numpy"

    def __init__(self, cfg: ModelConfig, dtype: np.dtype | str = np.float32) -> None:
        self.cfg, self.dtype = cfg, np.dtype(dtype)

    def forward(self, theta: np.ndarray, X: np.ndarray) -> np.ndarray:
        return model.forward(self.cfg, theta, X)

    def loss_and_grad(self, theta: np.ndarray, X: np.ndarray, Y: np.ndarray) -> tuple[float, np.ndarray]:
        return model.loss_and_grad(self.cfg, theta, X, Y)


def make_kernels(name: str, cfg: ModelConfig, dtype: np.dtype | str = np.float32, **settings):
    """The backend called ``name`` ("numpy" | "onnx") for this model and dtype."""
    if name == "numpy":
        return NumpyKernels(cfg, dtype)
    if name == "onnx":
        try:
            from agent.onnx_kernels import OnnxKernels
        except ImportError as err:
            raise UserError(f"train.kernels = onnx is not available: {err}") from None
        return OnnxKernels(cfg, dtype, **settings)
    raise UserError(f"train.kernels = {name!r}: expected numpy or onnx")
