"""``p2pntk bench emulation``: emulated board time on this host against the profile's estimate, as ratios.

Emulation (docs/design.md, section 8) sleeps: a shaped send for latency + 8 bytes / bandwidth, a step
padded to the estimate's compute_s (``firmware_profiles.emulation.compute_pad``). The unit tests check
that those sleeps add up to ``estimate_round_time`` on a fake clock; this measures what real sleeps give
here, side by side with the number they aim at, and prints the load average (a loaded host only makes
rounds longer). Three measurements:

* ``shaper``: one ``LinkShaper(80, 5).wait_before_send(1 MB)``, measured against the 0.105 s it asks for;
* ``round``: one Pi Zero 2 W round in process (a real step, ``compute_pad``, two shaped sends), best of 3,
  against ``estimate_round_time``;
* ``loopback``: ``p2pntk loopback --profiles raspberry-pi-4b --link 10`` (3 agents, width 1024), each
  agent's mean seconds per round against its profile's estimate.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def shaper_ratio() -> dict:
    from firmware_profiles.emulation import LinkShaper
    shaper = LinkShaper(80, 5)
    start = time.perf_counter()
    asked = shaper.wait_before_send(1_000_000)
    return {"asked_s": asked, "measured_s": time.perf_counter() - start}


def round_ratio(repeats: int = 3) -> dict:
    import numpy as np
    from agent.model import ModelConfig, init_params, loss_and_grad
    from coordinator_free.wire import PARAMS_HEADER_BYTES
    from firmware_profiles.apply import estimate_round_time
    from firmware_profiles.emulation import LinkShaper, compute_pad
    from firmware_profiles.profile import load_profile
    zero = load_profile("raspberry-pi-zero-2w")
    cfg = ModelConfig("mlp", d=64, k=1, width=2048, depth=1)
    theta = init_params(cfg)
    X = np.random.default_rng(0).standard_normal((40, 64)).astype(np.float32)
    Y = np.ones((40, 1), np.float32)
    t = estimate_round_time(zero, n_params=cfg.num_params, width=2048, depth=1, d=64, k=1, batch=40,
                            n_neighbours=2, dtype_bytes=4)
    shaper = LinkShaper.from_profile(zero)
    loss_and_grad(cfg, theta, X, Y)  # warm-up

    def one_round() -> float:
        start = time.perf_counter()
        loss_and_grad(cfg, theta, X, Y)
        time.sleep(compute_pad(time.perf_counter() - start, t["compute_s"]))
        for _ in range(2):
            shaper.wait_before_send(theta.nbytes + PARAMS_HEADER_BYTES)
        return time.perf_counter() - start

    return {"estimated_s": t["total_s"], "measured_s": min(one_round() for _ in range(repeats))}


def loopback_ratios(rounds: int) -> list[dict]:
    with tempfile.TemporaryDirectory(prefix="p2pntk-bench-emulation-") as work:
        out = Path(work) / "em.json"
        status = subprocess.run([sys.executable, "-m", "p2pntk", "loopback", "--quiet", "--out", str(out), "--profiles",
                                 "raspberry-pi-4b", "--link", "10", "--set", "network.agents=3", "--set",
                                 "model.width=1024", "--set", f"train.rounds={rounds}"]).returncode  # the CLI is above us
        if status != 0:
            raise RuntimeError(f"p2pntk loopback exited with status {status}")
        agents = json.loads(out.read_text())["agents"]
    return [{"agent": a["id"], "estimated_s": a["profile"]["estimated_round_s"], "measured_s": a["mean_round_s"]}
            for a in agents]


def cli(quick: bool = False, out: str | None = None) -> dict:
    load0 = os.getloadavg()[0]
    r = {"shaper": shaper_ratio(), "round": round_ratio(), "loopback": loopback_ratios(6 if quick else 20)}
    r["loadavg"] = [load0, os.getloadavg()[0]]
    print(f"emulation bench (load average {load0:.2f} before, {r['loadavg'][1]:.2f} after); measured / aimed at:")
    print(f"  shaped send, 1 MB at 80 Mbit/s   : {r['shaper']['measured_s']:.4f} s / {r['shaper']['asked_s']:.4f} s"
          f" = {r['shaper']['measured_s'] / r['shaper']['asked_s']:.3f}")
    print(f"  Pi Zero 2 W round, in process    : {r['round']['measured_s']:.4f} s / {r['round']['estimated_s']:.4f} s"
          f" = {r['round']['measured_s'] / r['round']['estimated_s']:.3f}")
    for a in r["loopback"]:
        print(f"  loopback Pi 4 at 10 Mbit, agent {a['agent']}: {a['measured_s']:.4f} s / {a['estimated_s']:.4f} s"
              f" = {a['measured_s'] / a['estimated_s']:.3f}")
    if out:
        Path(out).write_text(json.dumps(r, indent=1))
    return r
