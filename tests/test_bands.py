"""The 90% bands of predictor.bands: the linearisation gaps (loss and output space) against torch autograd, the
width term against the loss change of a perturbed residual, containment, recalibration, and the global
forecast's band in predict's results."""
import json

import numpy as np
import pytest

from agent.model import ModelConfig, init_params
from agent.spec import load_spec
from agent.swarm import Swarm
from predictor.bands import (_KernelProducts, anchored_band, band, output_gap, relative_half_width,
                             width_term)
from p2pntk.cli import main
from predictor.forecast import forecast
from predictor.ntk import train_test_ntk
from tests.torch_reference import half_mse, mlp, torch

pytestmark = pytest.mark.usefixtures("one_blas_thread")


def test_output_gap_matches_torch_autograd_nonlinear_and_linearised_descent():
    """Reference: nonlinear GD with autograd gradients, and GD on the first-order Taylor model
    f0 + J (theta - theta0) with J from torch.func.jacrev; the output gap is ||f_nl - f_lin||^2 / (2 n), with the
    kernel as a matrix and as products (``_KernelProducts``: backward and jvp)."""
    cfg = ModelConfig(kind="mlp", d=5, k=2, width=16, depth=1, activation="tanh", w_std=1.0, b_std=0.1, seed=3)
    theta0 = init_params(cfg, np.float64)
    rng = np.random.default_rng(0)
    X, Y = rng.standard_normal((6, 5)), rng.standard_normal((6, 2))
    alpha, rounds = 0.3, 12
    K = train_test_ntk(cfg, theta0, X, X[:1])[0]
    E = output_gap(cfg, theta0, X, Y, K, alpha, rounds)
    np.testing.assert_allclose(output_gap(cfg, theta0, X, Y, _KernelProducts(cfg, theta0, X), alpha, rounds), E,
                               rtol=1e-12, atol=1e-20)

    model = {"kind": "mlp", "depth": 1, "width": 16, "activation": "tanh", "w_std": 1.0, "b_std": 0.1}
    Xt, Yt, t0 = torch.tensor(X), torch.tensor(Y), torch.tensor(theta0)
    f = lambda th: mlp(th, Xt, 5, 2, model)  # noqa: E731
    J = torch.func.jacrev(f)(t0).reshape(-1, len(t0))
    f0 = f(t0)
    nl, lin, ref_E = t0.clone(), t0.clone(), []
    for _ in range(rounds + 1):
        th = nl.clone().requires_grad_(True)
        L_nl = half_mse(f(th), Yt)
        (g,) = torch.autograd.grad(L_nl, th)
        th_l = lin.clone().requires_grad_(True)
        L_lin = half_mse(f0 + (J @ (th_l - t0)).reshape(6, 2), Yt)
        (g_l,) = torch.autograd.grad(L_lin, th_l)
        with torch.no_grad():
            ref_E.append(((f(nl) - f0 - (J @ (lin - t0)).reshape(6, 2)) ** 2).sum().item() / (2 * 6))
        nl, lin = nl - alpha * g, lin - alpha * g_l
    np.testing.assert_allclose(E, ref_E, rtol=1e-6, atol=1e-18)
    assert E[0] == 0 and E[-1] > 0


def test_width_term_bounds_the_loss_change_of_a_moved_residual_and_is_tight_along_it():
    """Reference: L = ||r||^2 / (2 n) computed directly for residuals r + e with ||e||^2 / (2 n) = E."""
    rng = np.random.default_rng(2)
    n = 30
    for _ in range(20):
        r = rng.standard_normal(n)
        e = rng.standard_normal(n) * rng.uniform(1e-3, 1.0)
        L, E = r @ r / (2 * n), e @ e / (2 * n)
        moved = (r + e) @ (r + e) / (2 * n)
        assert abs(moved - L) / L <= width_term([L], [E])[0] * (1 + 1e-12)
        along = r * (1 + np.sqrt(E / L))                   # e parallel to r: the bound is reached
        np.testing.assert_allclose(abs(along @ along / (2 * n) - L) / L, width_term([L], [E])[0], rtol=1e-12)
    # the output gap's running maximum counts, over the forecast at each round
    np.testing.assert_allclose(width_term([1.0, 0.5, 0.25], [0.0, 0.01, 0.0]),
                               [0.0, 2 * np.sqrt(0.02) + 0.02, 2 * np.sqrt(0.04) + 0.04], rtol=1e-12)


def test_spread_and_width_add_in_quadrature():
    F, less, E = np.array([1.0, 0.8]), np.array([1.0, 0.86]), np.array([0.0, 0.0036])
    # spread 2 * 0.06 / 0.8 = 0.15; width 2 sqrt(0.0045) + 0.0045
    w = 2 * np.sqrt(0.0045) + 0.0045
    np.testing.assert_allclose(relative_half_width(F, less, E), [0.0, np.sqrt(0.15 ** 2 + w ** 2)], rtol=1e-12)


def _curves(rounds=40):
    t = np.arange(rounds + 1)
    F = np.exp(-0.05 * t)
    return F, F * (1 + 0.002 * t), np.minimum(1e-6 * t, 2e-5)


def test_band_contains_the_forecast_and_its_half_width_is_relative():
    F, less, gap = _curves()
    lo, hi = band(F, less, gap)
    h = relative_half_width(F, less, gap)
    assert np.all(lo <= F) and np.all(F <= hi) and np.all(lo >= 0)
    np.testing.assert_allclose((hi - lo) / 2, h * F, rtol=1e-12)
    np.testing.assert_allclose(h[0], 0.0)                       # round 0 is f(theta_0): known exactly
    assert np.all(np.diff(h) >= 0)


def test_recalibrated_band_holds_the_observed_rounds_exactly_and_is_narrower_beyond():
    F, less, gap = _curves()
    obs = 1.03 * F[:11] * (1 + 0.001 * np.arange(11))
    lo, hi = band(F, less, gap)
    lo2, hi2 = band(F, less, gap, observed=obs)
    np.testing.assert_array_equal(lo2[:11], obs)
    np.testing.assert_array_equal(hi2[:11], obs)
    mid = (lo2 + hi2) / 2
    np.testing.assert_allclose(mid[11:] / F[11:], obs[10] / F[10], rtol=1e-12)   # re-anchored on obs(R)
    assert np.all((hi2 - lo2)[11:] / mid[11:] < (hi - lo)[11:] / F[11:])        # narrower, relative to its centre
    assert np.all(hi2[11:] > lo2[11:])                                           # but never empty after R


def test_anchored_band_subtracts_relative_not_absolute_width_in_quadrature():
    """The loss decays: an absolute half-width at R would exceed every later one and empty the band. The terms
    add in quadrature, so what is left after R is sqrt(h^2 - h(R)^2)."""
    t = np.arange(21)
    F, h = np.exp(-0.3 * t), 0.01 * t
    lo, hi = anchored_band(F, h, observed=F[:6])
    np.testing.assert_allclose((hi - lo)[6:] / 2 / F[6:], np.sqrt(h[6:] ** 2 - h[5] ** 2), rtol=1e-12)


def _swarm(*overrides):
    return Swarm.from_spec(load_spec(None, ["model.width=256", "network.agents=4", "data.samples_per_agent=20",
                                             "train.rounds=30", "train.dtype=float64", *overrides]))


def test_global_band_is_measured_on_agent_zero_and_costs_little():
    sw = _swarm()
    res, _ = forecast(sw, band=True)
    b = res["train_loss_band"]
    L = np.asarray(res["train_loss"])
    lo, hi = np.asarray(b["lower"]), np.asarray(b["upper"])
    assert lo.shape == hi.shape == L.shape and np.all(lo <= L) and np.all(L <= hi)
    X, Y = sw.problem.agent_data(0)
    K = train_test_ntk(sw.cfg, sw.theta0, X, X[:1])[0]
    E = output_gap(sw.cfg, sw.theta0, X, Y, K, 0.5, 30)  # the dense kernel here, products in predict
    h = [width_term(agent, E) for agent in L]
    np.testing.assert_allclose(b["relative_half_width"], h, rtol=1e-9)
    assert "band_s" in res["timings"] and "train_loss_band" not in forecast(sw)[0]


@pytest.mark.parametrize("extra", [[], ["--no-band"]])
def test_predict_writes_the_band_unless_told_not_to(tmp_path, extra):
    out = tmp_path / "p.json"
    assert main(["predict", "--quiet", "--set", "model.width=128", "--set", "network.agents=3",
                 "--set", "train.rounds=10", "--out", str(out), *extra]) == 0
    res = json.loads(out.read_text())
    assert ("train_loss_band" in res) == (not extra)
    if not extra:
        assert len(res["train_loss_band"]["upper"]) == 3 and len(res["train_loss_band"]["upper"][0]) == 11
