"""Local forecasts against actual training (issue 13's acceptance setup): per split and data seed, the worst
agent's trajectory error of the replica swarm and of the summary swarm (class-eigen, the default, and the
cheaper class-mean), bytes shared per board, and the 90% band's coverage and median half-width / error: in
sample (seeds 0-2, lr 0.5, width 1024: the runs the band's rule and its one constant, SPREAD, were chosen on)
and held out (data seeds 3-5; lr 0.25 and 1.0; width 512), without and with 10 observed rounds, pooled and per
split.

    python -m benchmarks local [--quick] [--out FILE.json]      (also: p2pntk bench local)
"""
from __future__ import annotations

import json

import numpy as np

from agent.simulator import simulate
from agent.spec import load_spec
from agent.summaries import summarise
from agent.swarm import Swarm
from predictor.compare import trajectory_error
from predictor.local_forecast import LocalForecaster

SPLITS = ("iid", "dirichlet:1.0", "by-label")


def one_run(split: str, seed: int, width: int = 1024, agents: int = 8, samples: int = 30, rounds: int = 100,
            lr: float = 0.5) -> dict:
    sw = Swarm.from_spec(load_spec(None, [f"model.width={width}", f"network.agents={agents}", "network.topology=cycle",
                                          f"data.split={split}", f"data.samples_per_agent={samples}",
                                          f"data.seed={seed}", "train.algorithm=dgd", f"train.lr={lr}",
                                          f"train.rounds={rounds}", "train.dtype=float64"]))
    actual = np.asarray(simulate(sw)["train_loss"])
    p = sw.problem
    sums = {kind: {r: summarise(sw.cfg, sw.theta0, *p.agent_data(r), r, kind=kind) for r in range(agents)}
            for kind in ("class-eigen", "class-mean")}
    err = {"replica": [], "class-eigen": [], "class-mean": []}
    inside, half, point_err, inside_obs, narrower = [], [], [], [], []
    for q in range(agents):
        X, Y = p.agent_data(q)
        a = actual[q]
        err["replica"].append(trajectory_error(LocalForecaster(sw.cfg, sw.theta0, X, Y, sw.W, q).forecast(
            "dgd", lr, rounds)["train_loss"], a))
        err["class-mean"].append(trajectory_error(LocalForecaster(
            sw.cfg, sw.theta0, X, Y, sw.W, q, summaries=sums["class-mean"]).forecast("dgd", lr, rounds)["train_loss"], a))
        lf = LocalForecaster(sw.cfg, sw.theta0, X, Y, sw.W, q, summaries=sums["class-eigen"])
        f = lf.forecast("dgd", lr, rounds, band=True)
        F, b = np.asarray(f["train_loss"]), f["train_loss_band"]
        err["class-eigen"].append(trajectory_error(F, a))
        lo, hi = np.asarray(b["lower"]), np.asarray(b["upper"])
        inside.append(((a >= lo) & (a <= hi))[1:])
        half.append(((hi - lo) / 2 / a)[1:])
        point_err.append((np.abs(F - a) / a)[1:])
        g = lf.forecast("dgd", lr, rounds, band=True, observed=a[:11].tolist())["train_loss_band"]
        lo2, hi2 = np.asarray(g["lower"]), np.asarray(g["upper"])
        inside_obs.append(((a >= lo2) & (a <= hi2))[11:])
        narrower.append(float(np.median((hi2 - lo2)[11:] / (hi - lo)[11:])))
    summary = sums["class-eigen"]
    return {"split": split, "seed": seed, "width": width, "lr": lr, **{f"worst_{k}": max(v) for k, v in err.items()},
            **{f"median_{k}": float(np.median(v)) for k, v in err.items()},
            "rows": [s.m for s in summary.values()], "bytes_per_board": max(s.nbytes for s in summary.values()),
            "bytes_class_mean": max(s.nbytes for s in sums["class-mean"].values()),
            "params_message_bytes": sw.cfg.num_params * 8,
            "inside": np.concatenate(inside).tolist(), "half": np.concatenate(half).tolist(),
            "point_err": np.concatenate(point_err).tolist(), "inside_observed": np.concatenate(inside_obs).tolist(),
            "narrowed_to": float(np.median(narrower))}


HELD_OUT = {"seeds 3-5": dict(seeds=(3, 4, 5)), "lr 0.25": dict(lr=0.25), "lr 1.0": dict(lr=1.0),
            "width 512": dict(width=512)}
POOLED = ("inside", "half", "point_err", "inside_observed")


def band_figures(runs: list[dict]) -> dict:
    """Coverage, median half-width / median error and coverage after 10 observed rounds, pooled over runs."""
    pooled = {k: np.concatenate([r[k] for r in runs]) for k in POOLED}
    return {"coverage": float(pooled["inside"].mean()),
            "half_over_error": float(np.median(pooled["half"]) / np.median(pooled["point_err"])),
            "coverage_after_10_observed": float(pooled["inside_observed"].mean()),
            "narrowed_to": float(np.median([r["narrowed_to"] for r in runs]))}


def band_table(sets: dict[str, list[dict]]) -> str:
    rows = [f"{'runs':>10} {'split':>14} {'coverage':>8} {'half/err':>8} {'cov@10obs':>9} {'width@10obs':>11}"]
    for name, runs in sets.items():
        for s in ("all", *SPLITS):
            b = band_figures([r for r in runs if s in ("all", r["split"])])
            rows.append(f"{name:>10} {s:>14} {b['coverage']:>8.1%} {b['half_over_error']:>8.2f} "
                        f"{b['coverage_after_10_observed']:>9.1%} {b['narrowed_to']:>11.2f}")
    return "\n".join(rows)


def run(quick: bool = False, out: str | None = None) -> dict:
    seeds = (0,) if quick else (0, 1, 2)
    width = 256 if quick else 1024
    runs = [one_run(split, seed, width=width) for split in SPLITS for seed in seeds]
    held = {} if quick else {name: [one_run(split, seed, width=o.get("width", width), lr=o.get("lr", 0.5))
                                    for split in SPLITS for seed in o.get("seeds", seeds)]
                             for name, o in HELD_OUT.items()}
    print(f"{'split':>14} {'seed':>4} {'replica':>8} {'summary':>8} {'class-mean':>10} {'rows':>5} {'bytes':>9} "
          f"{'coverage':>8} {'half/err':>8} {'cov@10obs':>9} {'width@10obs':>11}")
    for r in runs:
        cov, ratio = np.mean(r["inside"]), np.median(r["half"]) / np.median(r["point_err"])
        print(f"{r['split']:>14} {r['seed']:>4} {r['worst_replica']:>8.2%} {r['worst_class-eigen']:>8.2%} "
              f"{r['worst_class-mean']:>10.2%} {max(r['rows']):>5} {r['bytes_per_board']:>9,} {cov:>8.1%} "
              f"{ratio:>8.2f} {np.mean(r['inside_observed']):>9.1%} {r['narrowed_to']:>11.2f}")
    total = {**band_figures(runs),
             **{f"worst_{k}_{s}": max(r[f"worst_{k}"] for r in runs if r["split"] == s)
                for k in ("replica", "class-eigen", "class-mean") for s in SPLITS}}
    print(f"all runs, all agents, rounds 1..: coverage {total['coverage']:.1%}, median half-width / median error "
          f"{total['half_over_error']:.2f}; after 10 observed rounds: coverage {total['coverage_after_10_observed']:.1%}")
    print("90% band, every agent, rounds 1..100 (after 10 observed rounds: rounds 11..100):")
    print(band_table({"in-sample": runs, **held}))
    for s in SPLITS:
        print(f"{s:>14}: worst over seeds and agents: replica {total[f'worst_replica_{s}']:.2%}, summary "
              f"{total[f'worst_class-eigen_{s}']:.2%}, class-mean {total[f'worst_class-mean_{s}']:.2%}")
    result = {"runs": [{k: v for k, v in r.items() if k not in POOLED} for r in runs], "total": total,
              "held_out": {name: {"all": band_figures(rs), **{s: band_figures([r for r in rs if r["split"] == s])
                                                              for s in SPLITS}} for name, rs in held.items()}}
    if out:
        with open(out, "w") as fh:
            json.dump(result, fh, indent=1)
    return result


def cli(quick: bool = False, out: str | None = None) -> None:
    run(quick, out)
