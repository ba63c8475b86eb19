"""``p2pntk simulate``: all agents in one process on the real model; writes the results JSON."""
from __future__ import annotations

import sys

from agent.simulator import simulate
from common.errors import Diverged
from common.files import write_json
from host.progress import ProgressBar
from p2pntk.commands import add_spec_args, loss_table, swarm_from_args


LOSS_GROWTH_FLAG = 10.0  # flag (do not stop) a run whose training loss rose this many times above its start


def register(sub) -> None:
    p = sub.add_parser("simulate", help="train every agent in one process (real nonlinear model)",
                       description="Run the swarm in one process and write train/test loss per agent per round.")
    add_spec_args(p, "runs/simulate.json")
    p.set_defaults(func=run)


def run(args) -> int:
    swarm = swarm_from_args(args)
    spec = swarm.spec
    bar = ProgressBar(spec.train.rounds, "simulate", enabled=not args.quiet)
    results = simulate(swarm, progress=bar.update)
    bar.close()
    write_json(args.out, results)
    if not args.quiet:
        t = spec.train
        print(f"simulate: {swarm.n_agents} agents, {spec.network.topology}, {t.algorithm.upper()} "
              f"lr={t.lr}, {t.rounds} rounds, P={swarm.cfg.num_params} ({t.dtype}), "
              f"{results['timings']['total_s']:.2f}s")
        print(loss_table(results))
        grew = [q for q, g in enumerate(results["loss_growth"]) if g is not None and g > LOSS_GROWTH_FLAG]
        if grew:
            print(f"warning: the training loss rose above {LOSS_GROWTH_FLAG:g}x its start on agents {grew}; "
                  "train.lr may be above lr_max (p2pntk stability)", file=sys.stderr)
    print(f"wrote {args.out}" + (f" and {args.save_problem}" if args.save_problem else ""))
    if results["diverged_at_round"] is not None:
        raise Diverged(f"parameters became non-finite at round {results['diverged_at_round']}; lower train.lr "
                       f"(results so far in {args.out})")
    return 0
