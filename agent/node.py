"""The node file: what one device needs to run its learner (``p2pntk agent NODE.toml``).

```toml
id = 0                               # this agent's id in the swarm, 0..N-1
bind = "tcp://0.0.0.0:5555"          # where it listens
data = "agent0.npz"                  # local data: X (n, d) and Y (n, k) targets, or y (n,) labels
test = "test.npz"                    # optional shared test set, same format
spec = "swarm.toml"                  # the swarm spec: a path, or an inline [spec] table
out = "agent0.json"                  # final results (default: next to the node file); the final
                                     # parameters go beside them, in agent0.params.npz
log = "agent0.jsonl"                 # one JSON line per round, appended to across restarts
checkpoint = "agent0.ckpt.npz"       # atomic checkpoint (this is the default name); a restart resumes from it
checkpoint_every = 10                # rounds between checkpoints (0: only at the end)
round_deadline = 10.0                # seconds to wait for neighbours each round
handshake_timeout = 60.0              # seconds at start before a warning names the silent neighbours
start_timeout = 600.0                # optional: give up waiting for them (exit 6, the unit restarts);
                                     # default: wait as long as it takes
profile = "raspberry-pi-4b"          # optional device profile (threads, dtype, kernels, emulation)
emulate = false                      # shape sends/slow compute like the profile (loopback)
transport = "zmq"                    # a registered board transport (coordinator_free.gossip)
secret_key = "keys/agent0.key_secret" # this board's CurveZMQ secret key (p2pntk keys new agent0)
insecure = false                     # true: plain TCP, unauthenticated (a warning at start)
schema_version = 1                   # node file format version (optional)
[peer_keys]                          # each neighbour's public key: only these may connect
1 = "keys/agent1.key"
[peers]                              # static peer table: neighbour id -> address
1 = "tcp://10.0.0.11:5555"
```
Relative paths are read relative to the node file. Every bad key names itself in a UserError.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agent.spec import load_spec, resolve
from common.errors import UserError
from common.files import read_npz, read_toml
from common.schema import (Bad, Check, Record, flag, from_user_check, integer, number, one_of,
                                            setting, text, version)
from coordinator_free.gossip import DEFAULT_TRANSPORT, check_transport

SCHEMA_VERSION = 1
_PATH_KEYS = ("data", "test", "out", "log", "checkpoint", "secret_key")


def _path(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise Bad(f"{key} = {value!r}: expected a file path")
    return value


def _address(example: str):
    def check(key: str, value: Any) -> str:
        host, _, port = value.removeprefix("tcp://").rpartition(":") if isinstance(value, str) else ("", "", "")
        if not (isinstance(value, str) and value.startswith("tcp://") and host
                and (port == "*" or (port.isdigit() and 1 <= int(port) <= 65535))):
            raise Bad(f"{key} = {value!r}: expected an address like {example} (port 1-65535)")
        return value
    return check


def _spec_ref(key: str, value: Any) -> Any:
    if not (isinstance(value, dict) or (isinstance(value, str) and value)):
        raise Bad(f"{key} = {value!r}: expected a spec file path or an inline [spec] table")
    return value


def _id_table(what: str, check: Check) -> Check:
    """A table of neighbour id = value (``what`` says which value), each value checked by ``check``."""
    def table(key: str, value: Any) -> dict[int, str]:
        if not isinstance(value, dict):
            raise Bad(f"{key} = {value!r}: expected a table of id = {what}")
        out = {}
        for pid, item in value.items():
            if not pid.isdigit():
                raise Bad(f"{key}.{pid} = {item!r}: expected a neighbour id (an integer) as the key")
            out[int(pid)] = check(f"{key}.{pid}", item)
        return out
    return table


_peers = _id_table("address", _address("tcp://10.0.0.12:5555"))
_key_files = _id_table("public key file", _path)


@dataclass(frozen=True)
class NodeConfig(Record):
    """One device's node file. Paths are relative to the node file until ``load_node`` anchors them."""

    id: int = setting(check=integer(0), doc="this agent's id in the swarm, 0..N-1")
    bind: str = setting(check=_address("tcp://0.0.0.0:5555"), doc="where it listens")
    data: Path = setting(check=_path, doc="local data: X (n, d) with Y (n, k) targets or y (n,) labels")
    spec: Any = setting(check=_spec_ref, doc="the swarm spec: a path, or an inline [spec] table")
    peers: dict = setting({}, _peers, "static peer table: neighbour id -> address")
    test: Path | None = setting(None, _path, "optional shared test set, same format as data")
    out: Path | None = setting(None, _path, "final results (default agentID.json next to the node file)")
    log: Path | None = setting(None, _path, "one JSON line per round (default agentID.jsonl)")
    checkpoint: Path | None = setting(None, _path, "atomic checkpoint file; a restart resumes from it "
                                                   "(default agentID.ckpt.npz next to the node file)")
    checkpoint_every: int = setting(10, integer(0), "rounds between checkpoints (0: only at the end)")
    round_deadline: float = setting(10.0, number(0.0, what="a positive number of seconds"),
                                    "seconds to wait for neighbours each round")
    handshake_timeout: float = setting(60.0, number(0.0, hi=86400.0, what="a positive number of seconds"),
                                       "seconds at start after which a warning names the neighbours not yet up "
                                       "(the board keeps waiting); also the summary exchange's and discovery's wait")
    start_timeout: float | None = setting(None, number(0.0, hi=30 * 86400.0, what="a positive number of seconds"),
                                          "seconds to wait for every neighbour at start before exiting with status 6 "
                                          "(default: no limit)")
    profile: str | None = setting(None, text, "device profile name or path")
    emulate: bool = setting(False, flag, "shape sends and slow compute like the profile (loopback)")
    discovery: str = setting("static", one_of("static", "zeroconf"), "static peers or zeroconf discovery")
    advertise: str | None = setting(None, text, "the IPv4 address zeroconf advertises for this board (default: the "
                                                "bind host, or this host name's address when bound to 0.0.0.0)")
    transport: str = setting(DEFAULT_TRANSPORT, from_user_check(check_transport), "a registered board transport")
    secret_key: Path | None = setting(None, _path, "this board's NAME.key_secret (p2pntk keys new NAME)")
    peer_keys: dict = setting({}, _key_files, "neighbour id -> its public NAME.key file")
    insecure: bool = setting(False, flag, "plain TCP: no encryption, no authentication (logged at start)")
    schema_version: int = setting(SCHEMA_VERSION, version(SCHEMA_VERSION, "node file"), "node file format version")
    source: Path = setting(Path(), doc="the node file this was read from (not a key of the file)")


def load_node(path: str | Path) -> NodeConfig:
    """Parse and check a node file; relative paths are anchored at the node file's folder."""
    path = Path(path)
    where = f"node file {path}"
    raw = read_toml(path, where)
    if "source" in raw:
        raise UserError(f"{where}: unknown key source")
    node = NodeConfig.from_table(raw, where)
    base = path.parent
    spec = resolve(node.spec, f"{where} [spec]") if isinstance(node.spec, dict) else load_spec(base / node.spec)
    paths = {k: (None if v is None else base / v) for k in _PATH_KEYS for v in [getattr(node, k)]}
    paths["peer_keys"] = {pid: base / f for pid, f in node.peer_keys.items()}
    paths["out"] = paths["out"] or base / f"agent{node.id}.json"
    paths["log"] = paths["log"] or base / f"agent{node.id}.jsonl"
    paths["checkpoint"] = paths["checkpoint"] or base / f"agent{node.id}.ckpt.npz"
    node = node.replace(spec=spec, source=path, **paths)
    n_agents = spec.network.agents
    for pid in [node.id, *node.peers]:
        key = "id" if pid == node.id and pid not in node.peers else f"peers.{pid}"
        if pid in node.peers and pid == node.id:
            raise UserError(f"{where}: {key} = {pid!r}: expected a neighbour id (an integer other than this node's id)")
        if pid >= n_agents:
            raise UserError(f"{where}: {key} = {pid!r}: expected an id below network.agents = {n_agents}")
    if not node.peers and node.discovery != "zeroconf" and n_agents > 1:
        raise UserError(f"{where}: peers = {{}}: expected at least one neighbour (or discovery = \"zeroconf\")")
    return node


def node_table(node: NodeConfig, relative_to: str | Path | None = None) -> dict[str, Any]:
    """The node file's TOML table (the inverse of ``load_node`` for a spec given as a path).

    With ``relative_to`` (the folder of the node file about to be written), every file path, the
    spec's too, is written relative to it, so that the file runs as written wherever it is started.
    """
    def rel(path):
        return path if relative_to is None else os.path.relpath(os.path.abspath(path), os.path.abspath(relative_to))
    table = {k: v for k, v in node.to_dict().items() if k not in ("source", "peers", "peer_keys") and v is not None}
    for key in (*_PATH_KEYS, *(("spec",) if isinstance(node.spec, (str, Path)) else ())):
        if table.get(key) is not None:
            table[key] = rel(table[key])
    table["peer_keys"] = {str(p): str(rel(f)) for p, f in sorted(node.peer_keys.items())}
    table["peers"] = {str(p): a for p, a in sorted(node.peers.items())}
    return table


def link_security(node: NodeConfig, peers: dict[int, str]):
    """The node's CurveZMQ keys for these peers (``coordinator_free.keys.Curve``), or None with
    ``insecure = true``. Refuses, naming the key to fix, a secure node without its keys."""
    from coordinator_free.keys import Curve
    where = f"node file {node.source}"
    if node.insecure:
        return None
    if node.secret_key is None:
        raise UserError(f"{where}: secret_key is missing: links are encrypted and authenticated by default; make "
                        "keys with `p2pntk keys new NAME`, list neighbours' public keys under [peer_keys], "
                        "or set insecure = true for plain TCP")
    missing = sorted(set(peers) - set(node.peer_keys))
    if missing:
        raise UserError(f"{where}: [peer_keys] has no public key for neighbours {missing}")
    return Curve(node.secret_key, {pid: node.peer_keys[pid] for pid in peers})


def local_data(node: NodeConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """(X, Y, X_test, Y_test) of this board (test None without a ``test`` file).

    A file whose inputs have another number of features than the spec's data source (digits: 64), or
    than the board's training data, is refused with one line naming the file and both numbers.
    """
    from agent.data import feature_count
    classes = node.spec.data.classes
    X, Y = load_local_data(node.data, classes)
    expected = feature_count(node.spec.data)
    if expected is not None and X.shape[1] != expected:
        raise UserError(f"node data file {node.data}: X has {X.shape[1]} features, but the spec's data "
                        f"({Path(node.spec.data.name).name}) has {expected}; every board's inputs must have "
                        f"{expected} features")
    if node.test is None:
        return X, Y, None, None
    X_test, Y_test = load_local_data(node.test, classes, "test")
    if X_test.shape[1] != X.shape[1]:
        raise UserError(f"node test file {node.test}: X has {X_test.shape[1]} features, but the data file "
                        f"{node.data} has {X.shape[1]}")
    return X, Y, X_test, Y_test


def load_local_data(path: Path, classes: list[int], role: str = "data") -> tuple[np.ndarray, np.ndarray]:
    """(X, Y) from an agent's .npz: ``X`` with targets ``Y`` (n, k), or labels ``y`` encoded per the spec."""
    from agent.data import targets
    arrays = read_npz(path, f"node {role} file {path}")
    X = arrays.get("X")
    if X is None or X.ndim != 2 or not np.issubdtype(X.dtype, np.number) or not np.all(np.isfinite(X)):
        raise UserError(f"node {role} file {path}: needs a finite numeric array X of shape (n, d)")
    if "Y" in arrays:
        Y = arrays["Y"]
        if Y.ndim == 1:
            Y = Y[:, None]
    elif "y" in arrays:
        labels = arrays["y"]
        bad = sorted(set(np.unique(labels).tolist()) - set(classes))
        if bad:
            raise UserError(f"node {role} file {path}: labels {bad[:5]} are not in data.classes = {classes}")
        Y = targets(labels, classes)
    else:
        raise UserError(f"node {role} file {path}: needs targets Y (n, k) or labels y (n,)")
    k = 1 if len(classes) == 2 else len(classes)
    if Y.shape != (X.shape[0], k) or not np.all(np.isfinite(Y)):
        raise UserError(f"node {role} file {path}: Y has shape {Y.shape}, expected ({X.shape[0]}, {k})")
    return X.astype(np.float64), Y.astype(np.float64)
