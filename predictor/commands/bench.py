"""``p2pntk bench TARGET``: the side-by-side benchmarks of ``benchmarks/`` (DESIGN section 8).

Each target is "module:function" with ``function(quick: bool, out: str | None) -> dict``; add a line to
TARGETS to add one. Benchmarks live in the source checkout, not the installed package.
"""
from __future__ import annotations

import importlib
import sys
from pathlib import Path

from coordinator_free.common.errors import UserError

TARGETS = {
    "predictor": "benchmarks.bench_predictor:run",
    "transport": "benchmarks.bench_transport:cli",
    "loopback": "benchmarks.bench_loopback:cli",
    "tune": "benchmarks.bench_tune:cli",
    "kernels": "benchmarks.bench_kernels:cli",
}


def register(sub) -> None:
    p = sub.add_parser("bench", help="run a benchmark (forecast vs training cost, scaling, ...)",
                       description="Run one of the benchmarks in benchmarks/ and print its ratios.")
    p.add_argument("target", choices=sorted(TARGETS), help="what to benchmark")
    p.add_argument("--quick", action="store_true", help="a smaller, faster version")
    p.add_argument("--out", default=None, metavar="FILE.json", help="also write the numbers as JSON")
    p.set_defaults(func=run)


def load_target(spec: str):
    """Import "module:function"; benchmarks/ is found next to the package in a source checkout."""
    module, _, func = spec.partition(":")
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError:
        root = str(Path(__file__).resolve().parents[2])
        if root not in sys.path:
            sys.path.insert(0, root)
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError:
            raise UserError(f"benchmark {spec}: not found; run from a source checkout that has benchmarks/") from None
    return getattr(mod, func)


def run(args) -> int:
    load_target(TARGETS[args.target])(quick=args.quick, out=args.out)
    return 0
