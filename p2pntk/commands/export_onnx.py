"""``p2pntk export-onnx``: the spec's model with theta_0, or trained parameters, baked in, as an ONNX model.

Input X, float32 (batch, d); output f(X; theta), float32 (batch, k); stock onnxruntime loads it.
``--params FILE`` bakes in a board's trained parameters: its final ``agentQ.params.npz`` (written
beside its results) or a checkpoint, refused unless its model hash is the spec's model's.
``--training-graphs DIR`` also writes what a board needs to train with stock onnxruntime: the
forward, loss + gradient and descent graphs (theta an input; descent.onnx is one fused local step,
(theta, X, Y, base, alpha) -> (loss, base - alpha grad L(theta))), theta0.npy, layout.json (the
manifest: tensor offsets and each graph's inputs and outputs) and README.txt (the same for people).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from agent import onnx_graphs
from agent.swarm import Swarm
from common.files import atomic_write, read_npz, write_json, write_text
from common.errors import UserError
from p2pntk.commands import spec_from_args

_PROTOBUF_LIMIT = 2**31 - 2**26  # bytes of weights one ModelProto can hold, with room for the graph


def register(sub) -> None:
    p = sub.add_parser("export-onnx", help="write the model (theta_0 or trained parameters) as an ONNX file",
                       description="Write f(X; theta) of the spec's model as an ONNX inference model "
                                   "(input X float32 [batch, d], output f float32 [batch, k]), with theta the "
                                   "initial parameters theta_0 or, with --params, a board's trained ones.")
    p.add_argument("spec", nargs="?", default=None, metavar="SPEC",
                   help="experiment spec TOML (default: the built-in demo spec)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a spec key, e.g. --set model.width=4096 (value read as TOML; repeatable)")
    p.add_argument("--out", default="runs/model.onnx", metavar="MODEL.onnx",
                   help="inference model to write (default: runs/model.onnx)")
    p.add_argument("--params", default=None, metavar="PARAMS.npz",
                   help="bake in these trained parameters instead of theta_0: an agent's final agentQ.params.npz "
                        "(beside its results) or its checkpoint; the spec must be the one it trained with")
    p.add_argument("--save-problem", default=None, metavar="PROB.npz",
                   help="also write the exact problem (data, theta0, W) the model belongs to")
    p.add_argument("--training-graphs", default=None, metavar="DIR",
                   help="also write the training graphs for boards to DIR: forward.onnx, loss_grad.onnx, "
                        "descent.onnx (one fused local step), in train.dtype with theta an input, "
                        "theta0.npy, layout.json (manifest: inputs, outputs, offsets) and README.txt")
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
    theta, source = (swarm.theta0, "theta_0") if args.params is None else trained_params(args.params, cfg)
    model = onnx_graphs.build("forward", cfg, np.float32, theta=theta)
    _write(args.out, model.SerializeToString(), "--out")
    written = [args.out]
    if args.save_problem:
        swarm.save_problem(args.save_problem)
        written.append(args.save_problem)
    if args.training_graphs:
        written.append(write_training_graphs(args.training_graphs, cfg, swarm.theta0, spec.train.dtype))
    kind = "affine" if not cfg.hidden_layers else f"{cfg.activation} MLP depth {cfg.hidden_layers} width {cfg.width}"
    print(f"export-onnx: {kind}, d={cfg.d}, k={cfg.k}, P={cfg.num_params}, model hash {cfg.hash()}, "
          f"opset {onnx_graphs.OPSET}, parameters {source}")
    print("wrote " + ", ".join(str(w) for w in written))
    return 0


def trained_params(path: str, cfg) -> tuple[np.ndarray, str]:
    """(theta, "PATH (round k)") from an agent's params file or checkpoint, checked against ``cfg``."""
    z = read_npz(path, f"--params {path}", ("theta", "model_hash"))
    theta, model_hash = z["theta"], str(z["model_hash"])
    if model_hash != cfg.hash():
        raise UserError(f"--params {path}: its model hash {model_hash} is not the spec's ({cfg.hash()}); give the "
                        "spec the board trained with (its node file's spec)")
    if theta.shape != (cfg.num_params,) or not np.issubdtype(theta.dtype, np.floating) \
            or not np.all(np.isfinite(theta)):
        raise UserError(f"--params {path}: theta must be {cfg.num_params} finite numbers, got {theta.dtype} "
                        f"{theta.shape}")
    return theta, f"{path}" + (f" (round {int(z['round'])})" if "round" in z else "")


def write_training_graphs(directory: str, cfg, theta0: np.ndarray, dtype: str) -> str:
    """The training graphs for boards, in ``dtype``: forward/loss_grad/descent.onnx, theta0.npy,
    layout.json (manifest: tensor offsets, each graph's file, inputs and outputs) and README.txt.

    The inputs and outputs in the manifest are read off the graphs written (names, shapes with
    "batch" the dynamic dimension, numpy dtype names), so they cannot drift from them.
    """
    out = Path(directory)
    graphs = {}
    for kind in onnx_graphs.KINDS:
        model = onnx_graphs.build(kind, cfg, dtype)
        _write(out / f"{kind}.onnx", model.SerializeToString(), "--training-graphs")
        graphs[kind] = {"file": f"{kind}.onnx", "computes": onnx_graphs.COMPUTES[kind],
                        **onnx_graphs.signature(model)}
    atomic_write(out / "theta0.npy", lambda fh: np.save(fh, theta0.astype(dtype)), mode="wb")
    write_json(out / "layout.json", {
        "model_hash": cfg.hash(), "config": vars(cfg), "dtype": dtype, "opset": onnx_graphs.OPSET,
        "P": cfg.num_params, "tensors": onnx_graphs.layout(cfg), "theta0": "theta0.npy", "graphs": graphs})
    write_text(out / "README.txt", _readme(cfg, dtype, graphs))
    return str(out)


def _readme(cfg, dtype: str, graphs: dict) -> str:
    def io(items):
        return "; ".join(f"{v['name']} {v['dtype']} [{', '.join(str(d) for d in v['shape'])}]" for v in items)
    lines = [f"p2p-ntk training graphs: model hash {cfg.hash()}, P = {cfg.num_params} parameters, d = {cfg.d}, "
             f"k = {cfg.k}, {dtype}, ONNX opset {onnx_graphs.OPSET}.",
             "Stock onnxruntime runs them. theta is the flat parameter vector (tensor offsets in layout.json);",
             "theta0.npy is the initial theta; batch is any number of rows >= 1; loss and alpha are scalars (shape []).",
             ""]
    for g in graphs.values():
        lines += [f"{g['file']}: {g['computes']}", f"  inputs:  {io(g['inputs'])}",
                  f"  outputs: {io(g['outputs'])}"]
    lines += ["", "One local gradient step (X, Y: this board's batch; base = theta for plain gradient descent):",
              "  import numpy as np, onnxruntime as ort",
              "  step = ort.InferenceSession('descent.onnx', providers=['CPUExecutionProvider'])",
              f"  theta = np.load('theta0.npy')                      # {dtype} ({cfg.num_params},)",
              "  feed = {'theta': theta, 'X': X.astype(theta.dtype), 'Y': Y.astype(theta.dtype),",
              "          'base': theta, 'alpha': np.array(0.1, theta.dtype)}",
              "  loss, theta = step.run(['loss', 'theta_new'], feed)", ""]
    return "\n".join(lines)


def _write(path, blob: bytes, option: str) -> None:
    try:
        atomic_write(path, lambda fh: fh.write(blob), mode="wb")
    except OSError as err:
        raise UserError(f"{option} {path}: cannot write: {err.strerror or err}") from None
