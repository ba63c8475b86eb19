"""Forecast cost against training cost, side by side in one run, and how the predictor scales with the
number of agents N and samples M (up to N = 64). ``p2pntk bench predictor [--quick] [--out FILE.json]``.

Times are the best of several repeats (the machine is shared; the minimum is the least disturbed run).
The CLI table runs whole commands as subprocesses (imports included, as a user sees them) and reads each
one's peak RSS from /proc (``run_cli``); growth exponents are least-squares slopes of log time against log size.
"""
from __future__ import annotations

import contextlib
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from agent.simulator import simulate
from agent.swarm import Swarm
from common.files import write_json
from agent.spec import resolve
from predictor.compare import compare_results
from predictor.forecast import forecast


def best_of(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    """(least wall time over ``repeats`` calls, the result of that fastest call)."""
    best, result = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        value = fn()
        elapsed = time.perf_counter() - t
        if elapsed < best:
            best, result = elapsed, value
    return best, result


def spec_for(width: int = 4096, agents: int = 6, per_agent: int = 40, data: str = "digits",
             dtype: str = "float64", rounds: int = 100, topology: str = "cycle") -> dict:
    return resolve({"data": {"name": data, "samples_per_agent": per_agent, "test_samples": 100},
                    "model": {"kind": "mlp", "width": width},
                    "network": {"agents": agents, "topology": topology},
                    "train": {"algorithm": "dgd", "lr": 0.5, "rounds": rounds, "dtype": dtype}})


def blas_threads(n: int | None):
    """A context that limits BLAS to ``n`` threads (threadpoolctl), or does nothing for None or without it."""
    if n is None:
        return contextlib.nullcontext()
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return None
    return threadpool_limits(limits=n, user_api="blas")


def ratio_case(quick: bool, threads: int | None = None) -> list[dict]:
    """The acceptance case (width 4096, 6 agents on a cycle, 40 digits each, lr 0.5, 100 rounds).

    ``predict`` computes the kernel in the spec's train.dtype: float64 against float64 training and
    float32 against float32 (the board default); the last row is a float64 kernel against float32 training.
    ``threads`` = 1 measures both on one core: on a shared machine, multi-threaded BLAS suffers from
    other processes far more than the small matrices of training do, so the per-core ratio is the stable one.
    """
    limit = blas_threads(threads)
    if limit is None:
        return []
    sims, preds = {}, {}
    with limit:
        for dtype in ("float64", "float32"):
            swarm = Swarm.from_spec(spec_for(dtype=dtype))
            preds[dtype] = best_of(lambda: forecast(swarm, kernel_dtype=dtype), 3 if quick else 9)
            sims[dtype] = best_of(lambda: simulate(swarm), 1 if quick else 3)
    rows = []
    for sim_dtype, kernel_dtype in (("float64", "float64"), ("float32", "float32"), ("float32", "float64")):
        (t_pred, (pred, _)), (t_sim, sim) = preds[kernel_dtype], sims[sim_dtype]
        rows.append({"case": "width 4096, N=6 cycle, M=240, 100 rounds", "blas_threads": threads or "default",
                     "simulate_dtype": sim_dtype, "kernel_dtype": kernel_dtype, "predict_s": t_pred,
                     "simulate_s": t_sim, "ratio": t_sim / t_pred, "kernel_s": pred["timings"]["kernel_s"],
                     "dynamics_s": pred["timings"]["dynamics_s"], "lr_max_s": pred["timings"]["lr_max_s"],
                     "max_trajectory_error": compare_results(pred, sim)["max"]})
    return rows


def scaling(quick: bool) -> list[dict]:
    """Forecast cost (kernel, rounds, lr_max) for N agents x n samples (synthetic data, width 1024),
    against simulate, both on one BLAS thread where threadpoolctl is installed (see ``ratio_case``)."""
    grid = [(4, 40), (16, 40), (64, 10), (64, 40)] if not quick else [(4, 20), (64, 10)]
    rows = []
    with blas_threads(1) or contextlib.nullcontext():
        for agents, per_agent in grid:
            rows.append(_scaling_row(agents, per_agent, quick))
    return rows


def _scaling_row(agents: int, per_agent: int, quick: bool) -> dict:
    swarm = Swarm.from_spec(spec_for(width=1024, agents=agents, per_agent=per_agent, data="synthetic",
                                     topology="exponential"))
    t_pred, (pred, _) = best_of(lambda: forecast(swarm), 1 if quick else 2)
    t_sim, _ = best_of(lambda: simulate(swarm), 1)
    Mk = agents * per_agent * swarm.problem.Y_train.shape[1]
    return {"agents": agents, "samples_per_agent": per_agent, "Mk": Mk, "kernel_MB": Mk * Mk * 8 / 2**20,
            "predict_s": t_pred, "kernel_s": pred["timings"]["kernel_s"],
            "dynamics_s": pred["timings"]["dynamics_s"], "lr_max_s": pred["timings"]["lr_max_s"],
            "simulate_s": t_sim, "ratio": t_sim / t_pred}


def run_cli(argv: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB) of ``python -m p2pntk ARGV`` run as its own process.

    The peak is the child's VmHWM, read from /proc every 10 ms until it exits (its last value before exit).
    Not ru_maxrss: Linux keeps the high-water mark of the memory a child had before exec, which for a fork
    of this process is this process's own size, so every child would report at least this one's RSS.
    """
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "p2pntk", *argv], stdout=subprocess.DEVNULL)
    peak_kb = 0
    while proc.poll() is None:
        peak_kb = max(peak_kb, _high_water_kb(proc.pid))
        time.sleep(0.01)
    if proc.returncode != 0:
        raise RuntimeError(f"p2pntk {' '.join(argv)} failed")
    return time.perf_counter() - t, peak_kb / 1024


def _high_water_kb(pid: int) -> int:
    """VmHWM of process ``pid`` in kB (its peak resident memory since exec), 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            return next((int(line.split()[1]) for line in status if line.startswith("VmHWM:")), 0)
    except (OSError, ValueError):
        return 0


def _sets(agents: int, per_agent: int, classes: int, data: str = "digits") -> list[str]:
    values = {"data.name": f'"{data}"', "data.classes": str(list(range(classes))), "network.agents": agents,
              "data.samples_per_agent": per_agent, "model.width": 1024, "train.rounds": 100}
    return sum((["--set", f"{key}={value}"] for key, value in values.items()), [])


def cli_scaling(quick: bool) -> dict:
    """predict and simulate (and predict-local) as whole CLI runs, float32, width 1024, 100 rounds, DGD on a
    cycle: the acceptance cases of issue 12 (8 x 160 digits x 10 classes with the default and the exact
    kernel, 64 x 200 synthetic x 10), then time and peak RSS against samples per agent, classes and agents
    on synthetic data, with fitted growth exponents. Each predict row has its worst-agent train-loss error
    against the simulate run beside it (``compare_results``)."""
    axes = {"digits": [(8, 160, 10)], "fleet": [] if quick else [(64, 200, 10)],
            "samples": [(8, n, 10) for n in ((40, 160) if quick else (40, 80, 160))],
            "classes": [(8, 80, c) for c in ((2, 10) if quick else (2, 5, 10))],
            "agents": [(N, 80, 10) for N in ((4, 16) if quick else (4, 8, 16))]}
    rows, work = [], Path(tempfile.mkdtemp(prefix="bench-predictor-"))
    for axis, cases in axes.items():
        for agents, per_agent, classes in cases:
            sets = _sets(agents, per_agent, classes, "digits" if axis == "digits" else "synthetic")
            row = {"axis": axis, "agents": agents, "samples_per_agent": per_agent, "classes": classes}
            runs = {"simulate": ["simulate"], "predict": ["predict"]}
            if axis == "digits":
                runs["exact"] = ["predict", "--kernel", "exact"]
            for name, command in runs.items():
                out = work / f"{name}.json"
                row[f"{name}_s"], row[f"{name}_MB"] = run_cli([*command, *sets, "--quiet", "--out", str(out)])
            simulated = json.loads((work / "simulate.json").read_text())
            for name in runs.keys() - {"simulate"}:
                row[f"{name}_error"] = compare_results(json.loads((work / f"{name}.json").read_text()),
                                                       simulated, curves=("train_loss",))["max"]
            row["ratio"] = row["simulate_s"] / row["predict_s"]
            rows.append(row)
    local = []
    for n in ((250, 1000) if quick else (250, 500, 1000)):
        from host.loopback import loopback_addresses, write_node_files
        from agent.spec import load_spec
        spec = load_spec(None, [a for a in _sets(8, n, 10, "synthetic") if a != "--set"])
        nodes = write_node_files(Swarm.from_spec(spec), work / f"nodes{n}", loopback_addresses(8))
        seconds, mb = run_cli(["predict-local", str(nodes[0]), "--out", str(work / "local.json")])
        local.append({"samples": n, "classes": 10, "agents": 8, "predict_local_s": seconds, "predict_local_MB": mb})
    size = {"samples": "samples_per_agent", "classes": "classes", "agents": "agents"}
    exponents = {f"{axis}:{cmd}": _slope([r[size[axis]] for r in rows if r["axis"] == axis],
                                         [r[f"{cmd}_s"] for r in rows if r["axis"] == axis])
                 for axis in size for cmd in ("predict", "simulate")}
    exponents["samples:predict-local"] = _slope([r["samples"] for r in local], [r["predict_local_s"] for r in local])
    return {"rows": rows, "local": local, "exponents": exponents}


def _slope(x: list[float], y: list[float]) -> float:
    """Least-squares slope of log y against log x."""
    lx, ly = [math.log(v) for v in x], [math.log(v) for v in y]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


def table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """Rows as a fixed-width table; columns are (header, key, format spec)."""
    widths = [max(len(h), 9) for h, _, _ in columns]
    lines = [" ".join(h.rjust(w) for (h, _, _), w in zip(columns, widths))]
    for r in rows:
        lines.append(" ".join(format(r[k], f).rjust(w) for (_, k, f), w in zip(columns, widths)))
    return "\n".join(lines)


TIMES = [("predict s", "predict_s", ".4f"), ("kernel s", "kernel_s", ".4f"), ("rounds s", "dynamics_s", ".4f"),
         ("lr_max s", "lr_max_s", ".4f"), ("simulate s", "simulate_s", ".3f"), ("ratio", "ratio", ".1f")]


def run(quick: bool = False, out: str | None = None) -> dict:
    """Print the tables; return (and with ``out`` write) the numbers."""
    ratio = ratio_case(quick) + ratio_case(quick, threads=1)
    print("forecast vs training, same spec (times: best of repeats)")
    print(table(ratio, [("threads", "blas_threads", ""), ("simulate", "simulate_dtype", ""),
                        ("kernel", "kernel_dtype", "")] + TIMES + [("traj err", "max_trajectory_error", ".2e")]))
    scale = scaling(quick)
    print("\nscaling (synthetic data, width 1024, exponential graph, DGD, 100 rounds, float64, 1 BLAS thread)")
    print(table(scale, [("N", "agents", "d"), ("n/agent", "samples_per_agent", "d"), ("Mk", "Mk", "d"),
                        ("K MB", "kernel_MB", ".1f")] + TIMES))
    cli = cli_scaling(quick)
    print("\nwhole CLI runs (float32, width 1024, cycle, DGD, 100 rounds; synthetic data but the digits row;"
          " error: worst agent's train loss against simulate)")
    columns = [("axis", "axis", ""), ("N", "agents", "d"), ("n/agent", "samples_per_agent", "d"),
               ("classes", "classes", "d"), ("predict s", "predict_s", ".2f"), ("predict MB", "predict_MB", ".0f"),
               ("error", "predict_error", ".2%"), ("simulate s", "simulate_s", ".2f"),
               ("simulate MB", "simulate_MB", ".0f"), ("ratio", "ratio", ".1f")]
    print(table(cli["rows"], columns))
    for r in cli["rows"]:
        if "exact_s" in r:
            print(f"  {r['axis']}: --kernel exact {r['exact_s']:.2f} s, {r['exact_MB']:.0f} MB, error "
                  f"{r['exact_error']:.2%}, {r['simulate_s'] / r['exact_s']:.1f}x cheaper than simulate")
    print(table(cli["local"], [("n", "samples", "d"), ("classes", "classes", "d"), ("N", "agents", "d"),
                               ("local s", "predict_local_s", ".2f"), ("local MB", "predict_local_MB", ".0f")]))
    print("growth exponents (time ~ size^e): " + ", ".join(f"{k} {v:.2f}" for k, v in cli["exponents"].items()))
    result = {"ratio": ratio, "scaling": scale, "cli": cli}
    if out:
        write_json(out, result)
        figure = plot_cli(cli, Path(out).with_suffix(".png"))
        print(f"wrote {out}" + (f" and {figure}" if figure else ""))
    return result


def plot_cli(cli: dict, path: Path) -> Path | None:
    """Whole-command time of predict and simulate against samples, classes and agents (log-log), the
    acceptance cases as bars; None without matplotlib (the ``plot`` extra)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    size = {"samples": "samples_per_agent", "classes": "classes", "agents": "agents"}
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.6))
    for ax, (axis, key) in zip(axes, size.items()):
        rows = [r for r in cli["rows"] if r["axis"] == axis]
        x = [r[key] for r in rows]
        for command, style, color in (("simulate", "s-", "tab:orange"), ("predict", "o-", "tab:blue")):
            ax.loglog(x, [r[f"{command}_s"] for r in rows], style, color=color, label=command)
        ax.set_xlabel(key.replace("_", " ")), ax.set_ylabel("whole command, s"), ax.set_title(f"against {axis}")
        ax.minorticks_off()
        ax.set_xticks(x, [str(v) for v in x])
        ticks = [t for t in (0.5, 1, 2, 4, 8, 16, 32, 64) if ax.get_ylim()[0] <= t <= ax.get_ylim()[1]]
        ax.set_yticks(ticks, [f"{t:g}" for t in ticks])
    axes[0].legend()
    cases = [(f"{r['agents']}x{r['samples_per_agent']}x{r['classes']}\n{name}", r[f"{name}_s"])
             for r in cli["rows"] if r["axis"] in ("digits", "fleet")
             for name in ("predict", "exact", "simulate") if f"{name}_s" in r]
    axes[3].barh([c for c, _ in cases][::-1], [t for _, t in cases][::-1],
                 color=["tab:orange" if "simulate" in c else "tab:blue" for c, _ in cases][::-1])
    axes[3].set_xlabel("whole command, s"), axes[3].set_title("acceptance cases")
    fig.suptitle("p2pntk predict vs simulate (float32, width 1024, 100 rounds, imports included)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


if __name__ == "__main__":
    run()
