"""``python -m benchmarks TARGET [--quick] [--out FILE.json]``: run one benchmark (``p2pntk bench`` runs this).

TARGETS is the one table of benchmarks: name -> "module:function", with
``function(quick: bool, out: str | None)``; add a line to add one. An unknown target prints one line
``p2pntk bench: error: unknown target X (known: ...)`` and exits with status 2.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from common.errors import UserError

TARGETS = {
    "predictor": "benchmarks.bench_predictor:run",
    "transport": "benchmarks.bench_transport:cli",
    "loopback": "benchmarks.bench_loopback:cli",
    "tune": "benchmarks.bench_tune:cli",
    "kernels": "benchmarks.bench_kernels:cli",
    "faults": "benchmarks.bench_faults:cli",
    "rehearsal": "benchmarks.bench_rehearsal:cli",
    "agreement": "benchmarks.bench_agreement:cli",
    "catapult": "benchmarks.bench_catapult:cli",
    "local": "benchmarks.bench_local:cli",
    "emulation": "benchmarks.bench_emulation:cli",
    "liveness": "benchmarks.bench_liveness:cli",
}
PROG = "p2pntk bench"


def load_target(spec: str):
    """Import "module:function" and return the function."""
    root = str(Path(__file__).resolve().parents[1])  # the checkout, for `python benchmarks/__main__.py` too
    if root not in sys.path:
        sys.path.insert(0, root)
    module, _, func = spec.partition(":")
    return getattr(importlib.import_module(module), func)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description="Run one benchmark of benchmarks/ and print its ratios.")
    parser.add_argument("target", help="one of: " + ", ".join(TARGETS))
    parser.add_argument("--quick", action="store_true", help="a smaller, faster version")
    parser.add_argument("--out", default=None, metavar="FILE.json", help="also write the numbers as JSON")
    args = parser.parse_args(argv)
    if args.target not in TARGETS:
        print(f"{PROG}: error: unknown target {args.target} (known: {', '.join(TARGETS)})", file=sys.stderr)
        return 2
    function = load_target(TARGETS[args.target])
    try:
        function(quick=args.quick, out=args.out)
    except UserError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return err.exit_status
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
