"""Device profiles: loading and validation, the CLI, memory/time estimates, emulation primitives."""
from __future__ import annotations

import threading
import tracemalloc

import numpy as np
import pytest

from agent.model import ModelConfig, init_params, loss_and_grad
from coordinator_free.wire import PARAMS_HEADER_BYTES as HEADER_BYTES
from firmware_profiles.apply import (apply_threads, check_fits, estimate_memory,
                                     estimate_round_time, format_bytes, largest_width)
from firmware_profiles.calibrate import EchoServer, measure_link
from firmware_profiles.emulation import ComputeThrottle, LinkShaper, compute_pad
from common.errors import UserError
from firmware_profiles.profile import PROFILE_DIR, list_profiles, load_profile
from p2pntk.cli import main

SEVEN = ["jetson-nano", "jetson-orin-nano", "raspberry-pi-3b-plus", "raspberry-pi-4b",
         "raspberry-pi-5", "raspberry-pi-zero-2w", "x86-host"]


def _copy(tmp_path, name: str, old: str, new: str):
    text = (PROFILE_DIR / f"{name}.toml").read_text()
    assert old in text
    path = tmp_path / f"{name}.toml"
    path.write_text(text.replace(old, new, 1))
    return path


# -- profiles ---------------------------------------------------------------------------------

def test_all_seven_profiles_load_with_public_figures():
    assert list_profiles() == SEVEN
    for name in SEVEN:
        p = load_profile(name)
        assert p.name == name and 1 <= p.threads <= p.cores and p.budget_mb <= p.memory_mb
        assert 0 < p.effective_gflops <= p.peak_gflops
        assert all(v.split(":")[0] in ("public spec", "estimated", "measured") for v in p.sources.values())
    zero = load_profile("raspberry-pi-zero-2w")
    assert (zero.cores, zero.memory_mb, zero.architecture) == (4, 512, "aarch64")
    assert "public spec" in zero.sources["memory.total_mb"] and "802.11n" in zero.link
    nano = load_profile("jetson-nano")
    assert nano.compute_device == "gpu" and nano.providers[-1] == "CPUExecutionProvider"
    assert nano.effective_gflops == pytest.approx(236.0 * 0.3)
    assert load_profile(PROFILE_DIR / "raspberry-pi-5.toml") == load_profile("raspberry-pi-5")


@pytest.mark.parametrize("old,new,key", [
    ("total_mb = 4096", "total_mb = -5", "memory.total_mb = -5: expected a positive number"),
    ("budget_mb = 2560", "budget_mb = 5000", "memory.budget_mb = 5000 exceeds memory.total_mb = 4096"),
    ('preferred = "numpy"', 'preferred = "tensorflow"', "kernels.preferred = 'tensorflow'"),
    ('dtype = "float32"', 'dtype = "int8"', "kernels.dtype = 'int8'"),
    ('providers = ["CPUExecutionProvider"]', 'providers = ["FooExecutionProvider"]', "unknown provider"),
    ('providers = ["CPUExecutionProvider"]', 'providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]',
     "needs a [gpu] section"),
    ("cores = 4", "cores = 4\nturbo = true", "unknown key device.turbo"),
    ("cores = 4", 'cores = "four"', "device.cores = 'four': expected a positive integer"),
    ("threads = 4", "threads = 16", "device.threads = 16 exceeds device.cores = 4"),
    ("latency_ms = 3.0", "latency_ms = 0", "network.latency_ms = 0"),
    ("effective_fraction = 0.4", "effective_fraction = 1.5", "cpu.effective_fraction = 1.5"),
    ("bandwidth_mbit = 100.0\n", "", "missing key network.bandwidth_mbit"),
    ('"cpu.peak_gflops" = "estimated:', '"cpu.peak_gflops" = "trust me:', 'sources."cpu.peak_gflops"'),
    ('"cpu.peak_gflops" = "estimated:', '"cpu.flops" = "estimated:', 'unknown key sources."cpu.flops"'),
])
def test_bad_profile_is_refused_naming_file_and_key(tmp_path, old, new, key):
    path = _copy(tmp_path, "raspberry-pi-4b", old, new)
    with pytest.raises(UserError) as err:
        load_profile(path)
    assert str(err.value).startswith(f"profile {path}: ") and key in str(err.value)


def test_unknown_profile_name_lists_the_known_ones():
    with pytest.raises(UserError, match="unknown profile 'pi-6'.*raspberry-pi-5"):
        load_profile("pi-6")


# -- CLI --------------------------------------------------------------------------------------

def test_cli_list_shows_all_seven(capsys):
    assert main(["profiles", "list"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:5] == ["name", "arch", "cores", "memory", "budget"]
    assert [line.split()[0] for line in out[1:]] == SEVEN
    zero = next(line for line in out if line.startswith("raspberry-pi-zero-2w"))
    assert "512 MB" in zero and "300 MB" in zero and "20 Mbit/s" in zero


def test_cli_show_prints_toml_and_derived_numbers(capsys):
    assert main(["profiles", "show", "raspberry-pi-zero-2w"]) == 0
    out = capsys.readouterr().out
    assert "[memory]" in out and "# derived" in out and "widest model that fits" in out


def test_cli_bad_profile_exits_2_with_one_line(tmp_path, capsys):
    path = _copy(tmp_path, "raspberry-pi-4b", "total_mb = 4096", "total_mb = -5")
    assert main(["profiles", "show", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "memory.total_mb = -5" in err[0] and str(path) in err[0]
    assert main(["profiles", "show", str(tmp_path / "missing.toml")]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_calibrate_writes_a_loadable_profile(tmp_path, capsys):
    out = tmp_path / "host.toml"
    assert main(["profiles", "calibrate", "--out", str(out), "--seconds", "0.2", "--name", "ci"]) == 0
    p = load_profile(out)
    assert p.name == "ci" and p.cpu_peak_gflops > 0 and p.threads >= 1 and p.memory_mb > 0
    assert p.sources["cpu.peak_gflops"].startswith("measured:")


def test_calibrate_measures_a_peer_over_the_echo_server(tmp_path):
    server = EchoServer("tcp://127.0.0.1:*")
    stop = threading.Event()
    thread = threading.Thread(target=server.serve, args=(stop,), daemon=True)
    thread.start()
    try:
        bandwidth, latency = measure_link(server.endpoint, seconds=0.1)
        out = tmp_path / "peer.toml"
        assert main(["profiles", "calibrate", "--out", str(out), "--seconds", "0.2",
                     "--peer", server.endpoint]) == 0
    finally:
        stop.set()
        thread.join(5)
        server.close()
    assert bandwidth > 10 and 0 < latency < 50  # loopback: fast, short
    assert load_profile(out).sources["network.latency_ms"].startswith("measured:")


# -- memory and time --------------------------------------------------------------------------

def mlp_num_params(d: int, width: int, depth: int, k: int) -> int:
    return ModelConfig("mlp" if depth else "affine", d=d, k=k, width=width, depth=depth).num_params


def test_memory_estimate_scales_with_the_messages_per_round():
    work = dict(n_params=1000, width=8, depth=1, d=4, k=1, batch=5, n_neighbours=2, dtype_bytes=8)
    one, two = estimate_memory(None, **work), estimate_memory(None, **work, messages=2)
    assert two["parameters"] - one["parameters"] == 1000 * 8 * 3  # one more mixed vector + 2 receive buffers
    assert two["messages"] - one["messages"] == 3 * 1000 * 8


def test_memory_estimate_closed_form():
    # d=4, width=8, depth=2, k=3: P = (4*8+8) + (8*8+8) + (8*3+3) = 139; float32, batch 5,
    # 2 neighbours, forecast on M = 10 points of N = 3 agents.
    e = estimate_memory(None, n_params=139, width=8, depth=2, d=4, k=3, batch=5, n_neighbours=2,
                        dtype_bytes=4, forecast_samples=10, n_agents=3)
    assert e["parameters"] == 139 * 4 * 6 == 3336
    assert e["activations"] == 5 * 4 * (4 + 6 + (3 * 2 + 1) * 8) == 1320
    assert e["messages"] == 3 * (556 + HEADER_BYTES)
    assert e["forecast_kernel"] == 30 * 30 * 8 and e["forecast_state"] == 3 * 3 * 10 * 3 * 8
    assert e["total"] == 3336 + 1320 + 3 * (556 + HEADER_BYTES) + 7200 + 2160


@pytest.mark.parametrize("depth,width", [(1, 4096), (2, 512), (3, 1024)])
def test_activation_estimate_bounds_the_measured_peak_of_a_gradient(depth, width):
    cfg = ModelConfig("mlp", d=64, k=3, width=width, depth=depth)
    theta = init_params(cfg)
    X = np.random.default_rng(0).standard_normal((200, 64)).astype(np.float32)
    Y = np.zeros((200, 3), np.float32)
    tracemalloc.start()
    try:  # in a new thread: agent.model's per-thread scratch buffers are allocated afresh
        worker = threading.Thread(target=loss_and_grad, args=(cfg, theta, X, Y))
        worker.start()
        worker.join()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    e = estimate_memory(None, n_params=cfg.num_params, width=width, depth=depth, d=64, k=3,
                        batch=200, n_neighbours=0, dtype_bytes=4)
    predicted = e["activations"] + cfg.num_params * 4  # activations + the gradient vector
    assert 0.5 * predicted <= peak <= predicted


def test_too_wide_for_a_pi_zero_is_refused_with_the_figure_and_the_fix():
    zero = load_profile("raspberry-pi-zero-2w")
    work = dict(width=65536, depth=2, d=64, k=1, batch=40, n_neighbours=2, dtype_bytes=4)
    e = estimate_memory(zero, n_params=ModelConfig("mlp", d=64, k=1, width=65536, depth=2).num_params, **work)
    with pytest.raises(UserError) as err:
        check_fits(zero, e, lambda w: mlp_num_params(64, w, 2, 1))
    msg = str(err.value)
    assert f"width 65536 needs {format_bytes(e['total'])} on raspberry-pi-zero-2w" in msg
    assert "agent budget is 300 MB" in msg and format_bytes(e["total"]) == "144 GB"  # 9 P s, P = 65536^2 + 67 * 65536 + 1
    best = int(msg.split("model.width <= ")[1].split()[0])

    def total(w):
        return estimate_memory(zero, n_params=ModelConfig("mlp", d=64, k=1, width=w, depth=2).num_params,
                               **{**work, "width": w})["total"]
    assert total(best) <= zero.budget_bytes < total(best + 1)
    check_fits(zero, estimate_memory(zero, n_params=mlp_num_params(64, best, 2, 1), **{**work, "width": best}))
    assert largest_width(zero.budget_bytes, e, lambda w: mlp_num_params(64, w, 2, 1)) == best


def test_forecast_too_big_suggests_fewer_samples():
    zero = load_profile("raspberry-pi-zero-2w")
    e = estimate_memory(zero, n_params=mlp_num_params(64, 256, 1, 10), width=256, depth=1, d=64, k=10,
                        batch=40, n_neighbours=2, dtype_bytes=4, forecast_samples=20000, n_agents=6)
    with pytest.raises(UserError, match=r"forecast samples <= \d+"):
        check_fits(zero, e)


def test_round_time_closed_form():
    pi4 = load_profile("raspberry-pi-4b")  # 19.2 effective GFLOPS, 100 Mbit/s, 3 ms
    P = 1_000_000
    t = estimate_round_time(pi4, n_params=P, width=1000, depth=1, d=64, k=1, batch=40, n_neighbours=2,
                            dtype_bytes=4)
    flops = 6 * 40 * P + 2 * 3 * P
    assert t["compute_s"] == pytest.approx(flops / 19.2e9)
    assert t["comm_s"] == pytest.approx(2 * (0.003 + 8 * (4 * P + HEADER_BYTES) / 100e6))
    assert t["total_s"] == pytest.approx(t["compute_s"] + t["comm_s"])
    gt = estimate_round_time(pi4, n_params=P, width=1000, depth=1, d=64, k=1, batch=40, n_neighbours=2,
                             dtype_bytes=4, messages=2)  # gradient tracking sends theta and its tracker
    assert gt["comm_s"] == pytest.approx(2 * (0.003 + 8 * (8 * P + HEADER_BYTES) / 100e6))
    assert gt["flops"] == flops + 2 * 3 * P
    with pytest.raises(UserError, match="batch = 0"):
        estimate_memory(pi4, n_params=P, width=1000, depth=1, d=64, k=1, batch=0, n_neighbours=2,
                        dtype_bytes=4)


def test_apply_threads_limits_blas_and_returns_ort_settings(tmp_path):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    before = [(i["user_api"], i["num_threads"]) for i in threadpoolctl.threadpool_info()]
    one = load_profile(_copy(tmp_path, "jetson-nano", "threads = 4", "threads = 1"))
    try:
        settings = apply_threads(one)
        assert all(i["num_threads"] == 1 for i in threadpoolctl.threadpool_info()
                   if i["user_api"] == "blas")
    finally:
        for api, n in before:
            threadpoolctl.threadpool_limits(limits=n, user_api=api)
    assert settings["intra_op_num_threads"] == 1
    import onnxruntime
    have = set(onnxruntime.get_available_providers())
    assert settings["providers"] == [p for p in one.providers if p in have or p == "CPUExecutionProvider"]


# -- emulation --------------------------------------------------------------------------------

class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def sleep(self, s):
        self.now += s


def test_link_shaper_closed_form_with_a_fake_clock():
    clock = FakeClock()
    shaper = LinkShaper(20, 4, clock=clock, sleep=clock.sleep)
    assert shaper.send_delay(250_000) == pytest.approx(0.004 + 0.1)
    for _ in range(3):  # serial sends on one uplink
        shaper.wait_before_send(250_000)
    assert clock.now == pytest.approx(3 * 0.104)
    clock.now += 10  # idle link: the next send pays one message's delay only
    assert shaper.wait_before_send(0) == pytest.approx(0.004)


def test_compute_throttle_pads_to_the_profile_speed():
    throttle = ComputeThrottle(10.0, 100.0)  # host 10x faster
    assert throttle.pad(0.2) == pytest.approx(0.2 * (100 / 10 - 1))
    assert ComputeThrottle(100.0, 10.0).pad(0.2) == 0.0  # never speeds up


@pytest.mark.parametrize("host_speed", [10.0, 0.5])  # a host 10x faster than the board, and one 2x slower
def test_an_emulated_round_adds_up_to_the_estimate(host_speed):
    """The pieces the agent runs (agent.device): a step padded by ``compute_pad``, then one shaped send per
    neighbour, on a fake clock. Padded, the round lasts the estimate; a step slower than the board's is
    never shortened. (Real sleeps on this host: ``p2pntk bench emulation``.)"""
    zero = load_profile("raspberry-pi-zero-2w")
    cfg = ModelConfig("mlp", d=64, k=1, width=2048, depth=1)
    t = estimate_round_time(zero, n_params=cfg.num_params, width=2048, depth=1, d=64, k=1, batch=40,
                            n_neighbours=2, dtype_bytes=4)
    clock, host_step = FakeClock(), t["compute_s"] / host_speed
    shaper = LinkShaper.from_profile(zero, clock=clock, sleep=clock.sleep)
    clock.sleep(host_step)
    clock.sleep(compute_pad(host_step, t["compute_s"]))
    for _ in range(2):
        shaper.wait_before_send(4 * cfg.num_params + HEADER_BYTES)
    assert t["compute_s"] > 0 and t["comm_s"] > 0
    assert clock.now == pytest.approx(max(host_step, t["compute_s"]) + t["comm_s"], rel=1e-12)
    assert shaper.bytes_sent == 2 * (4 * cfg.num_params + HEADER_BYTES)
