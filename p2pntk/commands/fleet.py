"""``p2pntk fleet init|status`` (bundles for real boards, and their state) and ``p2pntk rehearse``.

``fleet init INVENTORY [SPEC]`` writes one bundle folder per board (host.fleet); ``fleet status
BUNDLE...`` reports each board from its log; ``rehearse ROOT`` runs the bundles as emulated hosts
(host.rehearse). docs/deploying.md is the guide.
"""
from __future__ import annotations

from pathlib import Path

from host.fleet import fleet_status, read_inventory, status_table, write_bundles
from host.rehearse import Fault, bundles_of, rehearse
from agent.spec import load_spec
from common.errors import SwarmIncomplete, UserError
from common.files import write_json
from host.progress import ProgressBar
from p2pntk.commands import add_spec_source


def register(sub) -> None:
    p = sub.add_parser("fleet", help="bundles for real boards from an address list, and their status",
                       description="Make one self-contained bundle per board from an inventory (one board per "
                                   "line: [ID] ADDRESS [PROFILE]) and a spec, or report boards from their logs.")
    fsub = p.add_subparsers(dest="fleet_command", metavar="ACTION", required=True)
    init = fsub.add_parser("init", help="write one bundle folder per board",
                           description="Write BUNDLES/board-N/ per board: node file, spec, keys, data slot, "
                                       "systemd unit and a README saying how to copy and start it.")
    init.add_argument("inventory", metavar="INVENTORY", help="boards: a text file of [ID] ADDRESS [PROFILE] "
                                                             "lines, or a TOML file of [[board]] tables")
    add_spec_source(init, more="; network.agents is set to the number of boards", example="train.rounds=200")
    init.add_argument("--out", default="bundles", metavar="DIR", help="where the bundles go (default: bundles)")
    init.add_argument("--rehearsal-data", action="store_true",
                      help="fill each board's data slot with its slice of the spec's data set (for a rehearsal; "
                           "real boards bring their own)")
    init.add_argument("--round-deadline", type=float, default=10.0,
                      help="seconds a board waits for a neighbour each round (default 10)")
    init.add_argument("--discovery", choices=("static", "zeroconf"), default="static",
                      help="static: each node file lists its neighbours' addresses (default); zeroconf: boards "
                           "find them over mDNS, each advertising its inventory address")
    init.set_defaults(func=run_init)
    status = fsub.add_parser("status", help="report each board from its log and results",
                             description="One line per bundle: state, round, losses, pace, suspected peers. "
                                         "For real boards, copy each board's agent.jsonl and results.json into "
                                         "its bundle first (the bundle README shows how).")
    status.add_argument("bundles", nargs="+", metavar="BUNDLE", help="bundle folders, or a folder of bundles")
    status.add_argument("--json", default=None, metavar="FILE.json", help="also write the rows as JSON")
    status.set_defaults(func=run_status)

    r = sub.add_parser("rehearse", help="run a fleet's bundles as emulated hosts (network namespaces)",
                       description="Start every bundle under ROOT as its own agent process with the start "
                                   "commands of its README; as root, each in its own network namespace with its "
                                   "inventory IP on a private bridge and its uplink shaped with tc tbf; otherwise "
                                   "on 127.0.0.1. Writes ROOT/rehearsal.json.")
    r.add_argument("root", metavar="ROOT", help="the folder `fleet init` wrote (holding board-0, board-1, ...)")
    r.add_argument("--link", type=float, default=None, metavar="MBIT",
                   help="shape every uplink at this rate (default: each board's profile's bandwidth, "
                        "or unshaped without a profile)")
    r.add_argument("--fault", action="append", default=[], metavar="SPEC",
                   help="kill:BOARD@ROUND (SIGKILL), partition:BOARD@ROUND:SECONDS (link down) or "
                        "late:BOARD:SECONDS (started that much after the others); repeatable")
    r.add_argument("--no-netns", action="store_true", help="run on 127.0.0.1 even as root")
    r.add_argument("--timeout", type=float, default=900.0, help="seconds before the boards are stopped (default 900)")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.set_defaults(func=run_rehearse)


def run_init(args) -> int:
    boards = read_inventory(args.inventory)
    spec = load_spec(args.spec, args.overrides)
    out = Path(args.out)
    if out.exists() and any(out.glob("board-*")):
        raise UserError(f"--out {out} already holds bundles; choose another folder (new keys would not match theirs)")
    spec, folders = write_bundles(boards, spec, out, rehearsal_data=args.rehearsal_data,
                                  round_deadline=args.round_deadline, discovery=args.discovery)
    print(f"wrote {len(folders)} bundles under {out}/ ({spec.network.topology}, {spec.network.agents} boards, "
          f"{spec.train.rounds} rounds): copy board-N/ onto board N and start it as its README says")
    if not args.rehearsal_data:
        print("each board's data slot (board-N/data/own.npz) is empty: see board-N/data/README.md")
    return 0


def _bundle_folders(paths: list[str]) -> list[Path]:
    out = []
    for p in map(Path, paths):
        out += [p] if (p / "node.toml").exists() else bundles_of(p)
    return out


def run_status(args) -> int:
    rows = fleet_status(_bundle_folders(args.bundles))
    print(status_table(rows))
    if args.json:
        write_json(args.json, rows)
    return 0


def run_rehearse(args) -> int:
    faults = tuple(Fault.parse(f) for f in args.fault)
    bar = ProgressBar(1, "rehearsal", enabled=not args.quiet)
    try:
        result = rehearse(args.root, link_mbit=args.link, faults=faults, timeout=args.timeout,
                          use_netns=not args.no_netns, progress=bar.update, say=print)
    finally:
        bar.close()
    print(status_table(result["boards"]))
    print(f"rehearsal ({result['mode']}): {result['wall_s']:.1f} s; wrote {Path(args.root) / 'rehearsal.json'}")
    failed = [b for b in result["boards"] if b["failed"] and not any(f.kind == "kill" and f.board == b["board"]
                                                                      for f in faults)]
    if failed:
        raise SwarmIncomplete(f"{len(failed)} of {len(result['boards'])} boards failed: " + "; ".join(
            f"board {b['board']} ({b['exit']}; see {b['folder']}/agent.stderr)" for b in failed))
    return 0
