"""Applying a device profile: thread settings, and will-it-fit / how-long-per-round estimates.

Pure functions of the profile and the workload (the agent and the tuner call them). The round
time model here is the one ``firmware_profiles.emulation`` enforces, so an emulated round takes
what ``estimate_round_time`` says.
"""
from __future__ import annotations

import os
from typing import Any

from typing import Callable

from common.errors import UserError
from coordinator_free.wire import PARAMS_HEADER_BYTES
from firmware_profiles.profile import Profile

THREAD_ENV_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                   "BLIS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")


def apply_threads(profile: Profile) -> dict[str, Any]:
    """Limit BLAS/OpenMP to ``profile.threads`` and return the ONNX Runtime session settings.

    With threadpoolctl installed the limit applies at once to the BLAS already loaded by numpy.
    Without it, this sets OMP_NUM_THREADS, OPENBLAS_NUM_THREADS, MKL_NUM_THREADS (...), which
    BLAS reads only when it loads: it works only if called before numpy is first imported (or
    set those variables in the environment that starts the agent).

    Returns {"intra_op_num_threads": profile.threads, "providers": [...]}: the profile's
    providers in its order of preference, keeping only those this onnxruntime build offers
    (CPUExecutionProvider always remains), or all of them when onnxruntime is not installed.
    """
    n = profile.threads
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        for var in THREAD_ENV_VARS:
            os.environ[var] = str(n)
    else:
        threadpool_limits(limits=n)
    return {"intra_op_num_threads": n, "providers": available_providers(profile.providers)}


def available_providers(wanted: tuple[str, ...] | list[str]) -> list[str]:
    """``wanted`` minus the providers this onnxruntime lacks (all of ``wanted`` without onnxruntime)."""
    try:
        import onnxruntime
    except ImportError:
        return list(wanted)
    have = set(onnxruntime.get_available_providers())
    return [p for p in wanted if p in have or p == "CPUExecutionProvider"]


def _check_workload(**kw: Any) -> None:
    for name, value in kw.items():
        lo = 0 if name in ("n_neighbours", "depth", "forecast_samples", "eval_samples") else 1
        if isinstance(value, bool) or not isinstance(value, int) or value < lo:
            raise UserError(f"{name} = {value!r}: expected an integer >= {lo}")
    if kw.get("dtype_bytes") not in (None, 2, 4, 8):
        raise UserError(f"dtype_bytes = {kw['dtype_bytes']!r}: expected 2, 4 or 8")


def estimate_memory(profile: Profile | None, *, n_params: int, width: int, depth: int, d: int,
                    k: int, batch: int, n_neighbours: int, dtype_bytes: int, messages: int = 1,
                    forecast_samples: int = 0, n_agents: int = 1,
                    agents_on_device: int = 1) -> dict[str, Any]:
    """Peak bytes one device needs to train (and, with ``forecast_samples``, to forecast).

    With P = n_params, s = dtype_bytes, b = batch, n = n_neighbours, m = messages (arrays sent per
    round: the algorithm's, agent.algorithms), M = forecast_samples (all agents' training points
    together, docs/design.md section 5) and N = n_agents:

        parameters  = P s (3 + m (1 + n))   theta, gradient, checkpoint copy; m mixed vectors and
                                       m receive buffers per neighbour
        activations = b s (d + 2k + (3 depth + 1) width)   [depth >= 1; b s (d + 2k) if affine]
                                       X; z_l, h_l and dh_l per hidden layer (agent.model keeps them
                                       as scratch between steps) and one s'(z); f and f - y
        messages    = (1 + n)(m P s + PARAMS_HEADER_BYTES)   the outgoing message, one early one per
                                       neighbour (the header bound is coordinator_free.wire's)
        forecast_kernel = (M k)^2 * 8   the float64 NTK Gram matrix K
        forecast_state  = 3 N M k * 8   the kernel-space state c, its update, and b
        total = agents_on_device * (parameters + activations + messages) + forecast_kernel + forecast_state

    Returns those byte counts (ints) plus "inputs" (the arguments) and, with a profile,
    "budget" (profile.budget_bytes).
    """
    _check_workload(n_params=n_params, width=width, depth=depth, d=d, k=k, batch=batch,
                    n_neighbours=n_neighbours, dtype_bytes=dtype_bytes, messages=messages,
                    forecast_samples=forecast_samples, n_agents=n_agents,
                    agents_on_device=agents_on_device)
    P, s, b, n, M, m = n_params, dtype_bytes, batch, n_neighbours, forecast_samples, messages
    per_sample = d + 2 * k + ((3 * depth + 1) * width if depth >= 1 else 0)
    out: dict[str, Any] = {
        "parameters": P * s * (3 + m * (1 + n)),
        "activations": b * s * per_sample,
        "messages": (1 + n) * (m * P * s + PARAMS_HEADER_BYTES),
        "forecast_kernel": (M * k) ** 2 * 8,
        "forecast_state": 3 * n_agents * M * k * 8,
    }
    training = out["parameters"] + out["activations"] + out["messages"]
    out["total"] = agents_on_device * training + out["forecast_kernel"] + out["forecast_state"]
    out["inputs"] = dict(n_params=P, width=width, depth=depth, d=d, k=k, batch=b, n_neighbours=n,
                         dtype_bytes=s, messages=m, forecast_samples=M, n_agents=n_agents,
                         agents_on_device=agents_on_device)
    if profile is not None:
        out["budget"] = profile.budget_bytes
    return out


def check_fits(profile: Profile, estimate: dict[str, Any],
               params_at_width: Callable[[int], int] | None = None) -> None:
    """Raise UserError if ``estimate["total"]`` (from ``estimate_memory``) exceeds the agent budget.

    The message gives the figure and the fix: the largest model.width that fits (``largest_width``,
    given ``params_at_width``, the model's P as a function of its width) and, when forecasting,
    the largest forecast_samples that fits.
    """
    total, budget = estimate["total"], profile.budget_bytes
    if total <= budget:
        return
    inp = estimate["inputs"]
    head = (f"width {inp['width']} needs {format_bytes(total)} on {profile.name} but its agent "
            f"budget is {format_bytes(budget)}")
    fixes = []
    if params_at_width and inp["depth"] >= 1 and (width := largest_width(budget, estimate, params_at_width)) >= 1:
        fixes.append(f"model.width <= {width}")
    if inp["forecast_samples"]:
        samples = _largest(lambda m: _total(inp, forecast_samples=m) <= budget)
        if samples >= 1:
            fixes.append(f"forecast samples <= {samples}")
    if not fixes:
        raise UserError(f"{head}: reduce the batch ({inp['batch']}), the neighbours "
                        f"({inp['n_neighbours']}) or the model (P = {inp['n_params']})")
    fix = f"use {fixes[0]}" + (f" (or {fixes[1]})" if len(fixes) > 1 else
                               " (or fewer samples for the forecast)" if inp["forecast_samples"] else "")
    raise UserError(f"{head}: {fix}")


def largest_width(budget_bytes: int, estimate: dict[str, Any], params_at_width: Callable[[int], int]) -> int:
    """The largest MLP width whose ``estimate_memory`` total, all else as in ``estimate``, is at
    most ``budget_bytes`` (P = params_at_width(width), from the model); 0 if not even width 1 fits.

    The total grows with width, so this bisects on it: the estimate solved for width.
    """
    inp = estimate["inputs"]
    if inp["depth"] == 0:  # the affine model has no width
        return 0
    return _largest(lambda w: _total(inp, width=w, n_params=params_at_width(w)) <= budget_bytes)


def _total(inputs: dict[str, Any], **change: int) -> int:
    return estimate_memory(None, **{**inputs, **change})["total"]


def _largest(ok) -> int:
    """Largest integer 1 <= x < 2**48 with ok(x), for ok true then false; 0 if ok(1) is false."""
    if not ok(1):
        return 0
    lo, hi = 1, 2
    while hi < 2**48 and ok(hi):
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    return lo


def estimate_round_time(profile: Profile, *, n_params: int, width: int, depth: int, d: int,
                        k: int, batch: int, n_neighbours: int, dtype_bytes: int, messages: int = 1,
                        eval_samples: int = 0) -> dict[str, float]:
    """Seconds per synchronous round on ``profile``: compute, then communication.

        flops     = 6 b P  +  2 m (n + 1) P  +  2 E P
                    (forward + backward on the batch; mixing n + 1 copies of m vectors; forward on
                    E eval points)
        compute_s = flops / (profile.effective_gflops * 1e9)
        message   = m P s + PARAMS_HEADER_BYTES   bytes, one per neighbour per round
        comm_s    = n (latency + 8 message / bandwidth)
        total_s   = compute_s + comm_s

    Communication model: each device has one uplink, and its n messages go out one after the
    other, each taking latency + transmission time (``emulation.LinkShaper`` sleeps exactly
    that per send); neighbours send over their own links in parallel, so the round waits for
    the slowest neighbour, n for a regular graph. Compute and communication do not overlap.
    Every registered algorithm takes one gradient per round; they differ in m, the arrays per
    message (``agent.algorithms``: 1 for DGD/ATC/CTA, 2 for GT). width, depth, d and k are accepted
    so that one workload dict serves both estimators.
    """
    _check_workload(n_params=n_params, width=width, depth=depth, d=d, k=k, batch=batch,
                    n_neighbours=n_neighbours, dtype_bytes=dtype_bytes, messages=messages,
                    eval_samples=eval_samples)
    P, n = n_params, n_neighbours
    flops = 6 * batch * P + 2 * messages * (n + 1) * P + 2 * eval_samples * P
    compute_s = flops / (profile.effective_gflops * 1e9)
    message = messages * P * dtype_bytes + PARAMS_HEADER_BYTES
    per_message = profile.latency_ms / 1e3 + 8 * message / (profile.bandwidth_mbit * 1e6)
    comm_s = n * per_message
    return {"flops": float(flops), "compute_s": compute_s, "message_bytes": float(message),
            "per_message_s": per_message, "comm_s": comm_s, "total_s": compute_s + comm_s}


def host_memory_available() -> int | None:
    """Bytes this host can still give (MemAvailable in /proc/meminfo), or None where that is unknown."""
    try:
        with open("/proc/meminfo") as fh:
            return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return None


def check_host_fits(needed: int, what: str) -> None:
    """Refuse, before anything is allocated, work that needs more memory than this host has available."""
    available = host_memory_available()
    if available is not None and needed > available:
        raise UserError(f"{what} needs about {format_bytes(needed)} but this host has {format_bytes(available)} "
                        "available; make the model or the swarm smaller")


def format_bytes(n: float) -> str:
    """1.9 GB, 300 MB, 12 kB (binary units: 1 MB = 2**20 bytes, as memory.*_mb)."""
    for unit, size in (("GB", 2**30), ("MB", 2**20), ("kB", 2**10)):
        if n >= size:
            value = n / size
            return f"{value:.1f} {unit}" if value < 10 else f"{value:.0f} {unit}"
    return f"{int(n)} B"

