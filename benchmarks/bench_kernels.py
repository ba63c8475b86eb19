"""Train-step time (loss + flat gradient) of the numpy and ONNX Runtime backends against torch CPU autograd.

The same float32 model (docs/design.md, section 3, NTK parameterisation) and the same batch go to each backend;
each backend runs in blocks of steps, the blocks rotated between backends, and the median step is kept.
Run: ``python benchmarks/bench_kernels.py --widths 1024 4096 16384 --batches 32 256``.
Torch is the host-side reference only; it is imported here, never by the board runtime.
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.kernels import make_kernels  # noqa: E402
from agent.model import ModelConfig, init_params, layer_scales  # noqa: E402
from common.errors import UserError  # noqa: E402

BACKENDS = ("numpy", "onnx", "torch")


def environment(threads: int) -> dict:
    """What decides the numbers: versions, BLAS kernel and its threads, OpenBLAS overrides, load."""
    import onnxruntime
    import torch
    env = {"python": platform.python_version(), "machine": platform.machine(), "cpu_count": os.cpu_count(),
           "numpy": np.__version__, "onnxruntime": onnxruntime.__version__, "torch": torch.__version__,
           "threads": threads, "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
           "OPENBLAS_L2_SIZE": os.environ.get("OPENBLAS_L2_SIZE"), "loadavg": list(os.getloadavg())}
    try:
        from threadpoolctl import threadpool_info
        env["blas"] = [{k: p.get(k) for k in ("internal_api", "version", "architecture", "num_threads")}
                       for p in threadpool_info()]
    except ImportError:
        env["blas"] = "threadpoolctl not installed"
    return env


def torch_step(cfg: ModelConfig, theta: np.ndarray, X: np.ndarray, Y: np.ndarray):
    """The idiomatic torch step: one leaf tensor per W_l, b_l, autograd backward; returns the loss."""
    import torch
    params, pos = [], 0
    for _, shape in cfg.shapes():
        size = math.prod(shape)
        params.append(torch.tensor(theta[pos:pos + size].reshape(shape), requires_grad=True))
        pos += size
    scales, b_std = layer_scales(cfg), cfg.b_std
    act = {"relu": torch.relu, "tanh": torch.tanh, "erf": torch.erf}[cfg.activation]
    Xt, Yt = torch.from_numpy(X), torch.from_numpy(Y)

    def step() -> float:
        for p in params:
            p.grad = None
        h = Xt
        for layer in range(cfg.hidden_layers + 1):
            z = scales[layer] * (h @ params[2 * layer]) + b_std * params[2 * layer + 1]
            h = act(z) if layer < cfg.hidden_layers else z
        loss = ((h - Yt) ** 2).sum() / (2 * Xt.shape[0])
        loss.backward()
        return loss.item()
    return step


def one_case(width: int, batch: int, repeats: int, threads: int, depth: int, d: int, k: int,
             activation: str, warmup: int, blocks: int = 4, pause: float = 0.3) -> dict:
    cfg = ModelConfig(kind="mlp", d=d, k=k, width=width, depth=depth, activation=activation)
    theta = init_params(cfg, np.float32)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((batch, d), dtype=np.float32)
    Y = rng.standard_normal((batch, k), dtype=np.float32)
    kernels = {"numpy": make_kernels("numpy", cfg, np.float32),
               "onnx": make_kernels("onnx", cfg, np.float32, threads=threads)}
    steps = {name: functools.partial(kern.loss_and_grad, theta, X, Y) for name, kern in kernels.items()}
    steps["torch"] = torch_step(cfg, theta, X, Y)
    reference = steps["torch"]()
    for name in kernels:  # same model, same numbers: otherwise the timing means nothing
        value = steps[name]()[0]
        if not math.isclose(value, reference, rel_tol=1e-4):
            raise AssertionError(f"{name} loss {value} != torch loss {reference}")
    # Blocks, not step-by-step interleaving: an idle OpenBLAS or OpenMP pool keeps spinning for a while
    # after its last call and would steal the cores from the next backend. Each backend runs alone, in
    # rotated blocks separated by a pause, so slow drifts of a shared machine hit all three alike.
    times: dict[str, list[float]] = {name: [] for name in steps}
    order = list(steps)
    per_block = max(1, math.ceil(repeats / blocks))
    for blk in range(blocks):
        for name in order[blk % 3:] + order[:blk % 3]:
            time.sleep(pause)
            for r in range(warmup + per_block):
                t0 = time.perf_counter()
                steps[name]()
                if r >= warmup:
                    times[name].append(time.perf_counter() - t0)
    med = {name: statistics.median(ts) for name, ts in times.items()}
    return {"width": width, "batch": batch, "P": cfg.num_params, "load": os.getloadavg()[0],
            **{f"{name}_ms": 1e3 * med[name] for name in steps},
            "numpy/torch": med["numpy"] / med["torch"], "onnx/torch": med["onnx"] / med["torch"]}


def run(widths=(1024, 4096, 16384), batches=(32, 256), repeats: int = 30, threads: int | None = None,
        depth: int = 1, d: int = 64, k: int = 1, activation: str = "relu", warmup: int = 5,
        blocks: int = 4, pause: float = 0.3) -> dict:
    """Median float32 train-step times (ms) and the ratios numpy/torch, onnx/torch for every width x batch.

    All three backends use ``threads`` threads (default: every core): OpenBLAS through threadpoolctl,
    onnxruntime's intra-op pool and ``torch.set_num_threads``. ``repeats`` timed steps per backend,
    in ``blocks`` blocks, each after ``warmup`` untimed steps and a ``pause`` (s) that lets the other
    backends' thread pools go idle.
    """
    import torch
    threads = threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    try:
        from threadpoolctl import threadpool_limits
        limiter = threadpool_limits(threads)
    except ImportError:
        limiter = None
    env = environment(threads)
    rows = [one_case(w, b, repeats, threads, depth, d, k, activation, warmup, blocks, pause)
            for w in widths for b in batches]
    env["loadavg_after"] = list(os.getloadavg())
    if limiter is not None:
        limiter.restore_original_limits()
    return {"model": {"kind": "mlp", "depth": depth, "d": d, "k": k, "activation": activation,
                      "dtype": "float32"}, "repeats": repeats, "env": env, "rows": rows}


def table(result: dict) -> str:
    lines = [f"{'width':>6} {'batch':>5} {'P':>9} {'numpy ms':>9} {'onnx ms':>9} {'torch ms':>9} "
             f"{'numpy/torch':>11} {'onnx/torch':>10} {'load':>5}"]
    for r in result["rows"]:
        lines.append(f"{r['width']:>6} {r['batch']:>5} {r['P']:>9} {r['numpy_ms']:>9.3f} {r['onnx_ms']:>9.3f} "
                     f"{r['torch_ms']:>9.3f} {r['numpy/torch']:>11.2f} {r['onnx/torch']:>10.2f} {r['load']:>5.1f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--widths", type=int, nargs="+", default=[1024, 4096, 16384])
    p.add_argument("--batches", type=int, nargs="+", default=[32, 256])
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--threads", type=int, default=None, help="threads for every backend (default: all cores)")
    p.add_argument("--depth", type=int, default=1)
    p.add_argument("--d", type=int, default=64, help="input dimension (64: the digits data)")
    p.add_argument("--k", type=int, default=1, help="outputs (1: two classes)")
    p.add_argument("--activation", default="relu", choices=["relu", "erf", "tanh"])
    p.add_argument("--blocks", type=int, default=4, help="blocks per backend the repeats are split into")
    p.add_argument("--json", default=None, help="also write the result as JSON here")
    args = p.parse_args(argv)
    result = run(args.widths, args.batches, args.repeats, args.threads, args.depth, args.d, args.k,
                 args.activation, blocks=args.blocks)
    env = result["env"]
    print(f"float32 MLP depth {args.depth} d={args.d} k={args.k} {args.activation}; {env['threads']} threads; "
          f"numpy {env['numpy']}, onnxruntime {env['onnxruntime']}, torch {env['torch']}; "
          f"OPENBLAS_CORETYPE={env['OPENBLAS_CORETYPE']}; BLAS {env['blas']}; "
          f"load {env['loadavg'][0]:.1f} -> {env['loadavg_after'][0]:.1f}")
    print(table(result))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())


def cli(quick: bool = False, out: str | None = None) -> None:
    """``p2pntk bench kernels``: the default table (width 4096 only, fewer repeats, with --quick)."""
    try:
        import torch  # noqa: F401 - the reference every ratio is measured against
    except ImportError:
        raise UserError("bench kernels measures against torch CPU autograd: pip install 'p2p-ntk[torch]'") from None
    argv = ["--widths", "4096", "--repeats", "10"] if quick else []
    main(argv + (["--json", out] if out else []))
