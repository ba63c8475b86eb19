"""Data sources, targets and splits."""
import numpy as np
import pytest

from agent.data import load_npz_arrays, make_problem, split_indices, targets
from agent.spec import load_spec
from common.errors import UserError


def _data(**kw):
    spec = load_spec(None, [f"data.{k}={v}" for k, v in kw.items()])
    return spec.data


def test_targets_pm1_and_onehot():
    np.testing.assert_array_equal(targets(np.array([3, 8, 8]), [3, 8]), [[-1], [1], [1]])
    np.testing.assert_array_equal(targets(np.array([2, 0]), [0, 1, 2]), [[0, 0, 1], [1, 0, 0]])


def test_digits_problem_shapes_scaling_and_seed():
    p = make_problem(_data(classes="[3,8]", samples_per_agent=20, test_samples=50), 4)
    assert p.X_train.shape == (80, 64) and p.Y_train.shape == (80, 1) and p.X_test.shape == (50, 64)
    assert 0 <= p.X_train.min() and p.X_train.max() <= 1
    assert set(np.unique(p.Y_train)) == {-1.0, 1.0}
    q = make_problem(_data(classes="[3,8]", samples_per_agent=20, test_samples=50), 4)
    np.testing.assert_array_equal(p.X_train, q.X_train)


def test_by_label_split_is_non_iid():
    labels = np.repeat(np.arange(4), 50)
    shards = split_indices(labels, 4, 40, "by-label", np.random.default_rng(0))
    assert all(len(np.unique(labels[s])) <= 2 for s in shards)
    assert len(np.unique(np.concatenate(shards))) == 160
    iid = split_indices(labels, 4, 40, "iid", np.random.default_rng(0))
    assert all(len(np.unique(labels[s])) == 4 for s in iid)


def test_dirichlet_split_sizes_and_skew():
    labels = np.repeat(np.arange(5), 100)
    shards = split_indices(labels, 6, 50, "dirichlet:0.1", np.random.default_rng(1))
    assert [len(s) for s in shards] == [50] * 6
    assert len(np.unique(np.concatenate(shards))) == 300
    dominant = [np.bincount(labels[s]).max() / 50 for s in shards]
    assert np.mean(dominant) > 0.6  # small alpha: most agents see mostly one class


def test_synthetic_teacher_is_learnable_and_balanced():
    p = make_problem(_data(name="synthetic", classes="[0,1,2]", samples_per_agent=30, test_samples=60), 3)
    counts = p.Y_train.sum(0)
    assert p.X_train.shape == (90, 16) and np.all(counts > 10)


def test_npz_source_and_errors(tmp_path):
    f = tmp_path / "d.npz"
    rng = np.random.default_rng(0)
    np.savez(f, X=rng.standard_normal((100, 3)), y=rng.integers(0, 2, 100))
    p = make_problem(_data(name=f'"{f}"', samples_per_agent=10, test_samples=20), 3)
    assert p.X_train.shape == (30, 3)
    bad = tmp_path / "bad.npz"
    np.savez(bad, X=np.zeros((3, 2)))
    with pytest.raises(UserError, match="needs arrays X"):
        load_npz_arrays(str(bad))
    with pytest.raises(UserError, match="classes"):
        make_problem(_data(name=f'"{f}"', classes="[0,5]"), 2)
    with pytest.raises(UserError, match="samples_per_agent"):
        make_problem(_data(samples_per_agent=500), 6)


def test_digits_read_from_the_shipped_file_equal_scikit_learns_loader():
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    from agent.data import load_digits_arrays
    X, y = load_digits_arrays()
    bunch = sklearn_datasets.load_digits()
    assert np.array_equal(X, bunch.data / 16.0) and np.array_equal(y, bunch.target)
