"""File I/O shared by every layer: atomic writes of JSON, text, TOML and .npz files, and readers
of TOML and .npz that turn every problem into one UserError naming the file.

An atomic write goes to a temporary file in the same folder and is renamed over the target,
so a crash or Ctrl-C never leaves a half-written results file or checkpoint. Files are written
mode 0644 (``PUBLIC``), readable by a service user or another account; secrets pass 0600 (``SECRET``).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import tomli_w

from common.errors import UserError

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib


PUBLIC = 0o644  # results, checkpoints, logs, node files: readable by a service user or another account
SECRET = 0o600  # secret keys


def atomic_write(path: str | Path, write: Callable[[Any], None], mode: str = "w", permissions: int = PUBLIC) -> Path:
    """Call ``write(fileobj)`` on a temporary file next to ``path``, then rename it over ``path``.

    The file gets ``permissions`` before it appears under its name (mkstemp alone would leave 0600).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, permissions)
        with os.fdopen(fd, mode) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` atomically as strict JSON: NaN and infinities become null (no NaN/Infinity tokens)."""
    return atomic_write(path, lambda fh: json.dump(_finite(obj), fh, indent=1, default=_jsonable, allow_nan=False))


def _finite(obj: Any) -> Any:
    """``obj`` with every non-finite float (also inside lists, dicts and float arrays) replaced by None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, (np.ndarray, np.generic)) and np.issubdtype(np.asarray(obj).dtype, np.floating):
        return _finite(np.asarray(obj).tolist())
    return obj


def write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda fh: fh.write(text))


def dumps_toml(table: Mapping[str, Any]) -> str:
    """``table`` as TOML text: the one TOML writer of the project (tomli-w; paths become strings)."""
    return tomli_w.dumps(_tomlable(table))


def write_toml(path: str | Path, table: Mapping[str, Any]) -> Path:
    """Write ``table`` atomically as TOML (see ``dumps_toml``)."""
    return write_text(path, dumps_toml(table))


def _tomlable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _tomlable(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_tomlable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    return value


def check_writable(path: str | Path | None, what: str) -> None:
    """Refuse, before any work, an output path that is a folder or cannot be written (``what`` names it,
    e.g. "--out" or "node file x.toml: log")."""
    if path is None:
        return
    p = Path(path)
    if p.is_dir():
        raise UserError(f"{what} {path} is a folder; give a file name, e.g. {p / 'results.json'}")
    parent = p.parent if str(p.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"{what} {path}: cannot create its folder ({err.strerror})") from None
    if not os.access(parent, os.W_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise UserError(f"{what} {path}: not writable")


def read_toml(path: str | Path, what: str) -> dict:
    """The TOML table in ``path``; UserError "WHAT does not exist | is not valid TOML: ... | cannot
    be read: ..." otherwise. ``what`` names the file for a person, e.g. "profile pi.toml"."""
    try:
        return tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"{what} does not exist") from None
    except tomllib.TOMLDecodeError as err:
        raise UserError(f"{what} is not valid TOML: {err}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{what} cannot be read: {err}") from None


def loads_toml(text: str, what: str) -> dict:
    """The TOML table in ``text``; UserError "WHAT is not valid TOML: ..." otherwise."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise UserError(f"{what} is not valid TOML: {err}") from None


def write_npz(path: str | Path, **arrays: np.ndarray) -> Path:
    return atomic_write(path, lambda fh: np.savez(fh, **arrays), mode="wb")


def _jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return obj.to_dict() if hasattr(obj, "to_dict") else dataclasses.asdict(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def read_npz(path: str | Path, what: str, required: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """Every array of an .npz file, checked for ``required`` names.

    ``what`` names the file for a person ("data file x.npz"). Object arrays are refused (numpy's
    default), so reading a file never runs code from it. Raises UserError on any problem.
    """
    if not Path(path).exists():
        raise UserError(f"{what} does not exist")
    try:
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as err:  # numpy raises many types for a bad file
        raise UserError(f"{what}: cannot be read as .npz ({err})") from None
    missing = [a for a in required if a not in arrays]
    if missing:
        raise UserError(f"{what}: missing arrays {missing} (has {sorted(arrays)})")
    return arrays
