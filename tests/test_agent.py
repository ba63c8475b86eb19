"""A real agent process under attack: malformed messages are dropped with a logged reason and the
agent still finishes its rounds. Also node-file errors and a 16-agent erdos-renyi swarm."""
import json
import subprocess
import sys
import time

import numpy as np
import pytest
import zmq

from host.loopback import loopback_addresses, write_node_files
from agent.local import model_config
from agent.model import init_params
from agent.swarm import Swarm
from agent.spec import load_spec, spec_hash
from coordinator_free.keys import Curve, read_keypair, read_public
from coordinator_free.drops import LOG_BURST
from coordinator_free.transport import Transport
from coordinator_free.wire import encode
from p2pntk.cli import main


def test_agent_drops_malformed_messages_and_finishes(tmp_path):
    rounds = 6
    spec = load_spec(None, ["network.agents=2", "network.topology=path", "model.width=16", f"train.rounds={rounds}",
                            "data.samples_per_agent=10", "data.test_samples=10", "train.dtype=float64"])
    swarm = Swarm.from_spec(spec)
    addrs = loopback_addresses(2)
    node0 = write_node_files(swarm, tmp_path, addrs, round_deadline=10)[0]
    agent = subprocess.Popen([sys.executable, "-m", "agent", str(node0), "-v"],
                             stderr=open(tmp_path / "agent0.stderr", "w"))
    cfg = model_config(spec.model, 64, 1)
    theta = init_params(cfg, np.float64)
    good = {"type": "params", "sender": 1, "algorithm": "dgd", "model_hash": cfg.hash()}
    ctx = zmq.Context()
    raw = ctx.socket(zmq.PUSH)  # holds agent 1's allow-listed key, so that the bad messages reach the decoder
    keys = tmp_path / "keys"
    raw.curve_publickey, raw.curve_secretkey = read_keypair(keys / "agent1.key_secret")
    raw.curve_serverkey = read_public(keys / "agent0.key")
    stderr = tmp_path / "agent0.stderr"

    def wait_for_drops(n: int) -> None:  # the raw socket's connection is not ordered with the transport's
        end = time.time() + 20        # (warnings are rate-limited: the first LOG_BURST are logged, then counted)
        while stderr.read_text().count("dropped message (invalid)") < min(n, LOG_BURST) and time.time() < end:
            time.sleep(0.01)
        time.sleep(0.2)

    try:
        with Transport(1, addrs[1], {0: addrs[0]}, model_hash=cfg.hash(), spec_hash=spec_hash(swarm.spec),
                       algorithm="dgd", dtype="float64", shape=(cfg.num_params,),
                       curve=Curve(keys / "agent1.key_secret", {0: keys / "agent0.key"})) as me:
            me.handshake(1, timeout=30)
            me.agree({"lr": float(spec.train.lr), "rounds": rounds}, steps=1)  # as a real agent 1 does at start
            raw.connect(addrs[0])
            for k in range(rounds):
                raw.send_multipart([b"\xff\xfegarbage", b"123"])
                raw.send_multipart(encode({**good, "round": k}, np.zeros(5)))
                raw.send_multipart(encode({**good, "round": k}, np.full(cfg.num_params, np.nan)))
                raw.send_multipart(encode({**good, "round": k, "model_hash": "0" * 16}, theta))
                wait_for_drops(4 * (k + 1))
                got = me.exchange(k, theta, deadline=10)
                assert set(got) == {0}
            me.bye()
        assert agent.wait(timeout=30) == 0
        assert json.loads((tmp_path / "agent0.json").read_text())["dropped"]["invalid"] == 4 * rounds
        log = stderr.read_text()
        assert log.count("dropped message (invalid)") == LOG_BURST and "19 more dropped messages" in log
    finally:
        agent.kill()
        raw.close(0)
        ctx.term()
    result = json.loads((tmp_path / "agent0.json").read_text())
    assert len(result["train_loss"]) == rounds + 1 and result["suspected"] == []
    assert sum(result["dropped"].values()) >= 4 * rounds
    log = (tmp_path / "agent0.stderr").read_text()
    for reason in ("shape [5]", "non-finite", "model hash", "not valid UTF-8"):
        assert reason.lower() in log.lower(), reason


@pytest.mark.parametrize("content,culprit", [
    ("id = 0\nbind = 'tcp://127.0.0.1:1'\ndata = 'x.npz'\nspec = 'spec.toml'\nbogus = 1\n", "bogus"),
    ("id = -1\nbind = 'tcp://127.0.0.1:1'\ndata = 'x.npz'\nspec = 'spec.toml'\n", "id"),
    ("id = 0\nbind = 'tcp://127.0.0.1:1'\ndata = 'x.npz'\nspec = 'spec.toml'\n[peers]\n1 = 'udp://x'\n", "peers.1"),
    ("id = 0\nbind = '127.0.0.1:1'\ndata = 'x.npz'\nspec = 'spec.toml'\n", "bind"),
    ("id = 0\nbind = 'tcp://127.0.0.1:1'\nspec = 'spec.toml'\n", "data"),
    ("id = 0\nbind = 'tcp://127.0.0.1:1'\ndata = 'missing.npz'\nspec = 'spec.toml'\n[peers]\n1 = 'tcp://a:1'\n",
     "missing.npz"),
])
def test_bad_node_file_exits_2_naming_the_culprit(tmp_path, content, culprit):
    (tmp_path / "spec.toml").write_text("[network]\nagents = 2\n")
    node = tmp_path / "node.toml"
    node.write_text(content)
    proc = subprocess.run([sys.executable, "-m", "agent", str(node)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and culprit in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_sixteen_agents_on_erdos_renyi_finish_and_leave_no_process(tmp_path):
    work = tmp_path / "work"
    argv = ["loopback", "--quiet", "--workdir", str(work), "--out", str(tmp_path / "lb.json")]
    for o in ["network.agents=16", "network.topology=erdos-renyi:0.3", "model.width=64", "train.rounds=5",
              "data.samples_per_agent=10", "data.test_samples=40", "data.classes=[0,1,2,3,4,5,6,7,8,9]"]:
        argv += ["--set", o]
    t0 = time.time()
    assert main(argv) == 0
    lb = json.loads((tmp_path / "lb.json").read_text())
    assert np.shape(lb["train_loss"]) == (16, 6) and all(not a["suspected"] for a in lb["agents"])
    left = subprocess.run(["pgrep", "-f", "--", f"-m agent {work}"], capture_output=True, text=True).stdout
    assert left.strip() == "", f"agent processes left behind after {time.time() - t0:.0f}s: {left}"


def test_zeroconf_discovery_builds_the_peer_table(tmp_path):
    """Three agents with no static peers find each other over mDNS (on 127.0.0.1) and train."""
    pytest.importorskip("zeroconf")
    from host.launcher import Job, launch
    spec = load_spec(None, ["network.agents=3", "network.topology=path", "model.width=16", "train.rounds=3",
                            "data.samples_per_agent=10", "data.test_samples=10", "train.dtype=float64"])
    swarm = Swarm.from_spec(spec)
    nodes = write_node_files(swarm, tmp_path, loopback_addresses(3), extra={"discovery": "zeroconf"})
    for node in nodes:  # drop the static table: discovery alone must find the neighbours
        node.write_text(node.read_text().split("[peers]")[0])
    jobs = [Job(f"agent{q}", [sys.executable, "-m", "agent", str(p)], tmp_path / f"agent{q}.jsonl",
                tmp_path / f"agent{q}.stderr") for q, p in enumerate(nodes)]
    outcomes = launch(jobs, expected_lines=4, timeout=120)
    assert [o.returncode for o in outcomes] == [0, 0, 0], [o.stderr_tail for o in outcomes]
    neighbours = [json.loads((tmp_path / f"agent{q}.json").read_text())["neighbours"] for q in range(3)]
    assert neighbours == [[1], [0, 2], [1]]
