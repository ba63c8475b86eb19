"""Device profiles applied to real agents: refusal before training, and loopback emulation's padding."""
import json
import subprocess
import sys


from host.loopback import loopback_addresses, write_node_files
from agent.roundlog import read_round_log
from agent.swarm import Swarm
from agent.spec import load_spec
from p2pntk.cli import main


def test_too_wide_for_pi_zero_is_refused_before_training(tmp_path):
    spec = load_spec(None, ["network.agents=2", "network.topology=path", "model.width=8192", "model.depth=2",
                            "model.kind=mlp", "data.samples_per_agent=5", "data.test_samples=5"])
    swarm = Swarm.from_spec(spec)
    node = write_node_files(swarm, tmp_path, loopback_addresses(2), per_agent=[{"profile": "raspberry-pi-zero-2w"}])[0]
    proc = subprocess.run([sys.executable, "-m", "agent", str(node)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "raspberry-pi-zero-2w" in proc.stderr and "MB" in proc.stderr and "model.width <=" in proc.stderr
    assert not (tmp_path / "agent0.jsonl").exists()  # refused before the first round


def test_emulated_pi4_on_10_mbit_is_padded_and_shaped_to_the_profile_estimate(tmp_path):
    """Every round of an emulated agent is padded and shaped up to the estimate: sleeps never end early, so
    this holds however loaded the host is. How close a round comes to the estimate here: p2pntk bench emulation."""
    out = tmp_path / "em.json"
    assert main(["loopback", "--quiet", "--out", str(out), "--profiles", "raspberry-pi-4b", "--link", "10",
                 "--workdir", str(tmp_path / "work"),
                 "--set", "network.agents=3", "--set", "model.width=1024", "--set", "train.rounds=6"]) == 0
    agents = json.loads(out.read_text())["agents"]
    for a in agents:
        est = a["profile"]["estimated_round_s"]
        assert a["profile"]["name"] == "raspberry-pi-4b" and a["profile"]["emulated"]
        assert 0.3 < est < 0.6  # the estimate is dominated by 2 x 266 kB at 10 Mbit/s
        rounds = read_round_log(tmp_path / "work" / f"agent{a['id']}.jsonl")
        assert sorted(rounds) == list(range(7))
        # round 0 is the state before any update; the header is a little under the estimate's upper bound
        assert all(rounds[k]["round_s"] >= 0.999 * est for k in range(1, 7)), (est, rounds)
