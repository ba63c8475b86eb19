"""Models against torch autograd and finite differences (docs/design.md, section 3)."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from agent import model as M
from agent.model import ModelConfig
from tests.torch_reference import half_mse, mlp

CASES = [
    ("affine", 0, "relu"),
    ("mlp", 1, "relu"),
    ("mlp", 1, "erf"),
    ("mlp", 2, "tanh"),
    ("mlp", 3, "erf"),
]


def _data(d=5, n=7, k=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)), rng.standard_normal((n, k))


@pytest.mark.parametrize("kind,depth,act", CASES)
def test_forward_and_grad_match_torch_autograd(kind, depth, act):
    X, Y = _data()
    cfg = ModelConfig(kind=kind, d=5, k=3, width=11, depth=depth, activation=act, w_std=1.3, b_std=0.2, seed=3)
    theta = M.init_params(cfg, np.float64)
    value, grad = M.loss_and_grad(cfg, theta, X, Y)
    t = torch.tensor(theta, requires_grad=True)
    ref = half_mse(mlp(t, torch.tensor(X), 5, 3, vars(cfg) | {"kind": kind}), torch.tensor(Y))
    ref.backward()
    np.testing.assert_allclose(M.forward(cfg, theta, X),
                               mlp(torch.tensor(theta), torch.tensor(X), 5, 3, vars(cfg)).numpy(), rtol=1e-12)
    assert value == pytest.approx(float(ref.detach()), rel=1e-12)
    np.testing.assert_allclose(grad, t.grad.numpy(), rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("kind,depth,act", [("mlp", 2, "tanh"), ("affine", 0, "relu"), ("mlp", 1, "erf")])
def test_grad_matches_central_finite_differences(kind, depth, act):
    X, Y = _data(k=1)
    cfg = ModelConfig(kind=kind, d=5, k=1, width=6, depth=depth, activation=act, seed=1)
    theta = M.init_params(cfg, np.float64)
    _, grad = M.loss_and_grad(cfg, theta, X, Y)
    eps = 1e-6
    fd = np.empty_like(theta)
    for i in range(theta.size):
        e = np.zeros_like(theta)
        e[i] = eps
        fd[i] = (M.loss(cfg, theta + e, X, Y) - M.loss(cfg, theta - e, X, Y)) / (2 * eps)
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-9)


def test_float32_stays_float32_and_matches_float64():
    X, Y = _data()
    cfg = ModelConfig(kind="mlp", d=5, k=3, width=64, depth=2, activation="erf")
    t64 = M.init_params(cfg, np.float64)
    t32 = M.init_params(cfg, np.float32)
    v32, g32 = M.loss_and_grad(cfg, t32, X.astype(np.float32), Y.astype(np.float32))
    v64, g64 = M.loss_and_grad(cfg, t64, X, Y)
    assert g32.dtype == np.float32 and M.forward(cfg, t32, X).dtype == np.float32
    assert v32 == pytest.approx(v64, rel=1e-5)
    np.testing.assert_allclose(g32, g64, rtol=1e-3, atol=1e-5 * np.abs(g64).max())


def test_init_layout_follows_design():
    """theta_0: one standard_normal(shape) call per tensor from default_rng(seed), in flat order."""
    cfg = ModelConfig(kind="mlp", d=4, k=2, width=3, depth=2, seed=9)
    theta = M.init_params(cfg, np.float64)
    rng = np.random.default_rng(9)
    expected = [rng.standard_normal(s) for s in [(4, 3), (3,), (3, 3), (3,), (3, 2), (2,)]]
    assert cfg.num_params == sum(e.size for e in expected) == theta.size
    views = M.unflatten(cfg, theta)
    for v, e in zip(views, expected):
        np.testing.assert_array_equal(v, e)
    assert [n for n, _ in cfg.shapes()] == ["W_1", "b_1", "W_2", "b_2", "W_out", "b_out"]


def test_affine_closed_form():
    """Affine model: f(x) = (w_std/sqrt(d)) x @ W + b_std b, and grad in closed form."""
    X, Y = _data(d=4, n=6, k=2)
    cfg = ModelConfig(kind="affine", d=4, k=2, w_std=2.0, b_std=0.5, seed=2)
    theta = M.init_params(cfg, np.float64)
    W, b = theta[:8].reshape(4, 2), theta[8:]
    F = 2.0 / 2.0 * X @ W + 0.5 * b
    np.testing.assert_allclose(M.forward(cfg, theta, X), F, rtol=1e-13)
    R = (F - Y) / 6
    gW, gb = (X.T @ R) * 1.0, 0.5 * R.sum(0)
    np.testing.assert_allclose(M.loss_and_grad(cfg, theta, X, Y)[1], np.concatenate([gW.ravel(), gb]), rtol=1e-12)


def test_model_hash_depends_on_architecture_and_seed():
    a = ModelConfig(kind="mlp", d=4, k=1, width=8)
    assert a.hash() == ModelConfig(kind="mlp", d=4, k=1, width=8).hash()
    assert a.hash() != ModelConfig(kind="mlp", d=4, k=1, width=8, seed=1).hash()
    assert a.hash() != ModelConfig(kind="mlp", d=4, k=1, width=9).hash()


def test_bad_model_config_names_the_key():
    from common.errors import UserError
    with pytest.raises(UserError, match="model.activation"):
        ModelConfig(kind="mlp", d=2, k=1, activation="gelu")


@pytest.mark.parametrize("kind,depth,act", CASES)
@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("group_bytes", [M.GROUP_BYTES, 1])
def test_batched_linearisation_matches_torch_jvp_and_vjp(kind, depth, act, shared, group_bytes, monkeypatch):
    """Linearisation.jvp / .vjp over a batch of 3 tangents and residuals, on one input set shared by the
    batch or on one set per row (the padded agents of the exact forecast), against torch's jvp and vjp;
    in one group and one row at a time."""
    monkeypatch.setattr(M, "GROUP_BYTES", group_bytes)
    cfg = ModelConfig(kind=kind, d=5, k=3, width=11, depth=depth, activation=act, w_std=1.3, b_std=0.2, seed=3)
    theta = M.init_params(cfg, np.float64)
    rng = np.random.default_rng(8)
    X = rng.standard_normal((7, 5)) if shared else rng.standard_normal((3, 7, 5))
    V, R = rng.standard_normal((3, cfg.num_params)), rng.standard_normal((3, 7, 3))
    lin = M.Linearisation(cfg, theta, X)
    want_f, want_jv, want_vjp = [], [], []
    for b in range(3):
        f = lambda t, x=torch.tensor(X if shared else X[b]): mlp(t, x, 5, 3, vars(cfg) | {"kind": kind})  # noqa: E731
        out, jv = torch.autograd.functional.jvp(f, torch.tensor(theta), torch.tensor(V[b]))
        want_f.append(out.numpy()), want_jv.append(jv.numpy())
        want_vjp.append(torch.autograd.functional.vjp(f, torch.tensor(theta), torch.tensor(R[b]))[1].numpy())
    np.testing.assert_allclose(np.broadcast_to(lin.outputs, (3, 7, 3)), want_f, rtol=1e-12)
    np.testing.assert_allclose(lin.jvp(V), want_jv, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(lin.vjp(R), want_vjp, rtol=1e-10, atol=1e-13)
    lin32 = M.Linearisation(cfg, theta, X, np.float32)
    assert lin32.jvp(V).dtype == lin32.vjp(R).dtype == np.float32
    np.testing.assert_allclose(lin32.vjp(R), want_vjp, rtol=1e-4, atol=1e-5 * np.abs(want_vjp).max())
