"""The one config schema mechanism: frozen dataclasses whose fields carry a check.

A record is a frozen dataclass deriving from ``Record``; each field is declared with
``setting(default, check, doc)``, and a field whose type is another ``Record`` is a TOML table.
``Record.from_table(raw, where)`` turns a TOML table into the record: unknown keys, missing keys
and bad values raise one ``UserError`` naming the file (``where``), the dotted key and the value.
Cross-field rules go in ``__post_init__`` (raise ``Bad``). ``to_dict()`` is the inverse, for the
one TOML writer (``files.dumps_toml``) and the results JSON. Checks below are the shared vocabulary.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import typing
from typing import Any, Callable, Mapping, TypeVar

from common.errors import UserError

Check = Callable[[str, Any], Any]  # (dotted key, raw value) -> clean value, or raise Bad
R = TypeVar("R", bound="Record")


class Bad(UserError):
    """A value failed its check: "key = value: expected ..."; ``from_table`` adds where it came from."""


def setting(default: Any = dataclasses.MISSING, check: Check | None = None, doc: str = "") -> Any:
    """A record field: its default (MISSING: required), its check and a one-line description."""
    meta = {"check": check, "doc": doc}
    if isinstance(default, (list, dict, Record)):
        return dataclasses.field(default_factory=lambda d=default: copy.deepcopy(d), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _is_record(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, Record)


def _table_type(tp: Any) -> tuple[type | None, bool]:
    """(the Record type of a table field, whether the table is optional: ``Section | None``)."""
    if _is_record(tp):
        return tp, False
    args = typing.get_args(tp)
    records = [a for a in args if _is_record(a)]
    if len(records) == 1 and type(None) in args:
        return records[0], True
    return None, False


@dataclasses.dataclass(frozen=True)
class Record:
    """Base of every typed config record (spec sections, node files, profiles)."""

    @classmethod
    def fields(cls) -> tuple[dataclasses.Field, ...]:
        return dataclasses.fields(cls)

    @classmethod
    def _types(cls) -> dict[str, Any]:
        return typing.get_type_hints(cls)

    @classmethod
    def from_table(cls: type[R], raw: Mapping[str, Any], where: str = "", prefix: str = "") -> R:
        """Build the record from a TOML table; every problem is one UserError naming ``where`` and the key."""
        try:
            return cls._build(raw, prefix)
        except Bad as err:
            raise UserError(f"{where}: {err}" if where else str(err)) from None

    @classmethod
    def _build(cls: type[R], raw: Mapping[str, Any], prefix: str) -> R:
        if not isinstance(raw, Mapping):
            raise Bad(f"[{prefix.rstrip('.')}] must be a table, got {raw!r}")
        types, names = cls._types(), [f.name for f in cls.fields()]
        tables = [n for n in names if _table_type(types[n])[0]]
        for key in raw:
            if key not in names:
                if not prefix and tables:
                    raise Bad(f"unknown section [{key}] (known: {', '.join(tables)})")
                section = f" in [{prefix.rstrip('.')}]" if prefix else ""
                raise Bad(f"unknown key {prefix}{key} (known{section}: {', '.join(names)})")
        values: dict[str, Any] = {}
        for f in cls.fields():
            (table, optional), key = _table_type(types[f.name]), prefix + f.name
            if table and not (optional and f.name not in raw):
                values[f.name] = table._build(raw.get(f.name, {}), f"{key}.")
            elif table:
                continue
            elif f.name in raw:
                check = f.metadata.get("check")
                values[f.name] = check(key, raw[f.name]) if check else raw[f.name]
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise Bad(f"missing key {key}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """The record as plain TOML/JSON values (nested records as tables)."""
        return {f.name: (v.to_dict() if isinstance(v := getattr(self, f.name), Record) else copy.deepcopy(v))
                for f in self.fields()}

    def replace(self: R, **changes: Any) -> R:
        """A copy with ``changes`` (re-checked through ``__post_init__``)."""
        return dataclasses.replace(self, **changes)


# -- the shared checks -----------------------------------------------------------------------------

def one_of(*choices: str) -> Check:
    def check(key: str, value: Any) -> str:
        if not isinstance(value, str) or value not in choices:
            raise Bad(f"{key} = {value!r}: expected one of {', '.join(choices)}")
        return value
    return check


def integer(lo: int, hi: int | None = None) -> Check:
    def check(key: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < lo or (hi is not None and value > hi):
            bound = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
            raise Bad(f"{key} = {value!r}: expected an integer {bound}")
        return value
    return check


def number(lo: float, strict: bool = True, hi: float = math.inf, what: str = "") -> Check:
    """A finite number > lo (>= lo if not strict) and <= hi."""
    def check(key: str, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or (value <= lo if strict else value < lo) or value > hi:
            bound = f"{'>' if strict else '>='} {lo:g}" + (f" and <= {hi:g}" if hi < math.inf else "")
            raise Bad(f"{key} = {value!r}: expected {what or 'a finite number'} {bound}")
        return float(value)
    return check


def flag(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise Bad(f"{key} = {value!r}: expected true or false")
    return value


def text(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise Bad(f"{key} = {value!r}: expected a non-empty string")
    return value


def version(current: int, what: str) -> Check:
    """A file's ``schema_version``: only ``current`` is read ("this p2pntk reads WHAT schema version N")."""
    def check(key: str, value: Any) -> int:
        if value != current or isinstance(value, bool):
            raise Bad(f"{key} = {value!r}: this p2pntk reads {what} schema version {current}")
        return value
    return check


def from_user_check(fn: Callable[[str], Any]) -> Check:
    """Adapt a validator ``fn(value)`` that raises UserError (e.g. a registry's) into a Check."""
    def check(key: str, value: Any) -> Any:
        try:
            return fn(value)
        except UserError as err:
            raise Bad(str(err)) from None
    return check
