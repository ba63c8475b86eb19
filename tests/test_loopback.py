"""Loopback: real agent processes over real ZeroMQ sockets on 127.0.0.1, against simulate and the
independent torch reference (float64, 1e-8), plus process clean-up."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip("torch")  # tests.torch_reference needs it

from p2pntk.cli import main
from tests.torch_reference import max_rel_err, reference_run

SMALL = ["network.agents=4", "data.samples_per_agent=10", "data.test_samples=20", "train.rounds=8",
         "train.dtype=float64", "train.lr=0.3"]
CONFIGS = {
    "dgd-cycle-mlp": ["train.algorithm=dgd", "network.topology=cycle", "model.width=32"],
    "atc-star-mlp": ["train.algorithm=atc", "network.topology=star", "model.width=32", "model.depth=2"],
    "cta-complete-affine": ["train.algorithm=cta", "network.topology=complete", "model.kind=affine"],
    "gt-cycle-mlp": ["train.algorithm=gt", "network.topology=cycle", "model.width=32", "model.activation=tanh"],
}


def _cli(*args, overrides=()):
    argv = list(args) + ["--quiet"]
    for o in overrides:
        argv += ["--set", o]
    assert main(argv) == 0


@pytest.mark.parametrize("name", CONFIGS)
def test_loopback_matches_simulate_and_reference(tmp_path, name):
    overrides = SMALL + CONFIGS[name]
    _cli("loopback", "--out", str(tmp_path / "lb.json"), "--save-problem", str(tmp_path / "p.npz"),
         "--workdir", str(tmp_path / "work"), overrides=overrides)
    _cli("simulate", "--out", str(tmp_path / "sim.json"), overrides=overrides)
    lb = json.loads((tmp_path / "lb.json").read_text())
    sim = json.loads((tmp_path / "sim.json").read_text())
    ref = reference_run(str(tmp_path / "p.npz"), lb["spec"])
    assert lb["kind"] == "loopback" and np.shape(lb["train_loss"]) == (4, 9)
    for key in ("train_loss", "test_loss"):
        assert max_rel_err(lb[key], ref[key]) < 1e-8
        assert max_rel_err(lb[key], sim[key]) < 1e-8
    assert all(a["bytes_sent"] > 0 and not a["suspected"] for a in lb["agents"])
    # the final checkpoint holds the parameters whose loss the agent logged last
    from agent.local import model_config
    from agent.model import loss
    from agent.spec import resolve
    ckpt, data = np.load(tmp_path / "work" / "agent0.ckpt.npz"), np.load(tmp_path / "work" / "agent0.npz")
    cfg = model_config(resolve(lb["spec"]).model, 64, 1)
    assert int(ckpt["round"]) == 8 and str(ckpt["model_hash"]) == cfg.hash() == lb["model_hash"]
    assert loss(cfg, ckpt["theta"], data["X"], data["Y"]) == pytest.approx(lb["train_loss"][0][-1], rel=1e-12)


def test_killing_the_launcher_leaves_no_agent_processes(tmp_path):
    """Ctrl-C on `p2pntk loopback` stops every agent process it started."""
    work = tmp_path / "work"
    proc = subprocess.Popen([sys.executable, "-m", "p2pntk", "loopback", "--quiet", "--workdir", str(work),
                             "--out", str(tmp_path / "o.json"), "--set", "train.rounds=100000",
                             "--set", "model.width=16", "--set", "network.agents=3"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    for _ in range(200):
        if (work / "agent2.jsonl").exists() and (work / "agent2.jsonl").stat().st_size > 0:
            break
        time.sleep(0.1)
    pids = _agent_pids(work)
    assert len(pids) == 3
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and b"Traceback" not in err
    time.sleep(0.5)
    assert not [p for p in pids if _alive(p)]


def _agent_pids(work) -> list[int]:
    out = subprocess.run(["pgrep", "-f", "--", f"-m agent {work}"], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().split()[2] != "Z"
