"""Kernel backends: the compute a device runs for the forward pass and the loss + gradient.

``make_kernels(name, cfg, dtype, **settings)`` returns an object with ``forward(theta, X)`` and
``loss_and_grad(theta, X, Y)``; the caller applies the update rule. The names are
``common.compute.BACKENDS``: ``numpy`` is the hand-written reference in ``agent.model``;
``onnx`` (ONNX Runtime graphs built by the project) is selected with ``[train] kernels = "onnx"``.
"""
from __future__ import annotations

import numpy as np

from agent import model
from agent.model import ModelConfig
from common.compute import BACKENDS
from common.errors import UserError


class NumpyKernels:
    """The numpy backend: ``agent.model``'s forward and hand-written backward."""

    name = "numpy"

    def __init__(self, cfg: ModelConfig, dtype: np.dtype | str = np.float32) -> None:
        self.cfg, self.dtype = cfg, np.dtype(dtype)

    def forward(self, theta: np.ndarray, X: np.ndarray) -> np.ndarray:
        return model.forward(self.cfg, theta, X)

    def loss_and_grad(self, theta: np.ndarray, X: np.ndarray, Y: np.ndarray) -> tuple[float, np.ndarray]:
        return model.loss_and_grad(self.cfg, theta, X, Y)


def _onnx(cfg: ModelConfig, dtype: np.dtype | str, **settings):
    try:
        from agent.onnx_kernels import OnnxKernels  # onnxruntime is an extra: imported only when chosen
    except ImportError as err:
        raise UserError(f"train.kernels = onnx is not available: {err}") from None
    return OnnxKernels(cfg, dtype, **settings)


# name -> factory(cfg, dtype, **settings), one per name of BACKENDS (tests/test_onnx_kernels.py checks it)
_FACTORIES = {"numpy": lambda cfg, dtype, **settings: NumpyKernels(cfg, dtype), "onnx": _onnx}


def make_kernels(name: str, cfg: ModelConfig, dtype: np.dtype | str = np.float32, **settings):
    """The backend called ``name`` (one of ``BACKENDS``) for this model and dtype; ``settings`` (threads,
    providers) are for the ONNX Runtime session, and the numpy backend ignores them."""
    if name not in _FACTORIES:
        raise UserError(f"train.kernels = {name!r}: expected one of {', '.join(BACKENDS)}")
    return _FACTORIES[name](cfg, dtype, **settings)
