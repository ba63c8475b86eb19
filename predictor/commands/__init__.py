"""Subcommands of ``p2pntk``; each module has ``register(subparsers)``. Shared option helpers live here."""
from __future__ import annotations

import argparse
from pathlib import Path

from agent.spec import load_spec


def add_spec_args(parser: argparse.ArgumentParser, out_default: str) -> None:
    """SPEC (optional: the built-in default), --set KEY=VALUE (repeatable), --out, --save-problem."""
    parser.add_argument("spec", nargs="?", default=None, metavar="SPEC",
                        help="experiment spec TOML (default: the built-in demo spec)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a spec key, e.g. --set train.lr=0.1 (value read as TOML; repeatable)")
    parser.add_argument("--out", default=out_default, help=f"results JSON (default: {out_default})")
    parser.add_argument("--save-problem", default=None, metavar="PROB.npz",
                        help="also write the exact problem trained on (docs/design.md, section 6)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or table")


def spec_from_args(args: argparse.Namespace) -> dict:
    return load_spec(args.spec, args.overrides)


def swarm_from_args(args: argparse.Namespace):
    """The swarm of SPEC + --set, with its problem file written if --save-problem was given."""
    from agent.swarm import Swarm
    swarm = Swarm.from_spec(spec_from_args(args))
    if args.save_problem:
        swarm.save_problem(args.save_problem)
    return swarm


def loss_table(results: dict) -> str:
    """Per-agent final losses and accuracy as a fixed-width table."""
    rows = [f"{'agent':>5} {'train_loss':>12} {'test_loss':>12} {'test_acc':>9}"]
    train, test = results["train_loss"], results.get("test_loss")
    acc = results.get("test_accuracy")
    for q in range(len(train)):
        te = f"{test[q][-1]:12.5g}" if test else f"{'-':>12}"
        ac = f"{acc[q][-1]:9.3f}" if acc else f"{'-':>9}"
        rows.append(f"{q:>5} {train[q][-1]:12.5g} {te} {ac}")
    return "\n".join(rows)


def lr_max_line(lr_max: dict, digits: int = 4) -> str:
    """"lr_max: dgd 1.23, atc ..." for every algorithm in ``lr_max`` (None: not computed here)."""
    return "lr_max: " + ", ".join(f"{name} {'-' if v is None else f'{v:.{digits}g}'}" for name, v in lr_max.items())


def ensure_parent(path: str) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    return p
