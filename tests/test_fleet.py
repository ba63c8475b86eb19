"""From an address list to a running fleet: inventories, bundles, status, and rehearsals as emulated
hosts (one network namespace per board, as root; 127.0.0.1 otherwise). The rehearsal runs the start
commands written in each bundle's README, so the guide is what gets tested."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from host.fleet import read_inventory, start_commands
from host import netns
from common.errors import UserError

NETNS = netns.unavailable()
needs_netns = pytest.mark.skipif(NETNS is not None, reason=f"rehearsal namespaces: {NETNS}")
SMALL = ["--set", "train.dtype=float64", "--set", "model.width=32", "--set", "data.samples_per_agent=20",
         "--set", "data.test_samples=40"]


def _cli(*args, cwd=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "p2pntk", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout)


def _inventory(tmp_path, lines: str):
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "boards.txt"
    path.write_text(lines)
    return path


@pytest.mark.parametrize("lines,culprit", [
    ("0 10.77.0.1\n10.77.0.2\n", "give an id on every line or on none"),
    ("10.77.0.1\n10.77.0.1\n", "share the address tcp://10.77.0.1:5555"),
    ("10.77.0.1:70000\n", "port 70000 is out of range"),
    ("10.77.0.1 pi-9\n", "unknown profile 'pi-9'"),
    ("0 10.77.0.1\n2 10.77.0.2\n", "must be 0..1"),
    ("0 10.77.0.1 raspberry-pi-4b extra\n", "expected [ID] ADDRESS [PROFILE]"),
])
def test_a_bad_inventory_is_refused_in_one_line_naming_it(tmp_path, lines, culprit):
    path = _inventory(tmp_path, lines)
    with pytest.raises(UserError, match="inventory") as err:
        read_inventory(path)
    assert culprit in str(err.value)
    proc = _cli("fleet", "init", str(path), "--out", str(tmp_path / "b"))
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and culprit in proc.stderr
    assert not (tmp_path / "b").exists()  # nothing left behind


def test_inventories_in_text_and_toml_agree_and_ids_follow_the_lines(tmp_path):
    text = read_inventory(_inventory(tmp_path, "# boards\n10.77.0.1 raspberry-pi-4b\n10.77.0.2:6000  # the shed\n"))
    toml = tmp_path / "boards.toml"
    toml.write_text('[[board]]\naddress = "10.77.0.2:6000"\nid = 1\n\n'
                    '[[board]]\naddress = "10.77.0.1"\nid = 0\nprofile = "raspberry-pi-4b"\n')
    assert read_inventory(toml) == text
    assert [(b.id, b.address, b.profile) for b in text] == [(0, "tcp://10.77.0.1:5555", "raspberry-pi-4b"),
                                                            (1, "tcp://10.77.0.2:6000", None)]


def _bundles(tmp_path, rounds: int, extra=(), boards: int = 4, deadline: float = 1.0):
    inv = _inventory(tmp_path, "".join(f"{i} 10.77.0.{i + 1}\n" for i in range(boards)))
    proc = _cli("fleet", "init", str(inv), "--rehearsal-data", "--round-deadline", str(deadline), "--out",
                str(tmp_path / "b"),
                "--set", f"train.rounds={rounds}", *SMALL, *extra)
    assert proc.returncode == 0, proc.stderr
    return tmp_path / "b"


def test_a_bundle_holds_what_a_board_needs_and_its_service_unit_says_how_to_restart(tmp_path):
    root = _bundles(tmp_path, 5)
    board = root / "board-2"
    for name in ("node.toml", "spec.toml", "README.md", "p2pntk-agent.service", "data/README.md", "data/own.npz",
                 "keys/board-2.key", "keys/board-2.key_secret", "keys/board-1.key", "keys/board-3.key"):
        assert (board / name).exists(), name
    assert not (board / "keys" / "board-0.key").exists()  # only its neighbours' public keys
    assert oct((board / "keys" / "board-2.key_secret").stat().st_mode & 0o777) == "0o600"
    unit = (board / "p2pntk-agent.service").read_text()
    assert "RestartPreventExitStatus=2 4" in unit and "Restart=on-failure" in unit
    assert "WorkingDirectory=/opt/p2pntk/board-2" in unit and "SuccessExitStatus=143" in unit
    assert start_commands(board) == [["p2pntk", "agent", "node.toml"]]
    status = _cli("fleet", "status", str(root))
    assert status.returncode == 0 and status.stdout.count("not started") == 4


def test_from_a_four_line_inventory_to_a_rehearsed_swarm_that_matches_simulate(tmp_path):
    """Four bundles, four `p2pntk agent node.toml` processes run from their bundle folders (namespaces
    where root allows): the float64 losses are simulate's of the same spec to 1e-8."""
    root = _bundles(tmp_path, 30)
    proc = _cli("rehearse", str(root), "--quiet", "--timeout", "240")
    assert proc.returncode == 0, proc.stderr
    result = json.loads((root / "rehearsal.json").read_text())
    assert result["mode"] == ("netns" if NETNS is None else "loopback")
    sim = _cli("simulate", str(root / "board-0" / "spec.toml"), "--quiet", "--out", str(tmp_path / "sim.json"))
    assert sim.returncode == 0, sim.stderr
    expected = json.loads((tmp_path / "sim.json").read_text())["train_loss"]
    for q in range(4):
        got = json.loads((root / f"board-{q}" / "results.json").read_text())["train_loss"]
        assert len(got) == 31 and np.max(np.abs(np.array(got) - np.array(expected[q]))) < 1e-8
    status = _cli("fleet", "status", str(root))
    assert status.stdout.count("finished") == 4 and "30/30" in status.stdout


def _partition_rehearsal(tmp_path) -> tuple[float, list[dict], list[dict]]:
    """Board 2 of 8 cut off for 6 s at round 15 of 80, against a fault-free rehearsal: (worst final loss
    error, each board's re-admissions, the partitioned run's results)."""
    finals = {}
    for name, faults in (("clean", []), ("partition", ["--fault", "partition:2@15:6"])):
        root = _bundles(tmp_path / name, 80, boards=8, deadline=2.0)
        proc = _cli("rehearse", str(root), "--quiet", "--link", "1", *faults)
        assert proc.returncode == 0, proc.stderr
        finals[name] = [json.loads((root / f"board-{q}" / "results.json").read_text()) for q in range(8)]
    worst = max(abs(f["train_loss"][-1] - c["train_loss"][-1]) / c["train_loss"][-1]
                for f, c in zip(finals["partition"], finals["clean"]))
    return worst, [r["rejoined"] for r in finals["partition"]], finals["partition"]


def _check_partition(worst: float, rejoined: list[dict], partitioned: list[dict]) -> None:
    assert rejoined[1].get("2", 0) >= 1 and rejoined[3].get("2", 0) >= 1
    assert all(not r["suspected"] for r in partitioned)
    assert worst < 0.02


@needs_netns
def test_a_link_down_for_three_deadlines_recovers_through_rejoin(tmp_path, capsys):
    """Board 2 of 8 has its link cut for 3x the deadline (6 s, deadline 2 s) at round 15 of 80 (uplinks shaped
    at 1 Mbit/s, so rounds take about 0.35 s and it misses about 17): its neighbours suspect it, re-admit it,
    and every final loss stays within 2% of a fault-free rehearsal, with nobody suspected at the end.

    The run is 80 rounds, not 50, so that the swarm has room to settle again after the fault on a loaded
    machine: with 50 rounds and two CPU hogs, 10 of 11 runs ended 0.76-1.77% off and one 2.55%. The slow
    tier repeats it 20 times beside two CPU hogs; README "Measured" has the figures."""
    worst, rejoined, partitioned = _partition_rehearsal(tmp_path)
    with capsys.disabled():
        print(f"\n  link of board 2 of 8 down 6 s (3x the deadline): re-admissions {rejoined}, "
              f"worst final loss vs fault-free {100 * worst:.2f}%")
    _check_partition(worst, rejoined, partitioned)


@needs_netns
@pytest.mark.slow
def test_twenty_partition_rehearsals_beside_two_cpu_hogs(tmp_path, capsys):
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        for run in range(20):
            worst, rejoined, partitioned = _partition_rehearsal(tmp_path / f"run{run}")
            with capsys.disabled():
                print(f"\n  loaded partition rehearsal {run + 1}/20: worst final loss {100 * worst:.2f}%")
            _check_partition(worst, rejoined, partitioned)
    finally:
        for h in hogs:
            h.kill()


def test_rehearsal_without_namespaces_falls_back_to_loopback_and_says_so(tmp_path):
    root = _bundles(tmp_path, 3)
    proc = _cli("rehearse", str(root), "--no-netns", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "running on 127.0.0.1 instead" in proc.stdout
    assert (root / "board-0" / "node.rehearsal.toml").exists()
    assert json.loads((root / "rehearsal.json").read_text())["mode"] == "loopback"
    refused = _cli("rehearse", str(root), "--no-netns", "--fault", "partition:1@1:1")
    assert refused.returncode == 2 and "a partition needs the network namespaces" in refused.stderr
    if os.geteuid() == 0:
        assert not subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.count("p2pntk-")


@needs_netns
def test_zeroconf_discovery_crosses_the_rehearsal_namespaces(tmp_path):
    """Bundles made with --discovery zeroconf: each board advertises its inventory address over mDNS on its
    own namespace's interface and finds its neighbours through the bridge, with no static table in use."""
    pytest.importorskip("zeroconf")
    root = _bundles(tmp_path, 10, extra=("--discovery", "zeroconf"))
    assert 'advertise = "10.77.0.3"' in (root / "board-2" / "node.toml").read_text()
    proc = _cli("rehearse", str(root), "--quiet", "--timeout", "120")
    assert proc.returncode == 0, proc.stderr
    for q in range(4):
        res = json.loads((root / f"board-{q}" / "results.json").read_text())
        assert res["neighbours"] == sorted({(q - 1) % 4, (q + 1) % 4}) and len(res["train_loss"]) == 11
