"""``p2pntk bench rehearsal``: seconds per round of a rehearsed fleet on a shaped link, against the estimate.

Four boards on a cycle (width 512, float32, 40 rounds, x86-host profile) are made by ``fleet init``
and run by ``rehearse --link MBIT``: each board is a network namespace whose uplink is a ``tc tbf``
token bucket at MBIT. The measured seconds per round (each board's mean over rounds 1..40, median
over boards) is set against ``firmware_profiles.apply.estimate_round_time`` for the same workload
with the profile's bandwidth replaced by MBIT. Needs root (the namespaces); ``--quick`` runs 20 rounds.
"""
from __future__ import annotations

import dataclasses
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

PROFILE = "x86-host"
MBITS = (10.0, 50.0)


def _run(*args: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "p2pntk", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"p2pntk {args[0]} failed: {proc.stderr.strip()[-500:]}")


def measure(mbit: float, rounds: int, work: Path) -> dict:
    from agent.device import workload
    from agent.local import model_config
    from agent.spec import load_spec
    from agent.roundlog import read_round_log
    from firmware_profiles.apply import estimate_round_time
    from firmware_profiles.profile import load_profile
    inventory = work / "boards.txt"
    inventory.write_text("".join(f"10.78.0.{i + 1} {PROFILE}\n" for i in range(4)))
    root = work / f"b{mbit:g}"
    _run("fleet", "init", str(inventory), "--rehearsal-data", "--out", str(root), "--round-deadline", "10",
         "--set", "model.width=512", "--set", f"train.rounds={rounds}", "--set", "data.samples_per_agent=40")
    _run("rehearse", str(root), "--quiet", "--link", str(mbit))
    result = json.loads((root / "rehearsal.json").read_text())
    if result["mode"] != "netns":
        raise RuntimeError(f"the rehearsal ran without namespaces ({result['why_not_netns']}): nothing was shaped")
    per_board = []
    for q in range(4):
        records = read_round_log(root / f"board-{q}" / "agent.jsonl")
        per_board.append(statistics.mean(r["round_s"] for k, r in records.items() if k > 0))
    spec = load_spec(root / "board-0" / "spec.toml")
    cfg = model_config(spec.model, 64, 1)
    profile = dataclasses.replace(load_profile(PROFILE), bandwidth_mbit=mbit)
    estimate = estimate_round_time(profile, **workload(cfg, spec, spec.data.samples_per_agent, 2))
    measured = statistics.median(per_board)
    return {"mbit": mbit, "measured_round_s": measured, "estimated_round_s": estimate["total_s"],
            "estimated_comm_s": estimate["comm_s"], "ratio": measured / estimate["total_s"],
            "message_bytes": estimate["message_bytes"], "per_board_round_s": per_board}


def cli(quick: bool = False, out: str | None = None) -> None:
    rounds = 20 if quick else 40
    rows = []
    with tempfile.TemporaryDirectory(prefix="p2pntk-rehearsal-") as tmp:
        for mbit in MBITS:
            rows.append(measure(mbit, rounds, Path(tmp)))
    print(f"rehearsal: 4 boards on a cycle in network namespaces, width 512 float32, {rounds} rounds, "
          f"{PROFILE} profile, uplinks shaped with tc tbf")
    print(f"{'link':>9}  {'message':>9}  {'measured s/round':>16}  {'estimate':>8}  {'measured/estimate':>17}")
    for r in rows:
        print(f"{r['mbit']:>5g} Mb/s  {r['message_bytes'] / 1e3:>6.0f} kB  {r['measured_round_s']:>16.3f}  "
              f"{r['estimated_round_s']:>8.3f}  {r['ratio']:>17.2f}")
    if out:
        from common.files import write_json
        write_json(out, {"rows": rows})
