"""One device's learner as an OS process: set-up, handshake, the round loop, logs, checkpoints.

``run_node(node)`` loads the local data, draws theta_0 from the shared seed, handshakes with its
neighbours over ZeroMQ (coordinator_free.transport), builds its own mixing row from their degrees
and runs ``agent.rounds.run_rounds`` with the transport as its gossip. Each job is one small piece:
``RoundLog`` (agent.roundlog) writes the per-round JSON lines, ``Recorder`` turns rounds into the log, the history,
checkpoints, progress lines (agent.report) and emulated compute time, and ``run_node`` wires them
together. The final parameters are always kept, beside the results (``params_path``).
"""
from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path

import networkx as nx
import numpy as np

from agent.algorithms import ALGORITHMS, Arrays
from agent.device import DeviceHooks, workload
from agent.kernels import make_kernels
from agent.local import LocalLearner, model_config
from agent.model import ModelConfig, init_params
from agent.node import NodeConfig, link_security, local_data
from agent.report import Report
from agent.roundlog import HISTORY_KEYS, RoundLog, history_from_log
from agent.rounds import RoundTimes, run_rounds
from agent.spec import Spec, spec_hash, spec_key_hashes
from agent.summaries import Summary, from_share, to_share
from common.errors import Diverged, Terminated, UserError, signals_deferred
from common.files import check_writable, read_npz, write_json, write_npz
from coordinator_free.gossip import BoardTransport, transports
from coordinator_free.topology import build_graph, mixing_row
from firmware_profiles.apply import check_host_fits, estimate_memory

log = logging.getLogger("p2pntk.agent")


class Recorder:
    """``on_round`` of the round loop for a device: log line, progress, history, checkpoint, emulated compute."""

    def __init__(self, node: NodeConfig, learner: LocalLearner, cfg: ModelConfig, transport: BoardTransport,
                 roundlog: RoundLog, hooks: DeviceHooks | None, report: Report) -> None:
        self.node, self.learner, self.cfg, self.transport = node, learner, cfg, transport
        self.roundlog, self.hooks, self.report = roundlog, hooks, report
        self.history: dict[str, list] = {}
        self.theta: np.ndarray | None = None  # the last finite parameters
        self.state: Arrays = ()
        self.round = -1
        self._counters = (transport.bytes_sent, transport.bytes_received, transport.wait_seconds)
        self._checkpointed = -1

    def __call__(self, k: int, state: Arrays, times: RoundTimes) -> None:
        if not np.all(np.isfinite(state[0])):
            raise Diverged(f"node {self.node.id}: parameters became non-finite at round {k}; lower train.lr "
                           "(p2pntk stability SPEC gives lr_max)")
        padded = time.perf_counter()
        if self.hooks and k > 0:
            self.hooks.after_step(times.step_s)
        padded = time.perf_counter() - padded
        t = self.transport
        sent, received, waited = t.bytes_sent, t.bytes_received, t.wait_seconds
        record = {"round": k, **self.learner.evaluate(state[0]),
                  "bytes_sent": sent - self._counters[0], "bytes_received": received - self._counters[1],
                  "round_s": times.step_s + times.exchange_s + padded, "wait_s": waited - self._counters[2],
                  "step_s": times.step_s, "exchange_s": times.exchange_s,
                  "live": sorted(t.live), "suspected": sorted(t.suspected)}
        self._counters = (sent, received, waited)
        self.roundlog.write(record)
        self.report.on_round(record)
        for key in HISTORY_KEYS:
            if key in record:
                self.history.setdefault(key, []).append(record[key])
        self.theta, self.state, self.round = state[0], state, k
        every = self.node.checkpoint_every
        if every and k > 0 and k % every == 0:
            self.checkpoint(k)

    def checkpoint(self, k: int) -> None:
        """theta, the whole algorithm state (GT's tracker too), the round and the model hash: what resume needs."""
        if self.node.checkpoint and k != self._checkpointed:
            train = self.node.spec.train  # the values the swarm agreed on: a resumed agent keeps them
            self.save(self.node.checkpoint, state=np.stack(self.state), lr=np.array(float(train.lr)),
                      rounds=np.array(train.rounds))
            self._checkpointed = k

    def save(self, path: Path, **more: np.ndarray) -> None:
        """The last finite parameters ``theta`` (P,), their ``round``, ``model_hash`` and ``algorithm``
        (what ``p2pntk export-onnx --params`` reads), and ``more``."""
        write_npz(path, theta=self.theta, round=np.array(self.round), model_hash=np.array(self.cfg.hash()),
                  algorithm=np.array(self.node.spec.train.algorithm), **more)


def params_path(out: Path) -> Path:
    """Where the final parameters are kept: beside the results, ``agent0.json`` -> ``agent0.params.npz``."""
    return Path(out).with_suffix(".params.npz")


def run_node(node: NodeConfig, report: Report | None = None) -> dict:
    """Run this device's learner to the end; return (and write) its results and final parameters.

    With a profile (node file ``profile``), the profile's threads and kernels apply, a model that
    does not fit its memory budget is refused before any socket opens, and ``emulate = true``
    shapes sends and pads steps like the board (agent.device). ``report`` prints progress and the
    summary (default: nothing).
    """
    spec = node.spec
    train = spec.train
    dtype = np.dtype(train.dtype)
    for key in ("out", "log", "checkpoint"):  # refused now, not at round 10 or after the last round
        check_writable(getattr(node, key), f"node file {node.source}: {key} =")
    check_writable(params_path(node.out), f"node file {node.source}: out = {node.out}: its parameters file")
    X, Y, X_test, Y_test = local_data(node)
    cfg = model_config(spec.model, X.shape[1], Y.shape[1])
    hooks = DeviceHooks.for_node(node, cfg, len(X))
    check_host_fits(estimate_memory(None, **workload(cfg, spec, len(X), len(node.peers)))["total"],
                    f"node {node.id}: model.width = {spec.model.width} (P = {cfg.num_params:,} parameters)")
    kernel_name = hooks.kernels if hooks else train.kernels  # a device's profile picks its own kernels
    settings = hooks.kernel_settings if hooks and kernel_name == "onnx" else {}
    kernels = make_kernels(kernel_name, cfg, dtype, **settings)
    learner = LocalLearner(node.id, kernels, X, Y, X_test, Y_test, batch=train.batch, seed=spec.data.seed)
    with found_peers(node, cfg) as peers:
        return _train(node, learner, init_params(cfg, dtype), cfg, peers, hooks,
                      report or Report(node.id, train.rounds, enabled=False))


@contextlib.contextmanager
def found_peers(node: NodeConfig, cfg: ModelConfig):
    """The node's neighbours, id -> address: its static table, or with ``discovery = "zeroconf"`` the ones found
    on the network (the table, if any, is ignored); the advertisement lasts until the block ends."""
    if node.discovery != "zeroconf":
        yield node.peers
        return
    from coordinator_free.discovery import Discovery
    discovery = Discovery(node.id, node.bind, network=node.spec.network, model_hash=cfg.hash(),
                          spec_hash=spec_hash(node.spec), advertise=node.advertise)
    try:
        peers = discovery.find_peers(node.handshake_timeout)
        log.info("node %d: discovered peers %s", node.id, peers)
        yield peers
    finally:
        discovery.close()


def share_summaries(node: NodeConfig, summary: Summary, timeout: float | None = None) -> dict[int, Summary]:
    """Every board's data summary, ours included: one handshake over the node's own (authenticated) links, then
    ``Transport.flood`` relays each board's summary through the graph (docs/design.md, 7. Sharing summaries).
    Run by ``p2pntk summarise --exchange`` on every board at about the same time, before tuning. Boards whose
    summary did not arrive within ``timeout`` (default: the handshake timeout) are left out, logged."""
    spec = node.spec
    X, Y, _, _ = local_data(node)
    cfg = model_config(spec.model, X.shape[1], Y.shape[1])
    dtype = np.dtype(spec.train.dtype)
    alg = ALGORITHMS[spec.train.algorithm]
    with found_peers(node, cfg) as peers, transports()[node.transport](
            node.id, node.bind, peers, model_hash=cfg.hash(), spec_hash=spec_hash(spec), algorithm=alg.name,
            dtype=dtype.name, shape=(cfg.num_params,), arrays=len(alg.messages), deadline=node.round_deadline,
            curve=link_security(node, peers), logger=log) as transport:
        transport.share_origins = spec.network.agents  # from now on: a neighbour may start flooding first
        transport.handshake(len(peers), node.start_timeout, extra={"spec_keys": spec_key_hashes(spec)},
                            warn_after=node.handshake_timeout)
        meta, rows = to_share(summary, dtype)
        got = transport.flood(meta, rows, spec.network.agents, timeout or node.handshake_timeout)
    out = {}
    for origin, (m, r) in sorted(got.items()):
        try:
            out[origin] = summary if origin == node.id else from_share(origin, m, r, cfg.hash(), cfg.num_params)
        except UserError as err:  # one bad summary costs only itself: that board falls back to the replicas
            log.warning("node %d: %s; left out", node.id, err)
    return out


def degrees(peers: dict[int, str], hellos: dict[int, dict], spec: Spec) -> dict[int, int]:
    """Each neighbour's degree, for our row of W: from its HELLO, or, for one not up when we started (the
    swarm was running), from the spec's graph, which the HELLO would have matched."""
    graph = None
    out = {}
    for pid in peers:
        if pid in hellos:
            out[pid] = int(hellos[pid]["degree"])
        else:
            graph = graph or build_graph(spec.network.topology, spec.network.agents, spec.network.seed)
            out[pid] = graph.degree(pid)
    return out


def resume_point(node: NodeConfig, cfg: ModelConfig, dtype: np.dtype) -> tuple[int, Arrays | None]:
    """(round, state) from the node's checkpoint if it has one for this model and algorithm, else (0, None)."""
    if not node.checkpoint or not Path(node.checkpoint).exists():
        return 0, None
    z = read_npz(node.checkpoint, f"checkpoint {node.checkpoint}", ("state", "round", "model_hash", "algorithm"))
    if str(z["model_hash"]) != cfg.hash() or str(z["algorithm"]) != node.spec.train.algorithm \
            or z["state"].ndim != 2 or z["state"].shape[1] != cfg.num_params:
        raise UserError(f"checkpoint {node.checkpoint} is of another model or algorithm (model hash "
                        f"{z['model_hash']}, algorithm {z['algorithm']}); move it away to start afresh")
    return int(z["round"]), tuple(np.array(a, dtype=dtype) for a in z["state"])


def agree_on_tuned_values(node: NodeConfig, transport: BoardTransport) -> Spec:
    """The spec with the values the swarm agreed on for the keys each board may tune for itself
    (agent.spec.TUNED_LOCALLY: lr and rounds): the minimum over all boards' proposals, flooded through the
    graph in diameter steps before round 0. Each board proposes at most its own lr_max estimate (tune never
    goes above it), so the agreed lr is below every board's estimate."""
    spec = node.spec
    proposed = {"lr": float(spec.train.lr), "rounds": spec.train.rounds}
    graph = build_graph(spec.network.topology, spec.network.agents, spec.network.seed)
    agreed = transport.agree(proposed, nx.diameter(graph))
    if agreed != proposed:
        log.warning("node %d: the swarm agreed on train.lr = %.6g and train.rounds = %d (we proposed %.6g and %d)",
                    node.id, agreed["lr"], int(agreed["rounds"]), proposed["lr"], proposed["rounds"])
    return spec.updated({"train.lr": agreed["lr"], "train.rounds": int(agreed["rounds"])})


def checkpointed_values(node: NodeConfig) -> Spec:
    """A resumed agent's spec with the lr and rounds its swarm agreed on, as its checkpoint recorded them."""
    z = read_npz(node.checkpoint, f"checkpoint {node.checkpoint}")
    if "lr" not in z:
        return node.spec
    return node.spec.updated({"train.lr": float(z["lr"]), "train.rounds": int(z["rounds"])})


def _train(node: NodeConfig, learner: LocalLearner, theta0: np.ndarray, cfg: ModelConfig,
           peers: dict[int, str], hooks: DeviceHooks | None, report: Report) -> dict:
    """Handshake (resuming from the checkpoint if there is one), the round loop, the final BYE and results."""
    spec, train = node.spec, node.spec.train
    alg = ALGORITHMS[train.algorithm]
    start, state = resume_point(node, cfg, theta0.dtype)
    if state is not None:
        log.warning("node %d: resuming from %s at round %d", node.id, node.checkpoint, start)
    curve = link_security(node, peers)
    if curve is None:
        log.warning("node %d: insecure = true: plain TCP, so messages are neither encrypted nor authenticated; "
                    "anyone who can reach %s can feed this agent", node.id, node.bind)
    t_start = time.perf_counter()
    tail = contextlib.ExitStack()
    # copy_sends=False: the rules never write into a sent array (they return new ones), so zero-copy is safe
    with RoundLog(node.log) as roundlog, transports()[node.transport](
            node.id, node.bind, peers, model_hash=cfg.hash(), spec_hash=spec_hash(spec), algorithm=alg.name,
            dtype=theta0.dtype.name, shape=(cfg.num_params,), arrays=len(alg.messages),
            deadline=node.round_deadline, copy_sends=False, curve=curve, start_round=start, logger=log) as transport:
        roundlog.write({"event": "start", "run": roundlog.run, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                        "pid": os.getpid(), "id": node.id, "round": start, "rounds": train.rounds})
        hellos = transport.handshake(len(peers), node.start_timeout, extra={"spec_keys": spec_key_hashes(spec)},
                                     warn_after=node.handshake_timeout)
        spec = agree_on_tuned_values(node, transport) if state is None else checkpointed_values(node)
        node, train = node.replace(spec=spec), spec.train
        report.rounds = train.rounds
        row = mixing_row(spec.network.weights, len(peers), degrees(peers, hellos, spec), node.id,
                         spec.network.agents)
        log.info("node %d: handshake done with %s; row %s", node.id, sorted(hellos), row)
        recorder = Recorder(node, learner, cfg, transport, roundlog, hooks, report)
        if state is not None:
            roundlog.write({"event": "resumed", "round": start, "checkpoint": str(node.checkpoint)})
            recorder.history = history_from_log(node.log, start)
        gossip = hooks.gossip(transport) if hooks else transport
        stopped: BaseException | None = None
        try:
            run_rounds(alg, theta0, learner.grad, float(train.lr), train.rounds, gossip, row, recorder, start, state)
        except (Diverged, KeyboardInterrupt, Terminated) as err:  # say so, keep what is good, then re-raise
            stopped = err
        # from here on a signal waits until the BYE, the checkpoint and the results are out
        tail.enter_context(signals_deferred())
        transport.bye()
        results = {"kind": "agent", "id": node.id, **recorder.history,
                   "bytes_sent": transport.bytes_sent, "bytes_received": transport.bytes_received,
                   "wait_s": transport.wait_seconds, "wall_s": time.perf_counter() - t_start,
                   "suspected": sorted(transport.suspected), "dropped": dict(transport.drop_counts),
                   "model_hash": cfg.hash(), "n_params": cfg.num_params, "neighbours": sorted(peers),
                   "rejoined": {str(p): n for p, n in transport.rejoined.items()},
                   "rounds_alone": transport.rounds_alone, "resumed_at_round":
                   start if state is not None else None, "agreed": {"lr": train.lr, "rounds": train.rounds}}
        if hooks:
            results["profile"] = {"name": hooks.profile.name, "emulated": hooks.emulate,
                                  "estimated_round_s": hooks.estimate["total_s"]}
        if stopped is not None:
            results["stopped"] = {"reason": type(stopped).__name__.lower(), "last_round": recorder.round,
                                  "message": str(stopped)}
        results["loss_growth"] = loss_growth(recorder.history.get("train_loss", []))
    written = [str(node.out)]
    if recorder.theta is not None:
        recorder.checkpoint(recorder.round)
        recorder.save(params_path(node.out))
        results["params"] = str(params_path(node.out))
        written.append(results["params"])
    write_json(node.out, results)
    report.summary(results, written)
    tail.close()  # a signal that came while writing takes effect now
    if stopped is not None:
        raise stopped
    return results


def loss_growth(losses: list[float]) -> float | None:
    """max over rounds of loss / initial loss: above 1 the loss rose at some point (flagged, not fatal:
    a run above lr_max may oscillate and recover)."""
    finite = [v for v in losses if np.isfinite(v)]
    return float(max(finite) / finite[0]) if finite and finite[0] > 0 else None
