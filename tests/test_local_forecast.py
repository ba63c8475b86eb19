"""On-device forecast (replica swarm) and the tuner: closed forms, accuracy against training, stability."""
import json

import numpy as np
import pytest

from agent.simulator import simulate
from agent.swarm import Swarm
from agent.spec import load_spec
from p2pntk.cli import main
from predictor.compare import trajectory_error
from predictor.forecast import forecast
from predictor.local_forecast import LocalForecaster
from predictor.ntk import empirical_ntk
from predictor.tune import SAFETY, lr_grid, parse_grid, tune


def _swarm(*overrides):
    return Swarm.from_spec(load_spec(None, ["train.dtype=float64", *overrides]))


def test_exact_copies_without_specific_part_is_local_gradient_descent_closed_form():
    """delta = 0 and exact copies: every replica agent runs GD on q's data, r(t) = (I - alpha K / n)^t r(0)."""
    sw = _swarm("model.width=256", "network.agents=5", "data.samples_per_agent=12", "network.topology=star")
    X, Y = sw.problem.agent_data(2)
    lf = LocalForecaster(sw.cfg, sw.theta0, X, Y, sw.W, 2, balance=False)
    got = lf.forecast("atc", 0.7, 30, delta_scale=0.0)["train_loss"]
    from agent.model import forward
    K = empirical_ntk(sw.cfg, sw.theta0, X)
    r = (forward(sw.cfg, sw.theta0, X) - Y).ravel()
    step = np.eye(len(r)) - 0.7 * K / len(X)
    expected = []
    for _ in range(31):
        expected.append(r @ r / (2 * len(X)))
        r = step @ r
    np.testing.assert_allclose(got, expected, rtol=1e-9)


def test_local_forecast_iid_within_5_percent_of_training_and_by_label_reported():
    """The acceptance setup: width 2048, 8 agents on a cycle, iid digits 0/1 (30 each), DGD lr 0.5, 100 rounds."""
    errors = {}
    for split in ("iid", "by-label"):
        sw = _swarm("model.width=2048", "network.agents=8", f"data.split={split}", "data.samples_per_agent=30")
        actual, glob = simulate(sw), forecast(sw)[0]
        p = sw.problem
        errs = []
        for q in range(8):
            X, Y = p.agent_data(q)
            f = LocalForecaster(sw.cfg, sw.theta0, X, Y, sw.W, q, p.X_test, p.Y_test).forecast("dgd", 0.5, 100)
            errs.append((trajectory_error(f["train_loss"], actual["train_loss"][q]),
                         trajectory_error(f["train_loss"], glob["train_loss"][q])))
        errors[split] = np.array(errs)
    assert errors["iid"][:, 0].max() < 0.05 and errors["iid"][:, 1].max() < 0.05
    assert errors["by-label"][:, 0].max() > 0.2  # the replica assumption is wrong there, and the error says so


def test_recalibration_on_observed_rounds_helps_a_by_label_split():
    sw = _swarm("model.width=1024", "network.agents=6", "data.split=by-label", "data.samples_per_agent=30")
    actual = simulate(sw)
    X, Y = sw.problem.agent_data(0)
    lf = LocalForecaster(sw.cfg, sw.theta0, X, Y, sw.W, 0)
    before = trajectory_error(lf.forecast("dgd", 0.5, 100)["train_loss"], actual["train_loss"][0])
    delta, rho = lf.recalibrate(actual["train_loss"][0][:21], "dgd", 0.5)
    after = trajectory_error(lf.forecast("dgd", 0.5, 100, delta, rho)["train_loss"], actual["train_loss"][0])
    assert rho > 0 and after < 0.8 * before


def test_tuner_never_picks_an_unstable_lr_and_matches_the_best_actual_run():
    spec = load_spec(None, ["model.width=1024", "train.rounds=60", "network.agents=4", "data.samples_per_agent=20"])
    result = tune(spec, budget_rounds=60)
    lr_max = result["lr_max"]
    assert all(r["lr"] < lr_max for r in result["table"]) and len(result["table"]) == 12
    assert max(r["lr"] for r in result["table"]) == pytest.approx(SAFETY * lr_max, rel=1e-12)  # the default grid
    finals = []
    for row in result["table"]:
        s = load_spec(None, ["model.width=1024", "train.rounds=60", "network.agents=4", "data.samples_per_agent=20",
                             f"train.lr={row['lr']}"])
        finals.append(np.mean(np.asarray(simulate(Swarm.from_spec(s))["train_loss"])[:, -1]))
    chosen = [r["lr"] for r in result["table"]].index(result["lr"])
    assert finals[chosen] <= 1.05 * min(finals)
    # an explicit grid with an lr above lr_max: marked unstable, never chosen
    above = tune(spec, budget_rounds=60, grid={"lr": [0.5 * lr_max, 1.5 * lr_max]})
    assert above["lr"] == pytest.approx(0.5 * lr_max)
    assert [r["stable"] for r in above["table"]] == [True, False]
    # the default grid stops at SAFETY * lr_max, but a given candidate closer to the edge is taken as given
    near = tune(spec, budget_rounds=60, grid={"lr": [0.95 * lr_max]})
    assert near["lr"] == pytest.approx(0.95 * lr_max) and near["table"][0]["stable"]


def test_grid_parsing_and_defaults():
    assert parse_grid("lr=0.1,0.2,width=1024,2048,rounds=50") == {"lr": [0.1, 0.2], "width": [1024, 2048],
                                                                   "rounds": [50]}
    g = lr_grid(2.0)
    assert len(g) == 12 and g[0] == pytest.approx(0.02) and g[-1] == pytest.approx(1.8)


def test_tune_cli_seconds_budget_with_profile_and_node_file(tmp_path):
    out = tmp_path / "t.json"
    assert main(["tune", "--quiet", "--budget-seconds", "30", "--profile", "raspberry-pi-4b", "--out", str(out),
                 "--grid", "width=256,512", "--set", "network.agents=4", "--set", "data.samples_per_agent=20"]) == 0
    r = json.loads(out.read_text())
    assert r["width"] in (256, 512) and r["seconds_per_round"] > 0
    assert r["rounds"] == int(30 // [row for row in r["table"] if row["width"] == r["width"]][0]["seconds_per_round"])
    assert (tmp_path / "t.spec.toml").exists()
    # a board tunes from its own node file
    from host.loopback import loopback_addresses, write_node_files
    sw = Swarm.from_spec(load_spec(None, ["network.agents=3", "model.width=256", "data.samples_per_agent=20"]))
    node = write_node_files(sw, tmp_path / "nodes", loopback_addresses(3))[1]
    assert main(["tune", str(node), "--quiet", "--budget-rounds", "50", "--out", str(tmp_path / "n.json")]) == 0
    r = json.loads((tmp_path / "n.json").read_text())
    assert "agent 1" in r["objective"] and r["assumption"]
    from agent.node import load_node
    tuned = load_node(r["node_file"])
    assert tuned.id == 1 and tuned.spec.train.lr == pytest.approx(r["lr"]) and tuned.peers
    assert main(["tune", "--budget-rounds", "5", "--grid", "lr=fast"]) == 2


def test_tuned_node_file_runs_as_written_from_another_folder(tmp_path, monkeypatch):
    """`tune nodes/node0.toml --out runs/t.json`, all paths relative: the node file it writes loads and
    trains, started from elsewhere, with the tuned lr; its round log feeds `predict-local --observed`."""
    import subprocess
    import sys
    from host.loopback import loopback_addresses, write_node_files
    from agent.node import load_node
    sw = _swarm("network.agents=1", "model.width=32", "data.samples_per_agent=20", "train.rounds=5")
    monkeypatch.chdir(tmp_path)
    write_node_files(sw, tmp_path / "nodes", loopback_addresses(1))
    assert main(["tune", "nodes/node0.toml", "--quiet", "--budget-rounds", "5", "--out", "runs/t.json"]) == 0
    r = json.loads((tmp_path / "runs" / "t.json").read_text())
    tuned = load_node(tmp_path / r["node_file"])
    assert tuned.spec.train.lr == r["lr"] and tuned.spec.data.name == "digits"
    for path in (tuned.data, tuned.test, tuned.secret_key):
        assert path.exists() and path.resolve().is_relative_to(tmp_path / "nodes"), path
    assert {tuned.out.parent, tuned.log.parent, tuned.checkpoint.parent} == {tmp_path / "runs"}  # its own outputs
    text = (tmp_path / "runs" / "t.node.toml").read_text()
    assert 'spec = "t.spec.toml"' in text and str(tmp_path) not in text  # every path relative to the node file
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = subprocess.run([sys.executable, "-m", "agent", str(tmp_path / "runs" / "t.node.toml"), "-q"],
                          cwd=elsewhere, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    ran = json.loads((tmp_path / "runs" / "agent0.json").read_text())
    assert len(ran["train_loss"]) == 6 and (tmp_path / "runs" / "agent0.params.npz").exists()
    assert main(["predict-local", "runs/t.node.toml", "--observed", "runs/agent0.jsonl",
                 "--out", "runs/local.json"]) == 0  # the log's start line is not a round
    assert json.loads((tmp_path / "runs" / "local.json").read_text())["recalibrated_on_rounds"] == 5


@pytest.mark.parametrize("alg", ["dgd", "cta", "gt"])
def test_replica_operator_runs_the_dense_replica_swarm(alg):
    """One output (the traced kernel is then the kernel): the replica operator, used above 2048 outputs,
    gives the dense replica swarm's forecast and lr_max."""
    from predictor.stability import lr_max_all
    sw = _swarm("model.width=128", "network.agents=5", "data.samples_per_agent=12")
    p = sw.problem
    X, Y = p.agent_data(2)
    lf = LocalForecaster(sw.cfg, sw.theta0, X, Y, sw.W, 2, p.X_test, p.Y_test)
    assert not lf.traced
    dense = lf.forecast(alg, 0.5, 30, rho=0.3), lr_max_all(lf.kernel_problem())
    lf.traced = True
    operator = lf.forecast(alg, 0.5, 30, rho=0.3), lr_max_all(lf.kernel_problem())
    for curve in ("train_loss", "test_loss"):
        np.testing.assert_allclose(operator[0][curve], dense[0][curve], rtol=1e-10)
    assert operator[1] == pytest.approx(dense[1], rel=1e-9)
