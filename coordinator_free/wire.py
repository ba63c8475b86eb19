"""The p2p-ntk wire format (docs/design.md, section 7): a UTF-8 JSON header frame, then raw arrays.

``TYPES`` is the one description of each message type: its required and optional header fields, each
with its check, and its frames. ``decode`` validates what arrives against it and against what this agent
expects (``Expect``), raising ``WireError`` naming the first problem; ``message`` builds a message from
it, refusing (ValueError: our own bug) a missing or unknown field; ``encode`` turns a header and arrays
into frames. Nothing from the wire is ever deserialised as code. Header fields:
  every type  v (= PROTOCOL_VERSION), type, sender (int), model_hash (str)
  hello       spec_hash (str), degree (int), round (the sender's current round), heard (list of ids),
              reply (bool); optional: spec_keys (at most MAX_SPEC_KEYS short names -> short strings: a
              hash per spec key) and starting (bool: alive, but round 0 not started yet)
  params      round (int, at most ours + the window), algorithm (str), dtype (DTYPES), shape (= [P]),
              arrays (= the algorithm's number of messages: 1 for DGD/ATC/CTA, 2 for GT)
  bye         nothing more: the sender is leaving
  agree       step (int), values (at most MAX_AGREE_VALUES names -> positive finite numbers): one step of
              the start-up agreement on locally tuned values (lr, rounds)
  share       origin (whose summary: the sender's own, or relayed), meta (at most MAX_SHARE_META short
              names -> numbers, short strings or lists of ints), dtype (DTYPES), shape (= [P + SHARE_EXTRA]),
              arrays (1..MAX_SHARE_ROWS): one agent's data summary (agent.summaries), one row per frame
  shared      count (int): the sender holds every agent's share (count of them) and is done flooding
Frames: the header, then for params and share its `arrays` array frames, each the prod(shape) * itemsize
bytes of one array, little-endian, C order, all of the header's dtype and shape. Other types: the header
alone. Fields the receiver does not know are ignored. Version 2 added the array count.

Limits, checked before anything is converted: at most MAX_HEADER_BYTES of header, MAX_BRACKETS
brackets, numbers of at most MAX_DIGITS digits, finite floats (no NaN/Infinity), and every int field
in [0, MAX_INT]. Whatever a peer sends, ``decode`` raises nothing but ``WireError``.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from common.compute import DTYPES

PROTOCOL_VERSION = 2
MAX_HEADER_BYTES = 65536
MAX_BRACKETS = 32       # [ and { in one header: ours nest two deep and hold two lists
MAX_DIGITS = 19         # a JSON number longer than this is refused before it is converted
MAX_INT = 2**31 - 1     # every int field: ids, rounds, degrees, shape entries
MAX_HEARD = 65536       # ids in a HELLO's heard list
MAX_SPEC_KEYS = 64      # names in a HELLO's spec_keys
MAX_NAME = 40           # characters of a name (and of a short string value) in values, meta and spec_keys
MAX_AGREE_VALUES = 8    # names in an agree message's values
MAX_SHARE_ROWS = 64     # array frames (summary rows) in one share message
MAX_SHARE_META = 16     # names in a share message's meta
SHARE_EXTRA = 2         # a share row is P + SHARE_EXTRA numbers: the row, then its target and label
ENCODED = ("dtype", "shape", "arrays")  # header fields that ``encode`` fills in from the arrays themselves


def _params_header_bound() -> int:
    """Bytes of the largest params header this code sends: round, sender and shape at their limits."""
    header = {"type": "params", "sender": 2**31, "round": 2**31, "algorithm": "x" * 16, "model_hash": "0" * 16}
    return len(encode(header, np.zeros((0,), np.float64))[0]) + len("[1099511627776]") + 8


class WireError(ValueError):
    """A message failed validation. `reason` is one line a person can act on; `field` names the
    header field at fault (or None); `header` is the parsed header if it got that far."""

    def __init__(self, reason: str, *, field: str | None = None, header: dict | None = None):
        super().__init__(reason)
        self.reason, self.field, self.header = reason, field, header


@dataclass
class Expect:
    """What this agent accepts: neighbour ids, model hash, algorithm, dtypes, shape, round window."""
    neighbours: set[int]
    model_hash: str
    algorithm: str
    dtypes: set[str]
    shape: tuple[int, ...]
    round_lo: int = 0
    round_hi: int = 2**31
    arrays: int = 1


@dataclass
class Message:
    """A validated message. `round` is -1 for all but params. `arrays` (params and share) are views of the
    received frames, no copy: read-only for bytes or zmq.Frame input; copy them before writing."""
    type: str
    sender: int
    round: int
    header: dict
    arrays: tuple[np.ndarray, ...] | None


Check = Callable[[dict, str], Any]           # (header, field name) -> the value, or raise WireError
Match = Callable[[Any, Expect], "str | None"]  # (value, what we expect) -> why it is not that, or None


@dataclass(frozen=True)
class Field:
    """One header field: its ``form`` (type and range, whoever sent it: the builder checks it too) and, on
    receipt, its ``match`` against what this agent expects (the reason it does not match, or None)."""
    name: str
    form: Check
    match: Match | None = None


@dataclass(frozen=True)
class Kind:
    """One message type: its fields beyond the common ones (``COMMON``), checked in this order, the number
    of array frames after the header (``arrays(header, expect)``), and the shape of each (None: no arrays)."""
    required: tuple[Field, ...] = ()
    optional: tuple[Field, ...] = ()
    arrays: Callable[[dict, Expect], int] = lambda h, e: 0
    shape: Callable[[Expect], tuple[int, ...]] | None = None


def encode(header: dict, arrays: np.ndarray | tuple[np.ndarray, ...] | None = None) -> list:
    """Return frames [JSON header] or [JSON header, array_1 bytes, ...]; array frames are zero-copy
    memoryviews (send with copy=False, and do not mutate the arrays until they have gone out).
    All arrays must share one dtype and shape."""
    header = {**header, "v": PROTOCOL_VERSION}
    if arrays is None:
        return [json.dumps(header, separators=(",", ":"), allow_nan=False).encode()]
    arrays = (arrays,) if isinstance(arrays, np.ndarray) else tuple(arrays)
    out = [np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<")) for a in arrays]
    if any(a.dtype != out[0].dtype or a.shape != out[0].shape for a in out):
        raise ValueError("all arrays of one message must share dtype and shape")
    header["dtype"], header["shape"], header["arrays"] = out[0].dtype.name, list(out[0].shape), len(out)
    head = json.dumps(header, separators=(",", ":"), allow_nan=False).encode()
    return [head, *(memoryview(a).cast("B") for a in out)]


PARAMS_HEADER_BYTES = _params_header_bound()  # an upper bound on one params header (profiles' estimates)


def _buffer(frame) -> memoryview:
    try:  # zmq.Frame exposes .buffer (zero-copy); bytes/bytearray/memoryview are buffers already
        return memoryview(getattr(frame, "buffer", frame)).cast("B")
    except TypeError:
        raise WireError(f"frame is {type(frame).__name__}, not bytes") from None


def _short(n: int) -> str:
    """An int from the wire for a log line (a 5,000-digit int cannot even be formatted)."""
    return str(n) if -10**18 < n < 10**18 else "(a huge number)"


def _field(h: dict, name: str, kind: type):
    if name not in h:
        raise WireError(f"missing header field '{name}'", field=name, header=h)
    value = h[name]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise WireError(f"header field '{name}' must be {kind.__name__}, got {type(value).__name__}"
                        f" {value!r:.40}", field=name, header=h)
    return value


def _int(h: dict, name: str) -> int:
    """An int header field in [0, MAX_INT]."""
    value = _field(h, name, int)
    if not 0 <= value <= MAX_INT:
        raise WireError(f"header field '{name}' = {value} is outside [0, {MAX_INT}]", field=name, header=h)
    return value


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_DIGITS:
        raise ValueError(f"a number with {len(text)} digits (at most {MAX_DIGITS})")
    return int(text)


def _parse_float(text: str) -> float:
    value = float(text) if len(text) <= 32 else math.inf
    if not math.isfinite(value):
        raise ValueError(f"a number that is not finite or too long ({text[:20]}...)")
    return value


def _parse_constant(text: str) -> float:
    raise ValueError(f"{text} is not allowed")


def _of(kind: type) -> Check:
    return lambda h, name: _field(h, name, kind)


def _names(limit: int, values: Callable[[Any], bool], what: str) -> Check:
    """An object of at most ``limit`` short names whose values pass ``values``; ``what`` says which values."""
    def check(h: dict, name: str) -> dict:
        table = _field(h, name, dict)
        if len(table) > limit or not all(isinstance(k, str) and len(k) <= MAX_NAME and values(v)
                                         for k, v in table.items()):
            raise WireError(f"header field '{name}' must map at most {limit} short names to {what}", field=name,
                            header=h)
        return table
    return check


def _number(v) -> bool:
    return type(v) in (int, float)


def _short_text(v) -> bool:
    return isinstance(v, str) and len(v) <= MAX_NAME


def _heard(h: dict, name: str) -> list:
    heard = _field(h, name, list)
    if len(heard) > MAX_HEARD or not all(type(i) is int and 0 <= i <= MAX_INT for i in heard):
        raise WireError(f"header field '{name}' must be a list of at most {MAX_HEARD} ids in [0, {MAX_INT}]",
                        field=name, header=h)
    return heard


def _share_rows(h: dict, name: str) -> int:
    if not 1 <= (n := _int(h, name)) <= MAX_SHARE_ROWS:
        raise WireError(f"share message with {n} arrays, expected 1..{MAX_SHARE_ROWS}", field=name, header=h)
    return n


def _params_dtype(h: dict, name: str) -> str:
    if (dt := _field(h, name, str)) not in DTYPES:
        raise WireError(f"dtype {dt!r:.40} not allowed (allowed: {list(DTYPES)})", field=name, header=h)
    return dt


def _share_dtype(h: dict, name: str) -> str:
    if (dt := _field(h, name, str)) not in DTYPES:
        raise WireError(f"dtype {dt!r:.40} not allowed in a share ({' or '.join(DTYPES)})", field=name, header=h)
    return dt


def _round_window(r: int, e: Expect) -> str | None:
    return None if e.round_lo <= r <= e.round_hi else f"round {r} outside window [{e.round_lo}, {e.round_hi}]"


def _model_shape(shape: list, e: Expect) -> str | None:
    ok = all(type(n) is int for n in shape) and tuple(shape) == tuple(e.shape)
    return None if ok else f"shape {shape!s:.80} != model shape {list(e.shape)}"


def _share_width(e: Expect) -> tuple[int]:
    return (math.prod(e.shape) + SHARE_EXTRA,)


COMMON = (Field("sender", _int, lambda s, e: None if s in e.neighbours else
                f"sender {s} is not a neighbour {sorted(e.neighbours)}"),
          Field("model_hash", _of(str), lambda mh, e: None if mh == e.model_hash else
                f"model hash {mh!r:.80} != ours {e.model_hash!r}"))
TYPES: dict[str, Kind] = {
    "hello": Kind(required=(Field("spec_hash", _of(str)), Field("degree", _int), Field("round", _int),
                            Field("heard", _heard), Field("reply", _of(bool))),
                  optional=(Field("spec_keys", _names(MAX_SPEC_KEYS, _short_text, "short strings")),
                            Field("starting", _of(bool)))),
    "params": Kind(required=(Field("round", _int, _round_window),
                             Field("algorithm", _of(str), lambda a, e: None if a == e.algorithm else
                                   f"algorithm {a!r:.40} != ours {e.algorithm!r}"),
                             Field("dtype", _params_dtype, lambda dt, e: None if dt in e.dtypes else
                                   f"dtype {dt!r:.40} not allowed (allowed: {sorted(e.dtypes)})"),
                             Field("arrays", _int, lambda n, e: None if n == e.arrays else
                                   f"arrays {_short(n)} != ours {e.arrays}"),
                             Field("shape", _of(list), _model_shape)),
                   arrays=lambda h, e: e.arrays, shape=lambda e: e.shape),
    "bye": Kind(),
    "agree": Kind(required=(Field("step", _int),
                            Field("values", _names(MAX_AGREE_VALUES, lambda v: _number(v) and v > 0,
                                                   "positive numbers")))),
    "share": Kind(required=(Field("origin", _int),
                            Field("meta", _names(MAX_SHARE_META, lambda v: _number(v) or _short_text(v) or (
                                isinstance(v, list) and all(type(i) is int for i in v)),
                                "numbers, short strings or lists of ints")),
                            Field("dtype", _share_dtype),
                            Field("shape", _of(list), lambda shape, e: None if shape == list(_share_width(e)) else
                                  f"shape {shape!s:.80} != a share row's {list(_share_width(e))}"),
                            Field("arrays", _share_rows)),
                  arrays=lambda h, e: _share_rows(h, "arrays"), shape=_share_width),
    "shared": Kind(required=(Field("count", _int),)),
}
MESSAGE_TYPES = tuple(TYPES)


def _checked(h: dict, field: Field, expect: Expect):
    value = field.form(h, field.name)
    if field.match is not None and (why := field.match(value, expect)) is not None:
        raise WireError(why, field=field.name, header=h)
    return value


def _header(frames: list) -> dict:
    """The header frame as a dict, within the limits (module doc), or WireError."""
    if not frames:
        raise WireError("empty message (no frames)")
    head = _buffer(frames[0])
    if len(head) > MAX_HEADER_BYTES:
        raise WireError(f"header is {len(head)} bytes, over the {MAX_HEADER_BYTES}-byte cap")
    text = bytes(head)
    if (brackets := text.count(b"[") + text.count(b"{")) > MAX_BRACKETS:
        raise WireError(f"header has {brackets} brackets, over the cap of {MAX_BRACKETS} (headers are flat)")
    try:
        h = json.loads(str(text, "utf-8"), parse_int=_parse_int, parse_float=_parse_float,
                       parse_constant=_parse_constant)
    except UnicodeDecodeError as e:
        raise WireError(f"header is not valid UTF-8 ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise WireError(f"header is not valid JSON ({e.msg} at char {e.pos})") from None
    except (ValueError, RecursionError) as e:  # from the number hooks, or nesting the cap let through
        raise WireError(f"header refused: {str(e):.80}") from None
    if not isinstance(h, dict):
        raise WireError(f"header is a JSON {type(h).__name__}, not an object")
    return h


def decode(frames: list, expect: Expect) -> Message:
    """Validate `frames` against `TYPES` and `expect` and return a Message, or raise WireError (module doc)."""
    h = _header(frames)
    if (v := _field(h, "v", int)) != PROTOCOL_VERSION:
        raise WireError(f"protocol version {_short(v)} but ours is {PROTOCOL_VERSION}", field="v", header=h)
    if (name := _field(h, "type", str)) not in TYPES:
        raise WireError(f"unknown message type {name!r:.40}", field="type", header=h)
    kind = TYPES[name]
    if len(frames) != (n_frames := 1 + kind.arrays(h, expect)):
        raise WireError(f"{name} message has {len(frames)} frames, expected {n_frames}", header=h)
    for field in (*COMMON, *kind.required, *(f for f in kind.optional if f.name in h)):
        _checked(h, field, expect)
    arrays = None
    if kind.shape is not None:
        dtype, shape = np.dtype(h["dtype"]).newbyteorder("<"), kind.shape(expect)
        arrays = tuple(_array(f, dtype, shape, h) for f in frames[1:])
    return Message(name, h["sender"], h["round"] if name == "params" else -1, h, arrays)


def message(kind: str, *, sender: int, model_hash: str, arrays: np.ndarray | tuple[np.ndarray, ...] | None = None,
            **fields) -> list:
    """The frames of one ``kind`` message (``TYPES``): ``fields`` are its header fields beyond the common ones,
    except those ``encode`` fills in from ``arrays`` (``ENCODED``; params and share carry arrays, the other
    types none). A missing or unknown field, or a value ``decode`` would refuse for its form, is our own bug:
    ValueError naming it."""
    if kind not in TYPES:
        raise ValueError(f"wire.message: unknown message type {kind!r} (known: {', '.join(TYPES)})")
    spec = TYPES[kind]
    arrays = (arrays,) if isinstance(arrays, np.ndarray) else arrays
    if (spec.shape is None) != (arrays is None) or (arrays is not None and not len(arrays)):
        raise ValueError(f"wire.message({kind!r}): {'takes no arrays' if spec.shape is None else 'needs arrays'}")
    encoded = {}
    if arrays is not None:
        encoded = {"dtype": arrays[0].dtype.name, "shape": list(arrays[0].shape), "arrays": len(arrays)}
    own = [f for f in spec.required if f.name not in encoded]
    missing = [f.name for f in own if f.name not in fields]
    unknown = sorted(fields.keys() - {f.name for f in (*own, *spec.optional)})
    if missing or unknown:
        raise ValueError(f"wire.message({kind!r}): " + "; ".join(
            ([f"missing field {', '.join(missing)}"] if missing else []) +
            ([f"unknown field {', '.join(unknown)}"] if unknown else [])))
    header = {"type": kind, "sender": sender, "model_hash": model_hash, **fields}
    try:
        for field in (*COMMON, *spec.required, *(f for f in spec.optional if f.name in fields)):
            field.form({**header, **encoded}, field.name)
    except WireError as err:
        raise ValueError(f"wire.message({kind!r}): {err.reason}") from None
    return encode(header, arrays)


def _array(frame, dtype: np.dtype, shape: tuple[int, ...], h: dict) -> np.ndarray:
    """One array frame as a read-only view, checked for length and finite values."""
    payload = _buffer(frame)
    if len(payload) != math.prod(shape) * dtype.itemsize:
        raise WireError(f"array frame is {len(payload)} bytes, expected "
                        f"{math.prod(shape)} x {dtype.itemsize}", header=h)
    array = np.frombuffer(payload, dtype=dtype).reshape(shape)
    # One BLAS pass: sum(a*a) is finite unless a value is NaN/inf (or the sum overflows, which
    # the exact scan below then rules out); about 25% cheaper than np.isfinite(a).all().
    with np.errstate(over="ignore", invalid="ignore"):
        squares = np.dot(array.reshape(-1), array.reshape(-1))
    if not np.isfinite(squares) and not np.isfinite(array).all():
        bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
        raise WireError(f"array has {bad} non-finite values (NaN/inf)", header=h)
    return array
