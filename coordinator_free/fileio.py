"""Small file helpers shared by every layer: atomic writes of JSON, text and .npz files.

An atomic write goes to a temporary file in the same folder and is renamed over the target,
so a crash or Ctrl-C never leaves a half-written results file or checkpoint.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np


def atomic_write(path: str | Path, write: Callable[[Any], None], mode: str = "w") -> Path:
    """Call ``write(fileobj)`` on a temporary file next to ``path``, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
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
    return atomic_write(path, lambda fh: json.dump(obj, fh, indent=1, default=_jsonable))


def write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda fh: fh.write(text))


def write_npz(path: str | Path, **arrays: np.ndarray) -> Path:
    return atomic_write(path, lambda fh: np.savez(fh, **arrays), mode="wb")


def _jsonable(obj: Any) -> Any:
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
    from firmware_profiles.errors import UserError
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
