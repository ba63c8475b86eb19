"""Faults with real processes and real signals: kill -9 and SIGTERM of an agent, SIGTERM to the
launcher, a diverging run, bad output paths. Every case ends with a documented exit status, one line
on stderr, results kept, and no process left behind."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from coordinator_free.common.errors import EXIT_DIVERGED, EXIT_TERMINATED, SwarmIncomplete

SWARM = ["--set", "network.agents=4", "--set", "model.width=16", "--set", "data.samples_per_agent=10",
         "--set", "data.test_samples=10", "--set", "train.dtype=float64"]


def _cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "predictor", *args], capture_output=True, text=True, timeout=timeout)


def _pids(pattern: str) -> list[int]:
    out = subprocess.run(["pgrep", "-f", "--", pattern], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def _wait_for_lines(path, n: int, timeout: float = 60) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if path.exists() and path.read_text().count("\n") >= n:
            return
        time.sleep(0.05)
    raise AssertionError(f"{path} never reached {n} lines")


def _start_loopback(tmp_path, rounds: int, deadline: float = 1.0):
    work = tmp_path / "work"
    proc = subprocess.Popen([sys.executable, "-m", "predictor", "loopback", "--quiet", "--workdir", str(work),
                             "--out", str(tmp_path / "RUN.json"), "--round-deadline", str(deadline),
                             "--set", f"train.rounds={rounds}", *SWARM],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return proc, work


def test_kill_9_of_one_agent_keeps_the_swarm_going_and_marks_it(tmp_path):
    proc, work = _start_loopback(tmp_path, rounds=40)
    try:
        _wait_for_lines(work / "agent2.jsonl", 10)
        [pid] = _pids(f"-m agent {work}/node2.toml")
        os.kill(pid, signal.SIGKILL)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == SwarmIncomplete.exit_status and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and "agent 2 (killed by SIGKILL" in err
    run = json.loads((tmp_path / "RUN.json").read_text())
    assert run["failed_agents"] == [2] and len(run["agents"]) == 4
    dead = run["agents"][2]
    assert dead["exit"] == "killed by SIGKILL" and 10 <= dead["last_round"] < 40
    assert all(len(run["train_loss"][q]) == 41 for q in (0, 1, 3))  # the survivors finished
    assert all(2 in run["agents"][q]["suspected"] for q in (1, 3))  # 2's neighbours on the cycle
    assert not _pids(f"-m agent {work}/")


def test_sigterm_to_an_agent_says_bye_checkpoints_and_writes_results(tmp_path):
    proc, work = _start_loopback(tmp_path, rounds=40)
    try:
        _wait_for_lines(work / "agent1.jsonl", 10)
        [pid] = _pids(f"-m agent {work}/node1.toml")
        os.kill(pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == SwarmIncomplete.exit_status and f"exit status {EXIT_TERMINATED}" in err
    own = json.loads((work / "agent1.json").read_text())
    assert own["stopped"]["reason"] == "terminated" and own["stopped"]["last_round"] >= 10
    ckpt = np.load(work / "agent1.ckpt.npz")
    assert int(ckpt["round"]) == own["stopped"]["last_round"] and np.isfinite(ckpt["theta"]).all()
    run = json.loads((tmp_path / "RUN.json").read_text())
    # its neighbours heard the BYE: they let it go without suspecting it
    assert all(1 not in run["agents"][q]["suspected"] for q in (0, 2))


def test_sigterm_to_the_launcher_stops_every_agent(tmp_path):
    proc, work = _start_loopback(tmp_path, rounds=100000, deadline=5)
    try:
        _wait_for_lines(work / "agent3.jsonl", 3)
        assert len(_pids(f"-m agent {work}/")) == 4
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == EXIT_TERMINATED and "Traceback" not in err and err.strip() == "p2pntk: terminated"
    time.sleep(0.5)
    assert not _pids(f"-m agent {work}/")


def test_a_diverging_run_stops_with_status_4_and_strict_json(tmp_path):
    out = tmp_path / "sim.json"
    proc = _cli("simulate", "--out", str(out), "--quiet", "--set", "train.lr=1e30", "--set", "train.rounds=20",
                *SWARM[:-2])
    assert proc.returncode == EXIT_DIVERGED and len(proc.stderr.strip().splitlines()) == 1
    assert "non-finite at round" in proc.stderr and "Traceback" not in proc.stderr
    text = out.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text)["diverged_at_round"] >= 1


def test_a_diverging_agent_exits_4_without_checkpointing_non_finite_parameters(tmp_path):
    work = tmp_path / "work"
    proc = _cli("loopback", "--quiet", "--workdir", str(work), "--out", str(tmp_path / "RUN.json"),
                "--set", "network.agents=1", "--set", "train.lr=1e30", "--set", "train.rounds=20", *SWARM[2:])
    assert proc.returncode == SwarmIncomplete.exit_status and f"exit status {EXIT_DIVERGED}" in proc.stderr
    assert "non-finite at round" in (work / "agent0.stderr").read_text()
    own = json.loads((work / "agent0.json").read_text())
    assert own["stopped"]["reason"] == "diverged"
    ckpt = np.load(work / "agent0.ckpt.npz")
    assert np.isfinite(ckpt["theta"]).all() and int(ckpt["round"]) == own["stopped"]["last_round"]
    assert "NaN" not in (tmp_path / "RUN.json").read_text()


@pytest.mark.parametrize("out", ["DIR", "/proc/forbidden/run.json"])
def test_a_bad_output_path_is_refused_before_any_work(tmp_path, out):
    target = str(tmp_path) if out == "DIR" else out
    proc = _cli("simulate", "--out", target, "--set", "train.rounds=100000")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and "--out" in proc.stderr
    assert "Traceback" not in proc.stderr
