"""``p2pntk bench TARGET``: the side-by-side benchmarks of ``benchmarks/`` (docs/design.md, section 9).

The CLI is the roof of the tower, above ``benchmarks``, so this command runs ``benchmarks.__main__.main``
in this process. The table of targets is there only, and so is the report of an unknown target (one
line, status 2). A normal install ships the benchmarks beside the packages, so it runs them too.
"""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("bench", help="run a benchmark (forecast vs training cost, scaling, ...)",
                       description="Run one of the benchmarks in benchmarks/ and print its ratios. "
                                   "An unknown TARGET lists the known ones.")
    p.set_defaults(func=run)
    p.add_argument("target", metavar="TARGET", help="which benchmark (an unknown one lists the known ones)")
    p.add_argument("--quick", action="store_true", help="a smaller, faster version")
    p.add_argument("--out", default=None, metavar="FILE.json", help="also write the numbers as JSON")


def run(args) -> int:
    from benchmarks.__main__ import main  # here, not above: only `p2pntk bench` loads the benchmarks
    return main([args.target] + (["--quick"] if args.quick else []) + (["--out", args.out] if args.out else []))
