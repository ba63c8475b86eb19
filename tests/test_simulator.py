"""simulate (float64) against the independent torch autograd reference, from the problem file only."""
import json

import numpy as np
import pytest

pytest.importorskip("torch")  # tests.torch_reference needs it

from p2pntk.cli import main
from tests.torch_reference import max_rel_err, reference_run

# The four acceptance configurations of the foundation issue, at test size.
CONFIGS = {
    "dgd-cycle-mlp": ["train.algorithm=dgd", "network.topology=cycle", "model.kind=mlp", "model.width=64"],
    "atc-star-mlp2-3cls": ["train.algorithm=atc", "network.topology=star", "model.kind=mlp", "model.depth=2",
                           "model.width=48", "data.classes=[0,1,2]"],
    "cta-complete-affine": ["train.algorithm=cta", "network.topology=complete", "model.kind=affine"],
    "dgd-path-3v8": ["train.algorithm=dgd", "network.topology=path", "data.classes=[3,8]", "model.width=64",
                     "model.activation=erf"],
    "gt-star-mlp2-3cls": ["train.algorithm=gt", "network.topology=star", "model.kind=mlp", "model.depth=2",
                          "model.width=48", "data.classes=[0,1,2]"],
    "gt-cycle-affine": ["train.algorithm=gt", "network.topology=cycle", "model.kind=affine"],
}


@pytest.mark.parametrize("name", CONFIGS)
def test_simulate_matches_independent_autograd_reference(tmp_path, name):
    out, prob = tmp_path / "run.json", tmp_path / "prob.npz"
    overrides = CONFIGS[name] + ["train.dtype=float64", "train.rounds=15", "train.lr=0.3",
                                 "network.agents=5", "data.samples_per_agent=12", "data.test_samples=30"]
    args = ["simulate", "--out", str(out), "--save-problem", str(prob), "--quiet"]
    for o in overrides:
        args += ["--set", o]
    assert main(args) == 0
    run = json.loads(out.read_text())
    ref = reference_run(str(prob), run["spec"])
    assert np.shape(run["train_loss"]) == (5, 16)
    assert max_rel_err(run["train_loss"], ref["train_loss"]) < 1e-8
    assert max_rel_err(run["test_loss"], ref["test_loss"]) < 1e-8
    # training actually moved the loss, so the comparison is not vacuous
    assert np.mean(np.array(run["train_loss"])[:, -1]) < 0.9 * np.mean(np.array(run["train_loss"])[:, 0])


def test_problem_file_has_design_arrays(tmp_path):
    prob = tmp_path / "p.npz"
    assert main(["simulate", "--quiet", "--out", str(tmp_path / "r.json"), "--save-problem", str(prob),
                 "--set", "train.rounds=1", "--set", "network.agents=3", "--set", "model.width=8",
                 "--set", "data.classes=[0,1,2]", "--set", "data.samples_per_agent=10"]) == 0
    z = np.load(prob)
    assert set(z.files) == {"X_train", "Y_train", "agent_of_sample", "X_test", "Y_test", "theta0", "W"}
    assert z["X_train"].shape == (30, 64) and z["Y_train"].shape == (30, 3)
    assert np.bincount(z["agent_of_sample"]).tolist() == [10, 10, 10]
    assert z["W"].shape == (3, 3) and z["theta0"].dtype == np.float64


def test_minibatch_and_float32_run(tmp_path):
    out = tmp_path / "r.json"
    assert main(["simulate", "--quiet", "--out", str(out), "--set", "train.batch=8", "--set", "train.rounds=20",
                 "--set", "model.width=32", "--set", "network.agents=4"]) == 0
    run = json.loads(out.read_text())
    assert run["spec"]["train"]["dtype"] == "float32"
    losses = np.array(run["train_loss"])
    assert losses.shape == (4, 21) and np.all(np.isfinite(losses))
    assert losses[:, -1].mean() < losses[:, 0].mean()
