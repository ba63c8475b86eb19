"""The round log (agent.roundlog): appended across restarts, read back into one history for every reader."""
from host.loopback import agent_summary
from agent.roundlog import RoundLog, history_from_log, log_lines, read_round_log


def _round(k: int, loss: float) -> dict:
    return {"round": k, "train_loss": loss, "test_loss": 2 * loss, "test_accuracy": 0.5 + k / 100,
            "bytes_sent": 10, "bytes_received": 20, "wait_s": 0.5, "round_s": 0.25, "suspected": []}


def test_a_restarted_agents_log_reads_back_as_one_history(tmp_path):
    path = tmp_path / "agent3.jsonl"
    with RoundLog(path) as log:
        assert log.run == 1
        log.write({"event": "start", "run": log.run})
        for k in range(4):
            log.write(_round(k, 1.0 / (k + 1)))
    with path.open("a") as fh:
        fh.write('{"round": 4, "train_lo')  # a line cut short by a crash
    with RoundLog(path) as log:  # restarted from its round-2 checkpoint: rounds 2 and 3 logged again
        assert log.run == 2
        log.write({"event": "start", "run": log.run})
        log.write({"event": "resumed", "round": 2})
        for k in range(2, 6):
            log.write(_round(k, 0.1 * k))

    assert [r.get("event") for r in log_lines(path)] == ["start"] + [None] * 4 + ["start", "resumed"] + [None] * 4
    rounds = read_round_log(path)
    assert sorted(rounds) == list(range(6)) and rounds[3]["train_loss"] == 0.1 * 3  # the later line counts
    assert history_from_log(path) == {"round": [0, 1, 2, 3, 4, 5],
                                      "train_loss": [1.0, 0.5, 0.1 * 2, 0.1 * 3, 0.1 * 4, 0.1 * 5],
                                      "test_loss": [2.0, 1.0, 0.2 * 2, 0.2 * 3, 0.2 * 4, 0.2 * 5],
                                      "test_accuracy": [0.5, 0.51, 0.52, 0.53, 0.54, 0.55]}
    assert history_from_log(path, 2) == {"round": [0, 1], "train_loss": [1.0, 0.5], "test_loss": [2.0, 1.0],
                                         "test_accuracy": [0.5, 0.51]}

    # an agent that died before writing its results: the loopback swarm takes the same history from its log
    summary = agent_summary(3, tmp_path, None)
    assert {k: summary[k] for k in ("round", "train_loss", "test_loss", "test_accuracy")} == history_from_log(path)
    assert (summary["last_round"], summary["bytes_sent"], summary["wait_s"]) == (5, 60.0, 3.0)
    assert summary["mean_round_s"] == 0.25
