"""The experiment spec (docs/design.md, section 6 "Files"): one TOML file describes a whole swarm.

``Spec`` is a frozen record of frozen sections; adding a key means adding one field to its section
here. ``load_spec(path, overrides)`` reads the file (or none: the built-in default), applies
``--set section.key=VALUE`` overrides (VALUE read as TOML; a bare word is a string) and checks every
key through ``common.schema``: unknown keys and bad values name the key and value.
Algorithm, topology and mixing-rule names are checked against their registries.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from agent.algorithms import ALGORITHMS
from common.compute import BACKENDS, DTYPES
from common.errors import UserError
from common.files import loads_toml, read_toml
from common.schema import (Bad, Record, flag, from_user_check, integer, number, one_of,
                                            setting, version)
from coordinator_free.topology import check_topology, check_weights
from firmware_profiles.profile import profile_path

SCHEMA_VERSION = 1


def _classes(key: str, value: Any) -> list[int]:
    if (not isinstance(value, list) or len(value) < 2 or len(set(value)) != len(value)
            or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in value)):
        raise Bad(f"{key} = {value!r}: expected a list of at least two distinct non-negative class labels")
    return value


def _data_name(key: str, value: Any) -> str:
    if not isinstance(value, str) or not (value in ("digits", "synthetic") or value.endswith(".npz")):
        raise Bad(f"{key} = {value!r}: expected digits, synthetic or a path to an .npz file")
    return value


def _split(key: str, value: Any) -> str:
    if value in ("iid", "by-label"):
        return value
    match = re.fullmatch(r"dirichlet:([0-9.eE+-]+)", str(value))
    try:
        if match and 0 < float(match.group(1)) < math.inf:
            return value
    except ValueError:
        pass
    raise Bad(f"{key} = {value!r}: expected iid, by-label or dirichlet:ALPHA with a finite ALPHA > 0")


def _batch(key: str, value: Any) -> str | int:
    if value == "full" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        return value
    raise Bad(f"{key} = {value!r}: expected \"full\" or a positive integer")


def _names(key: str, value: Any) -> list[str]:
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise Bad(f"{key} = {value!r}: expected a list of profile names, e.g. [\"raspberry-pi-4b\"]")
    for name in value:  # an unknown packaged name is refused here; a path is read when it is used
        try:
            profile_path(name)
        except UserError as err:
            raise Bad(f"{key}: {err}") from None
    return value


@dataclass(frozen=True)
class DataSection(Record):
    name: str = setting("digits", _data_name, "digits, synthetic or a path to an .npz file (X, y)")
    classes: list = setting([0, 1], _classes, "class labels used; two give a +-1 target, more one-hot")
    samples_per_agent: int = setting(40, integer(1), "training samples per agent")
    test_samples: int = setting(100, integer(1), "shared test set size")
    split: str = setting("iid", _split, "iid | by-label | dirichlet:ALPHA")
    seed: int = setting(0, integer(0), "seed of the split and of minibatches")


@dataclass(frozen=True)
class ModelSection(Record):
    kind: str = setting("mlp", one_of("affine", "mlp"), "affine or mlp (depth 0 is affine)")
    width: int = setting(1024, integer(1), "hidden width")
    depth: int = setting(1, integer(0), "hidden layers")
    activation: str = setting("relu", one_of("relu", "erf", "tanh"), "hidden activation")
    w_std: float = setting(1.0, number(0.0), "weight scale of the NTK parameterisation")
    b_std: float = setting(0.1, number(0.0, strict=False), "bias scale")
    seed: int = setting(0, integer(0), "seed of theta_0, shared by every agent")

    def __post_init__(self) -> None:
        if self.kind == "mlp" and self.depth == 0:
            object.__setattr__(self, "kind", "affine")


@dataclass(frozen=True)
class NetworkSection(Record):
    agents: int = setting(6, integer(1), "number of agents N")
    topology: str = setting("cycle", from_user_check(check_topology), "a registered topology (coordinator_free.topology)")
    weights: str = setting("metropolis", from_user_check(check_weights), "a registered mixing rule")
    seed: int = setting(0, integer(0), "seed of random topologies")


@dataclass(frozen=True)
class TrainSection(Record):
    algorithm: str = setting("dgd", one_of(*ALGORITHMS), "a registered algorithm (agent.algorithms)")
    lr: float = setting(0.5, number(0.0), "learning rate alpha")
    rounds: int = setting(100, integer(0), "rounds K")
    batch: Any = setting("full", _batch, "\"full\" or a minibatch size")
    dtype: str = setting(DTYPES[0], one_of(*DTYPES), "float32 (boards) or float64 (exact comparisons)")
    kernels: str = setting(BACKENDS[0], one_of(*BACKENDS), "compute backend (agent.kernels)")

    def __post_init__(self) -> None:
        if ALGORITHMS[self.algorithm].full_batch_only and self.batch != "full":
            raise Bad(f"train.batch = {self.batch!r}: train.algorithm = {self.algorithm} is exact only with full "
                      "batches; use train.batch = \"full\"")


@dataclass(frozen=True)
class DeviceSection(Record):
    """Device profiles (firmware_profiles), cycled over the agents; loopback emulates them if emulate."""

    profiles: list = setting([], _names, "profile names or paths, cycled over the agents")
    emulate: bool = setting(False, flag, "loopback shapes links and slows compute like the profiles")
    link_mbit: float = setting(0.0, number(0.0, strict=False), "override the profiles' bandwidth (0: keep)")
    latency_ms: float = setting(0.0, number(0.0, strict=False), "override the profiles' latency (0: keep)")


@dataclass(frozen=True)
class Spec(Record):
    schema_version: int = setting(SCHEMA_VERSION, version(SCHEMA_VERSION, "spec"), "spec file format version")
    data: DataSection = setting(DataSection())
    model: ModelSection = setting(ModelSection())
    network: NetworkSection = setting(NetworkSection())
    train: TrainSection = setting(TrainSection())
    device: DeviceSection = setting(DeviceSection())

    def updated(self, values: Mapping[str, Any], source: str = "spec") -> "Spec":
        """A checked copy with dotted keys changed, e.g. ``{"train.lr": 0.1, "model.width": 2048}``."""
        raw = self.to_dict()
        for dotted, value in values.items():
            section, _, key = dotted.partition(".")
            if not key:
                raw[section] = value
            elif not isinstance(raw.get(section, {}), dict):
                raise UserError(f"{source}: [{section}] must be a table")
            else:
                raw.setdefault(section, {})[key] = value
        return resolve(raw, source)


def default_spec() -> Spec:
    return Spec()


def parse_override(text: str) -> tuple[str, Any]:
    """``"train.lr=0.1"`` -> ("train.lr", 0.1). The value is TOML; a bare word is a string."""
    key, sep, raw = text.partition("=")
    section, dot, name = key.strip().partition(".")
    if not sep or not dot or not name:
        raise UserError(f"--set {text!r}: expected SECTION.KEY=VALUE, for example train.lr=0.1")
    raw = raw.strip()
    try:
        value = loads_toml(f"v = {raw}", "--set")["v"]
    except UserError:
        value = raw  # a bare word such as atc or digits
    return f"{section.strip()}.{name.strip()}", value


def resolve(raw: Mapping[str, Any], source: str = "spec") -> Spec:
    """Defaults + ``raw``, checked. Every error names the section.key and the bad value."""
    return Spec.from_table(raw, source)


def load_spec(path: str | Path | None = None, overrides: list[str] = ()) -> Spec:
    """Read a spec TOML (None: the built-in default) and apply ``--set`` overrides."""
    source = "built-in default spec" if path is None else str(path)
    raw = {} if path is None else read_toml(path, f"spec file {path}")
    spec = resolve(raw, source)
    if overrides:
        spec = spec.updated(dict(parse_override(t) for t in overrides), source)
    return _anchor_paths(spec, Path(path).parent if path is not None else Path.cwd())


# Spec values that may name a file: "section.key" -> the prefix a file value starts with, and the test that it
# is one. The one table the three path rules read: anchored at the spec's folder when loaded, written relative
# to the file that holds the spec, and hashed by file name only. A new path-valued key is one line here.
PATH_KEYS: dict[str, tuple[str, Callable[[str], bool]]] = {
    "data.name": ("", lambda v: v.endswith(".npz")),
    "network.topology": ("file:", lambda v: v.startswith("file:")),
}


def _map_paths(raw: dict[str, Any], change: Callable[[str], str]) -> dict[str, Any]:
    """``raw`` (a spec table) with ``change`` applied to the file part of every path-valued key that holds a file."""
    for dotted, (prefix, is_file) in PATH_KEYS.items():
        section, key = dotted.split(".")
        value = raw[section][key]
        if isinstance(value, str) and is_file(value):
            raw[section][key] = prefix + change(value[len(prefix):])
    return raw


def _anchor_paths(spec: Spec, base: Path) -> Spec:
    """Relative file paths are read relative to the spec file."""
    raw = _map_paths(spec.to_dict(), lambda f: f if Path(f).is_absolute() else str((base / f).resolve()))
    return spec.updated({k: raw[k.split(".")[0]][k.split(".")[1]] for k in PATH_KEYS})


def spec_table(spec: Spec, relative_to: str | Path) -> dict[str, Any]:
    """The spec's TOML table for a file in folder ``relative_to``: file paths are written relative to it (the
    inverse of ``_anchor_paths``), so the spec moves with its files."""
    return _map_paths(spec.to_dict(), lambda f: os.path.relpath(os.path.abspath(f), os.path.abspath(relative_to)))


# What a board may choose for itself (``p2pntk tune``): the swarm agrees on these at start (the minimum of
# the proposals, agent.process), so they are left out of the spec hash. Everything else must match.
TUNED_LOCALLY = ("train.lr", "train.rounds")


def shared_keys(spec: Spec) -> dict[str, Any]:
    """The spec's keys every agent must share, flat ("section.key" -> value). File paths count by their
    file name only, since each device keeps its files in its own folder."""
    raw = _map_paths(spec.to_dict(), lambda f: Path(f).name)
    flat = {f"{section}.{key}": value for section, table in raw.items() if isinstance(table, dict)
            for key, value in table.items()}
    flat.update({key: value for key, value in raw.items() if not isinstance(value, dict)})
    return {key: value for key, value in sorted(flat.items()) if key not in TUNED_LOCALLY}


def _digest(value: Any, n: int) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:n]


def spec_hash(spec: Spec) -> str:
    """Hash of what every agent must share (``shared_keys``); agents refuse a neighbour whose hash differs."""
    return _digest(shared_keys(spec), 16)


def spec_key_hashes(spec: Spec) -> dict[str, str]:
    """A short hash per shared key: sent in the HELLO, so a mismatch names the keys that differ."""
    return {key: _digest(value, 8) for key, value in shared_keys(spec).items()}
