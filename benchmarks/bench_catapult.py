"""``p2pntk bench catapult``: what training does just above the linearised lr_max, at a finite width.

The linearised model diverges above lr_max; a finite-width network sometimes does not (a "catapult":
the loss spikes, the kernel moves, and training settles at a flatter place). Eight agents on a cycle,
digits 0/1, width 512, float64, DGD, 60 rounds (and 600 to see what settles), at fractions of the
true swarm lr_max from ``predictor.stability``: the peak train loss, the loss at round 60 and at
round 600. This is why ``tune`` never picks an lr above lr_max: above it the outcome is erratic.
``--quick`` runs width 128.
"""
from __future__ import annotations

import numpy as np

FACTORS = (0.5, 0.9, 0.97, 1.03, 1.12, 1.3, 1.6, 2.0)


def cli(quick: bool = False, out: str | None = None) -> None:
    from agent.simulator import simulate
    from agent.spec import load_spec
    from agent.swarm import Swarm
    from predictor.forecast import kernel_problem
    from predictor.stability import lr_max
    width = 128 if quick else 512
    spec = load_spec(None, ["network.agents=8", f"model.width={width}", "data.samples_per_agent=30",
                            "train.dtype='float64'", "train.rounds=600"])
    top = lr_max(kernel_problem(Swarm.from_spec(spec)), "dgd")
    rows = []
    for f in FACTORS:
        run = simulate(Swarm.from_spec(spec.updated({"train.lr": float(f * top)})))
        mean = np.nanmean(np.array(run["train_loss"], float), axis=0)
        finite = mean[np.isfinite(mean)]
        rows.append({"factor": f, "lr": f * top, "peak": float(finite.max()) if len(finite) else None,
                     "at_60": float(mean[60]) if np.isfinite(mean[60]) else None,
                     "at_600": float(mean[-1]) if np.isfinite(mean[-1]) else None,
                     "diverged_at": run.get("diverged_at_round")})
    print(f"8 agents, cycle, width {width}, float64, DGD; true swarm lr_max {top:.4g}; mean train loss over agents")
    print(f"{'lr/lr_max':>9} {'peak':>10} {'round 60':>10} {'round 600':>10}")
    for r in rows:
        cells = [("diverged" if r["diverged_at"] is not None and r[k] is None else
                  "-" if r[k] is None else f"{r[k]:.4g}") for k in ("peak", "at_60", "at_600")]
        print(f"{r['factor']:>9.2f} {cells[0]:>10} {cells[1]:>10} {cells[2]:>10}")
    if out:
        from common.files import write_json
        write_json(out, {"lr_max": top, "rows": rows})
