"""The tuner: pick lr (and optionally width and rounds) by forecasting instead of training.

``tune(spec, budget_rounds=R)`` forecasts the swarm for every candidate on the NTK dynamics and
returns the one with the lowest forecast loss at the budget: by default the mean over agents of
the final training loss. The default candidates run up to SAFETY = 0.9 lr_max; given ones are taken as they are,
but one at or above the stable edge lr_max is never chosen (docs/design.md, section 5). With a
device profile, a seconds budget becomes rounds through the profile's time per round. With a node
file instead of a spec, the board tunes on its own data alone (predictor.local_forecast).
"""
from __future__ import annotations

import time
from typing import Callable

import numpy as np

from agent.device import device_profile, workload
from agent.spec import Spec
from agent.summaries import load_summaries
from agent.swarm import Swarm
from firmware_profiles.apply import estimate_round_time
from common.errors import UserError
from predictor.dynamics import discrete_rounds
from predictor.forecast import kernel_problem, loss_curves
from predictor.local_forecast import ASSUMPTION, SUMMARY_ASSUMPTION, LocalForecaster
from predictor.stability import lr_max_all

GRID_POINTS = 12
SAFETY = 0.9  # the default grid tops out at SAFETY * lr_max: near the edge the real network leaves the linear regime


def lr_grid(lr_max: float, points: int = GRID_POINTS, low: float = 0.01, high: float = SAFETY) -> list[float]:
    """``points`` learning rates, log-spaced from low * lr_max to high * lr_max."""
    return [float(x) for x in np.geomspace(low * lr_max, high * lr_max, points)]


def parse_grid(text: str | None) -> dict[str, list]:
    """``"lr=0.1,0.2,width=1024,2048,rounds=50"`` -> {"lr": [0.1, 0.2], "width": [1024, 2048], "rounds": [50]}."""
    out: dict[str, list] = {}
    key = None
    for token in (text or "").split(","):
        token = token.strip()
        if not token:
            continue
        if "=" in token:
            key, token = (s.strip() for s in token.split("=", 1))
            if key not in ("lr", "width", "rounds"):
                raise UserError(f"--grid {text!r}: unknown key {key!r} (known: lr, width, rounds)")
            out.setdefault(key, [])
        if key is None:
            raise UserError(f"--grid {text!r}: expected KEY=V1,V2,... for example lr=0.1,0.3,width=1024,2048")
        try:
            value = float(token) if key == "lr" else int(token)
        except ValueError:
            raise UserError(f"--grid {text!r}: {key} value {token!r} is not a number") from None
        if value <= 0:
            raise UserError(f"--grid {text!r}: {key} values must be positive, got {token}")
        out[key].append(value)
    return out


def rounds_for_budget(spec: Spec, cfg, n_local: int, degree: int, budget_seconds: float,
                      profile_name: str) -> tuple[int, float]:
    """(rounds that fit in ``budget_seconds`` on the profile, seconds per round) for the busiest agent."""
    profile = device_profile(profile_name, spec.device)
    per_round = estimate_round_time(profile, **workload(cfg, spec, n_local, degree))["total_s"]
    return max(int(budget_seconds // per_round), 1), per_round


def _objective(curves: dict, objective: str, q: int | None) -> np.ndarray:
    """Objective per round: mean over agents (or agent q's own) of the train or test loss."""
    L = np.asarray(curves[f"{objective}_loss"], float)  # (N, R+1)
    return L[q] if q is not None else L.mean(axis=0)


def tune(spec: Spec, *, budget_rounds: int | None = None, budget_seconds: float | None = None,
         grid: dict | None = None, objective: str = "train", profile: str | None = None,
         pick_rounds: bool = False, node=None, progress: Callable[[int, int], None] | None = None,
         summaries: list[str] | None = None) -> dict:
    """Forecast every candidate; return the choice and the whole table.

    ``grid``: {"lr": [...], "width": [...], "rounds": [...]} (each optional; lr defaults to a 12-point log
    grid below lr_max). ``node``: a NodeConfig; the board then forecasts from its own data only, plus the
    ``summaries`` (files or directories, ``agent.summaries``) that it received from other boards.
    Returns {"lr", "width", "rounds", "objective", "predicted_loss", "lr_max", "table", "spec", "timings"} and,
    on a node, "band": the chosen forecast's 90% band.
    """
    if objective not in ("train", "test"):
        raise UserError(f"--objective {objective!r}: expected train or test")
    if (budget_rounds is None) == (budget_seconds is None):
        raise UserError("give exactly one budget: --budget-rounds R or --budget-seconds S")
    if budget_seconds is not None and not profile:
        raise UserError("--budget-seconds needs a device profile (--profile NAME or device.profiles in the spec)")
    grid = grid or {}
    t0 = time.perf_counter()
    widths = grid.get("width") or [spec.model.width]
    table, n_done = [], 0
    total = len(widths) * max(len(grid.get("lr") or [None] * GRID_POINTS), 1)
    for width in widths:
        s = spec.updated({"model.width": int(width)})
        run = LocalRunner(s, node, summaries) if node is not None else SwarmRunner(Swarm.from_spec(s))
        per_round = None
        if budget_seconds is not None:
            R, per_round = rounds_for_budget(s, run.cfg, run.n_local, run.degree, budget_seconds, profile)
        else:
            R = int(budget_rounds)
        rounds_options = sorted({min(int(r), R) for r in grid.get("rounds", [])}) or [R]
        lr_max = run.lr_max
        alg = s.train.algorithm
        if lr_max.get(alg) is None:
            raise UserError(f"lr_max of {alg} needs a dense search of a system too large here; give the "
                            "candidates with --grid lr=...")
        candidates = list(grid.get("lr", [])) or lr_grid(lr_max[alg])
        for lr in candidates:
            n_done += 1
            if progress:
                progress(n_done, total)
            row = {"width": int(width), "lr": float(lr), "lr_max": lr_max[alg], "seconds_per_round": per_round}
            if lr >= lr_max[alg]:
                table.append({**row, "rounds": R, "loss": None, "stable": False})
                continue
            per_round_obj = run(alg, float(lr), max(rounds_options), objective)
            if pick_rounds:
                best_r = int(np.nanargmin(per_round_obj[:max(rounds_options) + 1]))
                table.append({**row, "rounds": best_r, "loss": float(per_round_obj[best_r]), "stable": True})
            else:
                for r in rounds_options:
                    table.append({**row, "rounds": r, "loss": float(per_round_obj[r]), "stable": True})
    stable = [r for r in table if r["stable"] and r["loss"] is not None and np.isfinite(r["loss"])]
    if not stable:
        raise UserError("no stable candidate: every lr in the grid is at or above lr_max; lower the grid's lr values")
    best = min(stable, key=lambda r: (r["loss"], r["rounds"]))
    band = None
    if node is not None:  # the chosen lr's forecast with its 90% band (the width's runner is rebuilt if needed)
        chosen = run if best["width"] == widths[-1] else LocalRunner(spec.updated({"model.width": best["width"]}),
                                                                     node, summaries)
        f = chosen.lf.forecast(spec.train.algorithm, best["lr"], best["rounds"], batch=chosen.batch,
                               seed=chosen.seed, band=True)
        band = {**f["train_loss_band"], "train_loss": f["train_loss"]}
    tuned = spec.updated({"model.width": best["width"], "train.lr": best["lr"], "train.rounds": best["rounds"]})
    return {"kind": "tune", "lr": best["lr"], "width": best["width"], "rounds": best["rounds"],
            "objective": f"{'agent ' + str(node.id) if node is not None else 'mean over agents'} final "
                         f"{objective} loss", "predicted_loss": best["loss"], "lr_max": best["lr_max"],
            "seconds_per_round": best["seconds_per_round"], "table": table, "spec": tuned,
            "assumption": None if node is None else (SUMMARY_ASSUMPTION if run.lf.summaries else ASSUMPTION),
            "summaries_from": None if node is None else sorted(run.lf.summaries), "band": band,
            "timings": {"total_s": time.perf_counter() - t0}}


class SwarmRunner:
    """Global forecasts for one width: the kernel problem and lr_max are computed once."""

    def __init__(self, swarm: Swarm) -> None:
        self.swarm, self.kp, self.cfg = swarm, kernel_problem(swarm), swarm.cfg
        self.lr_max = lr_max_all(self.kp, include=(swarm.spec.train.algorithm,))
        self.n_local = int(np.bincount(swarm.problem.agent_of_sample).max())
        self.degree = max(d for _, d in swarm.graph.degree())

    def __call__(self, algorithm: str, lr: float, rounds: int, objective: str) -> np.ndarray:
        train = self.swarm.spec.train
        own, test, _ = discrete_rounds(self.kp, algorithm, lr, rounds, batch=train.batch,
                                       seed=self.swarm.spec.data.seed)
        return _objective(loss_curves(self.kp, own, test), objective, None)


class LocalRunner:
    """On-device forecasts for node q from its own files only: its replica swarm's kernel is computed once.
    The spec's minibatch size and data seed (which draws the batches, as the real learner does) apply."""

    def __init__(self, spec: Spec, node, summaries: list[str] | None = None) -> None:
        from agent.local import model_config
        from agent.model import init_params
        from agent.node import local_data
        from coordinator_free.topology import swarm_mixing
        X, Y, X_test, Y_test = local_data(node.replace(spec=spec))
        self.cfg = model_config(spec.model, X.shape[1], Y.shape[1])
        W = swarm_mixing(spec.network)[1]
        self.n_local, self.degree = len(X), len(node.peers)
        received = load_summaries(summaries, self.cfg.num_params, self.cfg.hash()) if summaries else {}
        self.lf = LocalForecaster(self.cfg, init_params(self.cfg, np.float64), X, Y, W, node.id, X_test, Y_test,
                                  summaries=received)
        self.lr_max = lr_max_all(self.lf.kernel_problem(), include=(spec.train.algorithm,))
        self.batch, self.seed = spec.train.batch, spec.data.seed

    def __call__(self, algorithm: str, lr: float, rounds: int, objective: str) -> np.ndarray:
        f = self.lf.forecast(algorithm, lr, rounds, batch=self.batch, seed=self.seed)
        if objective == "test" and "test_loss" not in f:
            raise UserError("--objective test needs a test set in the node file (key test)")
        # With summaries a board sees the whole swarm, so it minimises the swarm's mean loss, the value every board
        # agrees on (its own loss alone made boards with skewed data propose lrs that the minimum then imposed).
        return np.asarray(f.get("swarm_train_loss", f["train_loss"]) if objective == "train" else f["test_loss"], float)


def tune_table(result: dict, limit: int = 40) -> str:
    """The candidates as a text table, best first."""
    rows = sorted(result["table"], key=lambda r: (r["loss"] is None, r["loss"] or 0))
    lines = [f"{'width':>6} {'lr':>10} {'lr/lr_max':>9} {'rounds':>6} {'forecast loss':>14}"]
    for r in rows[:limit]:
        loss = "unstable" if r["loss"] is None else f"{r['loss']:.5g}"
        mark = "  <- chosen" if (r["width"], r["lr"], r["rounds"]) == (result["width"], result["lr"], result["rounds"]) \
            else ""
        lines.append(f"{r['width']:>6} {r['lr']:>10.4g} {r['lr'] / r['lr_max']:>9.3f} {r['rounds']:>6} {loss:>14}{mark}")
    return "\n".join(lines)
