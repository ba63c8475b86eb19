"""The node file: what one device needs to run its learner (``p2pntk agent NODE.toml``).

```toml
id = 0                               # this agent's id in the swarm, 0..N-1
bind = "tcp://0.0.0.0:5555"          # where it listens
data = "agent0.npz"                  # local data: X (n, d) and Y (n, k) targets, or y (n,) labels
test = "test.npz"                    # optional shared test set, same format
spec = "swarm.toml"                  # the swarm spec: a path, or an inline [spec] table
out = "agent0.json"                  # final results (default: next to the node file)
log = "agent0.jsonl"                 # one JSON line per round
checkpoint = "agent0.ckpt.npz"       # atomic checkpoint every checkpoint_every rounds (0: never)
checkpoint_every = 10
round_deadline = 10.0                # seconds to wait for neighbours each round
handshake_timeout = 60.0
profile = "raspberry-pi-4b"          # optional device profile (threads, dtype, kernels, emulation)
emulate = false                      # shape sends/slow compute like the profile (loopback)
[peers]                              # static peer table: neighbour id -> address
1 = "tcp://10.0.0.11:5555"
```
Relative paths are read relative to the node file. Every bad key names itself in a UserError.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from coordinator_free.common.files import read_npz
from coordinator_free.spec import load_spec, resolve
from coordinator_free.common.errors import UserError
from coordinator_free.common.files import read_toml

_KEYS = {"id", "bind", "data", "test", "spec", "out", "log", "checkpoint", "checkpoint_every",
         "round_deadline", "handshake_timeout", "profile", "emulate", "peers", "discovery"}


@dataclass
class NodeConfig:
    id: int
    bind: str
    data: Path
    spec: dict
    peers: dict[int, str]
    test: Path | None = None
    out: Path | None = None
    log: Path | None = None
    checkpoint: Path | None = None
    checkpoint_every: int = 10
    round_deadline: float = 10.0
    handshake_timeout: float = 60.0
    profile: str | None = None
    emulate: bool = False
    discovery: str = "static"
    source: Path = field(default_factory=Path)


def _check(cond: bool, path: Path, key: str, value: Any, expected: str) -> None:
    if not cond:
        raise UserError(f"node file {path}: {key} = {value!r}: expected {expected}")


def load_node(path: str | Path) -> NodeConfig:
    """Parse and validate a node file."""
    path = Path(path)
    raw = read_toml(path, f"node file {path}")
    unknown = set(raw) - _KEYS
    if unknown:
        raise UserError(f"node file {path}: unknown key {sorted(unknown)[0]} (known: {', '.join(sorted(_KEYS))})")
    for key in ("id", "bind", "data", "spec"):
        if key not in raw:
            raise UserError(f"node file {path}: missing key {key}")
    base = path.parent

    def rel(key: str) -> Path | None:
        if key not in raw:
            return None
        _check(isinstance(raw[key], str) and raw[key] != "", path, key, raw[key], "a file path")
        p = Path(raw[key])
        return p if p.is_absolute() else base / p

    node_id = raw["id"]
    _check(isinstance(node_id, int) and not isinstance(node_id, bool) and node_id >= 0, path, "id", node_id,
           "a non-negative integer")
    _check(isinstance(raw["bind"], str) and raw["bind"].startswith("tcp://"), path, "bind", raw["bind"],
           "an address like tcp://0.0.0.0:5555")
    if isinstance(raw["spec"], dict):
        spec = resolve(raw["spec"], f"node file {path} [spec]")
    else:
        spec = load_spec(rel("spec"))
    peers_raw = raw.get("peers", {})
    _check(isinstance(peers_raw, dict), path, "peers", peers_raw, "a table of id = address")
    peers: dict[int, str] = {}
    for key, addr in peers_raw.items():
        _check(key.isdigit() and int(key) != node_id, path, f"peers.{key}", addr,
               "a neighbour id (an integer other than this node's id)")
        _check(isinstance(addr, str) and addr.startswith("tcp://"), path, f"peers.{key}", addr,
               "an address like tcp://10.0.0.12:5555")
        peers[int(key)] = addr
    n_agents = spec["network"]["agents"]
    for pid in [node_id, *peers]:
        _check(pid < n_agents, path, "id" if pid == node_id else f"peers.{pid}", pid,
               f"an id below network.agents = {n_agents}")
    discovery = raw.get("discovery", "static")
    _check(discovery in ("static", "zeroconf"), path, "discovery", discovery, "static or zeroconf")
    _check(bool(peers) or discovery == "zeroconf" or n_agents == 1, path, "peers", peers_raw,
           "at least one neighbour (or discovery = \"zeroconf\")")
    out = NodeConfig(id=node_id, bind=raw["bind"], data=rel("data"), spec=spec, peers=peers, test=rel("test"),
                     out=rel("out") or base / f"agent{node_id}.json", log=rel("log") or base / f"agent{node_id}.jsonl",
                     checkpoint=rel("checkpoint"), profile=raw.get("profile"), discovery=discovery, source=path)
    if "checkpoint_every" in raw:
        v = raw["checkpoint_every"]
        _check(isinstance(v, int) and not isinstance(v, bool) and v >= 0, path, "checkpoint_every", v,
               "an integer >= 0")
        out.checkpoint_every = v
    for key in ("round_deadline", "handshake_timeout"):
        if key in raw:
            v = raw[key]
            _check(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0, path, key, v,
                   "a positive number of seconds")
            setattr(out, key, float(v))
    if "emulate" in raw:
        _check(isinstance(raw["emulate"], bool), path, "emulate", raw["emulate"], "true or false")
        out.emulate = raw["emulate"]
    if out.profile is not None:
        _check(isinstance(out.profile, str) and out.profile != "", path, "profile", out.profile, "a profile name")
    return out


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
