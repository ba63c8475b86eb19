"""The empirical NTK of any torch model through ``torch.func`` (a host-side extra: needs torch).

torch is imported inside the functions, so importing this module never imports it; the board path
is the analytic ``predictor.ntk``. The tests use this path to cross-check the analytic kernel.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from common.errors import UserError


def _torch():
    try:
        import torch
    except ImportError:
        raise UserError("the torch.func NTK needs torch: pip install 'p2p-ntk[torch]'") from None
    return torch


def empirical_ntk(fn: Callable[[Any, Any], Any], params: Any, X1, X2=None, *, chunk: int = 64,
                  dtype=None) -> np.ndarray:
    """K(X1, X2) = J(X1) J(X2)^T for ``fn(params, X) -> (n, k)``, with J = d vec f / d params.

    ``params`` is any pytree of tensors (a tensor, a tuple, a dict of named parameters). Rows are
    ordered like ``predictor.ntk``: i*k + j is output j of sample i; the result is (n1 k, n2 k), as a
    numpy array in the parameters' dtype. Jacobians are built ``chunk`` samples at a time with
    ``torch.func.jacrev``, so memory is about 2 * chunk * k * P numbers.
    """
    torch = _torch()
    from torch.func import jacrev
    from torch.utils._pytree import tree_leaves

    leaves = tree_leaves(params)
    dtype = dtype or leaves[0].dtype
    X1 = torch.as_tensor(np.asarray(X1), dtype=dtype)
    X2 = X1 if X2 is None else torch.as_tensor(np.asarray(X2), dtype=dtype)
    jac = jacrev(fn)

    def jacobian(X):
        out = tree_leaves(jac(params, X))
        n = X.shape[0]
        return torch.cat([j.reshape(n * j.shape[1], -1) for j in out], dim=1)  # (n k, P)

    symmetric = X2 is X1
    rows = []
    for a in range(0, X1.shape[0], chunk):
        Ja = jacobian(X1[a:a + chunk])
        cols = [Ja if symmetric and b == a else jacobian(X2[b:b + chunk]) for b in range(0, X2.shape[0], chunk)]
        rows.append(torch.cat([(Ja @ Jb.T).detach() for Jb in cols], dim=1))
    return torch.cat(rows, dim=0).numpy()


def module_ntk(module, X1, X2=None, *, chunk: int = 64) -> np.ndarray:
    """``empirical_ntk`` of an ``nn.Module`` with respect to all its parameters, at their current values."""
    _torch()
    from torch.func import functional_call

    params = {name: p.detach() for name, p in module.named_parameters()}

    def fn(p, X):
        return functional_call(module, p, (X,))

    return empirical_ntk(fn, params, X1, X2, chunk=chunk)
