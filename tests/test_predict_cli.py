"""The predictor's CLI: predict / stability / compare / reproduce / bench, their files and their errors."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from agent.algorithms import ALGORITHMS
from threadpoolctl import threadpool_limits

from benchmarks.__main__ import TARGETS, load_target
from p2pntk.cli import main
from predictor.reproduce import reproduce

pytestmark = pytest.mark.usefixtures("one_blas_thread")

AFFINE = ["--set", "model.kind=affine", "--set", "train.dtype=float64", "--set", "train.rounds=30"]


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_predict_writes_the_simulate_results_format(tmp_path, capsys):
    pred, sim = tmp_path / "pred.json", tmp_path / "sim.json"
    assert _run(capsys, "predict", *AFFINE, "--out", str(pred), "--quiet")[0] == 0
    assert _run(capsys, "simulate", *AFFINE, "--out", str(sim), "--quiet")[0] == 0
    p, s = json.loads(pred.read_text()), json.loads(sim.read_text())
    assert p["kind"] == "predict" and p["mode"] == "discrete" and s["kind"] == "simulate"
    for key in ("spec", "train_loss", "test_loss", "train_accuracy", "test_accuracy", "final_test_accuracy",
                "diverged_at_round", "n_params", "model_hash", "timings"):
        assert key in p, key
    assert np.shape(p["train_loss"]) == np.shape(s["train_loss"]) == (6, 31)
    assert p["spec"] == s["spec"]
    np.testing.assert_allclose(p["test_accuracy"], s["test_accuracy"])
    assert set(p["lr_max"]) == {"dgd", "atc", "cta"} and p["stable"] is True


def test_predict_flow_mode_and_parameters(tmp_path, capsys):
    out, params = tmp_path / "flow.json", tmp_path / "theta.npz"
    code, text, _ = _run(capsys, "predict", *AFFINE, "--flow", "--out", str(out), "--save-params", str(params),
                         "--param-rounds", "0,30")
    assert code == 0 and "predict (flow)" in text and "lr_max" in text
    assert json.loads(out.read_text())["mode"] == "flow"
    z = np.load(params)
    assert z["rounds"].tolist() == [0, 30] and z["theta"].shape == (2, 6, 65)
    assert np.array_equal(z["theta"][0, 0], z["theta"][0, 5])  # every agent starts from theta_0


def test_compare_prints_per_agent_errors_and_plots(tmp_path, capsys):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    curve = [[1.0, 0.5, 0.25], [2.0, 1.0, 0.5]]
    a.write_text(json.dumps({"kind": "predict", "train_loss": [[1.0, 0.5, 0.25], [2.0, 1.0, 0.6]], "test_loss": curve}))
    b.write_text(json.dumps({"kind": "simulate", "train_loss": curve, "test_loss": curve}))
    png, err_json = tmp_path / "cmp.png", tmp_path / "err.json"
    code, out, _ = _run(capsys, "compare", str(a), str(b), "--plot", str(png), "--out", str(err_json))
    assert code == 0 and png.stat().st_size > 1000
    errors = json.loads(err_json.read_text())
    assert errors["train_loss"][0] == 0 and errors["train_loss"][1] == pytest.approx(0.1 / np.linalg.norm([2, 1, 0.5]))
    assert errors["max"] == errors["train_loss"][1]
    assert "0.04364" in out  # agent 1's train-loss error, printed


def test_stability_writes_its_keys(tmp_path, capsys):
    out = tmp_path / "st.json"
    code, text, _ = _run(capsys, "stability", *AFFINE, "--out", str(out))
    assert code == 0 and "lr_max" in text
    st = json.loads(out.read_text())
    for key in ("doubly_stochastic", "minimal", "max_real_eig", "spectral_radius", "lr_max"):
        assert key in st
    assert st["doubly_stochastic"] is True and st["max_real_eig"] < 0 < st["spectral_radius"] < 1
    assert set(st["lr_max"]) == set(ALGORITHMS) and st["lr_max"]["atc"] == st["lr_max"]["cta"]


@pytest.mark.parametrize("argv,culprit", [
    (["predict", "--set", "train.bogus=1"], "train.bogus"),
    (["predict", "--set", "model.kind=affine", "--save-params", "x.npz", "--param-rounds", "7,x"], "--param-rounds"),
    (["predict", "--set", "model.kind=affine", "--save-params", "x.npz", "--param-rounds", "500"], "--param-rounds"),
    (["predict", "--set", "model.kind=affine", "--set", "train.batch=5", "--flow"], "train.batch"),
    (["predict", "--max-mb", "0"], "--max-mb"),
    (["predict", "--kernel", "landmarks", "--landmarks", "0"], "--landmarks"),
    (["predict", "--flow", "--kernel", "traced"], "--kernel"),
    (["stability", "--set", "network.topology=moon"], "network.topology"),
    (["compare", "missing.json", "missing2.json"], "missing.json"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch, argv, culprit):
    monkeypatch.chdir(tmp_path)
    code, _, err = _run(capsys, *argv)
    assert code == 2 and culprit in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_compare_refuses_different_experiments(tmp_path, capsys):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps({"train_loss": [[1.0, 0.5]]}))
    b.write_text(json.dumps({"train_loss": [[1.0, 0.5, 0.2]]}))
    code, _, err = _run(capsys, "compare", str(a), str(b))
    assert code == 2 and "not the same experiment" in err
    b.write_text("{not json")
    code, _, err = _run(capsys, "compare", str(a), str(b))
    assert code == 2 and str(b) in err


def test_reproduce_writes_figures_and_panel_errors(tmp_path):
    res = reproduce(tmp_path, width=64, widths=(32, 64), sweep_rounds=10, seeds=(0, 1), rounds=20)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["figures"] == res["figures"]
    for name in res["figures"]:
        assert (tmp_path / name).stat().st_size > 1000
    assert len(saved["panels"]) == 4 * len(ALGORITHMS)  # Figure 1 and three Figure 2 panels per algorithm
    for name, panel in saved["panels"].items():
        assert len(panel["train_loss"]) == 6 and panel["max"] >= 0
        if name.startswith("fig1"):
            assert panel["max"] < 1e-9  # the affine forecast is exact
    assert [s["width"] for s in saved["width_sweep"]] == [32, 64]
    assert saved["flow_vs_discrete"][0]["train_loss_error"] < 0.01  # lr = 0.01


def test_bench_targets_resolve():
    for spec in TARGETS.values():
        assert callable(load_target(spec))


def test_predictor_cli_path_never_imports_torch():
    code = ("import sys, p2pntk.cli, predictor.forecast, predictor.stability, predictor.reproduce, "
            "predictor.ntk_torch; p2pntk.cli.build_parser(); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


@pytest.mark.slow
def test_bench_predictor_forecast_is_50x_cheaper_than_training(tmp_path, capsys):
    """Acceptance: the width-4096 forecast against simulate of the same spec, side by side."""
    out = tmp_path / "bench.json"
    with threadpool_limits(limits=os.cpu_count(), user_api="blas"):  # lift the module's one-thread limit
        assert main(["bench", "predictor", "--out", str(out)]) == 0
    ratio = json.loads(out.read_text())["ratio"]
    # what `predict` does (kernel in train.dtype), both on one core: the ratio a shared machine can measure
    same = [r for r in ratio if r["kernel_dtype"] == r["simulate_dtype"] and r["blas_threads"] == 1]
    assert len(same) == 2 and min(r["ratio"] for r in same) >= 50, ratio
