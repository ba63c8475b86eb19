"""``p2pntk predict``: forecast every agent's train/test loss with the NTK-linearised dynamics, without
training; writes the same results JSON as simulate (kind "predict")."""
from __future__ import annotations

import sys

import numpy as np

from common.compute import DTYPES
from common.files import write_json, write_npz
from common.errors import UserError
from p2pntk.commands import add_spec_args, loss_table, lr_max_line, swarm_from_args
from predictor.forecast import DEFAULT_LANDMARKS, KERNELS, forecast
from predictor.ntk import DEFAULT_MAX_BYTES


def register(sub) -> None:
    p = sub.add_parser("predict", help="forecast each agent's loss trajectory with the NTK (no training)",
                       description="Forecast train/test loss per agent per round from the linearised "
                                   "dynamics of the spec's algorithm in kernel space (docs/design.md, section 5).")
    add_spec_args(p, "runs/predict.json")
    p.add_argument("--flow", action="store_true",
                   help="use the continuous gradient flow (the paper's Phi(t, t0)) instead of exact rounds")
    p.add_argument("--save-params", default=None, metavar="PARAMS.npz",
                   help="also write theta_q = theta_0 + J^T c_q at the rounds of --param-rounds")
    p.add_argument("--param-rounds", default="last", metavar="LIST",
                   help="rounds for --save-params: comma-separated integers, or 'last' (default), or 'all'")
    p.add_argument("--max-mb", type=float, default=DEFAULT_MAX_BYTES / 2**20,
                   help="working memory for the kernel beyond K itself, in MB (default: %(default)g)")
    p.add_argument("--kernel-dtype", choices=("auto", *DTYPES), default="auto",
                   help="precision of the NTK computation; auto (default) follows train.dtype. "
                        "The state of the rounds is float64; the kernel's products run in this dtype")
    p.add_argument("--kernel", choices=KERNELS, default="auto",
                   help="the kernel's form (docs/forecast-cost.md): exact (cross-output blocks included: a matrix "
                        "while M k <= 2048, Jacobian products above), traced (F_out (x) I + Theta_h (x) Omega: exact "
                        "for one output or the affine model), landmarks (a Nystrom factor, approximate), auto "
                        "(default: the exact matrix while small, then the cheaper of traced and exact products)")
    p.add_argument("--landmarks", type=int, default=DEFAULT_LANDMARKS, metavar="L",
                   help="landmark samples for --kernel landmarks (default: %(default)s)")
    p.add_argument("--no-band", action="store_true",
                   help="skip the 90%% finite-width band (train_loss_band: nonlinear against linearised gradient "
                        "descent on agent 0's samples, docs/predictor.md, \"Bands\")")
    p.set_defaults(func=run)


def _how(results: dict) -> str:
    """" (as Jacobian products)", " (approximate)" or "": how the kernel was applied, for the summary line."""
    if results.get("kernel_products") == "jacobian":
        return " (as Jacobian products)"
    return "" if results["kernel_exact"] else " (approximate)"


def parse_rounds(text: str, rounds: int) -> tuple[int, ...]:
    """'last' | 'all' | '0,10,100' -> the rounds to keep, each in 0..rounds."""
    if text == "last":
        return (rounds,)
    if text == "all":
        return tuple(range(rounds + 1))
    try:
        out = tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise UserError(f"--param-rounds {text!r}: expected 'last', 'all' or comma-separated integers") from None
    bad = [r for r in out if not 0 <= r <= rounds]
    if bad or not out:
        raise UserError(f"--param-rounds {text!r}: rounds must lie in 0..{rounds} (train.rounds)")
    return out


def run(args) -> int:
    if args.max_mb <= 0:
        raise UserError(f"--max-mb {args.max_mb}: must be positive")
    if args.landmarks < 1:
        raise UserError(f"--landmarks {args.landmarks}: must be a positive integer")
    swarm = swarm_from_args(args)
    spec = swarm.spec
    keep = parse_rounds(args.param_rounds, spec.train.rounds) if args.save_params else ()
    results, kept = forecast(swarm, "flow" if args.flow else "discrete", keep=keep,
                             max_bytes=int(args.max_mb * 2**20), kernel=args.kernel, landmarks=args.landmarks,
                             band=not args.no_band, kernel_dtype=None if args.kernel_dtype == "auto" else args.kernel_dtype)
    write_json(args.out, results)
    if args.save_params:
        order = sorted(kept)
        write_npz(args.save_params, rounds=np.array(order), theta=np.stack([kept[r] for r in order]))
    if not args.quiet:
        t, lr = spec.train, results["lr_max"]
        print(f"predict ({results['mode']}): {swarm.n_agents} agents, {spec.network.topology}, "
              f"{t.algorithm.upper()} lr={t.lr}, {t.rounds} rounds, P={swarm.cfg.num_params}, "
              f"{results['kernel_dtype']} {results['kernel']} kernel{_how(results)}, "
              f"{results['timings']['total_s']:.3f}s")
        print(loss_table(results))
        print(lr_max_line(lr))
        if "train_loss_band" in results:
            b = results["train_loss_band"]
            print(f"90% band of the final train loss (finite width, {results['timings']['band_s']:.3f}s): "
                  f"agent 0 {b['lower'][0][-1]:.4g} .. {b['upper'][0][-1]:.4g}, "
                  f"half-width {b['relative_half_width'][0][-1]:.1%} of the forecast")
        if results["stable"] is False:
            print(f"warning: train.lr = {t.lr} exceeds lr_max = {lr[t.algorithm]:.4g} for "
                  f"{t.algorithm.upper()}: the rounds diverge", file=sys.stderr)
    extra = [p for p in (args.save_problem, args.save_params) if p]
    print(f"wrote {args.out}" + "".join(f" and {p}" for p in extra))
    return 0
