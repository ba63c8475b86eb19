"""A rehearsal of a fleet: its bundles run as boards would, each in its own emulated host.

``rehearse(root)`` starts every bundle under ``root`` (written by ``p2pntk fleet init``) as its own
``p2pntk agent`` process, running exactly the start commands of the bundle's README
(``host.fleet.start_commands``) in the bundle's folder. As root, each board is a Linux network
namespace with the IP its inventory line gave it, on a private bridge, its uplink shaped by its
profile's bandwidth (or ``link_mbit``) with ``tc tbf`` (host.netns). Without root it says
so and falls back to 127.0.0.1: each bundle gets a ``node.rehearsal.toml`` with loopback addresses.

Faults (``Fault.parse``): ``kill:B@R`` kills board B with SIGKILL once it logs round R;
``partition:B@R:S`` cuts board B's link for S seconds at round R (namespaces only); ``late:B:S`` starts
board B S seconds after the others, as a board brought up by hand would be.
The outcome (every board's state, losses and pace, and the mode) goes to ``root/rehearsal.json``.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

from host.fleet import fleet_status, start_commands
from host.loopback import agent_environment, loopback_addresses
from agent.node import load_node
from common.errors import UserError
from common.files import read_toml, write_json, write_toml
from host.launcher import Job, launch
from host import netns
from firmware_profiles.profile import load_profile

REHEARSAL_NODE = "node.rehearsal.toml"  # the loopback fallback's node file, beside the bundle's own


@dataclass(frozen=True)
class Fault:
    kind: str
    board: int
    round: int
    seconds: float = 0.0

    @classmethod
    def parse(cls, text: str) -> "Fault":
        """``kill:B@R``, ``partition:B@R:SECONDS`` or ``late:B:SECONDS`` (board B starts that much later)."""
        try:
            kind, rest = text.split(":", 1)
            if kind == "late":
                board, seconds = rest.split(":")
                if float(seconds) >= 0:
                    return cls("late", int(board), 0, float(seconds))
            board, _, when = rest.partition("@")
            parts = when.split(":")
            if kind == "kill" and len(parts) == 1:
                return cls("kill", int(board), int(parts[0]))
            if kind == "partition" and len(parts) == 2:
                return cls("partition", int(board), int(parts[0]), float(parts[1]))
        except ValueError:
            pass
        raise UserError(f"--fault {text!r}: expected kill:BOARD@ROUND, partition:BOARD@ROUND:SECONDS or "
                        "late:BOARD:SECONDS")


def bundles_of(root: str | Path) -> list[Path]:
    """The bundle folders under ``root`` (board-0, board-1, ...), in id order."""
    root = Path(root)
    found = sorted(root.glob("board-*/node.toml"), key=lambda p: int(p.parent.name.split("-")[1]))
    if not found:
        raise UserError(f"{root}: no bundles (board-N/node.toml) here; make them with `p2pntk fleet init`")
    return [p.parent for p in found]


def _rounds_logged(log: Path) -> int:
    return log.read_text().count('"train_loss"') if log.exists() else 0


def _pid(log: Path) -> int | None:
    starts = [json.loads(line) for line in log.read_text().splitlines() if '"event": "start"' in line]
    return starts[-1]["pid"] if starts else None


def rehearse(root: str | Path, *, link_mbit: float | None = None, faults: tuple[Fault, ...] = (),
             timeout: float = 900.0, use_netns: bool = True, say: Callable[[str], None] = print,
             progress: Callable[[int, int], None] | None = None) -> dict:
    """Run the fleet under ``root`` to the end; return (and write to root/rehearsal.json) its outcome."""
    folders = bundles_of(root)
    nodes = [load_node(f / "node.toml") for f in folders]
    if [n.id for n in nodes] != list(range(len(nodes))):
        raise UserError(f"{root}: bundle ids {[n.id for n in nodes]} must be 0..{len(nodes) - 1}")
    address = {pid: addr for n in nodes for pid, addr in n.peers.items()}
    ips = [urlparse(address[n.id]).hostname for n in nodes]
    why = netns.unavailable() if use_netns else "--no-netns"
    if why is None:
        mbit = [link_mbit or (load_profile(n.profile).bandwidth_mbit if n.profile else None) for n in nodes]
        hosts: netns.Hosts | None = netns.Hosts(ips, mbit)
        mode = "netns"
        say(f"rehearsal: {len(nodes)} boards in network namespaces {', '.join(f'{ip}' for ip in ips)} on a private "
            f"bridge; uplinks {', '.join('unshaped' if m is None else f'{m:g} Mbit/s' for m in mbit)}")
        node_file = "node.toml"
    else:
        if any(f.kind == "partition" for f in faults):
            raise UserError(f"rehearsal: a partition needs the network namespaces ({why})")
        hosts, mode, node_file = None, "loopback", REHEARSAL_NODE
        say(f"rehearsal: {why}: running on 127.0.0.1 instead (each bundle gets {REHEARSAL_NODE}), links unshaped")
        _loopback_node_files(folders, nodes)
    try:
        jobs = []
        for i, folder in enumerate(folders):
            commands = start_commands(folder)
            if len(commands) != 1 or commands[0][0] != "p2pntk":
                raise UserError(f"{folder}/README.md: expected one p2pntk start command, found {commands}")
            argv = [sys.executable, "-m", "p2pntk", *[node_file if w == "node.toml" else w for w in commands[0][1:]]]
            late = sum(f.seconds for f in faults if f.kind == "late" and f.board == i)
            jobs.append(Job(f"board-{i}", (hosts.prefix(i) if hosts else []) + argv, folder / nodes[i].log.name,
                            folder / "agent.stderr", cwd=folder, delay=late))
        stop = threading.Event()
        injector = threading.Thread(target=_inject, args=(faults, folders, nodes, hosts, stop, say), daemon=True)
        injector.start()
        rounds = nodes[0].spec.train.rounds
        t0 = time.perf_counter()
        outcomes = launch(jobs, expected_lines=rounds + 2, timeout=timeout, progress=progress,
                          env=agent_environment(len(jobs)))
        wall = time.perf_counter() - t0
        stop.set()
        injector.join()
    finally:
        if hosts:
            hosts.close()
    rows = fleet_status(folders)
    for row, outcome in zip(rows, outcomes):
        row["exit"], row["failed"] = outcome.describe(), outcome.returncode != 0
    result = {"kind": "rehearsal", "mode": mode, "why_not_netns": why, "wall_s": wall, "boards": rows,
              "faults": [f.__dict__ for f in faults], "ips": ips}
    write_json(Path(root) / "rehearsal.json", result)
    return result


def _loopback_node_files(folders: list[Path], nodes) -> None:
    """node.rehearsal.toml per bundle: the bundle's node file with 127.0.0.1 and fresh ports."""
    addrs = loopback_addresses(len(nodes))
    for folder, node in zip(folders, nodes):
        table = read_toml(folder / "node.toml", f"bundle {folder}")
        table["bind"] = addrs[node.id]
        table["peers"] = {str(p): addrs[p] for p in sorted(node.peers)}
        write_toml(folder / REHEARSAL_NODE, table)


def _inject(faults, folders, nodes, hosts, stop: threading.Event, say) -> None:
    """Apply each fault once its board has logged its round."""
    pending = sorted((f for f in faults if f.kind != "late"), key=lambda f: f.round)  # late: the launcher's
    while pending and not stop.is_set():
        for f in list(pending):
            log = folders[f.board] / nodes[f.board].log.name
            if _rounds_logged(log) < f.round:
                continue
            pending.remove(f)
            if f.kind == "kill":
                pid = _pid(log)
                if pid:
                    os.kill(pid, signal.SIGKILL)
                    say(f"rehearsal: killed board {f.board} (pid {pid}) at round {f.round}")
            else:
                hosts.down(f.board)
                say(f"rehearsal: board {f.board}'s link down at round {f.round} for {f.seconds:g} s")
                stop.wait(f.seconds)
                hosts.up(f.board)
                say(f"rehearsal: board {f.board}'s link up")
        stop.wait(0.05)
