"""The empirical NTK K = J J^T of the affine and MLP models (docs/design.md, section 5), analytic, in numpy.

Exact at finite width (not the infinite-width limit), float64 by default, computed in row chunks so
that the working memory beyond K itself stays under ``max_bytes`` (a board has 512 MB to 8 GB). The
output-traced kernel Theta = (1/k) sum_j K[(., j), (., j)] (docs/forecast-cost.md) is k^2 times smaller.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from agent.model import ModelConfig, activation_grad, forward_with_cache, layer_scales, unflatten

DEFAULT_MAX_BYTES = 128 * 2**20


def layer_factors(cfg: ModelConfig, theta: np.ndarray, X: np.ndarray) -> tuple[np.ndarray, list]:
    """f(X; theta) and, per weight layer l (the output layer first), (s_{l-1}, h_{l-1}, B_l).

    h_{l-1} (n, n_{l-1}) is the layer's input and s_{l-1} = w_std / sqrt(n_{l-1}) its scale, so the
    forward-feature Gram is F_l = s_{l-1}^2 h_{l-1} h_{l-1}'^T + b_std^2; B_l[i, j, a] = d f_j(x_i) / d z_l[a]
    (n, k, n_l) is the backprop factor, None for the output layer (the identity). Then
    K[(i, j), (i', j')] = sum_l F_l[i, i'] (B_l B_l'^T)[(i, j), (i', j')].
    """
    f, cache, h_last = forward_with_cache(cfg, theta, X)
    params = unflatten(cfg, theta)
    scales = layer_scales(cfg)
    factors: list[tuple[float, np.ndarray, np.ndarray | None]] = [(scales[-1], h_last, None)]
    back = (scales[-1] * params[-2].T)[None]  # dF/dh_depth = s_depth W_out^T, (1, k, w)
    for layer in reversed(range(cfg.hidden_layers)):
        h_in, z = cache[layer]
        B = back * activation_grad(cfg.activation, z)[:, None, :]
        factors.append((scales[layer], h_in, B))
        if layer:
            back = scales[layer] * (B @ params[2 * layer].T)
    return f, factors


def traced_factors(cfg: ModelConfig, theta: np.ndarray, X: np.ndarray) -> tuple[np.ndarray, list]:
    """``layer_factors`` for the output-traced kernel: per weight layer (s_{l-1}, h_{l-1}, E_l) with
    E_l E_l'^T = (1/k) sum_j B_l[:, j] B_l'[:, j]^T (None for the output layer, whose trace is F_l itself).

    The last hidden layer's backprop factor is s W_out^T times s'(z) for every sample, so its trace needs
    only s'(z) (n, w) weighted per unit: no (n, k, w) array is formed for a one-hidden-layer MLP.
    """
    f, cache, h_last = forward_with_cache(cfg, theta, X)
    params = unflatten(cfg, theta)
    scales = layer_scales(cfg)
    factors: list[tuple[float, np.ndarray, np.ndarray | None]] = [(scales[-1], h_last, None)]
    back = (scales[-1] * params[-2].T)[None]  # (1, k, w): the same for every sample
    root = 1.0 / math.sqrt(cfg.k)
    for layer in reversed(range(cfg.hidden_layers)):
        h_in, z = cache[layer]
        slope = activation_grad(cfg.activation, z)
        if layer == cfg.hidden_layers - 1:  # back is still the shared (1, k, w)
            weight = np.sqrt(np.einsum("ija,ija->a", back, back)) * root
            factors.append((scales[layer], h_in, slope * weight.astype(slope.dtype, copy=False)))
        else:
            B = back * slope[:, None, :]
            factors.append((scales[layer], h_in, B.reshape(len(B), -1) * root))
        if layer:
            back = scales[layer] * ((back * slope[:, None, :]) @ params[2 * layer].T)
    return f, factors


def _traced_block(fa: list, fb: list, b_std: float, output_only: bool = False) -> np.ndarray:
    """sum_l F_l * (E_l^a E_l^b^T): the (na, nb) output-traced kernel block of two row chunks (with
    ``output_only``, the output layer's term F_out alone)."""
    out = None
    for (s, ha, Ea), (_, hb, Eb) in zip(fa[:1] if output_only else fa, fb):
        F = ha @ hb.T
        F *= s * s
        F += b_std * b_std
        if Ea is not None:
            F *= Ea @ Eb.T
        out = F if out is None else out + F
    return out


def _block(fa: list, fb: list, k: int, b_std: float) -> np.ndarray:
    """sum_l F_l (x) (B_l^a B_l^b^T): the (na k, nb k) kernel block of two row chunks."""
    na, nb = fa[0][1].shape[0], fb[0][1].shape[0]
    out = np.zeros((na, k, nb, k), dtype=fa[0][1].dtype)
    for (s, ha, Ba), (_, hb, Bb) in zip(fa, fb):
        F = ha @ hb.T
        F *= s * s
        F += b_std * b_std
        if Ba is None:
            idx = np.arange(k)
            out[:, idx, :, idx] += F  # delta_{jj'}: the output layer's Jacobian is the identity in j
        elif k == 1:
            G = Ba[:, 0] @ Bb[:, 0].T
            G *= F
            out[:, 0, :, 0] += G
        else:
            G = Ba.reshape(na * k, -1) @ Bb.reshape(nb * k, -1).T
            out += G.reshape(na, k, nb, k) * F[:, None, :, None]
    return out.reshape(na * k, nb * k)


def chunk_rows(cfg: ModelConfig, max_bytes: int = DEFAULT_MAX_BYTES) -> int:
    """Rows per chunk so that two chunks' factors and one kernel block fit in ``max_bytes``."""
    per_row = cfg.d + 2 + cfg.hidden_layers * (cfg.width + 1 + 2 * cfg.k * cfg.width) + cfg.width
    # 2 chunks of factors + ~3 (n k)^2 blocks (output, G, temporaries), 8 bytes each
    a, b = 24.0 * cfg.k**2, 16.0 * per_row
    n = (-b + math.sqrt(b * b + 4 * a * max_bytes)) / (2 * a)
    return max(1, int(n))


def empirical_ntk(cfg: ModelConfig, theta: np.ndarray, X1: np.ndarray, X2: np.ndarray | None = None, *,
                  max_bytes: int = DEFAULT_MAX_BYTES, dtype=np.float64, traced: bool = False) -> np.ndarray:
    """The empirical NTK K(X1, X2) = J(X1) J(X2)^T at theta, shape (n1 k, n2 k).

    Row i*k + j is output j of sample i (row-major vec of f(X) (n, k)), and the full kernel is
    returned, cross-output blocks included. ``X2 = None`` means X2 = X1 (the symmetric train x train
    Gram matrix, computed one triangle of blocks at a time and mirrored). ``traced``: the output-traced
    kernel Theta(X1, X2) = (1/k) sum_j K[(., j), (., j)] instead, shape (n1, n2).

    Examples
    --------
    >>> K = empirical_ntk(cfg, theta0, X_train)               # (M k, M k)
    >>> K_test = empirical_ntk(cfg, theta0, X_test, X_train)  # (T k, M k)
    """
    return _kernel(cfg, theta, X1, X2, max_bytes, dtype, traced)[0]


def train_test_ntk(cfg: ModelConfig, theta: np.ndarray, X: np.ndarray, X_test: np.ndarray, *,
                   max_bytes: int = DEFAULT_MAX_BYTES, dtype=np.float64, traced: bool | str = False
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(K, K_test, f0, f0_test): K(X, X) (M k, M k), K(X_test, X) (T k, M k) and f(.; theta) on both.

    One pass over [X; X_test] against X: each chunk's factors are computed once while they fit in memory.
    ``traced``: the output-traced Theta (M, M) and Theta_test (T, M) instead of K and K_test;
    ``traced = "output"``: the output layer's part of it alone, F_out = s^2 h h'^T + b_std^2.
    """
    M, k = len(X), 1 if traced else cfg.k
    K_all, f_all = _kernel(cfg, theta, np.concatenate([np.asarray(X), np.asarray(X_test)]), M,
                           max_bytes, dtype, traced)
    return K_all[:M * k], K_all[M * k:], f_all[:M], f_all[M:]


def _kernel(cfg: ModelConfig, theta: np.ndarray, X: np.ndarray, cols: np.ndarray | int | None,
            max_bytes: int, dtype, traced: bool | str = False) -> tuple[np.ndarray, np.ndarray]:
    """(K(X, X_cols), f(X)). ``cols`` is the column inputs, or an int n: the leading n rows of X (None: all).

    Where columns are leading rows, blocks on the diagonal of that square are symmetrised and only one
    triangle is computed. Chunk factors are cached while they fit in half of ``max_bytes``.
    """
    theta = np.asarray(theta, dtype=dtype)
    X = np.asarray(X, dtype=dtype)
    shared = len(X) if cols is None else cols if isinstance(cols, int) else 0
    Xc = X[:shared] if shared else np.asarray(cols, dtype=dtype)
    for name, arr in (("X1", X), ("X2", Xc)):
        if arr.ndim != 2 or arr.shape[1] != cfg.d:
            raise ValueError(f"{name} must be (n, {cfg.d}), got {arr.shape}")
    k = 1 if traced else cfg.k
    step = chunk_rows(dataclasses.replace(cfg, k=k), max_bytes // 2)
    layer_fn = traced_factors if traced else layer_factors
    # chunks of rows never straddle the end of the shared square, so diagonal blocks are square
    rows = [(s, min(s + step, shared)) for s in range(0, shared, step)] + \
           [(s, min(s + step, len(X))) for s in range(shared, len(X), step)]
    col_chunks = rows[:-(-shared // step)] if shared else [(s, min(s + step, len(Xc))) for s in range(0, len(Xc), step)]
    K = np.empty((len(X) * k, len(Xc) * k), dtype=dtype)
    f = np.empty((len(X), cfg.k), dtype=dtype)
    cache: dict[tuple, list] = {}
    used = [0]

    def factors(src: np.ndarray, key: tuple) -> list:
        if key in cache:
            return cache[key]
        out, fac = layer_fn(cfg, theta, src[key[1]:key[2]])
        if key[0] == "row":
            f[key[1]:key[2]] = out
        size = sum(h.nbytes + (0 if B is None else B.nbytes) for _, h, B in fac)
        if used[0] + size <= max_bytes // 2:
            cache[key], used[0] = fac, used[0] + size
        return fac

    for a0, a1 in rows:
        fa = factors(X, ("row", a0, a1))
        for b0, b1 in col_chunks:
            if shared and b0 > a0:
                break  # mirrored from the lower triangle
            fb = fa if shared and b0 == a0 else factors(X, ("row", b0, b1)) if shared else factors(Xc, ("col", b0, b1))
            block = _traced_block(fa, fb, cfg.b_std, traced == "output") if traced else _block(fa, fb, k, cfg.b_std)
            if shared and b0 == a0:
                block = 0.5 * (block + block.T)  # exact symmetry for eigh and the DGD symmetrisation
            K[a0 * k:a1 * k, b0 * k:b1 * k] = block
            if shared and b0 < a0 < shared:
                K[b0 * k:b1 * k, a0 * k:a1 * k] = block.T
    return K, f


def kernel_columns(cfg: ModelConfig, theta: np.ndarray, X: np.ndarray, X_cols: np.ndarray, *,
                   max_bytes: int = DEFAULT_MAX_BYTES, dtype=np.float64, traced: bool = False
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(K(X, X_cols), f(X; theta)): a few kernel columns (landmarks) for many rows, chunked like the rest."""
    return _kernel(cfg, theta, X, np.asarray(X_cols), max_bytes, dtype, traced)
