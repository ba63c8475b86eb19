"""Boards exchange their data summaries over their own authenticated ZeroMQ links before tuning
(`p2pntk summarise NODE --exchange`): four real agent processes on a path, so that the ends' summaries
reach each other only through two relays. What arrives equals each board's own summary (float32 on the
wire), and a forecast from the exchanged files equals one from summaries computed where the data is."""
import subprocess
import sys

import numpy as np
import pytest

from host.loopback import agent_environment, loopback_addresses, write_node_files
from agent.local import model_config
from agent.model import init_params
from agent.node import load_node, local_data
from agent.spec import load_spec
from agent.summaries import from_share, load_summaries, summarise, to_share
from agent.swarm import Swarm
from common.errors import UserError

SPEC = ["network.agents=4", "network.topology=path", "model.width=64", "data.samples_per_agent=30",
        "data.test_samples=20", "data.split=by-label", "train.rounds=20", "train.lr=0.5"]


def _own(node_path):
    node = load_node(node_path)
    X, Y, _, _ = local_data(node)
    cfg = model_config(node.spec.model, X.shape[1], Y.shape[1])
    return summarise(cfg, init_params(cfg, np.float64), X, Y, node.id), cfg


def test_summaries_cross_the_swarm_over_real_links_and_relays(tmp_path):
    swarm = Swarm.from_spec(load_spec(None, SPEC))
    nodes = write_node_files(swarm, tmp_path, loopback_addresses(4), round_deadline=2.0)
    procs = [subprocess.Popen([sys.executable, "-m", "p2pntk", "summarise", str(n), "--exchange", "--out",
                               str(tmp_path / f"got{q}")], env=agent_environment(4), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for q, n in enumerate(nodes)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, [o[1][-800:] for o in outs]
    assert "summaries of boards [0, 1, 2, 3]" in outs[0][0]
    own = {q: _own(n)[0] for q, n in enumerate(nodes)}
    cfg = _own(nodes[0])[1]
    for q in range(4):
        got = load_summaries([tmp_path / f"got{q}"], cfg.num_params, cfg.hash())
        assert sorted(got) == [0, 1, 2, 3]  # board 0 has board 3's through boards 1 and 2
        for r, s in got.items():
            ref = own[r]
            assert s.kind == ref.kind and s.n == ref.n and np.array_equal(s.class_counts, ref.class_counts)
            assert np.array_equal(s.row_label, ref.row_label)
            scale = np.abs(ref.rows).max()
            assert np.max(np.abs(s.rows - ref.rows)) <= 1e-6 * scale  # float32 on the wire
            assert np.allclose(s.targets, ref.targets, rtol=1e-6, atol=1e-6 * np.abs(ref.targets).max())
    # board 0's forecast from what it received equals the one from summaries computed beside the data
    from predictor.tune import LocalRunner
    node0 = load_node(nodes[0])
    exact_dir = tmp_path / "exact"
    from agent.summaries import save_summary
    for r, s in own.items():
        save_summary(exact_dir / f"summary{r}.npz", s)
    t = node0.spec.train
    f_got = LocalRunner(node0.spec, node0, [str(tmp_path / "got0")]).lf.forecast(t.algorithm, float(t.lr), t.rounds)
    f_ref = LocalRunner(node0.spec, node0, [str(exact_dir)]).lf.forecast(t.algorithm, float(t.lr), t.rounds)
    assert np.allclose(f_got["train_loss"], f_ref["train_loss"], rtol=1e-5)


def test_a_malformed_share_is_refused_in_one_line_naming_the_board(tmp_path):
    swarm = Swarm.from_spec(load_spec(None, SPEC))
    nodes = write_node_files(swarm, tmp_path, loopback_addresses(4), round_deadline=2.0)
    s, cfg = _own(nodes[1])
    meta, rows = to_share(s)
    assert from_share(1, meta, rows, cfg.hash(), cfg.num_params).m == s.m
    for bad, culprit in (({**meta, "k": 0}, "k >= 1"), ({k: v for k, v in meta.items() if k != "kind"}, "'kind'"),
                         ({**meta, "class_counts": [1, 2]}, "class_counts must be integers summing to n")):
        with pytest.raises(UserError, match=culprit) as err:
            from_share(1, bad, rows, cfg.hash(), cfg.num_params)
        assert "the summary of board 1" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(UserError, match="row labels must be integers"):
        from_share(1, meta, tuple(np.concatenate([r[:-1], [0.5]]).astype(np.float32) for r in rows), cfg.hash(),
                   cfg.num_params)
