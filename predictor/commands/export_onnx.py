"""``p2pntk export-onnx``: the spec's model with theta_0 baked in, as an ONNX inference model.

Input X, float32 (batch, d); output f(X; theta_0), float32 (batch, k); stock onnxruntime loads it.
``--training-graphs DIR`` also writes the forward, loss + gradient and descent graphs (theta an input).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from agent import onnx_graphs
from agent.swarm import Swarm
from coordinator_free.common.files import atomic_write, write_json
from coordinator_free.common.errors import UserError
from predictor.commands import spec_from_args

_PROTOBUF_LIMIT = 2**31 - 2**26  # bytes of weights one ModelProto can hold, with room for the graph


def register(sub) -> None:
    p = sub.add_parser("export-onnx", help="write the model with theta_0 baked in as an ONNX file",
                       description="Write f(X; theta_0) of the spec's model as an ONNX inference model "
                                   "(input X float32 [batch, d], output f float32 [batch, k]).")
    p.add_argument("spec", nargs="?", default=None, metavar="SPEC",
                   help="experiment spec TOML (default: the built-in demo spec)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a spec key, e.g. --set model.width=4096 (value read as TOML; repeatable)")
    p.add_argument("--out", default="runs/model.onnx", metavar="MODEL.onnx",
                   help="inference model to write (default: runs/model.onnx)")
    p.add_argument("--save-problem", default=None, metavar="PROB.npz",
                   help="also write the exact problem (data, theta0, W) the model belongs to")
    p.add_argument("--training-graphs", default=None, metavar="DIR",
                   help="also write forward.onnx, loss_grad.onnx, descent.onnx (train.dtype, theta an input), "
                        "theta0.npy and layout.json to DIR")
    p.set_defaults(func=run)


def run(args) -> int:
    onnx_graphs.require_onnx()
    if not str(args.out).endswith(".onnx"):
        raise UserError(f"--out {args.out}: expected a file name ending in .onnx")
    spec = spec_from_args(args)
    swarm = Swarm.from_spec(spec)
    cfg = swarm.cfg
    if cfg.num_params * 4 > _PROTOBUF_LIMIT:
        raise UserError(f"model has P = {cfg.num_params} parameters: too large to bake into one ONNX file "
                        "(protobuf's 2 GB limit); lower model.width or model.depth")
    model = onnx_graphs.build("forward", cfg, np.float32, theta=swarm.theta0)
    _write(args.out, model.SerializeToString(), "--out")
    written = [args.out]
    if args.save_problem:
        swarm.save_problem(args.save_problem)
        written.append(args.save_problem)
    if args.training_graphs:
        written.append(write_training_graphs(args.training_graphs, cfg, swarm.theta0, spec["train"]["dtype"]))
    kind = "affine" if not cfg.hidden_layers else f"{cfg.activation} MLP depth {cfg.hidden_layers} width {cfg.width}"
    print(f"export-onnx: {kind}, d={cfg.d}, k={cfg.k}, P={cfg.num_params}, model hash {cfg.hash()}, "
          f"opset {onnx_graphs.OPSET}")
    print("wrote " + ", ".join(str(w) for w in written))
    return 0


def write_training_graphs(directory: str, cfg, theta0: np.ndarray, dtype: str) -> str:
    """forward/loss_grad/descent.onnx in ``dtype``, theta0.npy and layout.json (inputs, outputs, offsets)."""
    out = Path(directory)
    for kind in onnx_graphs.KINDS:
        _write(out / f"{kind}.onnx", onnx_graphs.serialized(kind, cfg, dtype), "--training-graphs")
    atomic_write(out / "theta0.npy", lambda fh: np.save(fh, theta0.astype(dtype)), mode="wb")
    write_json(out / "layout.json", {
        "model_hash": cfg.hash(), "config": vars(cfg), "dtype": dtype, "opset": onnx_graphs.OPSET,
        "P": cfg.num_params, "tensors": onnx_graphs.layout(cfg),
        "graphs": {"forward": {"inputs": ["theta (P,)", "X (batch, d)"], "outputs": ["f (batch, k)"]},
                   "loss_grad": {"inputs": ["theta (P,)", "X (batch, d)", "Y (batch, k)"],
                                 "outputs": ["loss ()", "grad (P,)"]},
                   "descent": {"inputs": ["theta (P,)", "X (batch, d)", "Y (batch, k)", "base (P,)", "alpha ()"],
                               "outputs": ["loss ()", "theta_new = base - alpha grad (P,)"]}}})
    return str(out)


def _write(path, blob: bytes, option: str) -> None:
    try:
        atomic_write(path, lambda fh: fh.write(blob), mode="wb")
    except OSError as err:
        raise UserError(f"{option} {path}: cannot write: {err.strerror or err}") from None
