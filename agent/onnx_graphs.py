"""ONNX graphs of the docs/design.md, section 3 models, built by the project with ``onnx.helper``.

Three graphs per (model, dtype): ``forward`` (theta, X) -> f, ``loss_grad`` (theta, X, Y) -> (loss, grad),
an explicit backward pass written in standard ONNX ops (no onnxruntime-training), and ``descent``
(theta, X, Y, base, alpha) -> (loss, base - alpha grad L(theta)). theta is one flat (P,) input in the
wire layout, sliced inside the graph; the batch dimension of X and Y is dynamic.

``forward`` and ``loss_grad`` are what the ONNX kernel backend (``agent.onnx_kernels``) runs.
``descent`` is one local training step fused in one graph: ``p2pntk export-onnx --training-graphs``
ships it (with the other two and ``signature``'s description of each) for on-board training with
stock onnxruntime; nothing in the project's runtime runs it.
"""
from __future__ import annotations

import functools
import importlib
import json
import math

import numpy as np
from scipy import special

from agent.model import ModelConfig, layer_scales
from common.compute import DTYPES
from common.errors import UserError

OPSET = 17        # onnxruntime >= 1.13 runs it; so do the Jetson builds of JetPack 5 and 6
IR_VERSION = 8
KINDS = ("forward", "loss_grad", "descent")
THETA, X, Y, BASE, ALPHA = "theta", "X", "Y", "base", "alpha"
F, LOSS, GRAD, THETA_NEW = "f", "loss", "grad", "theta_new"

# float64 erf: ONNX Runtime's CPU Erf kernel is float32 only, so float64 graphs evaluate
# erf(x) = x * h(|x|), h(a) = erf(a)/a, by a piecewise polynomial (2e-15 relative, see tests).
_ERF_STEP, _ERF_DEGREE, _ERF_XMAX = 0.5, 12, 6.0


def require_onnx():
    """The ``onnx`` package, or a UserError that says how to install it."""
    try:
        return importlib.import_module("onnx")
    except ImportError:
        raise UserError("the ONNX kernels need the onnx package: pip install 'p2p-ntk[onnx]'") from None


class _Graph:
    """A tiny graph builder: ``g(op, *inputs, **attrs)`` appends a node and returns its output name."""

    def __init__(self, dtype: np.dtype) -> None:
        self.onnx = require_onnx()
        self.dtype = np.dtype(dtype)
        self.elem = self.onnx.helper.np_dtype_to_tensor_dtype(self.dtype)
        self.nodes, self.inits, self._consts, self._count = [], [], {}, 0

    def __call__(self, op: str, *inputs: str, out: str | None = None, **attrs) -> str:
        self._count += 1
        name = out or f"{op.lower()}_{self._count}"
        self.nodes.append(self.onnx.helper.make_node(op, list(inputs), [name], **attrs))
        return name

    def const(self, value, dtype=None, name: str | None = None) -> str:
        """An initializer (deduplicated); floats default to the graph's dtype."""
        arr = np.asarray(value, dtype=dtype or self.dtype)
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if name is None and key in self._consts:
            return self._consts[key]
        self._count += 1
        name = name or f"c_{self._count}"
        self.inits.append(self.onnx.numpy_helper.from_array(arr, name))
        self._consts.setdefault(key, name)
        return name

    def ints(self, *values: int) -> str:
        return self.const(list(values), np.int64)

    def value_info(self, name: str, shape: list, elem=None):
        return self.onnx.helper.make_tensor_value_info(name, elem or self.elem, shape)

    def model(self, name: str, inputs: list, outputs: list, cfg: ModelConfig, doc: str):
        helper = self.onnx.helper
        graph = helper.make_graph(self.nodes, name, inputs, outputs, initializer=self.inits, doc_string=doc)
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="p2p-ntk", doc_string=doc)
        m.ir_version = IR_VERSION
        helper.set_model_props(m, {"model_hash": cfg.hash(), "config": json.dumps(vars(cfg), sort_keys=True),
                                   "layout": json.dumps(layout(cfg)), "dtype": self.dtype.name})
        self.onnx.checker.check_model(m)
        return m


def layout(cfg: ModelConfig) -> list[dict]:
    """Where each tensor sits in the flat theta: name, shape, offset (the wire layout, docs/design.md, section 3)."""
    out, offset = [], 0
    for name, shape in cfg.shapes():
        out.append({"name": name, "shape": list(shape), "offset": offset})
        offset += math.prod(shape)
    return out


def _params_from_theta(g: _Graph, cfg: ModelConfig) -> list[str]:
    """Slice + Reshape the flat input theta into [W_1, b_1, ..., W_out, b_out]."""
    zero = g.ints(0)
    params = []
    for item in layout(cfg):
        size = math.prod(item["shape"])
        piece = g("Slice", THETA, g.ints(item["offset"]), g.ints(item["offset"] + size), zero)
        if len(item["shape"]) > 1:
            piece = g("Reshape", piece, g.ints(*item["shape"]))
        params.append(piece)
    return params


def _params_baked(g: _Graph, cfg: ModelConfig, theta: np.ndarray) -> list[str]:
    """Initializers W_1, b_1, ..., W_out, b_out holding theta's values, in the graph's dtype."""
    return [g.const(theta[item["offset"]:item["offset"] + math.prod(item["shape"])].reshape(item["shape"]),
                    name=item["name"]) for item in layout(cfg)]


def _forward(g: _Graph, cfg: ModelConfig, params: list[str], x: str, out: str | None = None):
    """f = s_out h_depth @ W_out + b_std b_out; returns f and the per-layer (h_in, z, h_out).

    Hidden layers are one Gemm (alpha = s_l, beta = b_std: no (n, w) temporaries). The output layer
    (k columns, k small) is MatMul then scale and bias on the small (n, k) result, which keeps
    onnxruntime on its matrix-vector path when k = 1.
    """
    scales = layer_scales(cfg)
    h, cache = x, []
    for layer in range(cfg.hidden_layers):
        z = _gemm(g, h, params[2 * layer], scales[layer], bias=params[2 * layer + 1], beta=cfg.b_std)
        h_out = _activation(g, cfg.activation, z)
        cache.append((h, z, h_out))
        h = h_out
    f = g("Add", g("Mul", g("MatMul", h, params[-2]), g.const(scales[-1])), g("Mul", params[-1], g.const(cfg.b_std)),
          out=out)
    return f, cache


def _gemm(g: _Graph, a: str, b: str, alpha: float, bias: str | None = None, beta: float = 0.0,
          trans_a: bool = False, trans_b: bool = False) -> str:
    """alpha op(a) @ op(b) + beta bias. float32: one Gemm, scaling inside the kernel. float64: MatMul,
    Mul, Add, because Gemm's alpha and beta attributes are float32 and would round the scales."""
    if g.dtype == np.float32:
        inputs = (a, b) if bias is None else (a, b, bias)
        return g("Gemm", *inputs, alpha=alpha, beta=beta if bias is not None else 0.0,
                 transA=int(trans_a), transB=int(trans_b))
    a = g("Transpose", a, perm=[1, 0]) if trans_a else a
    b = g("Transpose", b, perm=[1, 0]) if trans_b else b
    out = g("Mul", g("MatMul", a, b), g.const(alpha))
    return out if bias is None else g("Add", out, g("Mul", bias, g.const(beta)))


def _activation(g: _Graph, name: str, z: str) -> str:
    if name == "relu":
        return g("Relu", z)
    if name == "tanh":
        return g("Tanh", z)
    return g("Erf", z) if g.dtype == np.float32 else _erf_float64(g, z)


def _times_activation_grad(g: _Graph, name: str, dh: str, z: str, h: str) -> str:
    """dh * s'(z): relu' = [h > 0] (= [z > 0]), tanh' = 1 - h^2, erf' = 2/sqrt(pi) exp(-z^2), h = s(z)."""
    if name == "relu":  # Mul by a cast mask: onnxruntime's Where is ten times slower
        return g("Mul", dh, g("Cast", g("Greater", h, g.const(0.0)), to=g.elem))
    if name == "tanh":
        return g("Mul", dh, g("Sub", g.const(1.0), g("Mul", h, h)))
    slope = g("Mul", g.const(2.0 / math.sqrt(math.pi)), g("Exp", g("Neg", g("Mul", z, z))))
    return g("Mul", dh, slope)


def _loss_and_grad(g: _Graph, cfg: ModelConfig, params: list[str], grad_out: str | None) -> tuple[str, str]:
    """loss = 1/(2n) ||f - Y||^2 and the flat gradient: the hand-written VJP of ``agent.model.backward``."""
    scales, k = layer_scales(cfg), cfg.k
    f, cache = _forward(g, cfg, params, X)
    n = g("Cast", g("Shape", X, start=0, end=1), to=g.elem)                 # (1,) batch size
    r = g("Sub", f, Y)
    loss = g("Reshape", g("Div", g("ReduceSumSquare", r, keepdims=0), g("Mul", n, g.const(2.0))), g.ints(),
             out=LOSS)
    dF = g("Div", r, n)                                                       # dL/df, (n, k)
    h_last = cache[-1][2] if cache else X
    W_out = params[-2]
    # output layer: grad W_out = s (dF^T h)^T, computed as a (k, n_depth) product (a vector-matrix one
    # when k = 1, where the transposes are free reshapes)
    dFt = g("Reshape", dF, g.ints(1, -1)) if k == 1 else g("Transpose", dF, perm=[1, 0])
    gWt = g("Mul", g("MatMul", dFt, h_last), g.const(scales[-1]))
    grads = [None] * len(params)
    grads[-2] = g("Reshape", gWt if k == 1 else g("Transpose", gWt, perm=[1, 0]), g.ints(-1))
    grads[-1] = g("Mul", g("ReduceSum", dF, g.ints(0), keepdims=0), g.const(cfg.b_std))
    if cfg.hidden_layers:
        if k == 1:   # s dF W_out^T is an outer product: a broadcast Mul
            dh = g("Mul", g("Mul", dF, g.const(scales[-1])), g("Reshape", W_out, g.ints(1, -1)))
        else:
            dh = _gemm(g, dF, W_out, scales[-1], trans_b=True)
    if cfg.hidden_layers:  # column sums of the (n, width) dz as ones(1, n) @ dz: onnxruntime's
        # ReduceSum over axis 0 is slow with more than one thread (8x at n = 32)
        ones = g("ConstantOfShape", g("Concat", g.ints(1), g("Shape", X, start=0, end=1), axis=0),
                 value=g.onnx.numpy_helper.from_array(np.ones(1, g.dtype)))
    for layer in reversed(range(cfg.hidden_layers)):
        h_in, z, h_out = cache[layer]
        dz = _times_activation_grad(g, cfg.activation, dh, z, h_out)
        grads[2 * layer] = g("Reshape", _gemm(g, h_in, dz, scales[layer], trans_a=True), g.ints(-1))
        grads[2 * layer + 1] = g("Reshape", _gemm(g, ones, dz, cfg.b_std), g.ints(-1))
        if layer:
            dh = _gemm(g, dz, params[2 * layer], scales[layer], trans_b=True)
    return loss, g("Concat", *grads, axis=0, out=grad_out)


@functools.lru_cache(maxsize=1)
def _erf_table() -> tuple[np.ndarray, np.ndarray]:
    """Per-interval polynomial coefficients of h(a) = erf(a)/a around the interval centres.

    Interval i covers [i, i+1) * step; its polynomial is the degree-12 Chebyshev interpolant of h
    (from scipy.special.erf) rewritten in powers of t = a - centre_i, |t| <= step/2.
    """
    from numpy.polynomial import Chebyshev, Polynomial

    def h(a):
        a = np.asarray(a, np.float64)
        tiny = np.abs(a) < 1e-8
        safe = np.where(tiny, 1.0, a)
        return np.where(tiny, 2.0 / math.sqrt(math.pi) * (1 - a * a / 3), special.erf(safe) / safe)

    half = _ERF_STEP / 2
    count = int(round(_ERF_XMAX / _ERF_STEP)) + 1
    centres = (np.arange(count) + 0.5) * _ERF_STEP
    coef = np.empty((_ERF_DEGREE + 1, count))
    for i, c in enumerate(centres):
        cheb = Chebyshev.interpolate(lambda t, c=c: h(c + t), _ERF_DEGREE, domain=[-half, half])
        coef[:, i] = cheb.convert(kind=Polynomial, domain=[-half, half], window=[-half, half]).coef
    return centres, coef



def _erf_float64(g: _Graph, x: str) -> str:
    """erf(x) from standard ops: Horner on the interval's polynomial in t, sign(x) beyond |x| >= 6."""
    centres, coef = _erf_table()
    a = g("Abs", x)
    a_idx = g("Where", g("IsNaN", x), g.const(0.0), g("Min", a, g.const(_ERF_XMAX)))
    idx = g("Cast", g("Floor", g("Mul", a_idx, g.const(1.0 / _ERF_STEP))), to=g.onnx.TensorProto.INT64)
    t = g("Sub", a_idx, g("Gather", g.const(centres), idx))
    acc = g("Gather", g.const(coef[-1]), idx)
    for j in range(_ERF_DEGREE - 1, -1, -1):
        acc = g("Add", g("Mul", acc, t), g("Gather", g.const(coef[j]), idx))
    return g("Where", g("GreaterOrEqual", a, g.const(_ERF_XMAX)), g("Sign", x), g("Mul", x, acc))


def build(kind: str, cfg: ModelConfig, dtype: np.dtype | str = np.float32, theta: np.ndarray | None = None):
    """The ``kind`` graph ("forward" | "loss_grad" | "descent") of model ``cfg`` in ``dtype``, as a ModelProto.

    Inputs: theta (P,) unless ``theta`` is given (then it is baked in as initializers W_1, b_1, ...;
    forward only), X (batch, d), Y (batch, k), base (P,) and alpha () for descent.
    Outputs: f (batch, k) | loss () and grad (P,) | loss () and theta_new = base - alpha grad (P,).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown graph kind {kind!r}; expected one of {KINDS}")
    dtype = np.dtype(dtype)
    if dtype.name not in DTYPES:
        raise UserError(f"train.dtype = {dtype.name!r}: the ONNX kernels support float32 and float64")
    g = _Graph(dtype)
    P, x_in = cfg.num_params, g.value_info(X, ["batch", cfg.d])
    if theta is not None:
        if kind != "forward":
            raise ValueError("only the forward graph can bake theta in")
        theta = np.asarray(theta)
        if theta.shape != (P,):
            raise ValueError(f"theta has shape {theta.shape}, model needs ({P},)")
        _forward(g, cfg, _params_baked(g, cfg, theta), X, out=F)
        return g.model("p2pntk_inference", [x_in], [g.value_info(F, ["batch", cfg.k])], cfg,
                       f"f(X; theta_0) of a {_describe(cfg)}, theta_0 baked in")
    inputs = [g.value_info(THETA, [P]), x_in]
    params = _params_from_theta(g, cfg)
    if kind == "forward":
        _forward(g, cfg, params, X, out=F)
        return g.model("p2pntk_forward", inputs, [g.value_info(F, ["batch", cfg.k])], cfg,
                       f"f(X; theta) of a {_describe(cfg)}")
    inputs.append(g.value_info(Y, ["batch", cfg.k]))
    loss_out = g.value_info(LOSS, [])
    if kind == "loss_grad":
        _loss_and_grad(g, cfg, params, GRAD)
        return g.model("p2pntk_loss_grad", inputs, [loss_out, g.value_info(GRAD, [P])], cfg,
                       f"L = ||f(X; theta) - Y||^2 / (2n) and grad L of a {_describe(cfg)}")
    _, grad = _loss_and_grad(g, cfg, params, None)
    g("Sub", BASE, g("Mul", ALPHA, grad), out=THETA_NEW)
    inputs += [g.value_info(BASE, [P]), g.value_info(ALPHA, [])]
    return g.model("p2pntk_descent", inputs, [loss_out, g.value_info(THETA_NEW, [P])], cfg,
                   f"L(theta) and base - alpha grad L(theta) of a {_describe(cfg)}")


COMPUTES = {
    "forward": "f = f(X; theta)",
    "loss_grad": "loss = ||f(X; theta) - Y||^2 / (2 batch), grad = dloss/dtheta",
    "descent": "loss = ||f(X; theta) - Y||^2 / (2 batch), theta_new = base - alpha * dloss/dtheta",
}


def signature(model) -> dict:
    """The inputs and outputs of a ModelProto: ``{"inputs": [{"name", "shape", "dtype"}], "outputs": [...]}``.

    A shape lists ints and the names of dynamic dimensions ("batch"); dtype is numpy's name ("float32").
    """
    onnx = require_onnx()

    def describe(value_info) -> dict:
        t = value_info.type.tensor_type
        shape = [d.dim_param if d.dim_param else d.dim_value for d in t.shape.dim]
        return {"name": value_info.name, "shape": shape,
                "dtype": np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)).name}
    return {"inputs": [describe(v) for v in model.graph.input],
            "outputs": [describe(v) for v in model.graph.output]}


def _describe(cfg: ModelConfig) -> str:
    if not cfg.hidden_layers:
        return f"affine model d={cfg.d} k={cfg.k}"
    return f"{cfg.activation} MLP d={cfg.d} width={cfg.width} depth={cfg.hidden_layers} k={cfg.k}"


@functools.lru_cache(maxsize=64)
def serialized(kind: str, cfg: ModelConfig, dtype_name: str) -> bytes:
    """``build(kind, cfg, dtype)`` serialised, cached per (kind, cfg, dtype)."""
    return build(kind, cfg, np.dtype(dtype_name)).SerializeToString()
