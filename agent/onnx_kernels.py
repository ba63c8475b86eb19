"""The ONNX Runtime kernel backend (``[train] kernels = "onnx"``): the ``forward`` and ``loss_grad``
graphs of ``agent.onnx_graphs`` run in cached InferenceSessions, with inputs and outputs bound to
numpy memory through IOBinding.

Settings: ``threads`` (intra-op threads; 0 or None: onnxruntime's default), ``providers`` (execution
providers in order of preference, falling back to the CPU), ``spin`` (let idle pool threads spin).
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from agent import onnx_graphs
from agent.model import ModelConfig
from common.compute import DTYPES
from common.errors import UserError

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
PROVIDER_ALIASES = {
    "cpu": CPU, "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider", "openvino": "OpenVINOExecutionProvider",
    "dnnl": "DnnlExecutionProvider", "xnnpack": "XnnpackExecutionProvider", "coreml": "CoreMLExecutionProvider",
}
# "auto": the GPU where this onnxruntime build has one (Jetson: onnxruntime-gpu), else the CPU.
# TensorRT only on request: it builds an engine per input shape, which costs seconds per new batch size.
AUTO = ("CUDAExecutionProvider",)
# onnxruntime's MatMulScaleFusion turns MatMul + scalar Mul into FusedMatMul, which leaves the fast
# matrix-vector path of a one-column MatMul (6x slower at k = 1); the graphs scale small results instead.
DISABLED_OPTIMIZERS = ("MatMulScaleFusion",)
SETTINGS = ("threads", "providers", "spin")
_CACHE_SIZE = 32
_sessions: OrderedDict = OrderedDict()


@dataclass(frozen=True)
class SessionSettings:
    """Validated session settings; ``providers`` is the resolved list (CPU always last)."""

    threads: int = 0
    providers: tuple = (CPU,)
    spin: bool = True

    def key(self) -> tuple:
        return (self.threads, repr(self.providers), self.spin)

    def session_options(self) -> ort.SessionOptions:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.spin else "0")
        return opts


def session_settings(**settings) -> SessionSettings:
    """Validate ``threads``, ``providers`` and ``spin``; unknown keys and bad values raise UserError."""
    unknown = sorted(set(settings) - set(SETTINGS))
    if unknown:
        raise UserError(f"onnx setting {unknown[0]!r} is unknown (known: {', '.join(SETTINGS)})")
    threads = settings.get("threads")
    threads = 0 if threads is None else threads
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
        raise UserError(f"onnx.threads = {threads!r}: expected an integer >= 0 (0: onnxruntime's default)")
    spin = settings.get("spin")
    spin = True if spin is None else spin
    if not isinstance(spin, bool):
        raise UserError(f"onnx.spin = {spin!r}: expected true or false")
    return SessionSettings(threads, resolve_providers(settings.get("providers")), spin)


def resolve_providers(requested=None) -> tuple:
    """The execution providers to ask for, in order, each available in this build; CPU is always last.

    ``requested``: None or "auto", a name or alias ("cuda", "tensorrt", "cpu"), a comma-separated
    string of them, or a list whose items are names or (name, provider-options dict) pairs.
    An unknown name raises UserError; a known provider missing from this build is skipped with a warning.
    """
    if requested is None or requested == "auto":
        items, explicit = list(AUTO), False
    else:
        items = [s.strip() for s in requested.split(",") if s.strip()] if isinstance(requested, str) else requested
        if not isinstance(items, (list, tuple)) or not items:
            raise UserError(f"onnx.providers = {requested!r}: expected a provider name or a list of them")
        explicit = True
    known, available = ort.get_all_providers(), ort.get_available_providers()
    chosen = []
    for item in items:
        name, options = (item[0], item[1]) if isinstance(item, (list, tuple)) and len(item) == 2 else (item, None)
        if not isinstance(name, str) or (options is not None and not isinstance(options, dict)):
            raise UserError(f"onnx.providers: bad entry {item!r}: expected a name or [name, {{options}}]")
        full = PROVIDER_ALIASES.get(name.lower(), name)
        if full not in known:
            raise UserError(f"onnx.providers: unknown execution provider {name!r} "
                            f"(known: {', '.join(sorted(PROVIDER_ALIASES))} or a full name such as {CPU})")
        if full not in available:
            if explicit:
                log.warning("onnx: execution provider %s is not available in this onnxruntime build "
                            "(available: %s); falling back", full, ", ".join(available))
            continue
        if full not in [c if isinstance(c, str) else c[0] for c in chosen]:
            chosen.append(full if options is None else (full, options))
    if CPU not in [c if isinstance(c, str) else c[0] for c in chosen]:
        chosen.append(CPU)
    return tuple(chosen)


def session(kind: str, cfg: ModelConfig, dtype: np.dtype, settings: SessionSettings) -> ort.InferenceSession:
    """The InferenceSession of graph ``kind``, cached per (kind, cfg, dtype, settings)."""
    key = (kind, cfg, np.dtype(dtype).name, settings.key())
    sess = _sessions.get(key)
    if sess is None:
        model = onnx_graphs.serialized(kind, cfg, np.dtype(dtype).name)
        sess = ort.InferenceSession(model, sess_options=settings.session_options(),
                                    providers=list(settings.providers),
                                    disabled_optimizers=list(DISABLED_OPTIMIZERS))
        wanted = [p if isinstance(p, str) else p[0] for p in settings.providers]
        got = sess.get_providers()
        (log.info if got[0] == wanted[0] else log.warning)(
            "onnx: %s graph for model %s (%s) runs on %s (asked for %s)", kind, cfg.hash(),
            np.dtype(dtype).name, ", ".join(got), ", ".join(wanted))
        _sessions[key] = sess
        if len(_sessions) > _CACHE_SIZE:
            _sessions.popitem(last=False)
    else:
        _sessions.move_to_end(key)
    return sess


class OnnxKernels:
    """The ONNX Runtime backend: ``forward`` and ``loss_and_grad``.

    Same interface and results as ``agent.kernels.NumpyKernels`` (to float rounding): theta is the
    flat (P,) wire vector, X (n, d), Y (n, k); outputs are fresh arrays in theta's dtype.
    """

    name = "onnx"

    def __init__(self, cfg: ModelConfig, dtype: np.dtype | str = np.float32, **settings) -> None:
        onnx_graphs.require_onnx()
        self.cfg, self.dtype = cfg, np.dtype(dtype)
        if self.dtype.name not in DTYPES:
            raise UserError(f"train.dtype = {self.dtype.name!r}: the ONNX kernels support float32 and float64")
        self.settings = session_settings(**settings)
        self._P = cfg.num_params
        self._sessions: dict[str, ort.InferenceSession] = {}

    def __repr__(self) -> str:
        return (f"OnnxKernels({self.cfg.hash()}, {self.dtype.name}, threads={self.settings.threads}, "
                f"providers={list(self.settings.providers)})")

    @property
    def providers(self) -> list[str]:
        """The providers the sessions actually run on (after fallback)."""
        return self._session("forward").get_providers()

    def forward(self, theta: np.ndarray, X: np.ndarray) -> np.ndarray:
        """f(X; theta), shape (n, k)."""
        theta, X = self._theta(theta), self._batch(X, self.cfg.d, "X")
        f = np.empty((X.shape[0], self.cfg.k), self.dtype)
        self._run("forward", {onnx_graphs.THETA: theta, onnx_graphs.X: X}, {onnx_graphs.F: f})
        return f

    def loss_and_grad(self, theta: np.ndarray, X: np.ndarray, Y: np.ndarray) -> tuple[float, np.ndarray]:
        """(L(theta), grad L(theta)) on (X, Y); the gradient has theta's dtype."""
        t = self._theta(theta)
        X, Y = self._batch(X, self.cfg.d, "X"), self._batch(Y, self.cfg.k, "Y", len(X))
        loss, grad = np.empty((), self.dtype), np.empty(self._P, self.dtype)
        self._run("loss_grad", {onnx_graphs.THETA: t, onnx_graphs.X: X, onnx_graphs.Y: Y},
                  {onnx_graphs.LOSS: loss, onnx_graphs.GRAD: grad})
        return float(loss), grad.astype(theta.dtype, copy=False)

    def _run(self, kind: str, inputs: dict, outputs: dict) -> None:
        """Run with inputs and outputs bound to the numpy buffers (no copies on the CPU)."""
        sess = self._session(kind)
        binding = sess.io_binding()
        for name, arr in inputs.items():
            binding.bind_cpu_input(name, arr)
        for name, arr in outputs.items():
            binding.bind_output(name, "cpu", 0, arr.dtype, list(arr.shape), arr.ctypes.data)
        sess.run_with_iobinding(binding)

    def _session(self, kind: str) -> ort.InferenceSession:
        sess = self._sessions.get(kind)
        if sess is None:
            sess = self._sessions[kind] = session(kind, self.cfg, self.dtype, self.settings)
        return sess

    def _theta(self, theta: np.ndarray) -> np.ndarray:
        if theta.shape != (self._P,):
            raise ValueError(f"theta has shape {theta.shape}, model needs ({self._P},)")
        return np.ascontiguousarray(theta, self.dtype)

    def _batch(self, A: np.ndarray, width: int, name: str, rows: int | None = None) -> np.ndarray:
        A = np.ascontiguousarray(A, self.dtype)
        if A.ndim != 2 or A.shape[1] != width or (rows is not None and A.shape[0] != rows):
            raise ValueError(f"{name} has shape {A.shape}, expected ({rows if rows is not None else 'n'}, {width})")
        return A
