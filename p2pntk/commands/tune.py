"""``p2pntk tune`` (pick lr, width, rounds from forecasts) and ``p2pntk predict-local`` (a board's own forecast)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from agent.node import load_node, node_table
from agent.roundlog import read_round_log
from agent.spec import load_spec, parse_override, spec_table
from agent.summaries import KINDS
from common.errors import UserError
from common.files import read_toml, write_json, write_toml
from host.progress import ProgressBar
from p2pntk.commands import add_spec_source
from predictor.tune import parse_grid, tune, tune_table


def _spec_or_node(path: str | None, overrides: list[str]):
    """(spec, node or None): a node file is recognised by its ``bind`` key; --set applies to its spec."""
    if path is None or "bind" not in read_toml(path, f"spec or node file {path}"):
        return load_spec(path, overrides), None
    node = load_node(path)
    if overrides:
        node = node.replace(spec=node.spec.updated(dict(parse_override(t) for t in overrides),
                                                   f"node file {path} [spec]"))
    return node.spec, node


def register(sub) -> None:
    p = sub.add_parser("tune", help="pick lr (and width, rounds) by forecasting, never above lr_max",
                       description="Forecast every candidate with the NTK dynamics and pick the one with the lowest "
                                   "forecast loss at the budget. With a node file, the board tunes on its own data.")
    add_spec_source(p, metavar="SPEC_OR_NODE", example="network.agents=8",
                    more=", or a board's node file: it then tunes on its own data and also writes a ready node "
                         "file (OUT with .node.toml)")
    budget = p.add_mutually_exclusive_group(required=True)
    budget.add_argument("--budget-rounds", type=int, metavar="R", help="the number of rounds to forecast at")
    budget.add_argument("--budget-seconds", type=float, metavar="S",
                        help="wall-clock budget; needs a profile for the time per round")
    p.add_argument("--grid", default=None, metavar="lr=...,width=...,rounds=...",
                   help="candidates (default: 12 lrs log-spaced up to 0.9 lr_max, the spec's width)")
    p.add_argument("--objective", default="train", choices=("train", "test"),
                   help="minimise the final train (default) or test loss, mean over agents")
    p.add_argument("--pick-rounds", action="store_true", help="also pick the best round count within the budget")
    p.add_argument("--profile", default=None, help="device profile for --budget-seconds (default: device.profiles[0])")
    p.add_argument("--out", default="runs/tune.json",
                   help="results JSON (default: runs/tune.json); the tuned spec goes beside it (.spec.toml)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or table")
    add_summaries_arg(p)
    p.set_defaults(func=run)

    lp = sub.add_parser("predict-local", help="a board's forecast of its own loss from its own data (node file)",
                        description="Forecast this agent's trajectory from its own data, the topology and W only; "
                                    "optionally recalibrated on the losses in its round log.")
    lp.add_argument("node", metavar="NODE.toml", help="the board's node file (its data, test set, spec, peers)")
    lp.add_argument("--observed", default=None, metavar="LOG.jsonl",
                    help="the agent's round log: recalibrate on the rounds observed so far")
    lp.add_argument("--out", default="runs/predict-local.json",
                    help="forecast JSON (default: runs/predict-local.json)")
    lp.add_argument("--plot", default=None, metavar="PNG", help="also draw the forecast and its 90%% band")
    add_summaries_arg(lp)
    lp.set_defaults(func=run_local)

    sp = sub.add_parser("summarise", help="write this board's data summary for the others' forecasts",
                        description="Aggregate pseudo-samples of the board's data (class-mean and eigen rows "
                                    "J^T u, each over >= 10 samples; docs/predictor.md, Summaries) as an .npz "
                                    "that other boards pass to predict-local or tune --summaries.")
    sp.add_argument("node", metavar="NODE.toml", help="the board's node file")
    sp.add_argument("--kind", default="class-eigen", choices=KINDS, help="rows to share (default: %(default)s)")
    sp.add_argument("--rows", type=int, default=3, metavar="M",
                    help="at most M rows (and never more than n k / 10; default: %(default)s)")
    sp.add_argument("--out", default=None, metavar="FILE.npz",
                    help="default: runs/summary<ID>.npz, or with --exchange the directory runs/summaries")
    sp.add_argument("--exchange", action="store_true",
                    help="also exchange summaries with every board over the node's links (run it on all boards at "
                         "about the same time), and write each board's summary into the directory OUT, ready for "
                         "tune or predict-local --summaries OUT")
    sp.set_defaults(func=run_summarise)


def add_summaries_arg(p) -> None:
    p.add_argument("--summaries", nargs="+", default=None, metavar="DIR_OR_FILE",
                   help="summaries received from other boards (.npz files, or directories of them): the "
                        "forecast uses them instead of the replica assumption for those boards")


def run(args) -> int:
    if args.budget_rounds is not None and args.budget_rounds < 1:
        raise UserError(f"--budget-rounds {args.budget_rounds}: must be >= 1")
    if args.budget_seconds is not None and args.budget_seconds <= 0:
        raise UserError(f"--budget-seconds {args.budget_seconds}: must be positive")
    spec, node = _spec_or_node(args.spec, args.overrides)
    profile = args.profile or (spec.device.profiles[0] if spec.device.profiles else None) \
        or (node.profile if node is not None else None)
    bar = ProgressBar(1, "tune", enabled=not args.quiet)
    result = tune(spec, budget_rounds=args.budget_rounds, budget_seconds=args.budget_seconds,
                  grid=parse_grid(args.grid), objective=args.objective, profile=profile,
                  pick_rounds=args.pick_rounds, node=node, progress=bar.update, summaries=args.summaries)
    bar.close()
    out = Path(args.out)
    spec_path = out.with_suffix(".spec.toml")
    write_toml(spec_path, spec_table(result["spec"], spec_path.parent))
    result["spec_file"] = str(spec_path)
    if node is not None:  # a ready node file: the board's own, pointing at the tuned spec, paths relative to it
        node_path = out.with_suffix(".node.toml")  # its results, log and checkpoint: the defaults beside it
        tuned = node.replace(spec=spec_path, out=None, log=None, checkpoint=None)
        write_toml(node_path, node_table(tuned, relative_to=node_path.parent))
        result["node_file"] = str(node_path)
    write_json(out, result)
    if not args.quiet:
        print(tune_table(result))
        secs = f", {result['seconds_per_round']:.3g} s/round on {profile}" if result["seconds_per_round"] else ""
        print(f"chosen: lr={result['lr']:.4g} (lr_max {result['lr_max']:.4g}), width {result['width']}, "
              f"{result['rounds']} rounds{secs}; forecast {result['objective']} = {result['predicted_loss']:.5g} "
              f"({result['timings']['total_s']:.2f} s)")
        if result["band"]:
            b = result["band"]
            print(f"90% band of the final train loss: {b['lower'][-1]:.4g} .. {b['upper'][-1]:.4g}")
    print(f"wrote {out} and the ready spec {spec_path}" + (f" and node file {result['node_file']}" if node else ""))
    return 0


def run_local(args) -> int:
    from agent.node import load_node
    from predictor.tune import LocalRunner
    node = load_node(args.node)
    t = node.spec.train
    runner = LocalRunner(node.spec, node, args.summaries)
    delta, rho, observed = None, 0.0, []
    if args.observed:
        try:
            rounds = read_round_log(Path(args.observed))  # the start and resume event lines are skipped
        except (OSError, UnicodeDecodeError, KeyError, TypeError) as err:
            raise UserError(f"--observed {args.observed}: not an agent round log ({err})") from None
        while len(observed) in rounds:  # rounds 0, 1, ... up to the first gap (rounds skipped while catching up)
            observed.append(rounds[len(observed)]["train_loss"])
        if not observed:
            raise UserError(f"--observed {args.observed}: not an agent round log (no round 0 in it)")
        delta, rho = runner.lf.recalibrate(observed, t.algorithm, float(t.lr))
    f = runner.lf.forecast(t.algorithm, float(t.lr), t.rounds, *(() if delta is None else (delta, rho)),
                           batch=runner.batch, seed=runner.seed, band=True, observed=observed or None)
    f.update({"kind": "predict-local", "recalibrated_on_rounds": max(len(observed) - 1, 0),
              "lr_max": runner.lr_max, "spec": node.spec})
    write_json(args.out, f)
    L, band = np.asarray(f["train_loss"]), f["train_loss_band"]
    print(f"agent {node.id}: forecast train loss {L[0]:.4g} -> {L[-1]:.4g} after {t.rounds} rounds, 90% band "
          f"{band['lower'][-1]:.4g} .. {band['upper'][-1]:.4g} (assumption: {f['assumption']}; summaries from "
          f"boards {f['summaries_from']}; delta_scale={f['delta_scale']}, rho={f['rho']})")
    if args.plot:
        plot_band(f, args.plot, f"agent {node.id}: predict-local, 90% band")
        print(f"wrote {args.plot}")
    print(f"wrote {args.out}")
    return 0


def run_summarise(args) -> int:
    from agent.local import model_config
    from agent.model import init_params
    from agent.node import local_data
    from agent.summaries import save_summary, summarise
    node = load_node(args.node)
    X, Y, _, _ = local_data(node)
    cfg = model_config(node.spec.model, X.shape[1], Y.shape[1])
    s = summarise(cfg, init_params(cfg, np.float64), X, Y, node.id, kind=args.kind, m=args.rows)
    print(f"board {node.id}: {s.m} rows ({s.kind}) over {s.n} samples, class counts {s.class_counts.tolist()}, "
          f"{s.nbytes} bytes")
    if not args.exchange:
        out = args.out or f"runs/summary{node.id}.npz"
        save_summary(out, s)
        print(f"wrote {out}")
        return 0
    from agent.process import share_summaries
    out_dir = Path(args.out or "runs/summaries")
    got = share_summaries(node, s)
    for board, summary in sorted(got.items()):
        save_summary(out_dir / f"summary{board}.npz", summary)
    missing = sorted(set(range(node.spec.network.agents)) - got.keys())
    print(f"board {node.id}: summaries of boards {sorted(got)} in {out_dir}"
          + (f"; none from {missing} (the forecast assumes replicas of our data for them)" if missing else ""))
    return 0


def plot_band(f: dict, path: str, title: str) -> None:
    """The forecast train loss with its band (``predictor.compare.pyplot``: matplotlib, Agg)."""
    from predictor.compare import pyplot
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 3.8))
    L, b = f["train_loss"], f["train_loss_band"]
    ax.fill_between(range(len(L)), b["lower"], b["upper"], color="C0", alpha=0.25, label="90% band")
    ax.plot(L, color="C0", ls="--", label="forecast")
    ax.set(xlabel="round", ylabel="train loss", yscale="log", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
