"""Forecast against actual: the trajectory error ||a - b|| / ||b|| of each agent's loss curve, and the
plot of forecast (dashed) over actual (solid) per agent, as in the paper's figures.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from common.errors import UserError

CURVES = ("train_loss", "test_loss")


def trajectory_error(a, b) -> float:
    """||a - b||_2 / ||b||_2 over a whole trajectory (rounds 0..K): the one error measure used everywhere."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"trajectories differ in shape: {a.shape} and {b.shape}")
    norm_b, diff = np.linalg.norm(b), np.linalg.norm(a - b)
    if norm_b == 0:
        return 0.0 if diff == 0 else float("inf")
    return float(diff / norm_b)


def compare_results(a: dict, b: dict, curves: tuple[str, ...] = CURVES, names: tuple[str, str] = ("A", "B")) -> dict:
    """Per-agent trajectory errors of results ``a`` against the reference ``b``.

    Returns {curve: [error of agent q, ...], curve + "_max": worst agent, "max": worst overall}.
    Raises UserError if the two results do not describe the same agents and rounds.
    """
    out: dict = {}
    for curve in curves:
        if curve not in a or curve not in b:
            if curve == "train_loss":
                missing = names[0] if curve not in a else names[1]
                raise UserError(f"{missing}: not a results file (no {curve!r})")
            continue
        A, B = _curves(a[curve], names[0], curve), _curves(b[curve], names[1], curve)
        if A.shape != B.shape:
            raise UserError(f"{names[0]} has {A.shape[0]} agents x {A.shape[1] - 1} rounds of {curve} but "
                            f"{names[1]} has {B.shape[0]} x {B.shape[1] - 1}: they are not the same experiment")
        out[curve] = [trajectory_error(x, y) for x, y in zip(A, B)]
        out[curve + "_max"] = max(out[curve])
    out["max"] = max(out[c + "_max"] for c in curves if c in out)
    return out


def _curves(value, name: str, curve: str) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise UserError(f"{name}: {curve} is not a list of per-agent number lists") from None
    if arr.ndim != 2 or arr.shape[1] < 1:
        raise UserError(f"{name}: {curve} must be [[loss per round] per agent], got shape {arr.shape}")
    return arr


def error_table(errors: dict) -> str:
    """The per-agent errors as a fixed-width table (fractions: 0.01 is 1%)."""
    curves = [c for c in CURVES if c in errors]
    rows = [f"{'agent':>5} " + " ".join(f"{c + ' err':>16}" for c in curves)]
    for q in range(len(errors[curves[0]])):
        rows.append(f"{q:>5} " + " ".join(f"{errors[c][q]:16.4g}" for c in curves))
    rows.append(f"{'max':>5} " + " ".join(f"{errors[c + '_max']:16.4g}" for c in curves))
    return "\n".join(rows)


def plot_comparison(forecast: dict, actual: dict, path: str | Path, title: str | None = None,
                    labels: tuple[str, str] = ("forecast", "actual"), ax_list=None) -> Path | None:
    """Draw each agent's train (and test) loss: actual solid, forecast dashed, one colour per agent.

    Writes a PNG to ``path`` (matplotlib, Agg backend, imported here). With ``ax_list`` (one axis per
    curve) it draws there instead and writes nothing. A forecast's "train_loss_band" (``p2pntk predict``) is
    shaded around its train loss.
    """
    plt = pyplot()
    curves = [c for c in CURVES if c in forecast and c in actual]
    fig = None
    if ax_list is None:
        fig, ax_list = plt.subplots(1, len(curves), figsize=(5.2 * len(curves), 3.8), squeeze=False)
        ax_list = ax_list[0]
    for ax, curve in zip(ax_list, curves):
        A, F = np.asarray(actual[curve], float), np.asarray(forecast[curve], float)
        band = forecast.get(curve + "_band")
        for q in range(A.shape[0]):
            colour = f"C{q % 10}"
            if band is not None:
                ax.fill_between(range(F.shape[1]), band["lower"][q], band["upper"][q], color=colour, alpha=0.15, lw=0)
            ax.plot(A[q], color=colour, lw=1.6, label=f"agent {q}" if q < 10 else None)
            ax.plot(F[q], color=colour, lw=1.2, ls="--", marker="o", ms=3, mfc="none",
                    markevery=max(1, len(F[q]) // 10))
        ax.set_xlabel("round")
        ax.set_ylabel(curve.replace("_", " "))
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    ax_list[0].plot([], [], color="k", lw=1.6, label=labels[1])
    ax_list[0].plot([], [], color="k", lw=1.2, ls="--", marker="o", ms=3, mfc="none", label=labels[0])
    if "train_loss_band" in forecast:
        ax_list[0].fill_between([], [], [], color="k", alpha=0.15, lw=0, label="90% band")
    ax_list[0].legend(fontsize=7, ncol=2)
    if fig is None:
        return None
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def pyplot():
    try:
        import matplotlib
    except ImportError:
        raise UserError("--plot needs matplotlib: pip install 'p2p-ntk[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt
