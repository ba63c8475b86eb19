"""A spec's swarm -> the NTK forecast of every agent's losses: the results dict that ``p2pntk predict``
writes (the same keys as simulate, kind "predict") and that the tuner calls, plus v_q = J^T c_q on request.
"""
from __future__ import annotations

import time

import numpy as np

from agent.model import ModelConfig, backward, forward_with_cache
from agent.swarm import Swarm
from common.errors import UserError
from predictor.bands import global_band
from predictor.dynamics import (ExactOperator, Flow, KernelProblem, operator_rounds, outputs_on_test,
                                own_outputs)
from agent.algorithms import algorithm_record
from predictor.kernel_operators import JacobianOperator, landmark_operator, traced_operator
from predictor.ntk import DEFAULT_MAX_BYTES, train_test_ntk
from predictor.stability import MAX_SEARCH_STATES, lr_max_all, lr_max_exact

MODES = ("discrete", "flow")
KERNELS = ("auto", "exact", "traced", "landmarks")
EXACT_MAX_OUTPUTS = 2048   # the exact kernel as a matrix, (M k)^2, up to this many outputs M k; as products above
TRACED_MAX_SAMPLES = 4096  # auto: the dense output-traced kernel, M^2, at most up to this many samples
DEFAULT_LANDMARKS = 1024


def choose_kernel(kernel: str, samples: int, outputs: int, mode: str = "discrete", params: int = 0) -> str:
    """How a forecast applies its kernel (docs/forecast-cost.md): "matrix" or "jacobian" (both the exact
    kernel), "traced" or "landmarks". ``kernel`` "exact" is the matrix while M k <= EXACT_MAX_OUTPUTS (and
    always for the flow, which diagonalises it) and Jacobian products above. "auto" is the exact matrix
    while it is small, then whichever of the traced kernel (2 M^2 k a round, while M <= TRACED_MAX_SAMPLES)
    and the exact Jacobian products (about 4 M P a round, P = ``params``) costs less."""
    if kernel not in KERNELS:
        raise UserError(f"--kernel {kernel!r}: expected one of {', '.join(KERNELS)}")
    if mode == "flow" and kernel not in ("auto", "exact"):
        raise UserError(f"--kernel {kernel}: the gradient flow needs the exact kernel; use --kernel exact or auto")
    if mode == "flow" or (kernel in ("auto", "exact") and samples * outputs <= EXACT_MAX_OUTPUTS):
        return "matrix"
    if kernel != "auto":
        return "jacobian" if kernel == "exact" else kernel
    traced_cheaper = 2 * samples * outputs < 4 * params  # 2 M^2 k < 4 M P, divided by M
    return "traced" if samples <= TRACED_MAX_SAMPLES and traced_cheaper else "jacobian"


def small_search(swarm: Swarm, algorithm: str) -> bool:
    """Whether the dense lr_max search of ``algorithm`` (GT's, a non-symmetric W's) surely fits: its
    reachable system has at most N M k states per message array, within MAX_SEARCH_STATES."""
    N, Mk = swarm.n_agents, swarm.problem.Y_train.size
    return N * Mk * len(algorithm_record(algorithm).messages) <= MAX_SEARCH_STATES


def kernel_problem(swarm: Swarm, max_bytes: int = DEFAULT_MAX_BYTES, dtype=np.float64) -> KernelProblem:
    """The empirical NTK at theta_0 on the swarm's data: K, K_test, f0, f0_test, Y, W.

    ``dtype`` is the precision of the kernel computation (float64 by default; float32 halves its cost
    and its rounding, ~1e-7 of K, is far below the linearisation error). The result is float64.
    """
    p, cfg = swarm.problem, swarm.cfg
    K, K_test, f0, f0_test = (a.astype(np.float64, copy=False) for a in train_test_ntk(
        cfg, swarm.theta0, p.X_train, p.X_test, max_bytes=max_bytes, dtype=dtype))
    return KernelProblem(K=K, K_test=K_test, f0=f0, f0_test=f0_test, Y=p.Y_train.astype(np.float64),
                         Y_test=p.Y_test.astype(np.float64), agent_of_sample=p.agent_of_sample, W=swarm.W)


def loss_curves(kp: KernelProblem, own: np.ndarray, test: np.ndarray) -> dict[str, list[list[float]]]:
    """Per-agent train/test loss and accuracy (docs/design.md, section 6) from outputs over time.

    own (R, N, m) and test (R, N, T k) are the outputs of ``discrete_rounds`` or of the flow.
    """
    idx, valid = kp.agent_rows()
    y_own = kp.padded(kp.Y.ravel())[idx]
    n, k = kp.counts, kp.k
    with np.errstate(over="ignore", invalid="ignore"):
        train = np.sum((own - y_own) ** 2 * valid, axis=-1) / (2 * n)
        tst = np.sum((test - kp.Y_test.ravel()) ** 2, axis=-1) / (2 * kp.Y_test.shape[0])
    train_acc = _accuracy(own.reshape(*own.shape[:2], -1, k), y_own.reshape(kp.N, -1, k), valid[:, ::k])
    test_acc = _accuracy(test.reshape(*test.shape[:2], -1, k), kp.Y_test, None)
    return {"train_loss": train.T.tolist(), "train_accuracy": train_acc.T.tolist(),
            "test_loss": tst.T.tolist(), "test_accuracy": test_acc.T.tolist()}


def _accuracy(F: np.ndarray, Y: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
    """``agent.model.accuracy`` vectorised over rounds and agents: F (R, N, n, k) -> (R, N).

    Sign agreement for one output, argmax agreement otherwise; ``valid`` (N, n) masks padding.
    """
    hit = np.sign(F[..., 0]) == np.sign(Y[..., 0]) if F.shape[-1] == 1 else F.argmax(-1) == Y.argmax(-1)
    if valid is None:
        return hit.mean(axis=-1)
    return (hit & valid).sum(axis=-1) / valid.sum(axis=-1)


def _parameters(swarm: Swarm, op, C: np.ndarray) -> np.ndarray:
    """theta_q for every agent from the state C of ``op``'s rounds: (N, P)."""
    if isinstance(op, JacobianOperator):
        return op.parameters(C)
    samples = np.arange(len(swarm.problem.Y_train))
    if not isinstance(op, ExactOperator):
        samples, C = op.coefficients(C)
    return parameters(swarm.cfg, swarm.theta0, swarm.problem.X_train[samples], C)


def parameters(cfg: ModelConfig, theta0: np.ndarray, X_train: np.ndarray, C: np.ndarray) -> np.ndarray:
    """theta_q = theta_0 + v_q with v_q = J^T c_q (the paper's parameter trajectories): C (N, M k) -> (N, P).

    J^T c is the vector-Jacobian product of f at theta_0, so ``agent.model.backward`` computes it.
    """
    theta0 = np.asarray(theta0, dtype=np.float64)
    _, cache, h_last = forward_with_cache(cfg, theta0, X_train)
    return np.stack([theta0 + backward(cfg, theta0, cache, h_last, c.reshape(-1, cfg.k)) for c in C])


def forecast(swarm: Swarm, mode: str = "discrete", *, kp: KernelProblem | None = None,
             keep: tuple[int, ...] = (), max_bytes: int = DEFAULT_MAX_BYTES,
             kernel_dtype: str | None = None, kernel: str = "auto",
             landmarks: int = DEFAULT_LANDMARKS, band: bool = False) -> tuple[dict, dict[int, np.ndarray]]:
    """Forecast the swarm's training with the linearised dynamics; returns (results, kept).

    ``mode`` is "discrete" (the exact rounds) or "flow" (the gradient flow at t = 0, 1, ..., rounds).
    results has simulate's keys (train_loss, test_loss, ... per agent per round), kind "predict",
    mode, lr_max per algorithm (closed forms, and a dense search for this spec's algorithm if it has
    no closed form; with the exact kernel as Jacobian products, this spec's algorithm's alone, since each
    Lanczos step costs a round; ``lr_max_exact`` says where a closed form is only an upper
    bound, see ``predictor.stability.lr_max``) and timings. kept maps each round in ``keep`` to theta (N, P).
    Pass ``kp`` to reuse a kernel problem already computed for the same swarm. ``kernel_dtype`` is the
    precision of the kernel computation, by default the spec's train.dtype: float64 runs are float64
    throughout, and a float32 run's kernel costs half (its rounding, ~1e-7 of K, moves the forecast by
    ~1e-7, far below the linearisation error). The state is float64; the products run in the kernel's
    dtype. ``kernel`` picks the kernel's form (``choose_kernel``): "exact" (the full K, as a matrix or as
    Jacobian products), "traced" (F_out (x) I_k + Theta_h (x) Omega: exact for one output and the affine
    model, an approximation otherwise), "landmarks" (a Nystrom factor on ``landmarks`` samples) or "auto";
    results say which ("kernel", with "kernel_products" for the exact one) and whether it is exact
    ("kernel_exact").
    """
    if mode not in MODES:
        raise UserError(f"mode = {mode!r}: expected one of {', '.join(MODES)}")
    train = swarm.spec.train
    alg, alpha, rounds = train.algorithm, float(train.lr), int(train.rounds)
    if mode == "flow" and train.batch != "full":
        raise UserError(f"train.batch = {train.batch!r}: the gradient flow needs full batches; "
                        "use the discrete forecast or train.batch = \"full\"")
    kernel_dtype = np.dtype(kernel_dtype or train.dtype).name if kp is None else "precomputed"
    p = swarm.problem
    form = "matrix" if kp is not None else choose_kernel(kernel, len(p.Y_train), p.Y_train.shape[1], mode,
                                                          swarm.cfg.num_params)
    t0 = time.perf_counter()
    if form == "matrix":
        kp = kp if kp is not None else kernel_problem(swarm, max_bytes, kernel_dtype)
        op = ExactOperator(kp)
    elif form == "jacobian":
        op = JacobianOperator(swarm, kernel_dtype)
    elif form == "traced":
        op = traced_operator(swarm, max_bytes, kernel_dtype)
    else:
        op = landmark_operator(swarm, landmarks, max_bytes, kernel_dtype, seed=swarm.spec.data.seed)
    t1 = time.perf_counter()
    if mode == "discrete":
        own, test, kept_c = operator_rounds(op, alg, alpha, rounds, batch=train.batch,
                                            seed=swarm.spec.data.seed, keep=keep)
    else:
        C = Flow(kp, alg, alpha).coefficients(np.arange(rounds + 1.0))
        own, test = own_outputs(kp, C), outputs_on_test(kp, C)
        kept_c = {r: C[r] for r in keep if 0 <= r <= rounds}
    curves = loss_curves(op.data, own, test)
    t2 = time.perf_counter()
    # matrix-free (Lanczos on the operator) for every form; a Lanczos step of the Jacobian form costs a
    # round, so there only this spec's algorithm's edge is computed
    only = (alg,) if form == "jacobian" else None
    lr_max = lr_max_all(op, include=(alg,), only=only)
    if lr_max.get(alg) is None and (form == "matrix" or (form == "jacobian" and small_search(swarm, alg))):
        # no closed form (GT, a non-symmetric W): the dense search, which needs the matrix (small here)
        kp = kp if kp is not None else kernel_problem(swarm, max_bytes, kernel_dtype)
        lr_max = lr_max_all(kp, include=(alg,), only=only)
    t3 = time.perf_counter()
    if band:
        curves["train_loss_band"] = global_band(swarm.cfg, swarm.theta0, *p.agent_data(0), alpha, curves["train_loss"],
                                                  np.float64 if kernel_dtype == "precomputed" else kernel_dtype)
    t4 = time.perf_counter()
    kept = {r: _parameters(swarm, op, c) for r, c in kept_c.items()}
    finite = np.isfinite(np.asarray(curves["train_loss"])).all(axis=0) & (np.abs(own).max(axis=(1, 2)) < 1e150)
    exact = form in ("matrix", "jacobian") or (form == "traced" and (swarm.cfg.k == 1 or not swarm.cfg.hidden_layers))
    results = {"kind": "predict", "mode": mode, "kernel_dtype": kernel_dtype,
               "kernel": "exact" if form in ("matrix", "jacobian") else form, "kernel_exact": exact,
               **({"kernel_products": form} if form in ("matrix", "jacobian") else {}),
               **({"landmarks": min(landmarks, len(p.Y_train))} if form == "landmarks" else {}),
               "spec": swarm.spec.to_dict(), **curves,
               "final_test_accuracy": [a[-1] for a in curves["test_accuracy"]],
               "diverged_at_round": None if finite.all() else int(np.argmin(finite)),
               "lr_max": lr_max, "lr_max_exact": lr_max_exact(swarm.W), "stable": None if lr_max[alg] is None else bool(alpha < lr_max[alg]),
               "n_params": swarm.cfg.num_params, "model_hash": swarm.cfg.hash(),
               "timings": {"kernel_s": t1 - t0, "dynamics_s": t2 - t1, "lr_max_s": t3 - t2,
                           **({"band_s": t4 - t3} if band else {}), "total_s": t4 - t0}}
    return results, kept
