"""Tuner check: the forecast-chosen lr against a 12-point grid of actual (simulated) runs, and the cost
of tuning against one actual run, as a ratio measured side by side.

    python benchmarks/bench_tune.py [--width 2048] [--rounds 100]      (also: p2pntk bench tune)
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

from agent.simulator import simulate
from agent.swarm import Swarm
from agent.spec import load_spec
from predictor.tune import tune


def run(width: int = 2048, rounds: int = 100, agents: int = 6, extra: tuple[str, ...] = (), quick: bool = False) -> dict:
    """Tune, then simulate every lr of the tuner's grid; return losses, the gap to the best and the cost ratio."""
    if quick:
        width, rounds = min(width, 512), min(rounds, 40)
    spec = load_spec(None, [f"model.width={width}", f"train.rounds={rounds}", f"network.agents={agents}", *extra])
    tune(spec, budget_rounds=rounds)  # warm-up: imports and the digits file, which one actual run also has cached
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        result = tune(spec, budget_rounds=rounds)
        times.append(time.perf_counter() - t0)
    tune_s = float(np.median(times))
    grid = [row["lr"] for row in result["table"]]
    actual, sim_s = [], []
    for lr in grid:
        s = load_spec(None, [f"model.width={width}", f"train.rounds={rounds}", f"network.agents={agents}", *extra,
                             f"train.lr={lr}"])
        t1 = time.perf_counter()
        run_ = simulate(Swarm.from_spec(s))
        sim_s.append(time.perf_counter() - t1)
        actual.append(float(np.mean(np.asarray(run_["train_loss"])[:, -1])))
    best = int(np.nanargmin(actual))
    chosen = grid.index(result["lr"])
    out = {"width": width, "rounds": rounds, "grid": grid, "actual_final_loss": actual,
           "forecast_final_loss": [row["loss"] for row in result["table"]],
           "tuned_lr": result["lr"], "best_actual_lr": grid[best],
           "tuned_actual_loss": actual[chosen], "best_actual_loss": actual[best],
           "gap": actual[chosen] / actual[best] - 1, "tune_s": tune_s, "one_run_s": float(np.median(sim_s)),
           "tune_over_one_run": tune_s / float(np.median(sim_s))}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--width", type=int, default=2048)
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    out = run(args.width, args.rounds)
    print(f"tuned lr {out['tuned_lr']:.4g}: actual final loss {out['tuned_actual_loss']:.5g}; best of the 12-point "
          f"grid {out['best_actual_lr']:.4g}: {out['best_actual_loss']:.5g} (gap {out['gap'] * 100:+.2f}%)")
    print(f"tuning {out['tune_s']:.2f} s = {out['tune_over_one_run']:.3f} x one actual run ({out['one_run_s']:.2f} s)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()


def cli(quick: bool = False, out: str | None = None) -> dict:
    """``p2pntk bench tune``: width 4096 (512 with --quick), 100 rounds."""
    r = run(width=512 if quick else 4096, rounds=40 if quick else 100)
    print(f"tuned lr {r['tuned_lr']:.4g}: actual final loss {r['tuned_actual_loss']:.5g}; best of the 12-point grid "
          f"{r['best_actual_lr']:.4g}: {r['best_actual_loss']:.5g} (gap {r['gap'] * 100:+.2f}%)")
    print(f"tuning {r['tune_s']:.2f} s = {r['tune_over_one_run']:.3f} x one actual run ({r['one_run_s']:.2f} s)")
    if out:
        with open(out, "w") as fh:
            json.dump(r, fh, indent=1)
    return r
