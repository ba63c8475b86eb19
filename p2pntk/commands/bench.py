"""``p2pntk bench TARGET``: the side-by-side benchmarks of ``benchmarks/`` (docs/design.md, section 9).

Benchmarks are the layer above the packages (nothing imports them), installed beside them so that a
normal install runs them too. This command never imports them: it runs ``python -m benchmarks TARGET
[--quick] [--out F]`` in a subprocess from the folder holding the packages (a source checkout, or
site-packages) and returns its exit status. The table of targets is in ``benchmarks/__main__.py``
only; an unknown target is reported there (one line, status 2).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from common.errors import UserError

ROOT = Path(__file__).resolve().parents[2]  # the parent of the predictor package: a checkout or site-packages


def register(sub) -> None:
    p = sub.add_parser("bench", help="run a benchmark (forecast vs training cost, scaling, ...)",
                       description="Run one of the benchmarks in benchmarks/ (a source checkout) and print its "
                                   "ratios. An unknown TARGET lists the known ones.")
    p.set_defaults(func=run)
    p.add_argument("target", metavar="TARGET", help="which benchmark (an unknown one lists the known ones)")
    p.add_argument("--quick", action="store_true", help="a smaller, faster version")
    p.add_argument("--out", default=None, metavar="FILE.json", help="also write the numbers as JSON")


def command(target: str, quick: bool = False, out: str | None = None) -> list[str]:
    """The benchmark's command line; --out is made absolute, since the benchmark runs in the checkout."""
    flags = (["--quick"] if quick else []) + (["--out", os.path.abspath(out)] if out else [])
    return [sys.executable, "-m", "benchmarks", target, *flags]


def run(args) -> int:
    if not (ROOT / "benchmarks" / "__main__.py").is_file():
        raise UserError(f"benchmark {args.target}: no benchmarks package beside predictor in {ROOT}; "
                        "reinstall p2p-ntk (pip install p2p-ntk) or run from a source checkout")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
    code = subprocess.run(command(args.target, args.quick, args.out), cwd=ROOT, env=env).returncode
    return 128 - code if code < 0 else code  # killed by signal N: 128 + N, as a shell reports it
