"""``fleet status`` reads a bundle's node file as the agent does (agent.node.load_node), defaults included."""
import json

from host.fleet import Board, fleet_status, status_table, write_bundles
from agent.roundlog import RoundLog
from agent.spec import load_spec
from common.files import read_toml, write_toml
from p2pntk.cli import main

SMALL = ["model.width=16", "data.samples_per_agent=5", "data.test_samples=5", "train.rounds=7"]


def _bundles(tmp_path):
    boards = [Board(i, f"10.77.0.{i + 1}", 5555) for i in range(3)]
    return write_bundles(boards, load_spec(None, SMALL), tmp_path / "b")[1]


def _log(path, rounds: int, loss: float) -> None:
    with RoundLog(path) as log:  # the agent's own writer
        log.write({"event": "start", "run": log.run, "round": 0, "rounds": 7})
        for k in range(rounds + 1):
            log.write({"round": k, "train_loss": loss / (k + 1), "test_loss": 2 * loss / (k + 1),
                       "round_s": 0.25, "suspected": [2] if k == rounds else []})


def test_a_node_file_without_log_and_out_is_read_at_the_agents_defaults(tmp_path, capsys):
    folders = _bundles(tmp_path)
    board = folders[1]
    table = read_toml(board / "node.toml", "node file")
    del table["log"], table["out"]  # the agent then writes agent1.jsonl and agent1.json beside its node file
    write_toml(board / "node.toml", table)
    _log(board / "agent1.jsonl", 3, 0.8)
    _log(folders[0] / "agent.jsonl", 7, 0.5)  # board 0 keeps the bundle's own names
    (folders[0] / "results.json").write_text(json.dumps({"kind": "agent"}))

    rows = fleet_status(folders, now=(board / "agent1.jsonl").stat().st_mtime + 12)
    assert [r["board"] for r in rows] == [0, 1, 2]
    assert rows[1]["state"] == "running (last line 12 s ago)"
    assert (rows[1]["round"], rows[1]["rounds"], rows[1]["suspected"]) == (3, 7, [2])
    assert rows[1]["train_loss"] == 0.8 / 4 and rows[1]["test_loss"] == 1.6 / 4
    assert rows[1]["round_s"] == 0.25  # the mean over the logged rounds after round 0
    assert rows[0]["state"] == "finished" and rows[0]["round"] == 7 and rows[0]["train_loss"] == 0.5 / 8
    assert rows[2]["state"] == "not started" and rows[2]["round"] is None

    (board / "agent1.json").write_text(json.dumps({"stopped": {"reason": "terminated"}}))
    assert fleet_status([board])[0]["state"] == "stopped (terminated)"
    assert main(["fleet", "status", str(tmp_path / "b")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[2].split()[:2] == ["1", "3/7"] and lines[2].endswith("stopped (terminated)")
    assert status_table(rows).splitlines()[3].split()[1] == "-"
