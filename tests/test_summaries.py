"""Board summaries (agent.summaries) and the forecast that uses them (predictor.summary_swarm): rows against
torch autograd, the full rotation against the exact global predictor, the aggregation rule, the file format."""
import numpy as np
import pytest

from agent.spec import load_spec
from agent.summaries import (MIN_MIX, load_summaries, load_summary, participation, save_summary, summarise,
                             basis, jacobian)
from agent.swarm import Swarm
from common.errors import UserError
from predictor.forecast import forecast
from predictor.local_forecast import LocalForecaster

pytestmark = pytest.mark.usefixtures("one_blas_thread")


def _swarm(*overrides):
    return Swarm.from_spec(load_spec(None, ["train.dtype=float64", "model.width=64", "network.agents=4",
                                            "data.samples_per_agent=12", "train.rounds=25", *overrides]))


def test_rows_are_vector_jacobian_products_from_torch_autograd():
    """Each row J^T u equals torch's gradient of sum(u * f(X)) for the independent model of torch_reference."""
    from tests.torch_reference import mlp, torch
    sw = _swarm("model.depth=2", "model.activation=tanh", "data.classes=[0,1,2]")
    X, Y = sw.problem.agent_data(1)
    s = summarise(sw.cfg, sw.theta0, X, Y, 1, kind="eigen", m=5, min_mix=2)
    J, _ = jacobian(sw.cfg, sw.theta0, X)
    U, _ = basis("eigen", J, Y, 5, min_mix=2)
    model = {"kind": "mlp", "depth": 2, "width": 64, "activation": "tanh", "w_std": 1.0, "b_std": 0.1}
    for u, row in zip(U.T, s.rows):
        th = torch.tensor(sw.theta0, requires_grad=True)
        out = mlp(th, torch.tensor(X), X.shape[1], 3, model)
        (g,) = torch.autograd.grad((out * torch.tensor(u.reshape(len(X), 3))).sum(), th)
        np.testing.assert_allclose(row, g.numpy(), rtol=1e-10, atol=1e-12)
    assert s.m == 5 and np.allclose(s.rows @ s.rows.T, np.diag(np.diag(s.rows @ s.rows.T)), atol=1e-9)


@pytest.mark.parametrize("classes", ["[0,1]", "[0,1,2]"])
def test_full_rotation_gives_the_exact_global_forecast(classes):
    """m = n k rows (min_mix = 1): every other board's gradient is exact, so q's forecast is the global one."""
    sw = _swarm(f"data.classes={classes}", "data.split=by-label")
    glob = forecast(sw)[0]
    p = sw.problem
    sums = {r: summarise(sw.cfg, sw.theta0, *p.agent_data(r), r, kind="eigen", m=10**6, min_mix=1) for r in range(4)}
    assert all(s.m == 12 * sw.cfg.k for s in sums.values())
    for q in (0, 3):
        X, Y = p.agent_data(q)
        f = LocalForecaster(sw.cfg, sw.theta0, X, Y, sw.W, q, p.X_test, p.Y_test, summaries=sums).forecast(
            "dgd", sw.spec.train.lr, 25)
        np.testing.assert_allclose(f["train_loss"], glob["train_loss"][q], rtol=1e-10)
        np.testing.assert_allclose(f["test_loss"], glob["test_loss"][q], rtol=1e-10)
        # and the swarm's mean loss that tune minimises with summaries is the global mean (a rotation keeps losses)
        np.testing.assert_allclose(f["swarm_train_loss"], np.mean(glob["train_loss"], axis=0), rtol=1e-9)


def test_every_row_mixes_at_least_min_mix_samples_and_small_classes_share_only_a_count():
    sw = _swarm("data.samples_per_agent=40", "data.split=dirichlet:0.3", "data.seed=3")
    p = sw.problem
    for r in range(4):
        X, Y = p.agent_data(r)
        J, _ = jacobian(sw.cfg, sw.theta0, X)
        for kind in ("eigen", "class-eigen", "class-mean"):
            U, labels = basis(kind, J, Y, 10, MIN_MIX)
            assert U.shape[1] <= len(X) // MIN_MIX
            assert np.all(participation(U, 1) >= MIN_MIX - 1e-9)
            counts = np.bincount((Y[:, 0] > 0).astype(int), minlength=2)
            assert all(counts[t] >= MIN_MIX for t in labels if t >= 0)
            np.testing.assert_allclose(U.T @ U, np.eye(U.shape[1]), atol=1e-10)


def test_missing_boards_fall_back_to_replicas():
    """No summaries: the forecast is the replica swarm's; some summaries: the others stay replicas."""
    sw = _swarm()
    p = sw.problem
    X, Y = p.agent_data(0)
    old = LocalForecaster(sw.cfg, sw.theta0, X, Y, sw.W, 0).forecast("dgd", 0.5, 20)["train_loss"]
    sums = {r: summarise(sw.cfg, sw.theta0, *p.agent_data(r), r, kind="eigen", m=10**6, min_mix=1) for r in (1, 2, 3)}
    own_only = LocalForecaster(sw.cfg, sw.theta0, X, Y, sw.W, 0, summaries={})
    np.testing.assert_allclose(own_only.forecast("dgd", 0.5, 20)["train_loss"], old)
    part = LocalForecaster(sw.cfg, sw.theta0, X, Y, sw.W, 0, summaries={2: sums[2]})
    kp = part.kernel_problem()
    assert kp.counts.tolist() == [12, 12, 12, 12] and np.isfinite(part.forecast("dgd", 0.5, 20)["train_loss"]).all()
    # the replicas' kernel blocks are the replica swarm's (dense) ones
    ref = LocalForecaster(sw.cfg, sw.theta0, X, Y, sw.W, 0).kernel_problem()
    np.testing.assert_allclose(kp.K[:24, :24], ref.K[:24, :24], rtol=1e-12)


def test_summary_files_round_trip_and_malformed_files_give_one_line_errors(tmp_path):
    sw = _swarm("data.samples_per_agent=30")
    X, Y = sw.problem.agent_data(1)
    s = summarise(sw.cfg, sw.theta0, X, Y, 1, kind="class-eigen")
    assert s.m == 3
    save_summary(tmp_path / "s1.npz", s)
    back = load_summary(tmp_path / "s1.npz", sw.cfg.num_params, sw.cfg.hash())
    np.testing.assert_array_equal(back.rows, s.rows)
    assert (back.board, back.kind, back.n, back.row_label.tolist()) == (1, "class-eigen", 30, s.row_label.tolist())
    assert set(load_summaries([tmp_path])) == {1}
    good = dict(np.load(tmp_path / "s1.npz"))

    def broken(name, **change):
        arrays = {**good, **change}
        for key in [k for k, v in change.items() if v is None]:
            arrays.pop(key)
        path = tmp_path / name
        np.savez(path, **arrays)
        return path
    (tmp_path / "text.npz").write_text("not a zip")
    cases = {tmp_path / "text.npz": "cannot be read",
             broken("no_rows.npz", rows=None): "missing arrays ['rows']",
             broken("nan.npz", rows=np.full_like(good["rows"], np.nan)): "rows must be a finite float",
             broken("ints.npz", rows=good["rows"].astype(np.int64)): "rows must be a finite float",
             broken("targets.npz", targets=np.zeros(len(good["targets"]) + 1)): "targets must be finite",
             broken("counts.npz", class_counts=np.array([1, 1])): "class_counts must be integers summing",
             broken("kind.npz", kind=np.array("raw-samples")): "kind 'raw-samples'",
             broken("version.npz", format=np.array(99)): "format 99",
             broken("board.npz", board=np.array([1, 2])): "board must be a scalar",
             broken("obj.npz", kind=np.array(["eigen", None], dtype=object)): "cannot be read",
             tmp_path / "absent.npz": "does not exist"}
    for path, text in cases.items():
        with pytest.raises(UserError) as err:
            load_summary(path, sw.cfg.num_params, sw.cfg.hash())
        msg = str(err.value)
        assert text in msg and str(path) in msg and "\n" not in msg, msg
    with pytest.raises(UserError, match="parameters, this model has"):
        load_summary(tmp_path / "s1.npz", sw.cfg.num_params + 1)
    with pytest.raises(UserError, match="model hash"):
        load_summary(tmp_path / "s1.npz", model_hash="0" * 16)
    save_summary(tmp_path / "dup" / "a.npz", s)
    save_summary(tmp_path / "dup" / "b.npz", s)
    with pytest.raises(UserError, match="board 1 already has a summary"):
        load_summaries([tmp_path / "dup"])


def test_summarise_then_predict_local_and_tune_with_summaries_and_band(tmp_path):
    """Boards write summaries; board 0 forecasts with them (the band is in the JSON, the plot is drawn) and
    tunes with them; a malformed summary is one line with exit status 2."""
    import json
    from host.loopback import loopback_addresses, write_node_files
    from p2pntk.cli import main
    sw = _swarm("data.samples_per_agent=30", "data.split=by-label", "train.lr=0.5", "train.rounds=30")
    nodes = write_node_files(sw, tmp_path / "nodes", loopback_addresses(4))
    for r in (1, 2, 3):
        assert main(["summarise", str(nodes[r]), "--out", str(tmp_path / "sums" / f"s{r}.npz")]) == 0
    out = tmp_path / "local.json"
    assert main(["predict-local", str(nodes[0]), "--summaries", str(tmp_path / "sums"), "--out", str(out),
                 "--plot", str(tmp_path / "band.png")]) == 0
    f = json.loads(out.read_text())
    b = f["train_loss_band"]
    assert f["summaries_from"] == [1, 2, 3] and len(b["lower"]) == 31 and (tmp_path / "band.png").exists()
    assert all(lo <= x <= hi for lo, x, hi in zip(b["lower"], f["train_loss"], b["upper"]))
    assert main(["tune", str(nodes[0]), "--quiet", "--budget-rounds", "20", "--grid", "lr=0.2,0.4",
                 "--summaries", str(tmp_path / "sums"), "--out", str(tmp_path / "t.json")]) == 0
    t = json.loads((tmp_path / "t.json").read_text())
    assert t["summaries_from"] == [1, 2, 3] and len(t["band"]["upper"]) == 21
    (tmp_path / "bad.npz").write_bytes(b"junk")
    assert main(["predict-local", str(nodes[0]), "--summaries", str(tmp_path / "bad.npz")]) == 2


def test_band_covers_training_and_observed_rounds_narrow_it():
    from agent.simulator import simulate
    sw = _swarm("data.samples_per_agent=30", "data.split=dirichlet:1.0", "train.lr=0.5", "train.rounds=40",
                "model.width=256")
    actual = simulate(sw)["train_loss"]
    p = sw.problem
    sums = {r: summarise(sw.cfg, sw.theta0, *p.agent_data(r), r) for r in range(4)}
    inside, widths = [], []
    for q in range(4):
        lf = LocalForecaster(sw.cfg, sw.theta0, *p.agent_data(q), sw.W, q, summaries=sums)
        b = [lf.forecast("dgd", 0.5, 40, band=True, observed=obs)["train_loss_band"]
             for obs in (None, actual[q][:11])]
        inside += [lo <= a <= hi for lo, a, hi in zip(b[0]["lower"], actual[q], b[0]["upper"])]
        widths.append([np.subtract(x["upper"], x["lower"])[-1] for x in b])
    assert np.mean(inside) >= 0.8
    assert all(after < before for before, after in widths)
