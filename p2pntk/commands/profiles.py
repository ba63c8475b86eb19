"""``p2pntk profiles``: list, show and calibrate device profiles; run the echo server calibrate talks to."""
from __future__ import annotations

import threading
from pathlib import Path

from agent.device import params_at_width
from agent.model import ModelConfig
from firmware_profiles.apply import (estimate_memory, estimate_round_time, format_bytes,
                                     largest_width)
from firmware_profiles.calibrate import EchoServer, calibrate
from common.errors import UserError
from firmware_profiles.profile import Profile, list_profiles, load_profile


def register(sub) -> None:
    p = sub.add_parser("profiles", help="device profiles: list, show, calibrate this machine",
                       description="Device profiles (Raspberry Pi, Jetson, x86 host): what a board "
                                   "can compute, hold and send.")
    psub = p.add_subparsers(dest="profiles_command", metavar="ACTION")
    psub.required = True

    ls = psub.add_parser("list", help="a table of the packaged profiles")
    ls.set_defaults(func=run_list)

    show = psub.add_parser("show", help="a profile's TOML and derived numbers",
                           description="Print the profile and what it implies for a model: memory, "
                                       "time per round, the widest model that fits.")
    show.add_argument("profile", metavar="NAME|FILE", help="a packaged profile name or a .toml path")
    show.add_argument("--width", type=int, default=1024, help="model width (default 1024)")
    show.add_argument("--depth", type=int, default=1, help="hidden layers (default 1)")
    show.add_argument("--d", type=int, default=64, help="input dimension (default 64: digits)")
    show.add_argument("--k", type=int, default=1, help="outputs (default 1: two classes)")
    show.add_argument("--batch", type=int, default=40, help="samples per gradient (default 40)")
    show.add_argument("--neighbours", type=int, default=2, help="graph neighbours (default 2: cycle)")
    show.set_defaults(func=run_show)

    cal = psub.add_parser("calibrate", help="measure this machine and write its profile",
                          description="Measure float32 matmul GFLOPS, memory and threads, and with "
                                      "--peer the bandwidth and latency to an echo server.")
    cal.add_argument("--out", required=True, metavar="FILE", help="profile TOML to write")
    cal.add_argument("--peer", default=None, metavar="tcp://HOST:PORT",
                     help="an echo server (`p2pntk profiles echo-server`) to measure the link to")
    cal.add_argument("--seconds", type=float, default=3.0, help="measurement time (default 3)")
    cal.add_argument("--name", default=None, help="profile name (default calibrated-HOSTNAME)")
    cal.set_defaults(func=run_calibrate)

    echo = psub.add_parser("echo-server", help="answer `calibrate --peer` from this machine")
    echo.add_argument("--bind", default="tcp://*:5599", help="ZeroMQ endpoint (default tcp://*:5599)")
    echo.add_argument("--seconds", type=float, default=None,
                      help="stop after this many seconds (default: until Ctrl-C)")
    echo.set_defaults(func=run_echo_server)


def _row(p: Profile) -> list[str]:
    return [p.name, p.architecture, str(p.cores), format_bytes(p.memory_bytes),
            format_bytes(p.budget_bytes),
            f"{p.effective_gflops:.0f}/{p.peak_gflops:.0f} {p.compute_device}",
            f"{p.bandwidth_mbit:g} Mbit/s {p.latency_ms:g} ms ({p.link})"]


def run_list(args) -> int:
    head = ["name", "arch", "cores", "memory", "budget", "GFLOPS eff/peak", "link"]
    rows = [head] + [_row(load_profile(name)) for name in list_profiles()]
    widths = [max(len(r[i]) for r in rows) for i in range(len(head) - 1)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1])
    return 0


def run_show(args) -> int:
    p = load_profile(args.profile)
    print(f"# {p.path}")
    print(Path(p.path).read_text().rstrip())
    cfg = ModelConfig("mlp" if args.depth else "affine", d=args.d, k=args.k, width=args.width,
                      depth=args.depth)
    work = dict(n_params=cfg.num_params, width=args.width, depth=args.depth, d=args.d, k=args.k,
                batch=args.batch, n_neighbours=args.neighbours, dtype_bytes=p.dtype_bytes)
    mem = estimate_memory(p, **work)
    t = estimate_round_time(p, **work)  # one array per message (DGD, ATC, CTA; GT sends two)
    print("\n# derived")
    print(f"compute on {p.compute_device}: {p.effective_gflops:.1f} effective of "
          f"{p.peak_gflops:g} peak GFLOPS (float32), {p.threads} threads, kernels {p.kernels}")
    print(f"memory budget: {format_bytes(p.budget_bytes)} of {format_bytes(p.memory_bytes)}")
    print(f"link: 1 MB takes {p.latency_ms / 1e3 + 8e6 / (p.bandwidth_mbit * 1e6):.4g} s "
          f"({p.latency_ms:g} ms + 8 Mbit / {p.bandwidth_mbit:g} Mbit/s)")
    print(f"model: d={args.d} width={args.width} depth={args.depth} k={args.k} "
          f"(P={cfg.num_params}, {p.dtype}), batch {args.batch}, {args.neighbours} neighbours")
    fits = "fits the budget" if mem["total"] <= p.budget_bytes else "OVER the budget"
    print(f"  memory {format_bytes(mem['total'])}, {fits} (parameters {format_bytes(mem['parameters'])}, "
          f"activations {format_bytes(mem['activations'])}, messages {format_bytes(mem['messages'])})"
          f"; widest model that fits the budget: {largest_width(p.budget_bytes, mem, params_at_width(cfg)) or '-'}")
    print(f"  round {t['total_s']:.4g} s = compute {t['compute_s']:.4g} s + comm {t['comm_s']:.4g} s "
          f"({args.neighbours} x {t['message_bytes']:.0f} bytes)")
    return 0


def run_calibrate(args) -> int:
    p = calibrate(args.out, name=args.name, peer=args.peer, seconds=args.seconds)
    print(f"calibrate: {p.architecture}, {p.threads}/{p.cores} threads, "
          f"{format_bytes(p.memory_bytes)} (budget {format_bytes(p.budget_bytes)}), "
          f"{p.cpu_peak_gflops:.1f} peak / {p.effective_gflops:.1f} effective GFLOPS, "
          f"{p.bandwidth_mbit:.4g} Mbit/s {p.latency_ms:.3g} ms")
    print(f"wrote {args.out}")
    return 0


def run_echo_server(args) -> int:
    if args.seconds is not None and not args.seconds > 0:
        raise UserError(f"--seconds {args.seconds!r}: expected a positive number")
    server = EchoServer(args.bind)
    stop = threading.Event()
    timer = threading.Timer(args.seconds, stop.set) if args.seconds else None
    print(f"echo server on {server.endpoint}; Ctrl-C to stop", flush=True)
    try:
        if timer:
            timer.start()
        answered = server.serve(stop)
    finally:
        if timer:
            timer.cancel()
        server.close()
    print(f"echo server answered {answered} requests")
    return 0
