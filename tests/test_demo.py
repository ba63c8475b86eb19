"""`p2pntk demo` end to end: forecast, real agent processes, comparison and PNG."""
import json

from p2pntk.cli import main


def test_demo_runs_end_to_end_and_writes_its_png(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--quiet", "--out", str(out), "--set", "model.width=512", "--set", "train.rounds=20",
                 "--set", "network.agents=4"]) == 0
    png = (out / "demo.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    errors = json.loads((out / "compare.json").read_text())
    assert len(errors["train_loss"]) == 4
    assert errors["train_loss_max"] < 0.05  # a width-512 forecast is already within 5% over 20 rounds
    actual = json.loads((out / "loopback.json").read_text())
    assert actual["kind"] == "loopback" and actual["train_loss"][0][-1] < actual["train_loss"][0][0]
