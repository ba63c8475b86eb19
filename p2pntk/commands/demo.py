"""``p2pntk demo``: the README's main job. A loopback swarm of real agent processes and its NTK forecast.

It forecasts every agent's loss with the linearised dynamics first (seconds), then trains the same
swarm as N OS processes gossiping over ZeroMQ on 127.0.0.1, and prints and plots forecast against
actual. Any spec key can be changed with --set, as in every other command.
"""
from __future__ import annotations

import time
from pathlib import Path

from host.loopback import failure_summary, run_loopback
from agent.spec import load_spec
from agent.swarm import Swarm
from common.errors import SwarmIncomplete
from common.files import write_json
from host.progress import ProgressBar
from p2pntk.commands import lr_max_line, work_folder
from predictor.compare import compare_results, error_table, plot_comparison
from predictor.forecast import forecast

DEMO = ["model.width=4096", "network.agents=6", "network.topology=cycle", "train.rounds=100", "train.lr=0.5"]


def register(sub) -> None:
    p = sub.add_parser("demo", help="loopback swarm + its NTK forecast, compared and plotted (the README's main job)",
                       description="Forecast a 6-agent swarm (cycle, width-4096 MLP, digits 0/1, DGD) with the NTK, "
                                   "train it as 6 real agent processes over ZeroMQ on 127.0.0.1, and compare.")
    p.add_argument("spec", nargs="?", default=None, metavar="SPEC", help="spec TOML (default: the demo swarm)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a spec key (repeatable)")
    p.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or tables, only the files written")
    p.set_defaults(func=run)


def run(args) -> int:
    spec = load_spec(args.spec, ([] if args.spec else DEMO) + args.overrides)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    swarm = Swarm.from_spec(spec)
    t, n = spec.train, swarm.n_agents
    say = (lambda *a: None) if args.quiet else print
    say(f"demo: {n} agents on a {spec.network.topology} graph, {spec.model.kind} width "
        f"{spec.model.width} ({swarm.cfg.num_params:,} parameters), digits {spec.data.classes}, "
        f"{t.algorithm.upper()} lr={t.lr}, {t.rounds} rounds")
    say("1/3 forecasting every agent's loss with the NTK ...")
    predicted, _ = forecast(swarm)
    write_json(out / "forecast.json", predicted)
    say(f"    {predicted['timings']['total_s']:.2f} s; stable learning rates up to {lr_max_line(predicted['lr_max'], 3)}")
    say(f"2/3 training: {n} agent processes over ZeroMQ on 127.0.0.1 ...")
    bar = ProgressBar(1, "    loopback", enabled=not args.quiet)


    t0 = time.perf_counter()
    with work_folder(None, "p2pntk-demo-") as workdir:
        try:
            actual = run_loopback(swarm, workdir, progress=bar.update)
        finally:
            bar.close()
    write_json(out / "loopback.json", actual)
    if actual["failed_agents"]:
        raise SwarmIncomplete(f"{failure_summary(actual)}; every agent's results are in {out / 'loopback.json'}")
    say(f"    {time.perf_counter() - t0:.1f} s, {actual['timings']['per_round_s'] * 1e3:.1f} ms per round, "
        f"{actual['bytes_per_round'] / 1e6:.2f} MB on the wire per round")
    say("3/3 forecast against actual (trajectory error ||forecast - actual|| / ||actual||):")
    errors = compare_results(predicted, actual, names=("forecast", "loopback"))
    say(error_table(errors))
    png = plot_comparison(predicted, actual, out / "demo.png",
                          title=f"NTK forecast (dashed) vs {n} real agents over ZeroMQ (solid)")
    write_json(out / "compare.json", errors)
    speedup = actual["timings"]["total_s"] / max(predicted["timings"]["total_s"], 1e-9)
    say(f"worst agent: {errors['train_loss_max'] * 100:.2f}% (train), {errors.get('test_loss_max', 0) * 100:.2f}% "
        f"(test); the forecast took {speedup:.0f}x less time than training")
    print(f"wrote {png}, {out / 'forecast.json'}, {out / 'loopback.json'}")
    return 0
