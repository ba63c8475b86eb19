"""Local data: the digits, synthetic and .npz sources, class selection, targets and agent splits.

Input scaling: digits pixels (0..16) are divided by 16, so x lies in [0, 1]^64; synthetic inputs are
standard normal; an .npz file's X is used as stored. Targets: two classes give a scalar y in {-1, +1}
(the first listed class is -1); more give one-hot rows. Everything is seeded by ``data.seed``.
A board that reads its data from an .npz needs numpy only; digits are read from the file scikit-learn ships.
"""
from __future__ import annotations

import functools
import importlib.util
import re
from dataclasses import dataclass

from pathlib import Path

import numpy as np

from common.files import read_npz, write_npz
from agent.spec import DataSection
from common.errors import UserError


@dataclass
class Problem:
    """Exactly what a swarm trains on (docs/design.md, section 6 problem file, less theta0 and W)."""

    X_train: np.ndarray        # (M, d)
    Y_train: np.ndarray        # (M, k)
    agent_of_sample: np.ndarray  # (M,) int
    X_test: np.ndarray         # (T, d)
    Y_test: np.ndarray         # (T, k)

    def agent_data(self, q: int) -> tuple[np.ndarray, np.ndarray]:
        idx = np.flatnonzero(self.agent_of_sample == q)
        return self.X_train[idx], self.Y_train[idx]

    @property
    def n_agents(self) -> int:
        return int(self.agent_of_sample.max()) + 1


# Input sizes d of the built-in sources, known without loading them (a board may lack scikit-learn).
FEATURES = {"digits": 64, "synthetic": 16}


def feature_count(data: DataSection) -> int | None:
    """d of the spec's data source: 64 for digits (8x8 pixels), 16 for synthetic, the columns of an
    .npz file's X; None when the .npz is not on this machine (a board keeps only its own data)."""
    if data.name in FEATURES:
        return FEATURES[data.name]
    try:
        with np.load(data.name) as z:
            X = z["X"]
    except Exception:  # numpy raises many types for a bad file; make_problem reports it where it is read
        return None
    return X.shape[1] if X.ndim == 2 else None


@functools.lru_cache(maxsize=1)
def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled 8x8 digits (1797 images), pixels scaled to [0, 1]; read once, read-only.

    The file scikit-learn ships (``sklearn/datasets/data/digits.csv.gz``: 64 pixel columns, then the
    label) is read directly, without importing scikit-learn, which alone took about a second of every
    command; ``sklearn.datasets.load_digits`` is the fallback if the file has moved.
    """
    spec = importlib.util.find_spec("sklearn")
    if spec is None:
        raise UserError("data.name = digits needs scikit-learn: pip install 'p2p-ntk[data]' "
                        "(or give data.name a path to an .npz file)")
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"
    if path.exists():
        table = np.loadtxt(path, delimiter=",")
        X, y = table[:, :-1] / 16.0, table[:, -1].astype(np.int64)
    else:  # pragma: no cover - a scikit-learn that keeps the file elsewhere
        from sklearn.datasets import load_digits
        bunch = load_digits()
        X, y = bunch.data / 16.0, bunch.target.astype(np.int64)
    X.flags.writeable = y.flags.writeable = False
    return X, y


def synthetic_arrays(classes: list[int], n: int, seed: int, d: int = FEATURES["synthetic"], width: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """A teacher network labels standard-normal inputs: y = argmax of a random tanh MLP's outputs."""
    rng = np.random.default_rng([seed, 7919])
    X = rng.standard_normal((n, d))
    W1 = rng.standard_normal((d, width)) / np.sqrt(d)
    W2 = rng.standard_normal((width, len(classes))) / np.sqrt(width)
    logits = np.tanh(X @ W1) @ W2
    logits -= logits.mean(axis=0)  # balance the classes roughly
    return X, np.asarray(classes)[logits.argmax(axis=1)]


def load_npz_arrays(path: str) -> tuple[np.ndarray, np.ndarray]:
    """An .npz with ``X`` (n, d) and integer labels ``y`` (n,)."""
    z = read_npz(path, f"data file {path} (data.name)")
    if "X" not in z or "y" not in z:
        raise UserError(f"data file {path}: needs arrays X (n, d) and y (n,), has {sorted(z)}")
    X, y = z["X"], z["y"]
    if X.ndim != 2 or y.shape != (X.shape[0],):
        raise UserError(f"data file {path}: X must be (n, d) and y (n,), got {X.shape} and {y.shape}")
    if not np.issubdtype(X.dtype, np.number) or not np.all(np.isfinite(X)):
        raise UserError(f"data file {path}: X must be finite numbers")
    if not np.issubdtype(y.dtype, np.integer):
        if np.issubdtype(y.dtype, np.floating) and np.all(y == np.round(y)):
            y = y.astype(np.int64)
        else:
            raise UserError(f"data file {path}: y must hold integer class labels, got dtype {y.dtype}")
    return X.astype(np.float64), y.astype(np.int64)


def targets(labels: np.ndarray, classes: list[int]) -> np.ndarray:
    """(n, k) targets: +-1 column for two classes (classes[0] -> -1), one-hot for more."""
    index = {c: i for i, c in enumerate(classes)}
    pos = np.array([index[int(c)] for c in labels])
    if len(classes) == 2:
        return (2.0 * pos - 1.0)[:, None]
    Y = np.zeros((len(labels), len(classes)))
    Y[np.arange(len(labels)), pos] = 1.0
    return Y


def split_indices(labels: np.ndarray, n_agents: int, per_agent: int, split: str,
                  rng: np.random.Generator) -> list[np.ndarray]:
    """Indices into ``labels`` for each agent, ``per_agent`` each, no sample used twice.

    iid: a random shuffle. by-label: the pool sorted by label and cut into contiguous shards
    (non-IID: each agent sees one or two classes). dirichlet:ALPHA: each agent's class mix is
    drawn from Dirichlet(ALPHA); a class that runs out is topped up from the others.
    """
    need = n_agents * per_agent
    if need > len(labels):
        raise UserError(f"data: {n_agents} agents x {per_agent} samples_per_agent = {need} samples, "
                        f"but only {len(labels)} remain after the test set; lower data.samples_per_agent or data.test_samples")
    order = rng.permutation(len(labels))
    if split == "iid":
        return [order[q * per_agent:(q + 1) * per_agent] for q in range(n_agents)]
    if split == "by-label":
        # sort by label, thin evenly so every class is used, then cut contiguous shards
        order = order[np.argsort(labels[order], kind="stable")]
        order = order[np.linspace(0, len(order) - 1, need).round().astype(np.int64)]
        return [order[q * per_agent:(q + 1) * per_agent] for q in range(n_agents)]
    alpha = float(re.fullmatch(r"dirichlet:(.+)", split).group(1))
    classes = np.unique(labels)
    pools = {c: [i for i in order if labels[i] == c] for c in classes}
    out = []
    for _ in range(n_agents):
        counts = rng.multinomial(per_agent, rng.dirichlet(np.full(len(classes), alpha)))
        take: list[int] = []
        for c, m in zip(classes, counts):
            take += pools[c][:m]
            pools[c] = pools[c][m:]
        for c in classes:  # top up from whatever is left, largest pools first
            short = per_agent - len(take)
            if short <= 0:
                break
            take += pools[c][:short]
            pools[c] = pools[c][short:]
        out.append(np.array(take[:per_agent], dtype=np.int64))
    return out


def make_problem(data: DataSection, n_agents: int) -> Problem:
    """The training and test sets for a spec's [data] section and network.agents agents."""
    classes = data.classes
    per_agent, n_test = data.samples_per_agent, data.test_samples
    rng = np.random.default_rng(data.seed)
    name = data.name
    if name == "digits":
        X, y = load_digits_arrays()
    elif name == "synthetic":
        X, y = synthetic_arrays(classes, n_agents * per_agent + n_test, data.seed)
    else:
        X, y = load_npz_arrays(name)
    present = set(np.unique(y).tolist())
    missing = [c for c in classes if c not in present]
    if missing:
        raise UserError(f"data.classes = {classes}: classes {missing} do not occur in {name}")
    keep = np.flatnonzero(np.isin(y, classes))
    X, y = X[keep], y[keep]
    if n_test >= len(y):
        raise UserError(f"data.test_samples = {n_test}: only {len(y)} samples of classes {classes} in {name}")
    order = rng.permutation(len(y))
    test, pool = order[:n_test], order[n_test:]
    shards = split_indices(y[pool], n_agents, per_agent, data.split, rng)
    train_idx = np.concatenate([pool[s] for s in shards])
    agent_of = np.concatenate([np.full(len(s), q) for q, s in enumerate(shards)])
    return Problem(X_train=X[train_idx], Y_train=targets(y[train_idx], classes),
                   agent_of_sample=agent_of.astype(np.int64),
                   X_test=X[test], Y_test=targets(y[test], classes))


def save_problem(path, problem: Problem, theta0: np.ndarray, W: np.ndarray) -> None:
    """The problem file of docs/design.md, section 6: exactly what was trained on, for independent checks."""
    write_npz(path, X_train=problem.X_train, Y_train=problem.Y_train,
              agent_of_sample=problem.agent_of_sample, X_test=problem.X_test, Y_test=problem.Y_test,
              theta0=theta0, W=W)
