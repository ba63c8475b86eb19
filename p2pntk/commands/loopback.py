"""``p2pntk loopback`` (N real agent processes on 127.0.0.1) and ``p2pntk agent NODE.toml`` (one device)."""
from __future__ import annotations

from agent.__main__ import DESCRIPTION as AGENT_DESCRIPTION, add_arguments as add_agent_arguments
from host.loopback import failure_summary, run_loopback
from common.errors import SwarmIncomplete
from common.files import write_json
from host.progress import ProgressBar
from p2pntk.commands import add_spec_args, loss_table, swarm_from_args, work_folder


def register(sub) -> None:
    p = sub.add_parser("loopback", help="run N real agent processes on 127.0.0.1 over ZeroMQ",
                       description="Write each agent's data and node file, start one OS process per agent on "
                                   "127.0.0.1, and gather their logs into the results JSON.")
    add_spec_args(p, "runs/loopback.json")
    p.add_argument("--workdir", default=None,
                   help="where node files, data and logs go, kept (default: a temporary folder, removed after)")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (its path is printed)")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds before the swarm is stopped (default 900)")
    p.add_argument("--round-deadline", type=float, default=30.0,
                   help="seconds an agent waits for a neighbour each round before suspecting it (default 30)")
    p.add_argument("--profiles", default=None, metavar="NAME,NAME,...",
                   help="emulate these device profiles, cycled over the agents (sets device.profiles and "
                        "device.emulate = true)")
    p.add_argument("--link", type=float, default=None, metavar="MBIT",
                   help="override every emulated profile's link bandwidth (Mbit/s)")
    p.set_defaults(func=run)
    a = sub.add_parser("agent", help="run one device's learner from its node file",
                       description=AGENT_DESCRIPTION + " (The same as python -m agent NODE.toml.)")
    add_agent_arguments(a)
    a.set_defaults(func=run_agent)


def run_agent(args) -> int:
    from agent.__main__ import run as run_node_file
    return run_node_file(args.node, args.verbose, args.quiet)


def run(args) -> int:
    if args.profiles:
        args.overrides += [f"device.profiles={args.profiles}", "device.emulate=true"]
    if args.link:
        args.overrides.append(f"device.link_mbit={args.link}")
    swarm = swarm_from_args(args)
    bar = ProgressBar(1, f"loopback ({swarm.n_agents} agents)", enabled=not args.quiet)
    with work_folder(args.workdir, "p2pntk-loopback-", args.keep) as workdir:
        try:
            results = run_loopback(swarm, workdir, timeout=args.timeout, round_deadline=args.round_deadline,
                                   progress=bar.update)
        finally:
            bar.close()
        write_json(args.out, results)
    if not args.quiet:
        print(f"loopback: {swarm.n_agents} agent processes, {results['timings']['total_s']:.1f}s, "
              f"{results['timings']['per_round_s'] * 1e3:.1f} ms/round, "
              f"{results['bytes_per_round'] / 1e6:.2f} MB sent per round (all agents)")
        print(loss_table(results))
        for a in results["agents"]:
            if "profile" in a:
                est = a["profile"]["estimated_round_s"]
                print(f"agent {a['id']}: {a['profile']['name']}{' (emulated)' if a['profile']['emulated'] else ''}: "
                      f"{a['mean_round_s'] * 1e3:.0f} ms/round measured, {est * 1e3:.0f} ms estimated "
                      f"({(a['mean_round_s'] / est - 1) * 100:+.0f}%)")
    kept = f" (agent logs in {workdir})" if args.workdir or args.keep else ""
    print(f"wrote {args.out}{kept}")
    if results["failed_agents"]:
        raise SwarmIncomplete(f"{failure_summary(results)}; every agent's results are in {args.out}")
    return 0
