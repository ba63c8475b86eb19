"""``p2pntk bench agreement``: boards tune on their own data, agree, and train together; how good is it?

Eight boards on a cycle hold digits 0/1 split dirichlet:0.5 (width 512, float64). They first trade data
summaries over their own links (``p2pntk summarise --exchange``, eight processes), then each runs
``predictor.tune.tune`` on its own node (its own data and the summaries) for a 60-round budget and proposes
the chosen lr. The eight agent processes then start with their own tuned specs, agree on the minimum
(agent.process.agree_on_tuned_values) and train over ZeroMQ. Reported against the global view:
- the agreed lr against the true swarm lr_max (``predictor.stability.lr_max`` on the whole swarm's kernel);
- the swarm's mean final train loss against the best of a 12-point grid of actual runs (``simulate``)
  at lrs from 0.1 to 0.99 x the true lr_max.
``--quick`` uses 4 boards at width 128.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROUNDS = 60
GRID = 12


def run(quick: bool = False) -> dict:
    from host.loopback import agent_environment, loopback_addresses, write_node_files
    from agent.node import load_node, node_table
    from agent.simulator import simulate
    from agent.spec import load_spec
    from agent.swarm import Swarm
    from common.files import write_toml
    from predictor.forecast import kernel_problem
    from predictor.stability import lr_max
    from predictor.tune import tune
    agents, width = (4, 128) if quick else (8, 512)
    spec = load_spec(None, [f"network.agents={agents}", f"model.width={width}", "data.split='dirichlet:0.5'",
                            "data.samples_per_agent=30", "train.dtype='float64'", f"train.rounds={ROUNDS}"])
    swarm = Swarm.from_spec(spec)
    true_max = lr_max(kernel_problem(swarm), spec.train.algorithm)
    with tempfile.TemporaryDirectory(prefix="p2pntk-agree-") as tmp:
        work = Path(tmp)
        nodes = write_node_files(swarm, work, loopback_addresses(agents), round_deadline=5.0)
        sharing = [subprocess.Popen([sys.executable, "-m", "p2pntk", "summarise", str(p), "--exchange", "--out",
                                     str(work / f"summaries{q}")], env=agent_environment(agents),
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                   for q, p in enumerate(nodes)]
        errs = [p.communicate(timeout=600)[1] for p in sharing]
        if any(p.returncode for p in sharing):
            raise RuntimeError(f"a summary exchange failed: {[e.strip()[-300:] for e in errs]}")
        proposals = []
        for q, path in enumerate(nodes):
            node = load_node(path)
            choice = tune(node.spec, budget_rounds=ROUNDS, node=node, summaries=[str(work / f"summaries{q}")])
            proposals.append({"lr": choice["lr"], "lr_max_estimate": choice["lr_max"]})
            tuned = node.spec.updated({"train.lr": choice["lr"]})
            write_toml(work / f"spec{q}.toml", tuned.to_dict())
            table = node_table(node.replace(spec=str(work / f"spec{q}.toml")), relative_to=work)
            write_toml(path, table)
        procs = [subprocess.Popen([sys.executable, "-m", "agent", str(p), "-q"], env=agent_environment(agents),
                                  stderr=subprocess.PIPE, text=True) for p in nodes]
        errs = [p.communicate(timeout=900)[1] for p in procs]
        if any(p.returncode for p in procs):
            raise RuntimeError(f"an agent failed: {[e.strip()[-300:] for e in errs]}")
        results = [json.loads((work / f"agent{q}.json").read_text()) for q in range(agents)]
    agreed = results[0]["agreed"]["lr"]
    swarm_final = float(np.mean([r["train_loss"][-1] for r in results]))
    grid = list(np.geomspace(0.1, 0.99, GRID) * true_max)
    grid_final = [float(np.mean([t[-1] for t in simulate(Swarm.from_spec(spec.updated({"train.lr": float(lr)})))
                                 ["train_loss"]])) for lr in grid]
    best = int(np.nanargmin(grid_final))
    return {"agents": agents, "width": width, "rounds": ROUNDS, "true_lr_max": true_max, "proposals": proposals,
            "agreed_lr": agreed, "agreed_over_true_lr_max": agreed / true_max, "swarm_final_loss": swarm_final,
            "grid_lr": grid, "grid_final_loss": grid_final, "best_grid_lr": grid[best],
            "best_grid_final_loss": grid_final[best], "ratio_to_best": swarm_final / grid_final[best]}


def cli(quick: bool = False, out: str | None = None) -> None:
    r = run(quick)
    print(f"{r['agents']} boards, dirichlet:0.5, width {r['width']}, {r['rounds']} rounds; true swarm lr_max "
          f"{r['true_lr_max']:.4g}")
    for q, p in enumerate(r["proposals"]):
        print(f"  board {q}: tuned lr {p['lr']:.4g} (its own lr_max estimate {p['lr_max_estimate']:.4g})")
    print(f"agreed lr {r['agreed_lr']:.4g} = {r['agreed_over_true_lr_max']:.3f} x the true lr_max; swarm mean final "
          f"loss {r['swarm_final_loss']:.5g} = {r['ratio_to_best']:.3f} x the best of {GRID} actual runs "
          f"({r['best_grid_final_loss']:.5g} at lr {r['best_grid_lr']:.4g})")
    if out:
        from common.files import write_json
        write_json(out, r)
