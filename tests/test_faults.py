"""Faults with real processes and real signals: kill -9 and SIGTERM of an agent, SIGTERM to the
launcher, SIGSTOP/SIGCONT and kill -9 + restart of a hand-started agent (the scenarios of
benchmarks/bench_faults.py), a diverging run, bad output paths. Every case ends with a documented
exit status, one line on stderr, results kept, and no process left behind."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from common.errors import EXIT_DIVERGED, EXIT_TERMINATED, SwarmIncomplete

SWARM = ["--set", "network.agents=4", "--set", "model.width=16", "--set", "data.samples_per_agent=10",
         "--set", "data.test_samples=10", "--set", "train.dtype=float64"]


def _cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "p2pntk", *args], capture_output=True, text=True, timeout=timeout)


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
    proc = subprocess.Popen([sys.executable, "-m", "p2pntk", "loopback", "--quiet", "--workdir", str(work),
                             "--out", str(tmp_path / "RUN.json"), "--round-deadline", str(deadline),
                             "--set", f"train.rounds={rounds}", *SWARM],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return proc, work


def _signal_agent_under_loopback(tmp_path, q: int, sig: int, rounds: int = 40):
    """A loopback swarm whose agent q gets ``sig`` at round 10; (launcher, its stderr, workdir)."""
    proc, work = _start_loopback(tmp_path, rounds=rounds)
    try:
        _wait_for_lines(work / f"agent{q}.jsonl", 10)
        [pid] = _pids(f"-m agent {work}/node{q}.toml")
        os.kill(pid, sig)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    return proc, err, work


def test_kill_9_of_one_agent_keeps_the_swarm_going_and_marks_it(tmp_path):
    proc, err, work = _signal_agent_under_loopback(tmp_path, 2, signal.SIGKILL)
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
    proc, err, work = _signal_agent_under_loopback(tmp_path, 1, signal.SIGTERM, rounds=400)  # stopped mid-run
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


def _check_rejoin(table: dict, fault: str, timed: bool = False) -> dict:
    """The acceptance of a rejoin: both neighbours took the victim back, nobody ends suspecting anybody, and
    every final loss is within 2%; ``timed`` (the slow tier: wall clock), no healthy agent waited more than
    one deadline in a round."""
    from benchmarks.bench_faults import VICTIM
    row = table["faults"][fault]
    neighbours = [(VICTIM - 1) % table["agents"], (VICTIM + 1) % table["agents"]]
    assert all(row["rejoined"].get(q, {}).get(str(VICTIM), 0) >= 1 for q in neighbours), row
    assert row["suspected"] == {}, row
    assert not timed or row["longest_wait_s"] <= 1.1 * table["deadline_s"], row
    assert row["worst_all_pct"] < 2.0, row
    return row


def _print_rejoin(capsys, table: dict, fault: str, what: str) -> None:
    row = table["faults"][fault]
    with capsys.disabled():
        print(f"\n  {what} ({table['agents']} agents, width {table['width']}): final train loss vs fault-free, "
              f"worst agent {row['worst_all_pct']:.2f}%, victim {row['victim_pct']:.2f}%; longest wait of the "
              f"others {row['longest_wait_s']:.2f} s (deadline {table['deadline_s']:g} s)")


def test_sigstop_past_the_deadline_then_sigcont_rejoins_and_a_restart_resumes(capsys):
    """Agent 3 of 4 (rounds paced like a Pi Zero 2 W's link) is paused for 3x the deadline at round 20;
    in a second run it is killed at round 20 and restarted 2 s later from its checkpoint."""
    from benchmarks.bench_faults import run_faults
    table = run_faults(quick=True, faults=("sigstop", "restart"))
    _check_rejoin(table, "sigstop")
    row = _check_rejoin(table, "restart")
    assert row["victim_resumed_at"] >= 10 and row["victim_log_kept"]
    _print_rejoin(capsys, table, "sigstop", "SIGSTOP for 3x the deadline")
    _print_rejoin(capsys, table, "restart", f"kill -9 + restart, resumed at round {row['victim_resumed_at']}")


@pytest.mark.slow
def test_the_field_faults_at_full_size(capsys):
    """The acceptance swarm: 8 agents, width 512, 60 rounds, float64, 2 s deadline, fault at round 20."""
    from benchmarks.bench_faults import VICTIM, run_faults
    table = run_faults(quick=False)
    for fault in ("kill", "loopback-kill"):
        row = table["faults"][fault]
        assert row["worst_survivor_pct"] < 2.0 and row["longest_wait_s"] <= 1.1 * table["deadline_s"], row
    assert table["faults"]["loopback-kill"]["marked_failed"] == [VICTIM]
    assert table["faults"]["loopback-kill"]["agents_in_run_json"] == 8
    _check_rejoin(table, "sigstop", timed=True)
    assert _check_rejoin(table, "restart", timed=True)["victim_log_kept"]
    _print_rejoin(capsys, table, "sigstop", "SIGSTOP for 3x the deadline")
    _print_rejoin(capsys, table, "restart", "kill -9 + restart")


@pytest.mark.parametrize("override,culprit", [
    ("model.width=1000000000", "model.width = 1000000000"),
    ("model.depth=100000", "model.depth = 100000"),
    ("data.split=dirichlet:1e400", "data.split"),
    ('device.profiles=["pi-9"]', "unknown profile 'pi-9'"),
])
def test_bad_input_is_refused_before_training_with_one_line(tmp_path, override, culprit):
    proc = _cli("simulate", "--set", override, "--out", str(tmp_path / "o.json"), timeout=60)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and culprit in proc.stderr
    assert "Traceback" not in proc.stderr and not list(tmp_path.iterdir())  # nothing left behind


@pytest.mark.parametrize("key,value,culprit", [
    ("bind", '"tcp://127.0.0.1:99999"', "bind = 'tcp://127.0.0.1:99999'"),
    ("log", '"/proc/nope/agent.jsonl"', "log = /proc/nope/agent.jsonl"),
    ("out", '"."', "is a folder"),
])
def test_bad_node_paths_and_ports_are_refused_before_any_socket(tmp_path, key, value, culprit):
    from host.loopback import loopback_addresses, write_node_files
    from agent.spec import load_spec
    from agent.swarm import Swarm
    swarm = Swarm.from_spec(load_spec(None, [s for s in SWARM if s != "--set"] + ["train.rounds=2"]))
    node = write_node_files(swarm, tmp_path, loopback_addresses(4))[0]
    lines = [ln for ln in node.read_text().splitlines() if not ln.startswith(f"{key} =")]
    node.write_text(f"{key} = {value}\n" + "\n".join(lines) + "\n")
    proc = subprocess.run([sys.executable, "-m", "agent", str(node)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and culprit in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1


def test_a_signal_during_the_final_writes_waits_until_they_are_done(tmp_path):
    """An agent's BYE, checkpoint and results are written whole even if SIGTERM comes while it writes them
    (it once lost its results when a SIGTERM landed just after its last round); the signal then counts."""
    from common.errors import Terminated, signals_deferred
    from common.files import write_json
    with pytest.raises(Terminated):
        with signals_deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
            write_json(tmp_path / "results.json", {"rounds": 40})
    assert json.loads((tmp_path / "results.json").read_text()) == {"rounds": 40}
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL or callable(signal.getsignal(signal.SIGTERM))
