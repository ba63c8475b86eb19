"""The analytic empirical NTK against torch.func Jacobians and finite differences (docs/design.md, section 5)."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch.func import jacrev

from agent.model import ModelConfig, init_params
from predictor.ntk import chunk_rows, empirical_ntk, train_test_ntk
from predictor.ntk_torch import empirical_ntk as torch_ntk
from predictor.ntk_torch import module_ntk
from tests.torch_reference import mlp

pytestmark = pytest.mark.usefixtures("one_blas_thread")

CASES = [  # kind, depth, activation, k
    ("affine", 0, "relu", 1),
    ("affine", 0, "relu", 3),
    ("mlp", 1, "relu", 1),
    ("mlp", 1, "erf", 2),
    ("mlp", 2, "tanh", 3),
    ("mlp", 3, "erf", 1),
]


def _setup(kind, depth, act, k, d=5, width=13):
    cfg = ModelConfig(kind=kind, d=d, k=k, width=width, depth=depth, activation=act, w_std=1.3, b_std=0.2, seed=4)
    rng = np.random.default_rng(1)
    return cfg, init_params(cfg, np.float64), rng.standard_normal((9, d)), rng.standard_normal((4, d))


def _jacobian(cfg, theta, X):
    """d vec f / d theta from the independent torch model, rows i*k + j."""
    fn = lambda t, x: mlp(t, x, cfg.d, cfg.k, vars(cfg))  # noqa: E731
    return jacrev(fn)(torch.tensor(theta), torch.tensor(X)).reshape(len(X) * cfg.k, -1).numpy()


@pytest.mark.parametrize("kind,depth,act,k", CASES)
@pytest.mark.parametrize("max_bytes", [3000, 2**27])  # one row per chunk, and everything in one chunk
def test_analytic_kernel_matches_torch_jacobians(kind, depth, act, k, max_bytes):
    cfg, theta, X, Xt = _setup(kind, depth, act, k)
    J, Jt = _jacobian(cfg, theta, X), _jacobian(cfg, theta, Xt)
    K = empirical_ntk(cfg, theta, X, max_bytes=max_bytes)
    K_cross = empirical_ntk(cfg, theta, Xt, X, max_bytes=max_bytes)
    scale = np.abs(J @ J.T).max()
    np.testing.assert_allclose(K, J @ J.T, rtol=0, atol=1e-13 * scale)
    np.testing.assert_allclose(K_cross, Jt @ J.T, rtol=0, atol=1e-13 * scale)
    assert np.array_equal(K, K.T)  # exactly symmetric: eigh and the DGD symmetrisation rely on it
    K2, K2t, f0, f0t = train_test_ntk(cfg, theta, X, Xt, max_bytes=max_bytes)
    np.testing.assert_allclose(K2, K, rtol=0, atol=1e-13 * scale)
    np.testing.assert_allclose(K2t, K_cross, rtol=0, atol=1e-13 * scale)
    ref = mlp(torch.tensor(theta), torch.tensor(np.vstack([X, Xt])), cfg.d, k, vars(cfg)).numpy()
    np.testing.assert_allclose(np.vstack([f0, f0t]), ref, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("kind,depth,act,k", [("mlp", 2, "tanh", 3), ("affine", 0, "relu", 2)])
def test_torch_func_path_matches_analytic_kernel(kind, depth, act, k):
    cfg, theta, X, Xt = _setup(kind, depth, act, k)
    fn = lambda t, x: mlp(t, x, cfg.d, cfg.k, vars(cfg))  # noqa: E731
    K = torch_ntk(fn, torch.tensor(theta), X, chunk=4)
    Kt = torch_ntk(fn, torch.tensor(theta), Xt, X, chunk=3)
    np.testing.assert_allclose(K, empirical_ntk(cfg, theta, X), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(Kt, empirical_ntk(cfg, theta, Xt, X), rtol=1e-12, atol=1e-12)


def test_kernel_matches_central_finite_differences():
    cfg, theta, X, _ = _setup("mlp", 2, "erf", 2)
    f = lambda t: mlp(torch.tensor(t), torch.tensor(X), cfg.d, cfg.k, vars(cfg)).numpy().ravel()  # noqa: E731
    h = 1e-6
    J = np.empty((X.shape[0] * cfg.k, theta.size))
    for p in range(theta.size):
        e = np.zeros_like(theta)
        e[p] = h
        J[:, p] = (f(theta + e) - f(theta - e)) / (2 * h)
    K = empirical_ntk(cfg, theta, X)
    np.testing.assert_allclose(K, J @ J.T, rtol=1e-6, atol=1e-7 * np.abs(K).max())


def test_module_ntk_of_any_torch_model_matches_autograd_jacobian():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 2)).double()
    X = torch.randn(5, 4, dtype=torch.float64)
    params = list(net.parameters())
    jac = torch.autograd.functional.jacobian(
        lambda *ps: torch.func.functional_call(net, dict(zip([n for n, _ in net.named_parameters()], ps)), (X,)),
        tuple(p.detach() for p in params))
    J = torch.cat([j.reshape(10, -1) for j in jac], dim=1).numpy()
    np.testing.assert_allclose(module_ntk(net, X.numpy(), chunk=2), J @ J.T, rtol=1e-12, atol=1e-12)


def test_chunk_size_follows_the_memory_budget():
    cfg = ModelConfig(kind="mlp", d=64, k=10, width=8192, depth=2)
    small, large = chunk_rows(cfg, 2**20), chunk_rows(cfg, 2**30)
    assert 1 <= small < large
    per_row_bytes = 8 * cfg.width * (2 * cfg.k + 1) * cfg.hidden_layers
    assert large * per_row_bytes * 2 <= 2**30  # two chunks of backprop factors fit the budget


def test_wide_relu_kernel_is_positive_definite_on_distinct_inputs():
    cfg = ModelConfig(kind="mlp", d=8, k=1, width=512, depth=1)
    X = np.random.default_rng(2).standard_normal((30, 8))
    lam = np.linalg.eigvalsh(empirical_ntk(cfg, init_params(cfg, np.float64), X))
    assert lam[0] > 1e-6 * lam[-1]


@pytest.mark.parametrize("kind,depth,act,k", [("affine", 0, "relu", 3), ("mlp", 1, "relu", 3), ("mlp", 2, "tanh", 4),
                                              ("mlp", 3, "erf", 1)])
@pytest.mark.parametrize("max_bytes", [3000, 2**27])
def test_traced_kernel_is_the_output_trace_of_the_jacobian_kernel(kind, depth, act, k, max_bytes):
    """Theta = (1/k) sum_j J_j J_j^T, and its output-layer part is the output layer's Jacobian Gram (torch)."""
    cfg, theta, X, Xt = _setup(kind, depth, act, k)
    J, Jt = _jacobian(cfg, theta, X), _jacobian(cfg, theta, Xt)
    trace = lambda A, B: np.einsum("ajbj->ab", (A @ B.T).reshape(len(A) // k, k, len(B) // k, k)) / k  # noqa: E731
    scale = np.abs(J @ J.T).max()
    Theta, Theta_t, _, _ = train_test_ntk(cfg, theta, X, Xt, max_bytes=max_bytes, traced=True)
    np.testing.assert_allclose(Theta, trace(J, J), rtol=0, atol=1e-13 * scale)
    np.testing.assert_allclose(Theta_t, trace(Jt, J), rtol=0, atol=1e-13 * scale)
    np.testing.assert_allclose(empirical_ntk(cfg, theta, Xt, X, traced=True, max_bytes=max_bytes), Theta_t,
                               rtol=0, atol=1e-13 * scale)
    out = slice(cfg.num_params - (cfg.layer_sizes[-2] + 1) * k, None)  # W_out and b_out, last in the layout
    F, F_t, _, _ = train_test_ntk(cfg, theta, X, Xt, max_bytes=max_bytes, traced="output")
    np.testing.assert_allclose(F, trace(J[:, out], J[:, out]), rtol=0, atol=1e-13 * scale)
    np.testing.assert_allclose(F_t, trace(Jt[:, out], J[:, out]), rtol=0, atol=1e-13 * scale)
