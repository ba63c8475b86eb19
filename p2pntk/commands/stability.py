"""``p2pntk stability``: is the swarm's linearised training stable? W doubly stochastic, Proposition 1
(minimality, the largest real eigenvalue of the reduced A - I), the spectral radius and lr_max."""
from __future__ import annotations

import time

from common.files import write_json
from p2pntk.commands import add_spec_args, lr_max_line, swarm_from_args
from predictor.forecast import EXACT_MAX_OUTPUTS, kernel_problem
from predictor.kernel_operators import JacobianOperator
from predictor.stability import stability_report


def register(sub) -> None:
    p = sub.add_parser("stability", help="stability of the linearised dynamics and lr_max per algorithm",
                       description="Check W, Proposition 1 (minimality, max real eigenvalue of the reduced "
                                   "A - I), the discrete spectral radius, and lr_max for every registered algorithm.")
    add_spec_args(p, "runs/stability.json")
    p.set_defaults(func=run)


def run(args) -> int:
    swarm = swarm_from_args(args)
    spec = swarm.spec
    t0 = time.perf_counter()
    if swarm.problem.Y_train.size <= EXACT_MAX_OUTPUTS:
        kernel = kernel_problem(swarm)
    else:  # the matrix would be (M k)^2: the closed forms' lr_max by Jacobian products instead
        kernel = JacobianOperator(swarm)
    report = stability_report(kernel, spec.train.algorithm, float(spec.train.lr))
    report["spec"] = spec
    report["seconds"] = time.perf_counter() - t0
    write_json(args.out, report)
    if not args.quiet:
        lr = report["lr_max"]
        fmt = lambda v: "-" if v is None else f"{v:.10g}"  # noqa: E731
        print(f"doubly stochastic W: {report['doubly_stochastic']}")
        print(f"minimal (reduced coordinates): {report['minimal']}")
        print(f"max real eigenvalue of A - I ({report['algorithm'].upper()}): {fmt(report['max_real_eig'])}")
        print(f"spectral radius of A at lr={report['lr']}: {fmt(report['spectral_radius'])}")
        print(lr_max_line(lr, 6))
        if "note" in report:
            print(f"note: {report['note']}")
    print(f"wrote {args.out}")
    return 0
