"""Wide models in the NTK parameterisation (docs/design.md, section 3): affine and MLP, numpy only.

The flat parameter vector theta is the wire layout: W_1, b_1, ..., W_depth, b_depth, W_out, b_out,
each row-major. Forward, hand-written backward and the loss L = 1/(2n) sum ||f(x) - y||^2 are pure
functions (arrays in, arrays out) that keep float32 in float32: scale factors are Python floats,
never numpy float64 scalars, which would silently promote a float32 array. ``loss_and_grad`` keeps
its (n, width) intermediates in per-thread scratch buffers (see ``_Scratch``); its results are fresh arrays.
"""
from __future__ import annotations

import hashlib
import json
import math
import threading
from dataclasses import asdict, dataclass

import numpy as np

from common.errors import UserError

ACTIVATIONS = ("relu", "erf", "tanh")
KINDS = ("affine", "mlp")
_TWO_OVER_SQRT_PI = 2.0 / math.sqrt(math.pi)
GROUP_BYTES = 4 * 2**20  # Linearisation's batch rows per group: (rows, m, width) intermediates near this size


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of the model: input dim d, output dim k, and the docs/design.md, section 3 hyperparameters.

    ``kind = "affine"`` (or ``depth = 0``) is f(x) = (w_std/sqrt(d)) x @ W + b_std b.
    """

    kind: str
    d: int
    k: int
    width: int = 512
    depth: int = 1
    activation: str = "relu"
    w_std: float = 1.0
    b_std: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise UserError(f"model.kind = {self.kind!r}: expected one of {', '.join(KINDS)}")
        if self.activation not in ACTIVATIONS:
            raise UserError(f"model.activation = {self.activation!r}: expected one of {', '.join(ACTIVATIONS)}")
        for name in ("d", "k", "width"):
            if int(getattr(self, name)) < 1:
                raise UserError(f"model.{name} = {getattr(self, name)!r}: must be a positive integer")
        if self.depth < 0:
            raise UserError(f"model.depth = {self.depth!r}: must be >= 0")

    @property
    def hidden_layers(self) -> int:
        """Number of hidden layers actually used (0 for the affine model)."""
        return 0 if self.kind == "affine" else self.depth

    @property
    def layer_sizes(self) -> list[int]:
        """[n_0 = d, n_1, ..., n_depth, k]."""
        return [self.d] + [self.width] * self.hidden_layers + [self.k]

    def shapes(self) -> list[tuple[str, tuple[int, ...]]]:
        """(name, shape) of every tensor, in flat-vector order."""
        sizes = self.layer_sizes
        out: list[tuple[str, tuple[int, ...]]] = []
        for layer in range(len(sizes) - 1):
            name = "out" if layer == len(sizes) - 2 else str(layer + 1)
            out.append((f"W_{name}", (sizes[layer], sizes[layer + 1])))
            out.append((f"b_{name}", (sizes[layer + 1],)))
        return out

    @property
    def num_params(self) -> int:
        return sum(math.prod(shape) for _, shape in self.shapes())

    def hash(self) -> str:
        """Model hash that agents compare at handshake: same hash means same architecture and theta_0."""
        blob = json.dumps({**asdict(self), "kind": self.kind if self.hidden_layers else "affine",
                           "P": self.num_params}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def init_params(cfg: ModelConfig, dtype: np.dtype | str = np.float32) -> np.ndarray:
    """theta_0: iid N(0, 1), one ``standard_normal(shape)`` call per tensor from default_rng(cfg.seed)."""
    rng = np.random.default_rng(cfg.seed)
    parts = [rng.standard_normal(shape).ravel() for _, shape in cfg.shapes()]
    return np.concatenate(parts).astype(dtype)


def unflatten(cfg: ModelConfig, theta: np.ndarray) -> list[np.ndarray]:
    """Views of theta, one per tensor, in flat order [W_1, b_1, ..., W_out, b_out]."""
    if theta.shape != (cfg.num_params,):
        raise ValueError(f"theta has shape {theta.shape}, model needs ({cfg.num_params},)")
    views, start = [], 0
    for _, shape in cfg.shapes():
        size = math.prod(shape)
        views.append(theta[start:start + size].reshape(shape))
        start += size
    return views


def activation(name: str, z: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """s(z), into ``out`` if given."""
    if name == "relu":
        return np.maximum(z, 0, out=out)
    if name == "tanh":
        return np.tanh(z, out=out)
    from scipy import special  # here, not at the top: scipy costs a third of a second of import
    return special.erf(z, out=out)


def activation_grad(name: str, z: np.ndarray) -> np.ndarray:
    """s'(z), same dtype as z."""
    if name == "relu":
        return (z > 0).astype(z.dtype)
    if name == "tanh":
        t = np.tanh(z)
        return 1 - t * t
    return _TWO_OVER_SQRT_PI * np.exp(-(z * z))


def layer_scales(cfg: ModelConfig) -> list[float]:
    """w_std / sqrt(n_{l-1}) for each weight matrix, as Python floats (no dtype promotion)."""
    return [cfg.w_std / math.sqrt(n) for n in cfg.layer_sizes[:-1]]


class _Scratch(threading.local):
    """Per-thread (n, width) work arrays of ``loss_and_grad``, reused from step to step.

    A fresh multi-megabyte array is fresh pages from the OS (glibc unmaps large blocks on free), so
    every step would pay the page faults again: that doubles the time of a wide float32 step.
    """

    def __init__(self) -> None:
        self.arrays: dict = {}

    def get(self, key, shape: tuple, dtype) -> np.ndarray:
        arr = self.arrays.get(key)
        if arr is None or arr.shape != shape or arr.dtype != dtype:
            arr = self.arrays[key] = np.empty(shape, dtype)
        return arr


_scratch = _Scratch()


def _buffer(scratch: _Scratch | None, key, shape: tuple, dtype) -> np.ndarray:
    return np.empty(shape, dtype) if scratch is None else scratch.get(key, shape, dtype)


def forward_with_cache(cfg: ModelConfig, theta: np.ndarray, X: np.ndarray):
    """f(X) and the per-layer (input h_{l-1}, pre-activation z_l) pairs the backward pass needs."""
    return _forward(cfg, theta, X, None)


def _forward(cfg: ModelConfig, theta: np.ndarray, X: np.ndarray, scratch: _Scratch | None):
    params = unflatten(cfg, theta)
    X = np.asarray(X, dtype=theta.dtype)
    scales = layer_scales(cfg)
    h, cache = X, []
    for layer in range(cfg.hidden_layers):
        W, b = params[2 * layer], params[2 * layer + 1]
        z = _affine(h, W, b, scales[layer], cfg.b_std, _buffer(scratch, ("z", layer), (len(h), W.shape[1]), h.dtype))
        cache.append((h, z))
        h = activation(cfg.activation, z, out=_buffer(scratch, ("h", layer), z.shape, z.dtype))
    f = _affine(h, params[-2], params[-1], scales[-1], cfg.b_std)
    return f, cache, h


def _affine(h: np.ndarray, W: np.ndarray, b: np.ndarray, scale: float, b_std: float,
            out: np.ndarray | None = None) -> np.ndarray:
    """scale * (h @ W) + b_std * b, in place on the matmul result (no (n, w) temporaries)."""
    z = np.matmul(h, W, out=out)
    z *= scale
    z += b_std * b
    return z


def _times_weights_t(dz: np.ndarray, W: np.ndarray, scale: float, out: np.ndarray) -> np.ndarray:
    """scale * (dz @ W.T). With one output column it is an outer product: a broadcast multiply gives the
    same products several times faster than BLAS's gemm with inner dimension 1."""
    dh = np.multiply(dz, W.T, out=out) if W.shape[1] == 1 else np.matmul(dz, W.T, out=out)
    dh *= scale
    return dh


def _times_activation_grad(name: str, dh: np.ndarray, z: np.ndarray, h: np.ndarray,
                           scratch: _Scratch | None) -> np.ndarray:
    """dh * s'(z), in place on dh. relu and tanh read s'(z) off h = s(z): [h > 0] = [z > 0] and
    1 - h^2 = 1 - tanh(z)^2, the same numbers as ``activation_grad`` without recomputing tanh."""
    if name == "relu":
        return np.multiply(dh, np.greater(h, 0, out=_buffer(scratch, "mask", h.shape, np.bool_)), out=dh)
    slope = _buffer(scratch, "slope", z.shape, z.dtype)
    if name == "tanh":
        np.multiply(h, h, out=slope)
        np.subtract(1, slope, out=slope)
    else:
        np.multiply(z, z, out=slope)
        np.negative(slope, out=slope)
        np.exp(slope, out=slope)
        slope *= _TWO_OVER_SQRT_PI
    return np.multiply(dh, slope, out=dh)


def forward(cfg: ModelConfig, theta: np.ndarray, X: np.ndarray) -> np.ndarray:
    """f(X; theta), shape (n, k), in theta's dtype."""
    return forward_with_cache(cfg, theta, X)[0]


class Linearisation:
    """The Jacobian J of f(X; theta) at a fixed theta, as products: J v (``jvp``) and J^T r (``vjp``), batched.

    X is (m, d), or (B, m, d): one input set per batch row (every agent's own samples, padded with zero
    rows). The pass at theta runs once, here: each weight layer's input a_l, with a column of ones appended
    (so that one product also adds the bias), and each hidden layer's slope s'(u_l) are kept in ``dtype``
    (theta's by default; float32 halves their memory and the products' cost). With u_l = s_l a_l W_l +
    b_std b_l and a_{l+1} = s(u_l), forward mode carries du_l = [a_l, 1] [s_l dW_l; b_std db_l] +
    da_l (s_l W_l), da_{l+1} = s'(u_l) du_l, and reverse mode [dW_l; db_l] = [s_l; b_std] [a_l, 1]^T du_l,
    du_{l-1} = s'(u_{l-1}) (du_l (s_l W_l)^T). Each hidden layer costs one elementwise pass over its
    (rows, m, width) values each way; rows go in cache-sized groups (``GROUP_BYTES``).
    A row of tangents V (B, P) is in the flat layout of theta; ``outputs`` is f(X; theta).
    """

    def __init__(self, cfg: ModelConfig, theta: np.ndarray, X: np.ndarray, dtype=None) -> None:
        self.cfg, self.dtype = cfg, np.dtype(dtype or np.asarray(theta).dtype)
        params = unflatten(cfg, np.asarray(theta, self.dtype))
        self.scales = layer_scales(cfg)
        self.weights = [self.scales[layer] * params[2 * layer] for layer in range(cfg.hidden_layers + 1)]
        a = np.asarray(X, self.dtype)
        self.inputs, self.slopes = [], []
        for layer in range(cfg.hidden_layers + 1):
            ones = np.ones(a.shape[:-1] + (1,), self.dtype)
            self.inputs.append(np.concatenate([a, ones], axis=-1))
            u = _affine(a, params[2 * layer], params[2 * layer + 1], self.scales[layer], cfg.b_std)
            if layer == cfg.hidden_layers:
                self.outputs = u
            else:
                self.slopes.append(activation_grad(cfg.activation, u))
                a = activation(cfg.activation, u, out=u)

    def _views(self, flat: np.ndarray) -> list[np.ndarray]:
        """(B, P) -> one (B, *shape) view per tensor, in flat order."""
        views, start = [], 0
        for _, shape in self.cfg.shapes():
            size = math.prod(shape)
            views.append(flat[:, start:start + size].reshape(len(flat), *shape))
            start += size
        return views

    def _groups(self, rows: int) -> list[tuple[int, int]]:
        """Row ranges whose (rows, m, width) intermediates stay near GROUP_BYTES: a pass makes a few such
        arrays and reads each again at once, so cache-sized groups run it at cache speed, not memory speed."""
        m = self.inputs[0].shape[-2]
        size = max(1, GROUP_BYTES // (m * max(self.cfg.layer_sizes) * self.dtype.itemsize))
        return [(i, min(i + size, rows)) for i in range(0, rows, size)]

    def _rows(self, arrays: list[np.ndarray], layer: int, g0: int, g1: int) -> np.ndarray:
        a = arrays[layer]
        return a[g0:g1] if a.ndim == 3 else a

    def jvp(self, V: np.ndarray) -> np.ndarray:
        """J v for every row v of V (B, P): (B, m, k), in ``dtype``."""
        tangents, cfg = self._views(np.asarray(V, self.dtype)), self.cfg
        out = np.empty((len(V), self.inputs[0].shape[-2], cfg.k), self.dtype)
        for g0, g1 in self._groups(len(V)):
            da = None
            for layer in range(cfg.hidden_layers + 1):
                dW, db = tangents[2 * layer][g0:g1], tangents[2 * layer + 1][g0:g1]
                step = np.empty((g1 - g0, dW.shape[1] + 1, dW.shape[2]), self.dtype)  # [s dW; b_std db]
                np.multiply(dW, self.scales[layer], out=step[:, :-1])
                np.multiply(db, cfg.b_std, out=step[:, -1])
                du = self._rows(self.inputs, layer, g0, g1) @ step
                if da is not None:
                    du += _rows_times(da, self.weights[layer])
                if layer < cfg.hidden_layers:
                    da = np.multiply(du, self._rows(self.slopes, layer, g0, g1), out=du)
            out[g0:g1] = du
        return out

    def vjp(self, R: np.ndarray) -> np.ndarray:
        """J^T r for every r of R (B, m, k): (B, P), in ``dtype``."""
        R, cfg = np.asarray(R, self.dtype), self.cfg
        grad = np.empty((len(R), cfg.num_params), self.dtype)
        views = self._views(grad)
        for g0, g1 in self._groups(len(R)):
            du = R[g0:g1]
            for layer in reversed(range(cfg.hidden_layers + 1)):
                G = np.matmul(np.swapaxes(self._rows(self.inputs, layer, g0, g1), -1, -2), du)  # (rows, n+1, n')
                np.multiply(G[:, :-1], self.scales[layer], out=views[2 * layer][g0:g1])
                np.multiply(G[:, -1], cfg.b_std, out=views[2 * layer + 1][g0:g1])
                if layer:
                    da = _rows_times(du, self.weights[layer].T)
                    du = np.multiply(da, self._rows(self.slopes, layer - 1, g0, g1), out=da)
        return grad


def _rows_times(A: np.ndarray, W: np.ndarray) -> np.ndarray:
    """A (..., n) @ W (n, p) as one 2-D product over all leading axes (numpy would otherwise run one small
    product per batch row, several times slower for a narrow n such as the readout's k)."""
    return (A.reshape(-1, A.shape[-1]) @ W).reshape(*A.shape[:-1], W.shape[1])


def backward(cfg: ModelConfig, theta: np.ndarray, cache, h_last: np.ndarray, dF: np.ndarray) -> np.ndarray:
    """Flat gradient of sum(dF * f) with respect to theta (vector-Jacobian product)."""
    return _backward(cfg, theta, cache, h_last, dF, None)


def _backward(cfg: ModelConfig, theta: np.ndarray, cache, h_last: np.ndarray, dF: np.ndarray,
              scratch: _Scratch | None) -> np.ndarray:
    params = unflatten(cfg, theta)
    grad = np.empty_like(theta)
    gviews = unflatten(cfg, grad)
    scales = layer_scales(cfg)
    np.matmul(h_last.T, dF, out=gviews[-2])
    gviews[-2] *= scales[-1]
    gviews[-1][...] = cfg.b_std * dF.sum(axis=0)
    if cfg.hidden_layers:
        dh = _times_weights_t(dF, params[-2], scales[-1],
                              _buffer(scratch, ("dh", cfg.hidden_layers), h_last.shape, h_last.dtype))
    for layer in reversed(range(cfg.hidden_layers)):
        h_in, z = cache[layer]
        h_out = cache[layer + 1][0] if layer + 1 < cfg.hidden_layers else h_last
        dz = _times_activation_grad(cfg.activation, dh, z, h_out, scratch)
        np.matmul(h_in.T, dz, out=gviews[2 * layer])
        gviews[2 * layer] *= scales[layer]
        gviews[2 * layer + 1][...] = cfg.b_std * dz.sum(axis=0)
        if layer:
            dh = _times_weights_t(dz, params[2 * layer], scales[layer],
                                  _buffer(scratch, ("dh", layer), h_in.shape, h_in.dtype))
    return grad


def loss_from_outputs(F: np.ndarray, Y: np.ndarray) -> float:
    """L = 1/(2n) sum_i ||f(x_i) - y_i||^2 (docs/design.md, section 3), as a Python float."""
    R = F - Y
    return float(np.vdot(R, R)) / (2 * F.shape[0])


def loss(cfg: ModelConfig, theta: np.ndarray, X: np.ndarray, Y: np.ndarray) -> float:
    return loss_from_outputs(forward(cfg, theta, X), np.asarray(Y, theta.dtype))


def loss_and_grad(cfg: ModelConfig, theta: np.ndarray, X: np.ndarray, Y: np.ndarray) -> tuple[float, np.ndarray]:
    """(L(theta), grad L(theta)) on the batch (X, Y); the gradient has theta's dtype."""
    F, cache, h_last = _forward(cfg, theta, X, _scratch)
    R = F - np.asarray(Y, theta.dtype)
    value = float(np.vdot(R, R)) / (2 * F.shape[0])
    dF = R / F.shape[0]
    return value, _backward(cfg, theta, cache, h_last, dF, _scratch)


def accuracy(F: np.ndarray, Y: np.ndarray) -> float:
    """Fraction correct: sign agreement for scalar +-1 targets, argmax otherwise."""
    if F.shape[1] == 1:
        return float(np.mean(np.sign(F[:, 0]) == np.sign(Y[:, 0])))
    return float(np.mean(F.argmax(axis=1) == Y.argmax(axis=1)))
