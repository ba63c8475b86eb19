"""The experiment spec (DESIGN section 6): one TOML file describes a whole swarm experiment.

``load_spec(path, overrides)`` reads the file (or none: the built-in default), applies
``--set section.key=VALUE`` overrides (VALUE read as TOML; a bare word is a string), fills
defaults and validates every key. Unknown keys and bad values raise UserError naming the key.
"""
from __future__ import annotations

import copy
import hashlib
import json
import re
from pathlib import Path
from typing import Any, Callable

from coordinator_free.common.errors import UserError
from coordinator_free.common.files import read_toml

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib

Spec = dict  # {"data": {...}, "model": {...}, "network": {...}, "train": {...}}


def _one_of(*choices: str) -> Callable[[str, Any], str]:
    def check(key: str, value: Any) -> str:
        if not isinstance(value, str) or value not in choices:
            raise UserError(f"{key} = {value!r}: expected one of {', '.join(choices)}")
        return value
    return check


def _int(lo: int, hi: int | None = None) -> Callable[[str, Any], int]:
    def check(key: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < lo or (hi is not None and value > hi):
            bound = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
            raise UserError(f"{key} = {value!r}: expected an integer {bound}")
        return value
    return check


def _float(lo: float, strict: bool = True) -> Callable[[str, Any], float]:
    def check(key: str, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value \
                or (value <= lo if strict else value < lo) or value == float("inf"):
            raise UserError(f"{key} = {value!r}: expected a finite number {'>' if strict else '>='} {lo}")
        return float(value)
    return check


def _classes(key: str, value: Any) -> list[int]:
    if (not isinstance(value, list) or len(value) < 2 or len(set(value)) != len(value)
            or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in value)):
        raise UserError(f"{key} = {value!r}: expected a list of at least two distinct non-negative class labels")
    return value


def _data_name(key: str, value: Any) -> str:
    if not isinstance(value, str) or not (value in ("digits", "synthetic") or value.endswith(".npz")):
        raise UserError(f"{key} = {value!r}: expected digits, synthetic or a path to an .npz file")
    return value


def _split(key: str, value: Any) -> str:
    if value in ("iid", "by-label"):
        return value
    match = re.fullmatch(r"dirichlet:([0-9.eE+-]+)", str(value))
    if match:
        try:
            if float(match.group(1)) > 0:
                return value
        except ValueError:
            pass
    raise UserError(f"{key} = {value!r}: expected iid, by-label or dirichlet:ALPHA with ALPHA > 0")


def _topology(key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise UserError(f"{key} = {value!r}: expected a topology name")
    name, _, arg = value.partition(":")
    plain = ("cycle", "star", "complete", "path", "grid", "exponential")
    ok = (value in plain or (name == "file" and arg)
          or (name == "erdos-renyi" and _is_number(arg) and 0 < float(arg) <= 1)
          or (name == "random-regular" and arg.isdigit() and int(arg) >= 1))
    if not ok:
        raise UserError(f"{key} = {value!r}: expected one of {', '.join(plain)}, erdos-renyi:P, "
                        "random-regular:D or file:PATH")
    return value


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _batch(key: str, value: Any) -> str | int:
    if value == "full" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        return value
    raise UserError(f"{key} = {value!r}: expected \"full\" or a positive integer")


def _names(key: str, value: Any) -> list[str]:
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise UserError(f"{key} = {value!r}: expected a list of profile names, e.g. [\"raspberry-pi-4b\"]")
    return value


def _bool(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise UserError(f"{key} = {value!r}: expected true or false")
    return value


SCHEMA: dict[str, dict[str, tuple[Any, Callable[[str, Any], Any]]]] = {
    "data": {
        "name": ("digits", _data_name),
        "classes": ([0, 1], _classes),
        "samples_per_agent": (40, _int(1)),
        "test_samples": (100, _int(1)),
        "split": ("iid", _split),
        "seed": (0, _int(0)),
    },
    "model": {
        "kind": ("mlp", _one_of("affine", "mlp")),
        "width": (1024, _int(1)),
        "depth": (1, _int(0)),
        "activation": ("relu", _one_of("relu", "erf", "tanh")),
        "w_std": (1.0, _float(0.0)),
        "b_std": (0.1, _float(0.0, strict=False)),
        "seed": (0, _int(0)),
    },
    "network": {
        "agents": (6, _int(1)),
        "topology": ("cycle", _topology),
        "weights": ("metropolis", _one_of("metropolis", "max-degree", "lazy-metropolis")),
        "seed": (0, _int(0)),
    },
    "train": {
        "algorithm": ("dgd", _one_of("dgd", "atc", "cta")),
        "lr": (0.5, _float(0.0)),
        "rounds": (100, _int(0)),
        "batch": ("full", _batch),
        "dtype": ("float32", _one_of("float32", "float64")),
        "kernels": ("numpy", _one_of("numpy", "onnx")),
    },
    # Device profiles (firmware_profiles), cycled over the agents; loopback emulates them if emulate.
    "device": {
        "profiles": ([], _names),
        "emulate": (False, _bool),
        "link_mbit": (0.0, _float(0.0, strict=False)),   # 0: the profile's own link
        "latency_ms": (0.0, _float(0.0, strict=False)),
    },
}


def default_spec() -> Spec:
    return {section: {key: copy.deepcopy(default) for key, (default, _) in keys.items()}
            for section, keys in SCHEMA.items()}


def parse_override(text: str) -> tuple[str, str, Any]:
    """``"train.lr=0.1"`` -> ("train", "lr", 0.1). The value is TOML; a bare word is a string."""
    key, sep, raw = text.partition("=")
    section, dot, name = key.strip().partition(".")
    if not sep or not dot or not name:
        raise UserError(f"--set {text!r}: expected SECTION.KEY=VALUE, for example train.lr=0.1")
    raw = raw.strip()
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # a bare word such as atc or digits
    return section, name.strip(), value


def resolve(raw: dict, source: str = "spec") -> Spec:
    """Defaults + ``raw``, validated. Every error names the section.key and the bad value."""
    spec = default_spec()
    for section, body in raw.items():
        if section not in SCHEMA:
            raise UserError(f"{source}: unknown section [{section}] (known: {', '.join(SCHEMA)})")
        if not isinstance(body, dict):
            raise UserError(f"{source}: [{section}] must be a table, got {body!r}")
        for key, value in body.items():
            if key not in SCHEMA[section]:
                raise UserError(f"{source}: unknown key {section}.{key} "
                                f"(known in [{section}]: {', '.join(SCHEMA[section])})")
            spec[section][key] = SCHEMA[section][key][1](f"{section}.{key}", value)
    if spec["model"]["kind"] == "mlp" and spec["model"]["depth"] == 0:
        spec["model"]["kind"] = "affine"
    if spec["data"]["test_samples"] < 1:
        raise UserError("data.test_samples must be >= 1")
    return spec


def load_spec(path: str | Path | None = None, overrides: list[str] = ()) -> Spec:
    """Read a spec TOML (None: the built-in default) and apply ``--set`` overrides."""
    raw: dict = {}
    source = "built-in default spec"
    if path is not None:
        source = str(path)
        raw = read_toml(path, f"spec file {path}")
    for text in overrides:
        section, name, value = parse_override(text)
        raw.setdefault(section, {})
        if not isinstance(raw[section], dict):
            raise UserError(f"{source}: [{section}] must be a table")
        raw[section][name] = value
    spec = resolve(raw, source)
    base = Path(path).parent if path is not None else Path.cwd()
    _anchor_paths(spec, base)
    return spec


def _anchor_paths(spec: Spec, base: Path) -> None:
    """Relative data/topology file paths are read relative to the spec file."""
    name = spec["data"]["name"]
    if name.endswith(".npz") and not Path(name).is_absolute():
        spec["data"]["name"] = str((base / name).resolve())
    topo = spec["network"]["topology"]
    if topo.startswith("file:") and not Path(topo[5:]).is_absolute():
        spec["network"]["topology"] = "file:" + str((base / topo[5:]).resolve())


def spec_hash(spec: Spec) -> str:
    """Hash of the resolved spec; agents refuse a neighbour whose swarm spec differs.

    File paths count by their file name only, since each device keeps its files in its own folder.
    """
    spec = copy.deepcopy(spec)
    if spec["data"]["name"].endswith(".npz"):
        spec["data"]["name"] = Path(spec["data"]["name"]).name
    if spec["network"]["topology"].startswith("file:"):
        spec["network"]["topology"] = "file:" + Path(spec["network"]["topology"][5:]).name
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def dumps_toml(spec: Spec) -> str:
    """The spec as TOML text (only the scalar/list values this schema uses)."""
    lines = []
    for section, body in spec.items():
        lines.append(f"[{section}]")
        for key, value in body.items():
            lines.append(f"{key} = {_toml_value(value)}")
        lines.append("")
    return "\n".join(lines)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    return json.dumps(str(value))
