"""One device's learner as an OS process: handshake, synchronous gossip rounds, logs, checkpoints.

``run_node(node)`` loads the local data, draws theta_0 from the shared seed, handshakes with its
neighbours over ZeroMQ (coordinator_free.transport), builds its own Metropolis row from their
degrees and runs the DGD/ATC/CTA rules of agent.algorithms, one JSON log line per round.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from agent.algorithms import combine, finish, outgoing
from agent.device import DeviceHooks
from agent.kernels import make_kernels
from agent.local import LocalLearner, model_config
from agent.model import init_params
from agent.node import NodeConfig, load_local_data
from coordinator_free.common.files import write_json, write_npz
from coordinator_free.spec import spec_hash
from coordinator_free.topology import live_row, mixing_row
from coordinator_free.transport import Transport
from firmware_profiles.apply import HEADER_BYTES

log = logging.getLogger("p2pntk.agent")


class RoundLog:
    """Appends one JSON line per round and flushes it, so a crash loses at most one line."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.fh = open(path, "w", buffering=1)  # noqa: SIM115 - closed by __exit__

    def write(self, record: dict) -> None:
        self.fh.write(json.dumps(record) + "\n")

    def __enter__(self) -> "RoundLog":
        return self

    def __exit__(self, *exc) -> None:
        self.fh.close()


def run_node(node: NodeConfig) -> dict:
    """Run this device's learner to the end; return (and write) its results.

    With a profile (node file ``profile``), the profile's threads and kernels apply, a model that
    does not fit its memory budget is refused before any socket opens, and ``emulate = true``
    shapes sends and pads steps like the board (agent.device).
    """
    spec = node.spec
    train = spec["train"]
    dtype = np.dtype(train["dtype"])
    X, Y = load_local_data(node.data, spec["data"]["classes"])
    X_test, Y_test = load_local_data(node.test, spec["data"]["classes"], "test") if node.test else (None, None)
    cfg = model_config(spec["model"], X.shape[1], Y.shape[1])
    hooks = DeviceHooks.for_node(node, cfg, len(X))
    kernel_name = hooks.kernels if hooks else train["kernels"]  # a device's profile picks its own kernels
    settings = hooks.kernel_settings if hooks and kernel_name == "onnx" else {}
    kernels = make_kernels(kernel_name, cfg, dtype, **settings)
    learner = LocalLearner(node.id, kernels, X, Y, X_test, Y_test, batch=train["batch"], seed=spec["data"]["seed"])
    theta = init_params(cfg, dtype)
    peers, discovery = node.peers, None
    if node.discovery == "zeroconf":  # the static table, if any, is ignored
        from coordinator_free.discovery import Discovery
        discovery = Discovery(node.id, node.bind, network=spec["network"], model_hash=cfg.hash(),
                              spec_hash=spec_hash(spec))
    try:
        if discovery:
            peers = discovery.find_peers(node.handshake_timeout)
            log.info("node %d: discovered peers %s", node.id, peers)
        return _train(node, learner, theta, cfg, peers, hooks)
    finally:
        if discovery:
            discovery.close()


def _train(node: NodeConfig, learner: LocalLearner, theta: np.ndarray, cfg, peers: dict[int, str], hooks) -> dict:
    """Handshake, the synchronous rounds, the final BYE and results."""
    spec, train = node.spec, node.spec["train"]
    alpha, algorithm, rounds = float(train["lr"]), train["algorithm"], train["rounds"]
    t_start = time.perf_counter()
    history: dict[str, list] = {}
    with RoundLog(node.log) as roundlog, Transport(node.id, node.bind, peers, model_hash=cfg.hash(), spec_hash=spec_hash(spec),
                   algorithm=algorithm, dtype=theta.dtype.name, shape=(cfg.num_params,), logger=log) as transport:
        hellos = transport.handshake(len(peers), node.handshake_timeout)
        base_row = mixing_row(spec["network"]["weights"], len(peers),
                              {pid: int(h["degree"]) for pid, h in hellos.items()}, node.id,
                              spec["network"]["agents"])
        log.info("node %d: handshake done with %s; row %s", node.id, sorted(hellos), base_row)
        stats = {"bytes_sent": 0, "bytes_received": 0, "round_s": 0.0, "wait_s": 0.0, "step_s": 0.0, "exchange_s": 0.0}
        for k in range(rounds + 1):
            record = {"round": k, **learner.evaluate(theta), **stats,
                      "live": sorted(transport.live), "suspected": sorted(transport.suspected)}
            roundlog.write(record)
            for key in ("train_loss", "test_loss", "test_accuracy"):
                if key in record:
                    history.setdefault(key, []).append(record[key])
            if k == rounds:
                break
            t_round = time.perf_counter()
            sent0, recv0, wait0 = transport.bytes_sent, transport.bytes_received, transport.wait_seconds
            g = None if algorithm == "cta" else learner.grad(theta, k)
            message = outgoing(algorithm, theta, lambda: g, alpha)
            step_s = time.perf_counter() - t_round
            if hooks:
                for _ in transport.live:  # one uplink: the board sends its messages one after another
                    hooks.before_send(message.nbytes + HEADER_BYTES)
            t_x = time.perf_counter()
            # copy=False: the rules never write into a sent array (they return new ones), so zero-copy is safe
            received = transport.exchange(k, message, node.round_deadline, copy=False)
            exchange_s = time.perf_counter() - t_x
            row = live_row(base_row, set(received), node.id)
            ids = [node.id, *sorted(received)]
            stacked = np.stack([message] + [received[r] for r in ids[1:]])
            mixed = combine(np.array([row[r] for r in ids]), stacked)
            t_fin = time.perf_counter()
            theta = finish(algorithm, theta, mixed, lambda t: learner.grad(t, k), alpha, grad_theta=g)
            step_s += time.perf_counter() - t_fin
            if hooks:
                hooks.after_step(step_s)
            stats = {"bytes_sent": transport.bytes_sent - sent0, "bytes_received": transport.bytes_received - recv0,
                     "round_s": time.perf_counter() - t_round, "wait_s": transport.wait_seconds - wait0,
                     "step_s": step_s, "exchange_s": exchange_s}
            if node.checkpoint and node.checkpoint_every and (k + 1) % node.checkpoint_every == 0:
                write_npz(node.checkpoint, theta=theta, round=np.array(k + 1), model_hash=np.array(cfg.hash()))
        transport.bye()
        results = {"kind": "agent", "id": node.id, **history,
                   "bytes_sent": transport.bytes_sent, "bytes_received": transport.bytes_received,
                   "wait_s": transport.wait_seconds, "wall_s": time.perf_counter() - t_start,
                   "suspected": sorted(transport.suspected), "dropped": dict(transport.drop_counts),
                   "model_hash": cfg.hash(), "n_params": cfg.num_params, "neighbours": sorted(peers)}
        if hooks:
            results["profile"] = {"name": hooks.profile.name, "emulated": hooks.emulate,
                                  "estimated_round_s": hooks.estimate["total_s"]}
    if node.checkpoint and not (node.checkpoint_every and rounds % node.checkpoint_every == 0 and rounds):
        write_npz(node.checkpoint, theta=theta, round=np.array(rounds), model_hash=np.array(cfg.hash()))
    write_json(node.out, results)
    return results
