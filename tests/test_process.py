"""The agent process keeps what it trains and refuses what it cannot train on (agent.process).

A board's data with the wrong number of features is refused at start in one line; the final
parameters are kept beside the results and checkpoints are on by default, all written 0644 (secret
keys 0600); and a board stopped mid-run, exported with ``export-onnx --params``, gives in stock
onnxruntime (a subprocess that imports only onnxruntime and numpy) the test accuracy its results report.
"""
import json
import signal
import stat
import subprocess
import sys
import time

import numpy as np
import pytest

from host.loopback import agent_environment, loopback_addresses, write_node_files
from agent.spec import load_spec
from agent.swarm import Swarm
from common.files import read_toml, write_toml
from p2pntk.cli import main

SMALL = ["network.agents=2", "network.topology=path", "model.width=16", "data.samples_per_agent=10",
         "data.test_samples=20"]

ONNX_ACCURACY = """
import sys
import numpy as np
import onnxruntime as ort
session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
z = np.load(sys.argv[2])
F = session.run(None, {session.get_inputs()[0].name: z["X"].astype(np.float32)})[0]
Y = z["Y"]
right = np.sign(F[:, 0]) == np.sign(Y[:, 0]) if F.shape[1] == 1 else F.argmax(axis=1) == Y.argmax(axis=1)
ours = sorted(m for m in sys.modules if m.split(".")[0] in ("agent", "predictor", "coordinator_free"))
print(float(np.mean(right)), ours)
"""


def _nodes(tmp_path, overrides):
    swarm = Swarm.from_spec(load_spec(None, SMALL + overrides))
    return swarm, write_node_files(swarm, tmp_path, loopback_addresses(2), round_deadline=10)


def _agent(node, **kw):
    return subprocess.run([sys.executable, "-m", "agent", str(node)], capture_output=True, text=True, timeout=60, **kw)


@pytest.mark.parametrize("file", ["agent0.npz", "test.npz"])
def test_data_with_the_wrong_number_of_features_is_refused_in_one_line(tmp_path, file):
    _, nodes = _nodes(tmp_path, ["train.rounds=3"])
    np.savez(tmp_path / file, X=np.ones((10, 32)), y=np.zeros(10, dtype=int))
    proc = _agent(nodes[0])
    other = "the spec's data (digits) has 64" if file == "agent0.npz" else "agent0.npz has 64"
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert f"{file}: X has 32 features, but " in proc.stderr and other in proc.stderr
    assert not (tmp_path / "agent0.jsonl").exists()  # refused before the log or any socket


def _lines(path) -> int:
    return path.read_text().count("\n") if path.exists() else 0


def test_a_stopped_board_keeps_its_model_and_exports_it_for_onnxruntime(tmp_path, capsys):
    """No checkpoint key: the default checkpoint appears every 10 rounds; SIGTERM mid-run keeps the
    parameters beside the results, and export-onnx --params reproduces the reported test accuracy."""
    swarm, nodes = _nodes(tmp_path, ["train.rounds=100000", "data.classes=[3,5,8]", "model.width=64",
                                     "data.samples_per_agent=30", "train.lr=1.0"])
    for node in nodes:  # the node files name neither a checkpoint nor where results go: the defaults apply
        table = read_toml(node, "node")
        del table["checkpoint"], table["out"]
        write_toml(node, table)
    procs = [subprocess.Popen([sys.executable, "-m", "agent", str(n), "-q"], env=agent_environment(2),
                              stderr=subprocess.PIPE, text=True) for n in nodes]
    try:
        end = time.time() + 60
        while _lines(tmp_path / "agent0.jsonl") < 40 and time.time() < end:
            time.sleep(0.05)
        assert (tmp_path / "agent0.ckpt.npz").exists()  # periodic, by default
        for p in procs:
            p.send_signal(signal.SIGTERM)
        errs = [p.communicate(timeout=30)[1] for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [143, 143], errs
    res = json.loads((tmp_path / "agent0.json").read_text())
    params, ckpt = tmp_path / "agent0.params.npz", tmp_path / "agent0.ckpt.npz"
    assert res["stopped"]["reason"] == "terminated" and res["params"] == str(params)
    last = res["stopped"]["last_round"]
    assert int(np.load(params)["round"]) == int(np.load(ckpt)["round"]) == last >= 39
    for path in (tmp_path / "agent0.json", params, ckpt, tmp_path / "agent0.jsonl", nodes[0]):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
    assert stat.S_IMODE((tmp_path / "keys" / "agent0.key_secret").stat().st_mode) == 0o600

    accuracy = {}
    for name, source in (("params", params), ("checkpoint", ckpt), ("theta0", None)):
        model = tmp_path / f"{name}.onnx"
        argv = ["export-onnx", str(tmp_path / "spec.toml"), "--out", str(model)]
        assert main(argv + (["--params", str(source)] if source else [])) == 0
        out = subprocess.run([sys.executable, "-I", "-c", ONNX_ACCURACY, str(model), str(tmp_path / "test.npz")],
                             capture_output=True, text=True, timeout=60, cwd=tmp_path)
        value, ours = out.stdout.split(" ", 1)
        assert ours.strip() == "[]", out.stderr  # the reference imports nothing of ours
        accuracy[name] = float(value)
    reported = res["test_accuracy"]
    with capsys.disabled():
        print(f"\n  stopped at round {last}: onnxruntime test accuracy {accuracy['params']:.3f} (params), "
              f"{accuracy['checkpoint']:.3f} (checkpoint), {accuracy['theta0']:.3f} (theta_0); results JSON "
              f"{reported[-1]:.3f} (round {last}), {reported[0]:.3f} (round 0)")
    assert accuracy["params"] == accuracy["checkpoint"] == reported[-1]
    assert accuracy["theta0"] == reported[0] and accuracy["params"] > reported[0] + 0.2  # it is the trained model


def test_export_onnx_refuses_parameters_of_another_model(tmp_path, capsys):
    np.savez(tmp_path / "p.npz", theta=np.zeros(5, np.float32), model_hash=np.array("0123456789abcdef"))
    assert main(["export-onnx", "--out", str(tmp_path / "m.onnx"), "--params", str(tmp_path / "p.npz")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--params" in err and "model hash 0123456789abcdef" in err
    assert not (tmp_path / "m.onnx").exists()
