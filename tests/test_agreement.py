"""Boards that tuned themselves still train together: the spec hash leaves out the keys each board may
tune (lr, rounds), the swarm agrees on their minimum before round 0 (flooded in diameter steps over the
real ZeroMQ links), and a real mismatch names the keys that differ."""
import json
import signal
import subprocess
import sys
import time

import numpy as np

from host.loopback import agent_environment, loopback_addresses, write_node_files
from agent.simulator import simulate
from agent.spec import load_spec
from agent.swarm import Swarm
from common.files import read_toml, write_toml

SPEC = ["network.agents=4", "network.topology=path", "model.width=16", "data.samples_per_agent=10",
        "data.test_samples=10", "train.dtype=float64", "train.rounds=20", "train.lr=0.5"]
PROPOSALS = [(0.5, 20), (0.42, 25), (0.61, 18), (0.47, 30)]  # (lr, rounds) each board's tune picked


def _run(tmp_path, change, stop_after: int | None = None):
    """Four hand-started agents on a path, agent q's spec changed by change(q, table); their results."""
    swarm = Swarm.from_spec(load_spec(None, SPEC))
    nodes = write_node_files(swarm, tmp_path, loopback_addresses(4), round_deadline=2.0)
    for q, node in enumerate(nodes):
        table = read_toml(tmp_path / "spec.toml", "spec")
        change(q, table)
        write_toml(tmp_path / f"spec{q}.toml", table)
        node_table = read_toml(node, "node")
        node_table["spec"] = f"spec{q}.toml"
        write_toml(node, node_table)
    procs = [subprocess.Popen([sys.executable, "-m", "agent", str(n), "-q"], env=agent_environment(4),
                              stderr=subprocess.PIPE, text=True) for n in nodes]
    if stop_after is not None:  # boards that wait for neighbours which will not come: stopped as an operator would
        procs[stop_after].wait(timeout=120)
        time.sleep(1.0)
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
    errs = [p.communicate(timeout=120)[1] for p in procs]
    return [p.returncode for p in procs], errs


def test_boards_tuned_separately_agree_on_the_minimum_and_train_as_one_spec(tmp_path):
    def tuned(q, table):
        table["train"]["lr"], table["train"]["rounds"] = PROPOSALS[q]

    codes, errs = _run(tmp_path, tuned)
    assert codes == [0] * 4, errs
    lr, rounds = min(p[0] for p in PROPOSALS), min(p[1] for p in PROPOSALS)
    res = [json.loads((tmp_path / f"agent{q}.json").read_text()) for q in range(4)]
    assert all(r["agreed"] == {"lr": lr, "rounds": rounds} for r in res)
    assert "the swarm agreed on train.lr = 0.42 and train.rounds = 18" in errs[0]
    # exactly the run of one spec with the agreed values (float64, same data and theta_0)
    expected = simulate(Swarm.from_spec(load_spec(None, SPEC + [f"train.lr={lr}", f"train.rounds={rounds}"])))
    for q in range(4):
        assert len(res[q]["train_loss"]) == rounds + 1
        assert np.max(np.abs(np.array(res[q]["train_loss"]) - np.array(expected["train_loss"][q]))) < 1e-12


def test_a_real_mismatch_names_the_keys_that_differ(tmp_path):
    def other(q, table):
        if q == 2:
            table["data"]["seed"], table["train"]["batch"] = 7, 5

    codes, errs = _run(tmp_path, other, stop_after=2)
    assert codes[1:] == [2, 2, 2], (codes, errs)  # 2 and its neighbours 1 and 3 see the mismatch
    assert codes[0] == 143  # node 0 went on waiting for node 1 to come back, not exiting on its account
    assert "stopped during its start; waiting for it to come back" in errs[0]
    line = errs[1].strip().splitlines()[-1]
    assert "peer 2" in line and "data.seed, train.batch differ" in line and "Traceback" not in errs[1]


def test_tune_on_a_node_honours_the_minibatch_size_and_the_data_seed(tmp_path):
    """The local forecast draws the same minibatches as the learner (train.batch, data.seed): changing
    either changes it; with full batches the seed has nothing to draw."""
    from agent.node import load_node
    from predictor.tune import LocalRunner
    swarm = Swarm.from_spec(load_spec(None, SPEC))
    node = load_node(write_node_files(swarm, tmp_path, loopback_addresses(4))[1])

    def forecast(**keys):
        spec = node.spec.updated(keys)
        return LocalRunner(spec, node.replace(spec=spec))("dgd", 0.5, 20, "train")

    full, full_seeded = forecast(), forecast(**{"data.seed": 3})
    mini, mini_seeded = forecast(**{"train.batch": 4}), forecast(**{"train.batch": 4, "data.seed": 3})
    np.testing.assert_array_equal(full, full_seeded)
    assert np.abs(mini - full).max() > 1e-6 and np.abs(mini_seeded - mini).max() > 1e-6
