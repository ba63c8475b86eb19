"""What a board says (agent.report): the throttled progress line, -v, the summary, and a round log
that survives restarts, marked by run. Real agent processes over real sockets."""
import io
import json
import subprocess
import sys

import numpy as np

from host.loopback import agent_environment, loopback_addresses, run_loopback, write_node_files
from agent.roundlog import log_lines
from agent.report import Report, duration
from agent.spec import load_spec
from agent.swarm import Swarm

SMALL = ["network.agents=2", "network.topology=path", "model.width=16", "data.samples_per_agent=10",
         "data.test_samples=20", "train.dtype=float64"]


def _record(k: int, wait: float = 0.0) -> dict:
    return {"round": k, "train_loss": 0.5 / (k + 1), "test_loss": 0.25, "wait_s": wait, "suspected": []}


def test_progress_line_figures_and_throttle():
    r = Report(3, rounds=100)
    r.start_round, r.waited = 0, 1.0
    line = r.progress_line({"round": 10, "train_loss": 0.5, "test_loss": 0.25, "suspected": [2, 5]}, elapsed=4.0)
    # 4 s over 10 rounds: 0.4 s/round; 1 s of 4 waiting: 25%; 90 rounds left at 0.4 s: 36 s
    assert line == ("agent 3: round 10/100, train loss 0.5, test loss 0.25, 0.4 s/round, wait 25%, "
                    "suspected 2,5, eta 36s")
    assert [duration(s) for s in (0.42, 7.25, 42, 200, 3720)] == ["0.42s", "7.2s", "42s", "3m20s", "1h02m"]
    quiet, every = io.StringIO(), io.StringIO()
    slow, verbose = Report(0, rounds=10, every=3600.0, stream=quiet), Report(0, rounds=10, every=0.0, stream=every)
    for k in range(11):
        slow.on_round(_record(k))
        verbose.on_round(_record(k))
    assert [ln.split(",")[0] for ln in quiet.getvalue().splitlines()] == ["agent 0: round 0/10", "agent 0: round 10/10"]
    assert len(every.getvalue().splitlines()) == 11
    off = Report(0, rounds=10, enabled=False, stream=quiet)
    off.on_round(_record(0))
    assert len(quiet.getvalue().splitlines()) == 2


def _board_pair(tmp_path, rounds: int):
    spec = load_spec(None, SMALL + [f"train.rounds={rounds}"])
    swarm = Swarm.from_spec(spec)
    nodes = write_node_files(swarm, tmp_path, loopback_addresses(2), round_deadline=10)
    env = agent_environment(2)

    def run(*flags_per_agent):
        procs = [subprocess.Popen([sys.executable, "-m", "agent", str(nodes[q]), *flags],
                                  stderr=subprocess.PIPE, text=True, env=env) for q, flags in enumerate(flags_per_agent)]
        errs = [p.communicate(timeout=120)[1] for p in procs]
        assert [p.returncode for p in procs] == [0, 0], errs
        return errs
    return run


def test_agent_prints_progress_and_a_summary_and_its_log_survives_a_restart(tmp_path):
    rounds = 40
    run = _board_pair(tmp_path, rounds)
    plain, verbose = run([], ["-v"])
    res = [json.loads((tmp_path / f"agent{q}.json").read_text()) for q in range(2)]
    lines = plain.strip().splitlines()
    # round 0 and the last round always, at most one line per 5 s between them, then the summary
    assert lines[0].startswith(f"agent 0: round 0/{rounds}, train loss {res[0]['train_loss'][0]:.4g}, test loss ")
    assert lines[-2].startswith(f"agent 0: round {rounds}/{rounds}, train loss {res[0]['train_loss'][-1]:.4g}, "
                                f"test loss {res[0]['test_loss'][-1]:.4g}, ")
    assert " s/round, wait " in lines[-2] and "suspected none" in lines[-2]
    assert len(lines) <= 3 + res[0]["wall_s"] / 5 + 1
    summary = lines[-1]
    assert summary.startswith(f"agent 0: finished {rounds} rounds in ")
    assert (f"train loss {res[0]['train_loss'][0]:.4g} -> {res[0]['train_loss'][-1]:.4g}" in summary
            and f"test accuracy {res[0]['test_accuracy'][-1]:.3f}" in summary)
    assert summary.endswith("wrote " + ", ".join([str(tmp_path / "agent0.json"), str(tmp_path / "agent0.params.npz")]))
    # -v: every round, in order, besides the INFO log lines
    progress = [ln for ln in verbose.splitlines() if ln.startswith("agent 1: round ")]
    assert [int(ln.split()[3].split("/")[0].rstrip(",")) for ln in progress] == list(range(rounds + 1))
    assert "handshake done" in verbose and verbose.strip().splitlines()[-1].startswith("agent 1: finished")

    first = (tmp_path / "agent0.jsonl").read_text()
    run([], [])  # a restart: both resume from their last checkpoint (the final round) and finish again
    log = (tmp_path / "agent0.jsonl").read_text()
    assert log.startswith(first)  # appended, never truncated
    starts = [r for r in log_lines(tmp_path / "agent0.jsonl") if r.get("event") == "start"]
    assert [(s["run"], s["round"], s["rounds"]) for s in starts] == [(1, 0, rounds), (2, rounds, rounds)]
    assert json.loads((tmp_path / "agent0.json").read_text())["resumed_at_round"] == rounds


def test_loopback_agents_stay_quiet(tmp_path):
    """The launcher draws one progress bar; its agents print no progress of their own."""
    swarm = Swarm.from_spec(load_spec(None, SMALL + ["network.agents=3", "train.rounds=5"]))
    lb = run_loopback(swarm, tmp_path, round_deadline=10)
    assert np.shape(lb["train_loss"]) == (3, 6) and not lb["failed_agents"]
    assert [(tmp_path / f"agent{q}.stderr").read_text() for q in range(3)] == ["", "", ""]
