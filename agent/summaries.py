"""A board's data summary for the others' forecasts (docs/predictor.md, "Summaries"): aggregate pseudo-samples.

With J_r (n k, P) the Jacobian of f on board r's data at theta_0 and U (n k, m) orthonormal columns, the rows
S = U^T J_r and targets b = U^T vec(Y - f0) give r's least-squares gradient exactly on span(U):
J_r^T (J_r v + f0 - Y) = S^T (S v - b) when m = n k. Each row J_r^T u is an aggregate over the samples that
u mixes (at least MIN_MIX of them), never one sample's gradient. Arrays in, arrays out; files at the edges.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from agent.model import ModelConfig, backward, forward_with_cache
from common.errors import UserError
from common.files import read_npz, write_npz

KINDS = ("eigen", "class-eigen", "class-mean")
MIN_MIX = 10        # every shared row mixes at least this many samples (participation ratio of u)
FORMAT = 1          # version of the .npz layout below


@dataclass(frozen=True)
class Summary:
    """What board ``board`` shares: rows (m, P) = U^T J, targets (m,) = U^T vec(Y - f0), each row's label
    (c k + j: class c's indicator on output j; -1: an eigen-direction; see ``basis``), its n samples and
    per-class counts, and two scalars for the unshared remainder: rest_trace = tr(K) - tr(S S^T) and
    rest_energy = ||vec(Y - f0)||^2 - ||b||^2. ``model_hash`` ties the rows to one theta_0."""

    board: int
    kind: str
    rows: np.ndarray
    targets: np.ndarray
    row_label: np.ndarray
    n: int
    k: int
    class_counts: np.ndarray
    rest_trace: float
    rest_energy: float
    model_hash: str = ""
    meta: dict = field(default_factory=dict)

    @property
    def m(self) -> int:
        return len(self.targets)

    @property
    def nbytes(self) -> int:
        """Bytes of its arrays (rows, targets, class counts) in float64; float32 rows halve it."""
        return int(self.rows.nbytes + self.targets.nbytes + self.row_label.nbytes + self.class_counts.nbytes + 16)


def jacobian(cfg: ModelConfig, theta: np.ndarray, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(J, f0): J (n k, P) with row i*k + j = d f_j(x_i) / d theta, one vector-Jacobian product of
    ``agent.model.backward`` per output, and f0 = f(X; theta) (n, k)."""
    theta = np.asarray(theta, np.float64)
    f0, cache, h_last = forward_with_cache(cfg, theta, np.asarray(X, np.float64))
    J = np.empty((len(X) * cfg.k, cfg.num_params))
    for i in range(len(X)):
        c = [(h[i:i + 1], z[i:i + 1]) for h, z in cache]
        for j in range(cfg.k):
            e = np.zeros((1, cfg.k))
            e[0, j] = 1.0
            J[i * cfg.k + j] = backward(cfg, theta, c, h_last[i:i + 1], e)
    return J, f0


def vjp(cfg: ModelConfig, theta: np.ndarray, X: np.ndarray, U: np.ndarray) -> np.ndarray:
    """J^T U for the columns of U (n k, m): (m, P), each the backward pass of sum(U_col * f(X))."""
    theta = np.asarray(theta, np.float64)
    _, cache, h_last = forward_with_cache(cfg, theta, np.asarray(X, np.float64))
    return np.stack([backward(cfg, theta, cache, h_last, u.reshape(len(X), cfg.k)) for u in U.T])


def participation(U: np.ndarray, k: int) -> np.ndarray:
    """How many samples each unit column of U (n k, m) mixes: 1 / sum_i w_i^2, w_i = sum_j U[(i, j)]^2."""
    w = (U.reshape(-1, k, U.shape[1]) ** 2).sum(axis=1)
    return 1.0 / np.maximum((w ** 2).sum(axis=0), 1e-300)


def class_labels(Y: np.ndarray) -> np.ndarray:
    """Class index per sample: sign of a scalar target (0 for -1, 1 for +1), argmax of a one-hot row."""
    return (Y[:, 0] > 0).astype(np.int64) if Y.shape[1] == 1 else Y.argmax(axis=1)


def basis(kind: str, J: np.ndarray, Y: np.ndarray, m: int, min_mix: int = MIN_MIX,
          max_rows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(U, labels): the orthonormal U (n k, m') a summary shares and each column's label, c k + j for the
    indicator of class c on output j, -1 for an eigen-direction.

    class-mean: per class c with at least ``min_mix`` samples and per output j, the indicator of c's samples
    on output j over sqrt(n_c), so that the row is sqrt(n_c) times the class-mean gradient of output j
    (``m`` is not used; a smaller class is left out, and only its count is shared). eigen: the top m
    eigenvectors of K = J J^T that mix at least ``min_mix`` samples each. class-eigen: the class rows, then
    the top eigenvectors of K with every class indicator projected out. Rows never exceed
    ``max_rows`` (default n k // min_mix, so that they cannot span the board's per-sample gradients).
    """
    n, k = Y.shape
    cap = n * k // max(min_mix, 1) if max_rows is None else max_rows
    if kind not in KINDS:
        raise UserError(f"summary kind {kind!r}: expected one of {', '.join(KINDS)}")
    if kind == "eigen":
        U = _top_eigen(J @ J.T, k, min(m, cap), min_mix)
        return U, np.full(U.shape[1], -1)
    labels = class_labels(Y)
    cols, tags, every = [], [], []
    for c in np.unique(labels):
        g = np.flatnonzero(labels == c)
        for j in range(k):
            u = np.zeros(n * k)
            u[g * k + j] = 1.0 / np.sqrt(len(g))
            every.append(u)
            if len(g) >= min_mix:
                cols.append(u), tags.append(c * k + j)
    C = np.stack(cols, axis=1)[:, :cap] if cols else np.zeros((n * k, 0))
    tags = tags[:C.shape[1]]
    if kind == "class-mean":
        return C, np.array(tags, dtype=np.int64)
    A = np.stack(every, axis=1)
    P = np.eye(n * k) - A @ A.T
    E = _top_eigen(P @ (J @ J.T) @ P, k, min(max(m, C.shape[1]), cap) - C.shape[1], min_mix)
    return np.concatenate([C, E], axis=1), np.array(tags + [-1] * E.shape[1], dtype=np.int64)


def _top_eigen(K: np.ndarray, k: int, m: int, min_mix: int) -> np.ndarray:
    """The top m eigenvectors of K (nonzero eigenvalues) that mix at least ``min_mix`` samples each."""
    if m <= 0:
        return np.zeros((len(K), 0))
    lam, V = np.linalg.eigh(K)
    V = V[:, ::-1][:, lam[::-1] > 1e-12 * max(lam[-1], 1e-300)]
    return V[:, participation(V, k) >= min_mix][:, :m]


def summarise(cfg: ModelConfig, theta0: np.ndarray, X: np.ndarray, Y: np.ndarray, board: int, *,
              kind: str = "class-eigen", m: int = 3, min_mix: int = MIN_MIX, max_rows: int | None = None) -> Summary:
    """Board ``board``'s summary of its data (X, Y) at theta_0 (see ``basis`` for ``kind``, ``m``, ``min_mix``).

    Examples
    --------
    >>> s = summarise(cfg, init_params(cfg, np.float64), X, Y, board=3)
    >>> save_summary("runs/summary3.npz", s)
    """
    Y = np.asarray(Y, np.float64)
    if len(X) < min_mix:
        raise UserError(f"board {board} has {len(X)} samples: a summary needs at least {min_mix}")
    J, f0 = jacobian(cfg, theta0, X)
    U, labels = basis(kind, J, Y, m, min_mix, max_rows)
    rows = U.T @ J                                # = vjp(cfg, theta0, X, U): J^T u per column
    res = (Y - f0).ravel()
    targets = U.T @ res
    counts = np.bincount(class_labels(Y), minlength=2 if Y.shape[1] == 1 else Y.shape[1])
    return Summary(board=int(board), kind=kind, rows=rows, targets=targets, row_label=labels, n=len(X), k=Y.shape[1],
                   class_counts=counts, rest_trace=float(np.einsum("ij,ij->", J, J) - np.einsum("ij,ij->", rows, rows)),
                   rest_energy=float(res @ res - targets @ targets), model_hash=cfg.hash(),
                   meta={"min_mix": int(min_mix)})


def save_summary(path: str | Path, s: Summary) -> Path:
    """Write ``s`` as .npz: arrays only (no Python objects), metadata as small integer/float/string arrays."""
    return write_npz(path, format=np.array(FORMAT), board=np.array(s.board), kind=np.array(s.kind),
                     rows=s.rows, targets=s.targets, row_label=s.row_label, n=np.array(s.n), k=np.array(s.k),
                     class_counts=s.class_counts, rest_trace=np.array(s.rest_trace),
                     rest_energy=np.array(s.rest_energy), model_hash=np.array(s.model_hash),
                     min_mix=np.array(s.meta.get("min_mix", MIN_MIX)))


def load_summary(path: str | Path, num_params: int | None = None, model_hash: str | None = None) -> Summary:
    """Read a summary file; every problem is one UserError naming the file. ``num_params`` and ``model_hash``,
    if given, must match this board's model."""
    what = f"summary file {path}"
    return checked(read_npz(path, what, ("format", "board", "kind", "rows", "targets", "row_label", "n", "k",
                                         "class_counts", "rest_trace", "rest_energy", "model_hash")),
                   what, num_params, model_hash)


def checked(a, what: str, num_params: int | None = None, model_hash: str | None = None) -> Summary:
    """A Summary from its arrays by name (an .npz's, or a share message's, see ``from_share``); every problem
    is one UserError starting with ``what``."""

    def scalar(name: str, kinds: str):
        v = a[name]
        if v.shape != () or v.dtype.kind not in kinds:
            raise UserError(f"{what}: {name} must be a scalar ({'integer' if kinds == 'iu' else 'number'}), "
                            f"got dtype {v.dtype} shape {v.shape}")
        return v.item()
    if scalar("format", "iu") != FORMAT:
        raise UserError(f"{what}: format {a['format'].item()}, this version reads format {FORMAT}")
    kind, digest = (str(a[x]) if a[x].shape == () and a[x].dtype.kind == "U" else None for x in ("kind", "model_hash"))
    if kind not in KINDS:
        raise UserError(f"{what}: kind {kind!r}, expected one of {', '.join(KINDS)}")
    if digest is None:
        raise UserError(f"{what}: model_hash must be a string")
    board, n, k = scalar("board", "iu"), scalar("n", "iu"), scalar("k", "iu")
    rows, targets, counts = a["rows"], a["targets"], a["class_counts"]
    if rows.ndim != 2 or rows.dtype.kind != "f" or not np.all(np.isfinite(rows)):
        raise UserError(f"{what}: rows must be a finite float array (m, P), got dtype {rows.dtype} shape {rows.shape}")
    if targets.shape != (rows.shape[0],) or targets.dtype.kind != "f" or not np.all(np.isfinite(targets)):
        raise UserError(f"{what}: targets must be finite floats of shape ({rows.shape[0]},), got {targets.shape}")
    labels = a["row_label"]
    if labels.shape != targets.shape or labels.dtype.kind not in "iu" or np.any(labels < -1):
        raise UserError(f"{what}: row_label must be integers >= -1 of shape {targets.shape}, got {labels.shape}")
    if board < 0 or k < 1 or n * k < rows.shape[0]:
        raise UserError(f"{what}: board {board}, n {n}, k {k} with {rows.shape[0]} rows: need board >= 0, k >= 1, "
                        "n >= rows")
    if counts.ndim != 1 or counts.dtype.kind not in "iu" or counts.sum() != n:
        raise UserError(f"{what}: class_counts must be integers summing to n = {n}")
    if num_params is not None and rows.shape[1] != num_params:
        raise UserError(f"{what}: rows have {rows.shape[1]} parameters, this model has {num_params}")
    if model_hash is not None and digest != model_hash:
        raise UserError(f"{what}: model hash {digest!r}, ours is {model_hash!r} (another model or theta_0)")
    return Summary(board=int(board), kind=kind, rows=rows.astype(np.float64), targets=targets.astype(np.float64),
                   row_label=labels.astype(np.int64),
                   n=int(n), k=int(k), class_counts=counts.astype(np.int64),
                   rest_trace=float(scalar("rest_trace", "fiu")), rest_energy=float(scalar("rest_energy", "fiu")),
                   model_hash=digest, meta={"min_mix": int(scalar("min_mix", "iu")) if "min_mix" in a else MIN_MIX})


def to_share(s: Summary, dtype=np.float32) -> tuple[dict, tuple[np.ndarray, ...]]:
    """``s`` as a share message's content (coordinator_free.transport.flood): meta, a flat dict of small values,
    and one array frame per row, [row, target, label] (P + 2 numbers, wire.SHARE_EXTRA)."""
    meta = {"kind": s.kind, "n": int(s.n), "k": int(s.k), "class_counts": [int(c) for c in s.class_counts],
            "rest_trace": float(s.rest_trace), "rest_energy": float(s.rest_energy), "format": FORMAT,
            "min_mix": int(s.meta.get("min_mix", MIN_MIX))}
    packed = np.concatenate([s.rows, s.targets[:, None], s.row_label[:, None]], axis=1).astype(dtype)
    return meta, tuple(packed)


def from_share(origin: int, meta: dict, rows: tuple[np.ndarray, ...], model_hash: str, num_params: int) -> Summary:
    """The Summary in a share that came over the wire (``to_share``'s inverse); a malformed one is a UserError."""
    what = f"the summary of board {origin} (received)"
    packed = np.stack([np.asarray(r, np.float64) for r in rows])
    try:
        a = {"format": np.array(meta["format"]), "board": np.array(origin), "kind": np.array(str(meta["kind"])),
             "rows": packed[:, :-2], "targets": packed[:, -2], "row_label": packed[:, -1].astype(np.int64),
             "n": np.array(meta["n"]), "k": np.array(meta["k"]), "class_counts": np.array(meta["class_counts"]),
             "rest_trace": np.array(meta["rest_trace"]), "rest_energy": np.array(meta["rest_energy"]),
             "model_hash": np.array(model_hash), "min_mix": np.array(meta["min_mix"])}
    except KeyError as e:
        raise UserError(f"{what}: its meta has no {e.args[0]!r}") from None
    if not np.array_equal(a["row_label"], packed[:, -1]):
        raise UserError(f"{what}: row labels must be integers")
    return checked(a, what, num_params, model_hash)


def load_summaries(paths: list[str | Path], num_params: int | None = None, model_hash: str | None = None
                   ) -> dict[int, Summary]:
    """{board: Summary} from files and directories (every ``*.npz`` in a directory); a board twice is an error."""
    files: list[Path] = []
    for p in map(Path, paths):
        files += sorted(p.glob("*.npz")) if p.is_dir() else [p]
    out: dict[int, Summary] = {}
    for f in files:
        s = load_summary(f, num_params, model_hash)
        if s.board in out:
            raise UserError(f"summary file {f}: board {s.board} already has a summary from another file")
        out[s.board] = s
    return out
