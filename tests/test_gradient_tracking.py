"""Gradient tracking (GT, DIGing) through the algorithm registry: it reaches the centralised least-squares
minimiser where DGD keeps its constant-step bias; minibatch GT is refused; the round loop over the
in-process gossip matches the stacked rule; the wire refuses a peer on another protocol version.
(Parity with the torch reference: test_simulator.py, test_loopback.py; the forecast: test_dynamics.py;
lr_max: test_stability.py.)"""
import subprocess
import sys
import threading

import numpy as np
import pytest
import zmq

from agent.algorithms import ALGORITHMS, swarm_step
from agent.rounds import run_rounds
from agent.simulator import simulate
from agent.spec import load_spec
from agent.swarm import Swarm
from common.errors import UserError
from coordinator_free.gossip import InProcessHub
from coordinator_free.transport import Transport, free_tcp_port
from coordinator_free.wire import PROTOCOL_VERSION
from predictor.forecast import kernel_problem
from predictor.stability import lr_max

pytestmark = pytest.mark.usefixtures("one_blas_thread")


def least_squares_minimiser(swarm: Swarm) -> np.ndarray:
    """argmin of sum_q L_q for the affine model, closed form: theta_0 + the min-norm correction."""
    p = swarm.problem
    d = p.X_train.shape[1]
    A = np.hstack([p.X_train / np.sqrt(d), 0.1 * np.ones((len(p.X_train), 1))])  # f = x W / sqrt(d) + 0.1 b
    w = 1 / np.sqrt(np.bincount(p.agent_of_sample)[p.agent_of_sample])             # L_q has 1 / (2 n_q)
    A, y = A * w[:, None], p.Y_train[:, 0] * w
    return swarm.theta0 + np.linalg.lstsq(A, y - A @ swarm.theta0, rcond=None)[0]


def test_gt_reaches_the_centralised_minimiser_and_dgd_keeps_its_bias(capsys):
    swarm = Swarm.from_spec(load_spec(None, ["model.kind=affine", "data.name=synthetic", "network.agents=4",
                                             "network.topology=cycle", "train.rounds=2000", "train.dtype=float64"]))
    kp = kernel_problem(swarm)
    lr = 0.5 * min(lr_max(kp, "dgd", verify=True), lr_max(kp, "gt", verify=True))
    star = least_squares_minimiser(swarm)
    distance = {}
    for alg in ("gt", "dgd"):
        swarm.spec = swarm.spec.updated({"train.algorithm": alg, "train.lr": lr})
        theta = simulate(swarm, keep_theta=True)["theta"]
        distance[alg] = np.linalg.norm(theta - star, axis=1) / np.linalg.norm(star)
    with capsys.disabled():
        print(f"\n  lr {lr:.4g}, 2000 rounds: distance to the minimiser, worst agent: "
              f"GT {distance['gt'].max():.2e}, DGD {distance['dgd'].max():.2e}")
    assert distance["gt"].max() < 1e-6
    assert distance["dgd"].min() > 1e-3  # DGD's constant-step bias: it stops short


def test_minibatch_gt_is_refused_with_one_line(tmp_path):
    with pytest.raises(UserError, match="train.batch = 8: train.algorithm = gt is exact only with full batches"):
        load_spec(None, ["train.algorithm=gt", "train.batch=8"])
    proc = subprocess.run([sys.executable, "-m", "p2pntk", "simulate", "--set", "train.algorithm=gt",
                           "--set", "train.batch=8", "--out", str(tmp_path / "o.json")], capture_output=True, text=True)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and "train.batch" in proc.stderr
    assert not (tmp_path / "o.json").exists()


def test_spec_and_node_files_carry_a_schema_version(tmp_path):
    f = tmp_path / "s.toml"
    f.write_text("schema_version = 7\n[train]\nlr = 0.1\n")
    with pytest.raises(UserError, match="schema_version = 7: this p2pntk reads spec schema version 1"):
        load_spec(f)
    f.write_text("schema_version = 1\n[train]\nlr = 0.1\n")
    assert load_spec(f).train.lr == 0.1


@pytest.mark.parametrize("alg", sorted(ALGORITHMS))
def test_round_loop_over_in_process_gossip_matches_the_stacked_rule(alg):
    """Every agent runs ``run_rounds`` in its own thread with the in-process hub; the result equals
    ``swarm_step`` on the stacked state (no sockets: protocol logic only)."""
    swarm = Swarm.from_spec(load_spec(None, ["model.width=32", "network.agents=5", "network.topology=star",
                                             "train.rounds=6", "train.dtype=float64", f"train.algorithm={alg}"]))
    learners, N, rounds, lr = swarm.learners(), swarm.n_agents, 6, 0.3
    rule = ALGORITHMS[alg]

    def grad_all(T):
        return np.stack([ln.grad(T[q], 0) for q, ln in enumerate(learners)])

    state = rule.init(np.tile(swarm.theta0, (N, 1)), grad_all)
    for _ in range(rounds):
        state = swarm_step(rule, swarm.W, state, grad_all, lr)
    hub, final = InProcessHub({q: list(swarm.graph.neighbors(q)) for q in range(N)}), [None] * N
    rows = swarm.rows()

    def agent(q):
        final[q] = run_rounds(rule, swarm.theta0, learners[q].grad, lr, rounds, hub.endpoint(q), rows[q],
                              lambda k, s, t: None)[0]
    threads = [threading.Thread(target=agent, args=(q,)) for q in range(N)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    np.testing.assert_allclose(np.stack(final), state[0], rtol=1e-13, atol=1e-13)


def test_handshake_refuses_a_peer_on_another_protocol_version():
    ctx = zmq.Context()
    port = free_tcp_port()
    raw = ctx.socket(zmq.PUSH)
    raw.setsockopt(zmq.LINGER, 0)
    try:
        with Transport(0, f"tcp://127.0.0.1:{port}", {1: f"tcp://127.0.0.1:{free_tcp_port()}"}, model_hash="m",
                       spec_hash="s", algorithm="gt", dtype="float64", shape=(4,), arrays=2, context=ctx) as t:
            raw.connect(f"tcp://127.0.0.1:{port}")
            old = b'{"v": 1, "type": "hello", "sender": 1, "model_hash": "m", "spec_hash": "s", "degree": 1, ' \
                  b'"heard": [0], "reply": false}'
            stop = threading.Event()
            sender = threading.Thread(target=lambda: [raw.send(old) or stop.wait(0.05) for _ in range(40)])
            sender.start()
            with pytest.raises(UserError) as err:
                t.handshake(1, timeout=2)
            stop.set()
            sender.join()
        msg = str(err.value)
        assert "peer 1" in msg and f"protocol version 1 but ours is {PROTOCOL_VERSION}" in msg
        assert "\n" not in msg
    finally:
        raw.close(0)
        ctx.term()


@pytest.mark.parametrize("naive", [False, True])
def test_a_gt_rejoiner_that_adopts_its_neighbours_state_keeps_the_exact_minimiser(naive):
    """agent.rounds.rejoin: an agent back from a pause adopts its neighbours' average through ``alg.adopt``.
    GT's rule keeps its own tracker (moved by its gradient's change), so the swarm still reaches the exact
    least-squares minimiser (closed form); taking the neighbours' tracker too would bias it for good."""
    rng = np.random.default_rng(0)
    N, d, n = 4, 5, 8
    A, b = rng.standard_normal((N, n, d)), rng.standard_normal((N, n))
    star = np.linalg.solve(sum(a.T @ a for a in A), sum(a.T @ y for a, y in zip(A, b)))
    W = np.array([[1, 1, 0, 1], [1, 1, 1, 0], [0, 1, 1, 1], [1, 0, 1, 1]]) / 3  # the 4-cycle, Metropolis
    grad_all = lambda X: np.einsum("qnd,qn->qd", A, np.einsum("qnd,qd->qn", A, X) - b)  # noqa: E731
    gt, alpha = ALGORITHMS["gt"], 0.01  # stable here (0.02 diverges)
    state = gt.init(np.zeros((N, d)), grad_all)
    for _ in range(20):  # back while the trackers still disagree
        state = swarm_step(gt, W, state, grad_all, alpha)
    heard = tuple(0.5 * (m[1] + m[3]) for m in gt.outgoing(state, None, alpha))  # neighbours 1 and 3 of agent 0
    grad_0 = lambda x: A[0].T @ (A[0] @ x - b[0])  # noqa: E731
    adopted = (heard[0], heard[1], grad_0(heard[0])) if naive else gt.adopt(tuple(s[0] for s in state), heard, grad_0)
    state = tuple(np.vstack([new[None], s[1:]]) for new, s in zip(adopted, state))
    for _ in range(3000):
        state = swarm_step(gt, W, state, grad_all, alpha)
    distance = np.abs(state[0] - star).max() / np.abs(star).max()
    assert distance > 1e-3 if naive else distance < 1e-9
