"""The linearised dynamics (docs/design.md, section 5) against independent references: a parameter-space
linearisation built from the problem file with torch.func, real training of the affine model, the
matrix exponential, an ODE solver, and (slow) wide-network training."""
import json

import numpy as np
import pytest
import scipy.linalg as sl
from scipy.integrate import solve_ivp

torch = pytest.importorskip("torch")
from torch.func import jacrev

from agent.simulator import simulate
from agent.swarm import Swarm
from agent.spec import load_spec
from p2pntk.cli import main
from predictor.compare import compare_results, trajectory_error
from predictor.dynamics import Flow, discrete_rounds, own_outputs, reduced_system
from predictor.forecast import forecast, kernel_problem
from tests.torch_reference import mlp

pytestmark = pytest.mark.usefixtures("one_blas_thread")

SMALL = ["data.samples_per_agent=10", "data.test_samples=20", "network.agents=4", "train.rounds=25",
         "train.dtype=\"float64\""]


def parameter_space_linearisation(problem_path: str, spec: dict) -> dict:
    """docs/design.md, section 5 in parameter space, round by round, from the problem file alone (torch, float64).

    v_q = theta_q - theta_0; f = f0 + J v; H_q = J_q^T J_q / n_q, b_q = J_q^T (f0_q - y_q) / n_q:
    DGD v+ = W v - a (H v + b);  ATC v+ = W (v - a (H v + b));  CTA p = W v, v+ = p - a (H p + b);
    GT v+ = W v - a y, y+ = W y + (H v+ + b) - (H v + b), y(0) = H v(0) + b.
    """
    z = np.load(problem_path)
    X, Xt = torch.tensor(z["X_train"]), torch.tensor(z["X_test"])
    Y, Yt = torch.tensor(z["Y_train"]), torch.tensor(z["Y_test"])
    owner, W, theta0 = z["agent_of_sample"], torch.tensor(z["W"]), torch.tensor(z["theta0"])
    N, (M, k), P = W.shape[0], Y.shape, theta0.numel()
    f = lambda t, x: mlp(t, x, X.shape[1], k, spec["model"])  # noqa: E731
    J, Jt = jacrev(f)(theta0, X).reshape(M, k, P), jacrev(f)(theta0, Xt).reshape(-1, P)
    f0, f0t = f(theta0, X), f(theta0, Xt).reshape(-1)
    rows = [torch.tensor(np.flatnonzero(owner == q)) for q in range(N)]
    Jq = [J[r].reshape(-1, P) for r in rows]
    rq = [(f0[r] - Y[r]).reshape(-1) for r in rows]

    def grad(V):  # row q: H_q v_q + b_q
        return torch.stack([Jq[q].T @ (Jq[q] @ V[q] + rq[q]) / len(rows[q]) for q in range(N)])

    alg, a, rounds = spec["train"]["algorithm"], spec["train"]["lr"], spec["train"]["rounds"]
    V = torch.zeros(N, P, dtype=torch.float64)
    Y_track = grad(V)  # GT: y_q(0) = grad L_q(theta_0), then y+ = W y + grad(v+) - grad(v)
    out = {"train_loss": [[] for _ in range(N)], "test_loss": [[] for _ in range(N)]}
    for step in range(rounds + 1):
        for q in range(N):
            out["train_loss"][q].append(float(((Jq[q] @ V[q] + rq[q]) ** 2).sum()) / (2 * len(rows[q])))
            out["test_loss"][q].append(float(((f0t + Jt @ V[q] - Yt.reshape(-1)) ** 2).sum()) / (2 * len(Yt)))
        if step == rounds:
            break
        if alg == "gt":
            V_next = W @ V - a * Y_track
            Y_track = W @ Y_track + grad(V_next) - grad(V)
            V = V_next
        elif alg == "dgd":
            V = W @ V - a * grad(V)
        elif alg == "atc":
            V = W @ (V - a * grad(V))
        else:
            Phi = W @ V
            V = Phi - a * grad(Phi)
    out["theta"] = (theta0 + V).numpy()
    return out


@pytest.mark.parametrize("alg", ["dgd", "atc", "cta", "gt"])
@pytest.mark.parametrize("model", [
    ["model.width=48", "model.depth=2", "model.activation=tanh", "data.classes=[0, 1, 2]", "train.lr=0.4"],
    ["model.width=64", "model.depth=1", "model.activation=relu", "train.lr=0.8", "network.topology=star"],
])
@pytest.mark.parametrize("products", ["matrix", "jacobian"])
def test_predict_matches_parameter_space_linearisation(tmp_path, monkeypatch, alg, model, products):
    """The exact forecast, with the kernel as a matrix and as Jacobian products (forced here by a zero
    matrix threshold; it is the default above EXACT_MAX_OUTPUTS), against the torch reference."""
    if products == "jacobian":
        monkeypatch.setattr("predictor.forecast.EXACT_MAX_OUTPUTS", 0)
    args = SMALL + model + [f"train.algorithm={alg}"]
    sets = sum((["--set", a] for a in args), [])
    out, prob, params = tmp_path / "p.json", tmp_path / "prob.npz", tmp_path / "theta.npz"
    assert main(["predict", *sets, "--kernel", "exact", "--out", str(out), "--save-problem", str(prob),
                 "--save-params", str(params), "--quiet"]) == 0
    pred = json.loads(out.read_text())
    assert pred["kernel_products"] == products and pred["kernel_exact"]
    ref = parameter_space_linearisation(str(prob), pred["spec"])
    assert pred["stable"]
    for curve in ("train_loss", "test_loss"):
        np.testing.assert_allclose(pred[curve], ref[curve], rtol=1e-8, atol=0)
    theta = np.load(params)["theta"][-1]
    np.testing.assert_allclose(theta, ref["theta"], rtol=0, atol=1e-8 * np.abs(ref["theta"]).max())


def test_jacobian_products_equal_the_kernel_matrix_with_uneven_agents_and_minibatches():
    """JacobianOperator (parameter coordinates) against ExactOperator (the kernel matrix) round by round:
    agents holding 7 to 13 samples (padded rows), minibatches of 5, all four algorithms, and lr_max."""
    import dataclasses
    from predictor.dynamics import ExactOperator, operator_rounds
    from predictor.kernel_operators import JacobianOperator
    from predictor.stability import lr_max_all
    swarm = Swarm.from_spec(load_spec(None, SMALL + ["model.width=40", "model.depth=2", "data.classes=[0, 1, 2]"]))
    owner = swarm.problem.agent_of_sample.copy()
    owner[np.flatnonzero(owner == 0)[:3]] = 1  # agent 0 keeps 7 samples, agent 1 has 13
    swarm.problem = dataclasses.replace(swarm.problem, agent_of_sample=owner)
    matrix, products = ExactOperator(kernel_problem(swarm)), JacobianOperator(swarm)
    assert sorted(np.bincount(owner)) == [7, 10, 10, 13]
    for alg in ("dgd", "atc", "cta", "gt"):
        for batch in ("full", 5):
            want = operator_rounds(matrix, alg, 0.3, 12, batch=batch, seed=4)
            got = operator_rounds(products, alg, 0.3, 12, batch=batch, seed=4)
            for a, b in zip(got[:2], want[:2]):
                np.testing.assert_allclose(a, b, rtol=0, atol=1e-12 * np.abs(b).max())
    want, got = lr_max_all(matrix), lr_max_all(products)
    assert want.keys() == got.keys() and all(abs(got[a] - want[a]) <= 1e-10 * want[a] for a in want)


@pytest.mark.parametrize("alg", ["dgd", "atc", "cta"])
def test_affine_forecast_equals_training_at_any_stable_rate(alg):
    swarm = Swarm.from_spec(load_spec(None, ["model.kind=affine", "train.dtype=\"float64\"",
                                             f"train.algorithm={alg}", "network.topology=complete"]))
    kp = kernel_problem(swarm)
    edge = forecast(swarm, kp=kp)[0]["lr_max"][alg]
    for fraction in (0.01, 0.3, 0.7, 0.96):
        swarm.spec = swarm.spec.updated({"train.lr": fraction * edge})
        pred, actual = forecast(swarm, kp=kp)[0], simulate(swarm)
        assert compare_results(pred, actual)["max"] <= 1e-9, fraction


def test_minibatch_forecast_follows_the_same_batches_as_training():
    swarm = Swarm.from_spec(load_spec(None, ["model.kind=affine", "train.dtype=\"float64\"", "train.batch=7",
                                             "train.algorithm=cta", "train.rounds=40"]))
    assert compare_results(forecast(swarm)[0], simulate(swarm))["max"] <= 1e-9


@pytest.mark.parametrize("alg", ["dgd", "atc", "cta"])
def test_flow_and_discrete_agree_at_small_learning_rate(alg):
    spec = load_spec(None, SMALL + ["model.width=256", "train.lr=0.01", "train.rounds=100",
                                    f"train.algorithm={alg}"])
    swarm = Swarm.from_spec(spec)
    kp = kernel_problem(swarm)
    disc, flow = forecast(swarm, kp=kp)[0], forecast(swarm, "flow", kp=kp)[0]
    assert compare_results(flow, disc)["max"] < 0.01


def _small_problem(alg="atc", lr=0.3):
    swarm = Swarm.from_spec(load_spec(None, SMALL + ["model.width=32", "network.agents=3", "data.samples_per_agent=4",
                                                     f"train.algorithm={alg}", f"train.lr={lr}"]))
    return kernel_problem(swarm)


@pytest.mark.parametrize("alg", ["dgd", "atc"])
def test_phi_is_the_matrix_exponential_and_a_semigroup(alg):
    flow = Flow(_small_problem(alg), alg, 0.3)
    Mx = flow.system.A - np.eye(flow.n)
    t = np.array([0.0, 0.7, 3.0, 12.5])
    Phi = flow.phi(t)
    for s, P in zip(t, Phi):
        np.testing.assert_allclose(P, sl.expm(Mx * s), rtol=0, atol=1e-10)
    np.testing.assert_allclose(flow.phi(5.0, 2.0) @ flow.phi(2.0, 0.5), flow.phi(5.0, 0.5), atol=1e-10)


@pytest.mark.parametrize("alg", ["dgd", "cta"])
def test_flow_state_solves_the_ode(alg):
    flow = Flow(_small_problem(alg), alg, 0.3)
    Mx, Bu = flow.system.A - np.eye(flow.n), flow.system.B @ flow.system.u
    t = np.linspace(0, 20, 9)
    ode = solve_ivp(lambda _, z: Mx @ z + Bu, (0, 20), np.zeros(flow.n), t_eval=t, rtol=1e-11, atol=1e-13,
                    method="DOP853")
    np.testing.assert_allclose(flow.state(t), ode.y.T, rtol=0, atol=1e-8 * np.abs(ode.y).max())


@pytest.mark.parametrize("alg", ["dgd", "atc", "cta"])
def test_reduced_system_iterates_to_the_same_outputs_as_kernel_rounds(alg):
    kp = _small_problem(alg)
    own, _, _ = discrete_rounds(kp, alg, 0.3, 15)
    sys_ = reduced_system(kp, alg, 0.3)
    z = np.zeros(sys_.A.shape[0])
    for r in range(16):
        C = z.reshape(kp.N, -1) @ sys_.R_inv.T
        np.testing.assert_allclose(own_outputs(kp, C), own[r], rtol=0, atol=1e-9)
        z = sys_.A @ z + sys_.B @ sys_.u


def test_trajectory_error_definition():
    assert trajectory_error([3.0, 4.0], [3.0, 4.0]) == 0
    assert trajectory_error([0.0, 0.0], [3.0, 4.0]) == pytest.approx(1.0)
    assert trajectory_error([3.0, 5.0], [3.0, 4.0]) == pytest.approx(1 / 5)


@pytest.mark.slow
def test_wide_network_forecast_within_two_percent_of_training():
    """Acceptance: width 4096, 6 agents on a cycle, 40 digits each (0/1), lr 0.5, 100 rounds."""
    swarm = Swarm.from_spec(load_spec(None, ["model.width=4096", "network.agents=6", "network.topology=cycle",
                                             "data.samples_per_agent=40", "data.classes=[0, 1]", "train.lr=0.5",
                                             "train.rounds=100", "train.dtype=\"float64\""]))
    errors = compare_results(forecast(swarm)[0], simulate(swarm))
    assert max(errors["train_loss"]) < 0.02 and max(errors["test_loss"]) < 0.02, errors


def _structured_reference(swarm):
    """The structured kernels built from torch Jacobians alone: (K_out, Theta_hidden, Theta_all, Omega) on
    [X_train; X_test] x X_train. K_out is the output layer's Jacobian Gram (M+T) k x M k; the Thetas are
    output traces (1/k) sum_j J_j J_j^T; Omega = k W_out^T W_out / tr(W_out^T W_out)."""
    p, spec = swarm.problem, swarm.spec.to_dict()
    X = torch.tensor(np.vstack([p.X_train, p.X_test]))
    theta0 = torch.tensor(swarm.theta0, dtype=torch.float64)
    k, M = p.Y_train.shape[1], len(p.X_train)
    J = jacrev(lambda t: mlp(t, X, X.shape[1], k, spec["model"]))(theta0).reshape(len(X) * k, -1).numpy()
    w = swarm.cfg.layer_sizes[-2]
    out = slice(J.shape[1] - (w + 1) * k, None)
    trace = lambda A: np.einsum("ajbj->ab", (A @ A[:M * k].T).reshape(len(X), k, M, k)) / k  # noqa: E731
    W_out = swarm.theta0[out][:w * k].reshape(w, k)
    Omega = W_out.T @ W_out
    return J[:, out] @ J[:M * k, out].T, trace(J) - trace(J[:, out]), trace(J), Omega * (k / np.trace(Omega))


def _dense(kp, K_all):
    """kp with its kernel replaced by K_all ((M+T) k x M k)."""
    import dataclasses
    return dataclasses.replace(kp, K=K_all[:kp.Mk], K_test=K_all[kp.Mk:])


STRUCTURED = SMALL + ["model.width=48", "model.depth=2", "model.activation=tanh", "data.classes=[0, 1, 2]",
                      "train.lr=0.4", "train.rounds=15"]


@pytest.mark.parametrize("alg", ["dgd", "atc", "cta", "gt"])
def test_traced_and_landmark_operators_run_the_rounds_of_their_dense_kernels(alg):
    """The traced operator is the dense kernel F_out (x) I + Theta_h (x) Omega; landmarks on every sample are
    Theta (x) I, and on half of them its Nystrom approximation: each against dense rounds on that kernel,
    built from torch Jacobians."""
    from predictor.dynamics import operator_rounds
    from predictor.kernel_operators import landmark_operator, landmarks, traced_operator
    swarm = Swarm.from_spec(load_spec(None, STRUCTURED))
    kp = kernel_problem(swarm)
    K_out, Theta_h, Theta, Omega = _structured_reference(swarm)
    k, M = kp.k, len(kp.Y)
    chosen = landmarks(kp.agent_of_sample, M // 2, swarm.spec.data.seed)
    nystrom = Theta[:, chosen] @ np.linalg.pinv(Theta[np.ix_(chosen, chosen)]) @ Theta[:M][:, chosen].T
    cases = [(traced_operator(swarm), K_out + np.kron(Theta_h, Omega)),
             (landmark_operator(swarm, M, seed=swarm.spec.data.seed), np.kron(Theta, np.eye(k))),
             (landmark_operator(swarm, M // 2, seed=swarm.spec.data.seed), np.kron(nystrom, np.eye(k)))]
    for op, K_all in cases:
        want = discrete_rounds(_dense(kp, K_all), alg, 0.4, 15)
        got = operator_rounds(op, alg, 0.4, 15)
        for a, b in zip(got[:2], want[:2]):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-9 * np.abs(b).max())


@pytest.mark.parametrize("alg", ["dgd", "gt"])
def test_traced_kernel_is_exact_for_the_affine_model(tmp_path, alg):
    """Affine model, three outputs: K = F (x) I_k exactly, so --kernel traced matches the parameter-space
    linearisation (and training) like the full kernel."""
    args = SMALL + ["model.kind=affine", "data.classes=[0, 1, 2]", f"train.algorithm={alg}"]
    sets = sum((["--set", a] for a in args), [])
    out, prob, params = tmp_path / "p.json", tmp_path / "prob.npz", tmp_path / "theta.npz"
    assert main(["predict", *sets, "--kernel", "traced", "--out", str(out), "--save-problem", str(prob),
                 "--save-params", str(params), "--quiet"]) == 0
    pred = json.loads(out.read_text())
    assert pred["kernel"] == "traced" and pred["kernel_exact"] is True
    ref = parameter_space_linearisation(str(prob), pred["spec"])
    for curve in ("train_loss", "test_loss"):
        np.testing.assert_allclose(pred[curve], ref[curve], rtol=1e-8, atol=0)
    theta = np.load(params)["theta"][-1]
    np.testing.assert_allclose(theta, ref["theta"], rtol=0, atol=1e-8 * np.abs(ref["theta"]).max())


def test_kernel_choice():
    from predictor.forecast import choose_kernel
    P = 64 * 1024 + 1024 + 1024 * 10 + 10  # width 1024 on the digits, ten classes
    assert choose_kernel("auto", 40, 3, params=P) == "matrix" and choose_kernel("auto", 1280, 10, params=P) == "traced"
    assert choose_kernel("auto", 12800, 10, params=P) == "jacobian"
    assert choose_kernel("auto", 12800, 10, "flow", params=P) == "matrix"
    assert choose_kernel("exact", 1280, 10, params=P) == "jacobian" and choose_kernel("exact", 100, 10) == "matrix"
    # the affine model on ten classes has P = 650: its Jacobian products cost less than the traced kernel
    assert choose_kernel("auto", 1280, 10, params=650) == "jacobian"
    assert choose_kernel("landmarks", 40, 3) == "landmarks"
