"""Stability (docs/design.md, section 5): lr_max against real training and a brute-force spectral scan of an
independently built parameter-space system, Proposition 1 in reduced vs kernel coordinates."""
import numpy as np
import pytest

from agent.simulator import simulate
from agent.swarm import Swarm
from agent.spec import load_spec
from coordinator_free.topology import build_graph, mixing_matrix
from predictor.dynamics import KernelProblem, reduced_system
from predictor.forecast import kernel_problem
from predictor.stability import doubly_stochastic, lr_max, lr_max_exact, stability_report

pytestmark = pytest.mark.usefixtures("one_blas_thread")


@pytest.mark.parametrize("alg", ["dgd", "atc", "cta", "gt"])
def test_lr_max_is_the_edge_of_stability_of_real_affine_training(alg):
    # GT's unstable mode grows slowly just past the edge (rho(A) = 1.012 at 1.03 lr_max): more rounds
    rounds = 1500 if alg == "gt" else 300
    swarm = Swarm.from_spec(load_spec(None, ["model.kind=affine", "train.dtype=\"float64\"", f"train.rounds={rounds}",
                                             f"train.algorithm={alg}"]))
    edge = lr_max(kernel_problem(swarm), alg, verify=True)
    runs = {}
    for fraction in (0.97, 1.03):
        swarm.spec = swarm.spec.updated({"train.lr": fraction * edge})
        runs[fraction] = np.asarray(simulate(swarm)["train_loss"])
    calm, wild = runs[0.97], runs[1.03]
    step_calm, step_wild = np.abs(np.diff(calm)), np.abs(np.diff(wild))  # round-to-round changes
    assert np.all(np.isfinite(calm)) and calm[:, -1].max() < calm[:, 0].min()
    assert step_calm[:, -1].max() < 0.2 * step_calm[:, 50].max()  # the changes die out: converging
    assert wild[:, -1].max() > 20 * wild[:, 0].max() and step_wild[:, -1].max() > 100 * step_wild[:, 50].max()


def _parameter_space_rho(J, owner, W, alg, alpha):
    """rho of the parameter-space A of docs/design.md, section 5, built with kron (J full column rank: no null space)."""
    N, P = W.shape[0], J.shape[1]
    H = np.zeros((N * P, N * P))
    for q in range(N):
        Jq = J[owner == q]
        H[q * P:(q + 1) * P, q * P:(q + 1) * P] = Jq.T @ Jq / len(Jq)
    Wx, I = np.kron(W, np.eye(P)), np.eye(N * P)
    if alg == "gt":
        # state (v, y): v+ = W v - a y, y+ = W y + H (v+ - v). sum_q (y_q - H_q v_q) never changes, so P
        # eigenvalues sit at exactly 1 whatever alpha; the input never moves them: drop them.
        A = np.block([[Wx, -alpha * I], [H @ (Wx - I), Wx - alpha * H]])
        lam = np.linalg.eigvals(A)
        invariant = np.argsort(np.abs(lam - 1.0))[:P]
        return np.abs(np.delete(lam, invariant)).max()
    A = {"dgd": Wx - alpha * H, "atc": Wx @ (I - alpha * H), "cta": (I - alpha * H) @ Wx}[alg]
    return np.abs(np.linalg.eigvals(A)).max()


def _random_problem(seed, W, per_agent=4, P=3):
    rng = np.random.default_rng(seed)
    N = W.shape[0]
    M = N * per_agent
    J = rng.standard_normal((M, P)) * rng.uniform(0.3, 2.0, size=P)
    owner = np.repeat(np.arange(N), per_agent)
    z = np.zeros((1, 1))
    kp = KernelProblem(K=J @ J.T, K_test=np.zeros((1, M)), f0=rng.standard_normal((M, 1)), f0_test=z,
                       Y=rng.standard_normal((M, 1)), Y_test=z, agent_of_sample=owner, W=W)
    return kp, J, owner


def _indefinite_w(w: float, N: int = 5) -> np.ndarray:
    """A cycle with weight w on every edge: symmetric, doubly stochastic, lambda_min = 1 - 2w(1 + cos(pi/N))."""
    W = (1 - 2 * w) * np.eye(N)
    for q in range(N):
        W[q, (q + 1) % N] = W[(q + 1) % N, q] = w
    return W


@pytest.mark.parametrize("case", range(6))
@pytest.mark.parametrize("alg", ["dgd", "atc", "cta", "gt"])
def test_lr_max_matches_a_brute_force_scan_in_parameter_space(case, alg):
    W = mixing_matrix(build_graph(["cycle", "star", "path"][case], 5), "metropolis") if case < 3 \
        else _indefinite_w([0.4, 0.45, 0.49][case - 3])
    kp, J, owner = _random_problem(case if case < 3 else 7, W)
    edge = lr_max(kp, alg, verify=True)
    grid = np.linspace(0.005, 2.0, 400) * edge
    unstable = np.array([_parameter_space_rho(J, owner, W, alg, a) >= 1 for a in grid])
    first = grid[np.argmax(unstable)]
    assert not unstable[grid < edge * (1 - 1e-4)].any()
    assert edge <= first <= edge + (grid[1] - grid[0])
    assert _parameter_space_rho(J, owner, W, alg, edge * 1.001) > 1


def test_closed_form_lr_max_is_exact_for_dgd_and_psd_mixing():
    W = mixing_matrix(build_graph("cycle", 5), "lazy-metropolis")  # all eigenvalues >= 0
    kp, J, owner = _random_problem(7, W)
    assert lr_max_exact(W) == {"dgd": True, "atc": True, "cta": True, "gt": True}  # gt: an exact search
    for alg in ("dgd", "atc"):
        edge = lr_max(kp, alg)  # no dense verification
        below, above = (_parameter_space_rho(J, owner, W, alg, edge * f) for f in (1 - 1e-7, 1 + 1e-6))
        assert below < 1 < above
    assert lr_max_exact(_indefinite_w(0.45))["atc"] is False
    kp, J, owner = _random_problem(7, _indefinite_w(0.49))  # a complex pair leaves the unit disc first here
    bound, edge = lr_max(kp, "atc"), lr_max(kp, "atc", verify=True)
    assert edge < 0.99 * bound and _parameter_space_rho(J, owner, kp.W, "atc", 0.5 * (edge + bound)) > 1


def test_atc_and_cta_have_the_same_spectrum():
    kp, _, _ = _random_problem(2, mixing_matrix(build_graph("star", 5), "metropolis"))
    atc, cta = (np.sort_complex(np.linalg.eigvals(reduced_system(kp, a, 0.4).A)) for a in ("atc", "cta"))
    np.testing.assert_allclose(atc, cta, atol=1e-10)


def test_doubly_stochastic_check():
    W = mixing_matrix(build_graph("star", 5), "metropolis")
    assert doubly_stochastic(W)
    R = np.array([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5], [0.0, 0.5, 0.5]])  # rows sum to 1, columns do not
    assert not doubly_stochastic(R)
    assert not doubly_stochastic(np.array([[1.5, -0.5], [-0.5, 1.5]]))


def test_proposition_1_marginal_modes_vanish_in_reduced_coordinates():
    """Affine model: K has rank < M k, so in kernel coordinates c the flow matrix has eigenvalue 0
    (the consensus of c's in the null space of K, unobservable); the reduced realisation is minimal and
    strictly stable."""
    swarm = Swarm.from_spec(load_spec(None, ["model.kind=affine"]))  # 6 agents x 40 digits on a cycle
    kp = kernel_problem(swarm)
    alpha = 0.5
    D = [np.diag((np.repeat(kp.agent_of_sample, kp.k) == q) / kp.counts[q]) for q in range(kp.N)]
    Mx = np.kron(kp.W - np.eye(kp.N), np.eye(kp.Mk))
    for q in range(kp.N):
        Mx[q * kp.Mk:(q + 1) * kp.Mk, q * kp.Mk:(q + 1) * kp.Mk] -= alpha * D[q] @ kp.K
    assert np.linalg.eigvals(Mx).real.max() > -1e-10  # marginal in c-coordinates
    report = stability_report(kp, "dgd", alpha)
    assert report["doubly_stochastic"] and report["minimal"]
    assert report["max_real_eig"] < 0
    assert report["spectral_radius"] < 1 and report["stable"]
    assert report["states"] < kp.N * kp.Mk
    assert set(report["lr_max"]) == {"dgd", "atc", "cta", "gt"}


def test_minimality_finds_the_modes_hidden_from_every_agent():
    """4-agent cycle: W has the eigenvalue 1/3 twice, with eigenvectors (1, 0, -1, 0) and (0, 1, 0, -1).
    v = (u, 0, -u, 0) with u in the row space of J but orthogonal to the data of agents 0 and 2 is a mode
    no gradient excites and no agent's output sees; likewise for agents 1 and 3. Count them from X alone."""
    swarm = Swarm.from_spec(load_spec(None, ["model.kind=affine", "data.samples_per_agent=20", "network.agents=4"]))
    X, owner = swarm.problem.X_train, swarm.problem.agent_of_sample
    J = np.hstack([X, np.ones((len(X), 1))])  # the affine Jacobian up to column scales
    rank = np.linalg.matrix_rank
    hidden = sum(rank(J) - rank(J[np.isin(owner, pair)]) for pair in ([0, 2], [1, 3]))
    assert hidden > 0
    report = stability_report(kernel_problem(swarm), "dgd", 0.5)
    assert report["uncontrollable_modes"] == report["unobservable_modes"] == hidden
    assert not report["minimal"] and report["max_real_eig"] < 0


@pytest.mark.parametrize("topology", ["cycle", "star"])
def test_matrix_free_lr_max_equals_the_dense_closed_form(topology):
    """operator_lr_max (Lanczos on apply/adjoint) against lr_max on the dense kernel the operator stands
    for: the full kernel itself, and the traced operator's F_out (x) I + Theta_h (x) Omega built densely."""
    import dataclasses
    from predictor.dynamics import ExactOperator
    from predictor.kernel_operators import readout_mixing, traced_operator
    from predictor.ntk import train_test_ntk
    from predictor.stability import operator_lr_max
    swarm = Swarm.from_spec(load_spec(None, ["train.dtype=float64", "model.width=64", "network.agents=5",
                                             "data.samples_per_agent=6", "data.classes=[0, 1, 2]",
                                             f"network.topology={topology}"]))
    kp, p = kernel_problem(swarm), swarm.problem
    Theta = train_test_ntk(swarm.cfg, swarm.theta0, p.X_train, p.X_test, traced=True)[0]
    F = train_test_ntk(swarm.cfg, swarm.theta0, p.X_train, p.X_test, traced="output")[0]
    dense = dataclasses.replace(kp, K=np.kron(F, np.eye(3)) + np.kron(Theta - F, readout_mixing(swarm.cfg, swarm.theta0)))
    for alg in ("dgd", "atc"):
        assert operator_lr_max(ExactOperator(kp), alg) == pytest.approx(lr_max(kp, alg), rel=1e-9)
        assert operator_lr_max(traced_operator(swarm), alg) == pytest.approx(lr_max(dense, alg), rel=1e-9)
    assert operator_lr_max(traced_operator(swarm), "gt") is None  # no closed form: not searched matrix-free


@pytest.mark.parametrize("n,cluster", [(50, False), (900, False), (900, True)])
def test_lanczos_top_eigenvalue_equals_a_full_eigendecomposition(n, cluster):
    """top_eigenvalue (numpy Lanczos, what lr_max uses above DENSE_EIGH) against numpy's eigvalsh, on PSD
    matrices with a spread spectrum and with eight near-equal top eigenvalues (as when every agent's own
    kernel has about the same top), and on a float32 operator at its own tolerance."""
    from predictor.stability import top_eigenvalue
    rng = np.random.default_rng(n)
    Q = np.linalg.qr(rng.standard_normal((n, n)))[0]
    lam = np.sort(rng.uniform(0, 1, n) ** 3)
    if cluster:
        lam[-8:] = 1.0 + 1e-4 * np.arange(8)
    S = (Q * lam) @ Q.T
    want = np.linalg.eigvalsh(S)[-1]
    assert top_eigenvalue(lambda x: S @ x, n) == pytest.approx(want, rel=1e-12)
    S32 = S.astype(np.float32)
    assert top_eigenvalue(lambda x: S32 @ x.astype(np.float32), n, tol=1e-5) == pytest.approx(want, rel=1e-5)


def test_stability_above_the_matrix_size_takes_lr_max_from_jacobian_products(tmp_path, monkeypatch):
    """`p2pntk stability` with the kernel matrix, and with Jacobian products (forced by a zero matrix
    threshold; the default above 2048 outputs): the same lr_max for every closed form, dense checks skipped."""
    import json
    from p2pntk.cli import main
    sets = sum((["--set", a] for a in ["train.dtype=float64", "model.width=48", "network.agents=4",
                                       "data.samples_per_agent=8", "data.classes=[0, 1, 2]"]), [])
    assert main(["stability", *sets, "--quiet", "--out", str(tmp_path / "m.json")]) == 0
    monkeypatch.setattr("p2pntk.commands.stability.EXACT_MAX_OUTPUTS", 0)
    assert main(["stability", *sets, "--quiet", "--out", str(tmp_path / "j.json")]) == 0
    matrix, products = (json.loads((tmp_path / f"{n}.json").read_text()) for n in "mj")
    assert products["spectral_radius"] is None and "Jacobian" in products["note"]
    for alg in ("dgd", "atc", "cta"):
        assert products["lr_max"][alg] == pytest.approx(matrix["lr_max"][alg], rel=1e-9)
    assert products["stable"] == matrix["stable"]
