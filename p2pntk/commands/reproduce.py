"""``p2pntk reproduce --out DIR``: regenerate the paper's figures (forecast against training) for every
registered algorithm (DGD, ATC, CTA, GT), the width sweep and flow vs discrete; writes PNGs and DIR/results.json."""
from __future__ import annotations

from host.progress import ProgressBar
from common.errors import UserError
from predictor.reproduce import WIDTHS, reproduce, summary_table


def register(sub) -> None:
    p = sub.add_parser("reproduce", help="regenerate the paper's figures: forecast vs training",
                       description="Figure 1 (affine, complete graph) and Figure 2 (wide MLP on cycle, star, "
                                   "complete) for every registered algorithm, plus a width sweep of the forecast error.")
    p.add_argument("--out", default="runs/reproduce", metavar="DIR", help="output folder (default: %(default)s)")
    p.add_argument("--width", type=int, default=4096, help="MLP width of Figure 2 (default: %(default)s)")
    p.add_argument("--widths", default=",".join(map(str, WIDTHS)), metavar="LIST",
                   help="widths of the sweep (default: %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or table")
    p.set_defaults(func=run)


def run(args) -> int:
    try:
        widths = tuple(int(w) for w in args.widths.split(","))
    except ValueError:
        raise UserError(f"--widths {args.widths!r}: expected comma-separated integers") from None
    if args.width < 1 or any(w < 1 for w in widths):
        raise UserError("--width and --widths must be positive integers")
    bar = ProgressBar(1, "reproduce", enabled=not args.quiet)


    results = reproduce(args.out, width=args.width, widths=widths, progress=bar.update)
    bar.close()
    if not args.quiet:
        print(summary_table(results))
        print(f"total {results['total_s']:.1f}s")
    print(f"wrote {args.out}/results.json and {len(results['figures'])} figures")
    return 0
