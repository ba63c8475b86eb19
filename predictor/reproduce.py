"""The paper's experiments regenerated: Figure 1 (affine, complete graph), Figure 2 (wide MLP on cycle,
star and complete graphs), both for every registered algorithm, a width sweep of the forecast error, and flow vs
discrete across learning rates. Forecasts come from ``forecast``, actual runs from ``simulate``.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np

from agent.algorithms import ALGORITHMS
from agent.simulator import simulate
from agent.swarm import Swarm
from common.files import write_json
from agent.spec import resolve
from predictor.compare import compare_results, plot_comparison, pyplot, trajectory_error
from predictor.forecast import forecast, kernel_problem

ALGS = tuple(ALGORITHMS)  # every registered algorithm gets its Figure 1 and Figure 2
TOPOLOGIES = ("cycle", "star", "complete")
WIDTHS = (256, 512, 1024, 2048, 4096, 8192)
SWEEP_SEEDS = (0, 1, 2)  # theta_0 draws per width: the error of one draw fluctuates


def paper_spec(kind: str, topology: str, algorithm: str, width: int = 4096, lr: float = 0.5,
               rounds: int = 100, seed: int = 0) -> dict:
    """The experiment of the paper's figures: 6 agents, 40 digits each (classes 0/1), float64."""
    return resolve({"data": {"name": "digits", "classes": [0, 1], "samples_per_agent": 40, "test_samples": 100},
                    "model": {"kind": kind, "width": width, "depth": 1, "activation": "relu", "seed": seed},
                    "network": {"agents": 6, "topology": topology},
                    "train": {"algorithm": algorithm, "lr": lr, "rounds": rounds, "dtype": "float64"}})


def run_panel(spec: dict) -> tuple[dict, dict, dict]:
    """(forecast results, simulate results, summary with per-agent errors and timings) for one spec."""
    swarm = Swarm.from_spec(spec)
    pred, _ = forecast(swarm)
    sim = simulate(swarm)
    errors = compare_results(pred, sim)
    summary = {"kind": spec.model.kind, "width": spec.model.width,
               "topology": spec.network.topology, "algorithm": spec.train.algorithm,
               "lr": spec.train.lr, "rounds": spec.train.rounds, **errors,
               "lr_max": pred["lr_max"], "predict_s": pred["timings"]["total_s"],
               "simulate_s": sim["timings"]["total_s"]}
    return pred, sim, summary


def flow_vs_discrete(lrs_over_max=(0.01, 0.1, 0.5, 0.9, 1.1), lr_small: float = 0.01) -> list[dict]:
    """Affine model on a cycle: trajectory error of the flow against the exact rounds, per learning rate."""
    swarm = Swarm.from_spec(paper_spec("affine", "cycle", "dgd"))
    kp = kernel_problem(swarm)
    disc, _ = forecast(swarm, kp=kp)
    edge = disc["lr_max"]["dgd"]
    rows = []
    for lr in [lr_small] + [f * edge for f in lrs_over_max]:
        swarm.spec = swarm.spec.updated({"train.lr": float(lr)})
        d, _ = forecast(swarm, kp=kp)
        f, _ = forecast(swarm, "flow", kp=kp)
        rows.append({"lr": float(lr), "lr_over_lr_max": float(lr / edge),
                     "train_loss_error": max(trajectory_error(a, b) for a, b in zip(f["train_loss"], d["train_loss"])),
                     "final_train_loss_discrete": float(np.mean([c[-1] for c in d["train_loss"]])),
                     "final_train_loss_flow": float(np.mean([c[-1] for c in f["train_loss"]]))})
    return rows


def reproduce(out: str | Path, width: int = 4096, widths=WIDTHS, sweep_rounds: int = 100,
              seeds=SWEEP_SEEDS, rounds: int = 100, progress: Callable[[int, int, str], None] | None = None) -> dict:
    """Run every experiment, write the PNGs and ``out/results.json``; return the results dict.

    The width sweep averages the worst agent's error over the theta_0 draws ``seeds`` and fits the
    slope of log(error) against log(width) (-0.5 would be the 1/sqrt(width) rate).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plt = pyplot()
    t_start = time.perf_counter()
    jobs = len(ALGS) * (1 + len(TOPOLOGIES)) + len(widths) + 1
    done = 0

    def tick(note: str) -> None:
        nonlocal done
        done += 1
        if progress:
            progress(done, jobs, note)

    panels: dict[str, dict] = {}
    figures: list[str] = []
    for alg in ALGS:
        pred, sim, panels[f"fig1_{alg}"] = run_panel(paper_spec("affine", "complete", alg, rounds=rounds))
        path = out / f"fig1_{alg}.png"
        plot_comparison(pred, sim, path, title=f"Figure 1 ({alg.upper()}): affine classifier, complete graph, "
                                                f"max error {100 * panels[f'fig1_{alg}']['max']:.2g}%")
        figures.append(path.name)
        tick(f"fig1 {alg}")
        fig, axes = plt.subplots(2, len(TOPOLOGIES), figsize=(15, 7.2), squeeze=False)
        for col, topo in enumerate(TOPOLOGIES):
            pred, sim, s = run_panel(paper_spec("mlp", topo, alg, width, rounds=rounds))
            panels[f"fig2_{alg}_{topo}"] = s
            plot_comparison(pred, sim, None, ax_list=axes[:, col])
            axes[0, col].set_title(f"({'abc'[col]}) {topo}: max error {100 * s['max']:.2g}%", fontsize=10)
            tick(f"fig2 {alg} {topo}")
        fig.suptitle(f"Figure 2 ({alg.upper()}): MLP width {width}, forecast (dashed) vs training (solid)")
        fig.tight_layout()
        fig.savefig(out / f"fig2_{alg}.png", dpi=100)
        plt.close(fig)
        figures.append(f"fig2_{alg}.png")

    sweep = []
    for w in widths:
        runs = [run_panel(paper_spec("mlp", "cycle", "dgd", w, rounds=sweep_rounds, seed=seed))[2]
                for seed in seeds]
        sweep.append({"width": w, "seeds": list(seeds),
                      **{key: float(np.mean([r[key] for r in runs])) for key in
                         ("train_loss_max", "test_loss_max", "predict_s", "simulate_s")},
                      "train_loss_max_per_seed": [r["train_loss_max"] for r in runs]})
        tick(f"sweep width {w}")
    slope = float(np.polyfit(np.log([s["width"] for s in sweep]), np.log([s["train_loss_max"] for s in sweep]), 1)[0]) \
        if len(sweep) > 1 else None
    _plot_sweep(plt, sweep, out / "width_sweep.png")
    figures.append("width_sweep.png")

    flow = flow_vs_discrete()
    tick("flow vs discrete")
    results = {"panels": panels, "width_sweep": sweep, "width_sweep_slope": slope,
               "flow_vs_discrete": flow, "figures": figures,
               "settings": {"agents": 6, "samples_per_agent": 40, "classes": [0, 1], "lr": 0.5, "rounds": rounds,
                            "width": width, "sweep_widths": list(widths), "sweep_rounds": sweep_rounds,
                            "sweep_seeds": list(seeds),
                            "dtype": "float64", "error": "||forecast - actual||_2 / ||actual||_2 per agent"},
               "total_s": time.perf_counter() - t_start}
    write_json(out / "results.json", results)
    return results


def _plot_sweep(plt, sweep: list[dict], path: Path) -> None:
    w = np.array([s["width"] for s in sweep], dtype=float)
    fig, ax = plt.subplots(figsize=(5.2, 3.8))
    for key, label in (("train_loss_max", "train loss"), ("test_loss_max", "test loss")):
        ax.loglog(w, [100 * s[key] for s in sweep], "o-", label=f"{label} (worst agent, mean of seeds)")
    for i in range(len(sweep[0]["train_loss_max_per_seed"])):
        ax.loglog(w, [100 * s["train_loss_max_per_seed"][i] for s in sweep], ".", color="C0", alpha=0.4)
    first = 100 * sweep[0]["train_loss_max"]
    ax.loglog(w, first * np.sqrt(w[0] / w), "k:", lw=1, label=r"$\propto 1/\sqrt{width}$")
    ax.loglog(w, first * w[0] / w, "k--", lw=0.8, label=r"$\propto 1/width$")
    ax.set_xticks(w, [str(int(x)) for x in w])
    ax.minorticks_off()
    ax.set_xlabel("width")
    ax.set_ylabel("trajectory error (%)")
    ax.set_title("Forecast error vs width (DGD, cycle, 6 agents)", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summary_table(results: dict) -> str:
    """The panel errors as a text table (worst agent's trajectory error, percent)."""
    rows = [f"{'panel':<22} {'train err':>10} {'test err':>10} {'predict s':>10} {'simulate s':>11}"]
    named = list(results["panels"].items()) + [(f"width {s['width']} (mean)", s) for s in results["width_sweep"]]
    for name, s in named:
        rows.append(f"{name:<22} {100 * s['train_loss_max']:9.3g}% {100 * s['test_loss_max']:9.3g}% "
                    f"{s['predict_s']:10.3f} {s['simulate_s']:11.2f}")
    return "\n".join(rows)
