"""The ONNX Runtime backend against the numpy reference, scipy's erf, the float64 swarm runs and torch."""
import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from scipy import special

pytest.importorskip("torch")  # tests.torch_reference needs it

from agent import onnx_graphs
from agent import model as M
from agent.kernels import make_kernels
from agent.model import ModelConfig
from agent.onnx_kernels import OnnxKernels, resolve_providers
from agent.simulator import simulate
from agent.swarm import Swarm
from agent.spec import load_spec
from common.compute import BACKENDS, DTYPES
from common.errors import UserError
from p2pntk.cli import main
from tests.torch_reference import max_rel_err, reference_run

CASES = [("affine", 0, "relu"), ("mlp", 1, "relu"), ("mlp", 1, "erf"), ("mlp", 1, "tanh"),
         ("mlp", 2, "relu"), ("mlp", 2, "erf"), ("mlp", 2, "tanh"), ("mlp", 3, "relu"),
         ("mlp", 3, "erf"), ("mlp", 3, "tanh")]
TOL = {np.float32: 1e-5, np.float64: 1e-10}


def _problem(cfg, n=9, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, cfg.d)), rng.standard_normal((n, cfg.k))


def _rel(a, b) -> float:
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(b))


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind,depth,act", CASES)
def test_loss_grad_and_forward_match_numpy_backend(kind, depth, act, dtype, k):
    cfg = ModelConfig(kind=kind, d=6, k=k, width=40, depth=depth, activation=act, w_std=1.4, b_std=0.3, seed=5)
    X, Y = _problem(cfg)
    theta = M.init_params(cfg, dtype)
    onnx, ref = OnnxKernels(cfg, dtype, threads=1), make_kernels("numpy", cfg, dtype)
    value, grad = onnx.loss_and_grad(theta, X, Y)
    value_ref, grad_ref = ref.loss_and_grad(theta, X.astype(dtype), Y.astype(dtype))
    assert grad.dtype == dtype and grad.shape == theta.shape and isinstance(value, float)
    assert _rel(grad, grad_ref) <= TOL[dtype]
    assert value == pytest.approx(value_ref, rel=TOL[dtype])
    f = onnx.forward(theta, X)
    assert f.dtype == dtype and f.shape == (len(X), cfg.k)
    assert _rel(f, ref.forward(theta, X)) <= TOL[dtype]
    if dtype == np.float32:  # the gradient comes back in theta's dtype
        assert onnx.loss_and_grad(theta.astype(np.float64), X, Y)[1].dtype == np.float64


def test_float64_grad_matches_finite_differences_for_erf():
    """Independent of the numpy backend: central differences of the ONNX loss itself."""
    cfg = ModelConfig(kind="mlp", d=3, k=1, width=5, depth=2, activation="erf", seed=2)
    X, Y = _problem(cfg, n=4)
    kern = OnnxKernels(cfg, np.float64, threads=1)
    theta = M.init_params(cfg, np.float64)
    _, grad = kern.loss_and_grad(theta, X, Y)
    eps, fd = 1e-6, np.empty_like(theta)
    for i in range(theta.size):
        e = np.zeros_like(theta)
        e[i] = eps
        fd[i] = (kern.loss_and_grad(theta + e, X, Y)[0] - kern.loss_and_grad(theta - e, X, Y)[0]) / (2 * eps)
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-9)


def test_float64_erf_graph_matches_scipy():
    x = np.concatenate([np.linspace(-7, 7, 200001), [0.0, -0.0, 1e-300, -1e-12, 5.999999, 6.0, 1e300, -np.inf, np.inf]])
    g = onnx_graphs._Graph(np.float64)
    y = onnx_graphs._erf_float64(g, "x")
    g("Identity", y, out="y")
    m = g.model("erf", [g.value_info("x", [None])], [g.value_info("y", [None])],
                ModelConfig(kind="affine", d=1, k=1), "erf")
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    out = sess.run(None, {"x": x})[0]
    ref = special.erf(x)
    assert np.max(np.abs(out - ref) / np.maximum(np.abs(ref), 1e-300)) < 1e-14
    assert np.isnan(sess.run(None, {"x": np.array([np.nan])})[0][0])


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_exported_descent_graph_is_one_local_step_in_stock_onnxruntime(dtype, tmp_path):
    """descent.onnx as ``export-onnx --training-graphs`` ships it, run the way a board would: a plain
    InferenceSession fed by the manifest's names, shapes and dtypes. References: numpy's float64
    loss_and_grad (agent.model) and central differences of the numpy loss (no backward pass at all)."""
    graphs, prob = tmp_path / "graphs", tmp_path / "p.npz"
    overrides = ["model.width=4", "model.depth=2", "model.activation=tanh", "data.classes=[0,1,2]",
                 f"train.dtype={dtype}"]
    assert main(["export-onnx", *[x for o in overrides for x in ("--set", o)], "--out", str(tmp_path / "m.onnx"),
                 "--save-problem", str(prob), "--training-graphs", str(graphs)]) == 0
    manifest = json.loads((graphs / "layout.json").read_text())
    cfg = ModelConfig(**manifest["config"])
    P = cfg.num_params
    assert cfg.hash() == manifest["model_hash"] and manifest["P"] == P and manifest["dtype"] == dtype
    assert sorted(manifest["graphs"]) == ["descent", "forward", "loss_grad"]
    entry = manifest["graphs"]["descent"]
    assert "descent.onnx" in (graphs / "README.txt").read_text()
    sess = ort.InferenceSession(str(graphs / entry["file"]), providers=["CPUExecutionProvider"])
    onnx_type = {"float64": "tensor(double)", "float32": "tensor(float)"}[dtype]
    for declared, actual in ((entry["inputs"], sess.get_inputs()), (entry["outputs"], sess.get_outputs())):
        assert [(v["name"], v["shape"], v["dtype"]) for v in declared] == [(a.name, a.shape, dtype) for a in actual]
        assert all(a.type == onnx_type for a in actual)
    assert [(v["name"], v["shape"]) for v in entry["inputs"]] == [
        ("theta", [P]), ("X", ["batch", cfg.d]), ("Y", ["batch", cfg.k]), ("base", [P]), ("alpha", [])]
    assert [(v["name"], v["shape"]) for v in entry["outputs"]] == [("loss", []), ("theta_new", [P])]

    z = np.load(prob)
    theta = np.load(graphs / manifest["theta0"])
    assert theta.dtype == dtype
    np.testing.assert_array_equal(theta, z["theta0"].astype(dtype))
    X, Y = z["X_train"][:7], z["Y_train"][:7]
    base = theta + np.random.default_rng(3).standard_normal(P).astype(dtype) / 10
    alpha = 0.37
    loss, new = sess.run(["loss", "theta_new"], {"theta": theta, "X": X.astype(dtype), "Y": Y.astype(dtype),
                                                 "base": base, "alpha": np.array(alpha, dtype)})
    assert loss.shape == () and new.shape == (P,) and new.dtype == dtype
    t64, b64 = theta.astype(np.float64), base.astype(np.float64)
    ref_loss, ref_grad = M.loss_and_grad(cfg, t64, X, Y)
    step = (b64 - new) / alpha                     # the gradient the graph applied
    if dtype == "float32":
        assert float(loss) == pytest.approx(ref_loss, rel=1e-5)
        assert _rel(new, b64 - alpha * ref_grad) <= 1e-6 and _rel(step, ref_grad) <= 1e-3
        return
    assert float(loss) == pytest.approx(ref_loss, rel=1e-12)
    np.testing.assert_allclose(new, b64 - alpha * ref_grad, rtol=1e-12, atol=1e-15)
    assert _rel(step, ref_grad) <= 1e-12
    eps, fd = 1e-6, np.empty(P)
    for i in range(P):
        e = np.zeros(P)
        e[i] = eps
        fd[i] = (M.loss(cfg, t64 + e, X, Y) - M.loss(cfg, t64 - e, X, Y)) / (2 * eps)
    np.testing.assert_allclose(step, fd, rtol=1e-6, atol=1e-9)
    # base = theta: plain gradient descent; a small step lowers the loss
    (theta1,) = sess.run(["theta_new"], {"theta": theta, "X": X, "Y": Y, "base": theta, "alpha": np.array(0.05)})
    assert M.loss(cfg, theta1, X, Y) < ref_loss


ACCEPTANCE = {
    "dgd-mlp": ["train.algorithm=dgd", "model.kind=mlp", "model.depth=1"],
    "atc-mlp2": ["train.algorithm=atc", "model.kind=mlp", "model.depth=2", "model.activation=erf"],
    "cta-affine": ["train.algorithm=cta", "model.kind=affine", "model.depth=0"],
}
SMALL = ["network.agents=4", "data.samples_per_agent=15", "data.test_samples=30", "model.width=128",
         "train.rounds=12", "train.lr=0.5"]


@pytest.mark.parametrize("name", list(ACCEPTANCE))
def test_simulate_onnx_float32_matches_float64_references(name, tmp_path):
    overrides = SMALL + ACCEPTANCE[name]
    swarm32 = Swarm.from_spec(load_spec(None, overrides + ["train.dtype=float32", "train.kernels=onnx"]))
    spec64 = load_spec(None, overrides + ["train.dtype=float64", "train.kernels=numpy"])
    swarm64 = Swarm.from_spec(spec64)
    onnx32, numpy64 = simulate(swarm32), simulate(swarm64)
    swarm64.save_problem(tmp_path / "problem.npz")
    torch64 = reference_run(str(tmp_path / "problem.npz"), spec64)
    for key in ("train_loss", "test_loss"):
        assert np.asarray(onnx32[key]).shape == (4, 13)
        assert max_rel_err(onnx32[key], numpy64[key]) <= 1e-3
        assert max_rel_err(onnx32[key], torch64[key]) <= 1e-3
        assert max_rel_err(numpy64[key], torch64[key]) <= 1e-10


def test_loopback_agents_run_the_onnx_kernels(tmp_path):
    """Real agent processes over ZeroMQ with kernels = onnx (float32) against simulate in numpy float64."""
    overrides = ["network.agents=3", "data.samples_per_agent=10", "data.test_samples=20", "train.rounds=4",
                 "model.width=32", "train.algorithm=atc"]
    args = [x for o in overrides + ["train.kernels=onnx"] for x in ("--set", o)]
    assert main(["loopback", *args, "--out", str(tmp_path / "lb.json"), "--workdir", str(tmp_path / "w"),
                 "--quiet"]) == 0
    lb = json.loads((tmp_path / "lb.json").read_text())
    ref = simulate(Swarm.from_spec(load_spec(None, overrides + ["train.dtype=float64"])))
    assert lb["spec"]["train"]["kernels"] == "onnx" and np.shape(lb["train_loss"]) == (3, 5)
    for key in ("train_loss", "test_loss"):
        assert max_rel_err(lb[key], ref[key]) <= 1e-3


def test_export_onnx_runs_in_stock_onnxruntime(tmp_path, capsys):
    out, prob, graphs = tmp_path / "m.onnx", tmp_path / "p.npz", tmp_path / "graphs"
    overrides = ["model.width=48", "model.depth=2", "model.activation=tanh", "data.classes=[0,1,2]",
                 "train.dtype=float64"]
    args = [x for o in overrides for x in ("--set", o)]
    assert main(["export-onnx", *args, "--out", str(out), "--save-problem", str(prob),
                 "--training-graphs", str(graphs)]) == 0
    assert "wrote" in capsys.readouterr().out
    z = np.load(prob)
    swarm = Swarm.from_spec(load_spec(None, overrides))
    np.testing.assert_array_equal(z["theta0"], swarm.theta0)
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (inp,) = sess.get_inputs()
    assert (inp.name, inp.type, inp.shape[1]) == ("X", "tensor(float)", swarm.cfg.d)
    f = sess.run(None, {"X": z["X_test"].astype(np.float32)})[0]
    ref = M.forward(swarm.cfg, z["theta0"], z["X_test"])
    assert f.dtype == np.float32 and f.shape == ref.shape == (len(z["X_test"]), 3)
    assert np.max(np.abs(f - ref)) <= 1e-4 * np.max(np.abs(ref))
    # the training graphs (float64 here) compute the numpy backend's gradient
    lg = ort.InferenceSession(str(graphs / "loss_grad.onnx"), providers=["CPUExecutionProvider"])
    theta0 = np.load(graphs / "theta0.npy")
    loss, grad = lg.run(None, {"theta": theta0, "X": z["X_train"], "Y": z["Y_train"]})
    ref_loss, ref_grad = M.loss_and_grad(swarm.cfg, z["theta0"], z["X_train"], z["Y_train"])
    assert theta0.dtype == np.float64 and float(loss) == pytest.approx(ref_loss, rel=1e-12)
    assert _rel(grad, ref_grad) <= 1e-10


def test_export_onnx_bad_input_is_a_one_line_error(tmp_path, capsys):
    assert main(["export-onnx", "--set", "model.widht=8", "--out", str(tmp_path / "m.onnx")]) == 2
    assert "model.widht" in capsys.readouterr().err
    assert main(["export-onnx", "--out", str(tmp_path / "m.txt")]) == 2
    assert "--out" in capsys.readouterr().err


def test_provider_settings_fall_back_or_name_the_culprit(caplog):
    cfg = ModelConfig(kind="affine", d=3, k=1)
    with pytest.raises(UserError, match="'NoSuchExecutionProvider'"):
        make_kernels("onnx", cfg, providers=["NoSuchExecutionProvider"])
    with pytest.raises(UserError, match="onnx.threads"):
        OnnxKernels(cfg, threads=-1)
    with pytest.raises(UserError, match="'thread'"):
        OnnxKernels(cfg, thread=2)
    missing = [p for p in ("CUDAExecutionProvider", "TensorrtExecutionProvider")
               if p not in ort.get_available_providers()]
    if missing:
        with caplog.at_level(logging.WARNING, logger="agent.onnx_kernels"):
            kern = OnnxKernels(cfg, providers=missing + ["cpu"])
        assert missing[0] in caplog.text and "falling back" in caplog.text
        assert kern.providers == ["CPUExecutionProvider"]
    assert resolve_providers("auto")[-1] == resolve_providers("cuda, cpu")[-1] == "CPUExecutionProvider"
    X = np.ones((2, 3))
    np.testing.assert_allclose(make_kernels("onnx", cfg, threads=1, providers="cpu").forward(
        M.init_params(cfg), X), M.forward(cfg, M.init_params(cfg), X), rtol=1e-6)


def test_missing_onnx_package_is_a_user_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(UserError, match=r"pip install 'p2p-ntk\[onnx\]'"):
        OnnxKernels(ModelConfig(kind="affine", d=3, k=1))


def test_sessions_are_cached_and_board_runtime_never_imports_torch():
    cfg = ModelConfig(kind="mlp", d=3, k=1, width=8)
    a, b = OnnxKernels(cfg, threads=1), OnnxKernels(cfg, threads=1)
    from agent.onnx_kernels import session
    assert session("forward", a.cfg, a.dtype, a.settings) is session("forward", b.cfg, b.dtype, b.settings)
    code = ("import sys, numpy as np; from agent.kernels import make_kernels; from agent.model import ModelConfig;"
            "k = make_kernels('onnx', ModelConfig(kind='mlp', d=2, k=1, width=4));"
            "k.loss_and_grad(np.zeros(17, np.float32), np.ones((3, 2)), np.ones((3, 1)));"
            "print('torch' in sys.modules)")
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root)
    assert out.stdout.strip() == "False"


@pytest.mark.slow
@pytest.mark.parametrize("name", list(ACCEPTANCE))
def test_simulate_onnx_float32_at_default_size_matches_numpy_float64(name):
    """The acceptance runs at the default spec's size (6 agents, width 1024, 100 rounds)."""
    onnx32 = simulate(Swarm.from_spec(load_spec(None, ACCEPTANCE[name] + ["train.kernels=onnx"])))
    numpy64 = simulate(Swarm.from_spec(load_spec(None, ACCEPTANCE[name] + ["train.dtype=float64"])))
    for key in ("train_loss", "test_loss"):
        assert max_rel_err(onnx32[key], numpy64[key]) <= 1e-3


def test_benchmark_script_reports_ratios():
    """A smoke run of benchmarks/bench_kernels.py at toy size (the real run is a separate script)."""
    import importlib.util
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_kernels.py"
    spec = importlib.util.spec_from_file_location("bench_kernels", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    import torch
    threads = torch.get_num_threads()
    try:
        result = bench.run(widths=[16], batches=[4, 8], repeats=2, threads=1, warmup=1, blocks=1, pause=0.0)
    finally:
        torch.set_num_threads(threads)
    assert [(r["width"], r["batch"]) for r in result["rows"]] == [(16, 4), (16, 8)]
    row = result["rows"][0]
    assert row["numpy/torch"] == pytest.approx(row["numpy_ms"] / row["torch_ms"])
    assert "OPENBLAS_CORETYPE" in result["env"] and "|" not in bench.table(result)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", BACKENDS)
def test_every_backend_and_dtype_the_spec_accepts_builds_and_trains(name, dtype):
    """common.compute names the backends and dtypes once: each pair the spec accepts has a
    factory in agent.kernels, whose gradient matches the float64 numpy reference."""
    spec = load_spec(None, [f"train.kernels={name!r}", f"train.dtype={dtype!r}"])
    cfg = ModelConfig(kind="mlp", d=6, k=2, width=40, depth=1, seed=5)
    X, Y = _problem(cfg)
    theta = M.init_params(cfg, spec.train.dtype)
    kernels = make_kernels(spec.train.kernels, cfg, spec.train.dtype, threads=1)
    value, grad = kernels.loss_and_grad(theta, X.astype(dtype), Y.astype(dtype))
    ref_value, ref_grad = M.loss_and_grad(cfg, theta.astype(np.float64), X, Y)
    assert kernels.name == name and grad.dtype == np.dtype(dtype)
    assert _rel(grad, ref_grad) <= TOL[np.dtype(dtype).type] and value == pytest.approx(ref_value, rel=1e-5)


def test_an_unknown_backend_or_dtype_is_refused_naming_the_known_ones():
    cfg = ModelConfig(kind="affine", d=3, k=1, width=1, depth=0)
    with pytest.raises(UserError, match="train.kernels = 'torch': expected one of numpy, onnx"):
        make_kernels("torch", cfg)
    with pytest.raises(UserError, match="train.kernels = 'torch'"):
        load_spec(None, ["train.kernels='torch'"])
    with pytest.raises(UserError, match="train.dtype = 'float16'"):
        load_spec(None, ["train.dtype='float16'"])
