"""Subcommands of ``p2pntk``; each module has ``register(subparsers)``. Shared option helpers live here."""
from __future__ import annotations

import argparse
import contextlib
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from agent.spec import Spec, load_spec
from common.files import check_writable


def add_spec_source(parser: argparse.ArgumentParser, *, metavar: str = "SPEC", more: str = "",
                    example: str = "train.lr=0.1") -> None:
    """SPEC (optional: the built-in default; ``more`` adds to its help) and --set KEY=VALUE (repeatable)."""
    parser.add_argument("spec", nargs="?", default=None, metavar=metavar,
                        help="experiment spec TOML (default: the built-in demo spec)" + more)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help=f"override a spec key, e.g. --set {example} (value read as TOML; repeatable)")


def add_spec_args(parser: argparse.ArgumentParser, out_default: str) -> None:
    """SPEC (optional: the built-in default), --set KEY=VALUE (repeatable), --out, --save-problem."""
    add_spec_source(parser)
    parser.add_argument("--out", default=out_default, help=f"results JSON (default: {out_default})")
    parser.add_argument("--save-problem", default=None, metavar="PROB.npz",
                        help="also write the exact problem trained on (docs/design.md, section 6)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or table")


def spec_from_args(args: argparse.Namespace) -> Spec:
    return load_spec(args.spec, args.overrides)


@contextlib.contextmanager
def work_folder(given: str | None, prefix: str, keep: bool = False) -> Iterator[Path]:
    """The folder a run writes node files, data and logs into: ``given`` (always kept) or a new
    temporary one, removed afterwards (it holds every agent's data) unless ``keep``."""
    if given:
        yield Path(given)
        return
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        if not keep:
            shutil.rmtree(path, ignore_errors=True)


def swarm_from_args(args: argparse.Namespace):
    """The swarm of SPEC + --set, with its problem file written if --save-problem was given.
    Output paths are checked first, so a bad one fails before any work."""
    from agent.swarm import Swarm
    check_writable(args.out, "--out")
    check_writable(args.save_problem, "--save-problem")
    swarm = Swarm.from_spec(spec_from_args(args))
    if args.save_problem:
        swarm.save_problem(args.save_problem)
    return swarm


def loss_table(results: dict) -> str:
    """Per-agent final losses and accuracy as a fixed-width table."""
    rows = [f"{'agent':>5} {'train_loss':>12} {'test_loss':>12} {'test_acc':>9}"]
    train, test = results["train_loss"], results.get("test_loss")
    acc = results.get("test_accuracy")
    def last(curves, q: int, fmt: str, width: int) -> str:
        value = curves[q][-1] if curves and curves[q] else None
        return f"{value:{width}{fmt}}" if value is not None else f"{'-':>{width}}"
    for q in range(len(train)):
        rows.append(f"{q:>5} {last(train, q, '.5g', 12)} {last(test, q, '.5g', 12)} {last(acc, q, '.3f', 9)}")
    return "\n".join(rows)


def lr_max_line(lr_max: dict, digits: int = 4) -> str:
    """"lr_max: dgd 1.23, atc ..." for every algorithm in ``lr_max`` (None: not computed here)."""
    return "lr_max: " + ", ".join(f"{name} {'-' if v is None else f'{v:.{digits}g}'}" for name, v in lr_max.items())
