"""The p2p-ntk wire format (docs/design.md, section 7): a UTF-8 JSON header frame, then raw arrays.

`encode` builds the multipart frames; `decode` validates every field against what this agent
expects and raises `WireError` naming the first problem. Nothing from the wire is ever deserialised as code.

Frames: [header] for hello, bye, agree and shared, [header, array_1, ..., array_n] for params, where n is
the algorithm's number of messages (1 for DGD/ATC/CTA, 2 for GT: theta and the tracker), and for share,
where n is the header's arrays. Header keys:
  every type  v (= PROTOCOL_VERSION), type, sender (int), model_hash (str)
  hello       spec_hash (str), degree (int >= 0), round (the sender's current round), heard (list of
              ids), reply (bool), extras
  params      round (int), algorithm (str), dtype ("float32" | "float64"), shape (list of int),
              arrays (int, = n)
  agree       step (int), values (an object of at most MAX_AGREE_VALUES names -> positive finite
              numbers): one step of the start-up agreement on locally tuned values (lr, rounds)
  share       origin (the id of the agent the content is of: the sender's own, or relayed), meta (a
              flat object of at most MAX_SHARE_META short names -> numbers, short strings or lists of
              ints), dtype, shape (= [P + SHARE_EXTRA]), arrays (1..MAX_SHARE_ROWS): one agent's data
              summary (agent.summaries), flooded before training; each array frame is one summary row
  shared      count (int): the sender holds every agent's share (count of them) and is done flooding
Array frames: the prod(shape) * itemsize bytes of each array, little-endian, C order; all arrays of
one message share the header's dtype and shape. Version 2 added the array count (version 1 carried one).

Limits, checked before anything is converted: at most MAX_HEADER_BYTES of header, MAX_BRACKETS
brackets, numbers of at most MAX_DIGITS digits, finite floats (no NaN/Infinity), and every int field
in [0, MAX_INT]. Whatever a peer sends, `decode` raises nothing but `WireError`.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np

PROTOCOL_VERSION = 2
MESSAGE_TYPES = ("hello", "params", "bye", "agree", "share", "shared")
MAX_HEADER_BYTES = 65536
MAX_BRACKETS = 32       # [ and { in one header: ours nest two deep and hold two lists
MAX_DIGITS = 19         # a JSON number longer than this is refused before it is converted
MAX_INT = 2**31 - 1     # every int field: ids, rounds, degrees, shape entries
MAX_HEARD = 65536       # ids in a HELLO's heard list
_FLOAT_DTYPES = ("float16", "float32", "float64")
MAX_AGREE_VALUES = 8    # names in an agree message's values
MAX_SHARE_ROWS = 64     # array frames (summary rows) in one share message
MAX_SHARE_META = 16     # names in a share message's meta
SHARE_EXTRA = 2         # a share row is P + SHARE_EXTRA numbers: the row, then its target and label
_FRAMES = {"hello": 1, "bye": 1, "agree": 1, "shared": 1}  # header only; params: header + `Expect.arrays` arrays


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


def decode(frames: list, expect: Expect) -> Message:
    """Validate `frames` against `expect` and return a Message, or raise WireError (see module doc)."""
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
    if (v := _field(h, "v", int)) != PROTOCOL_VERSION:
        raise WireError(f"protocol version {_short(v)} but ours is {PROTOCOL_VERSION}", field="v", header=h)
    if (kind := _field(h, "type", str)) not in MESSAGE_TYPES:
        raise WireError(f"unknown message type {kind!r:.40}", field="type", header=h)
    if kind == "share" and not 1 <= _int(h, "arrays") <= MAX_SHARE_ROWS:
        raise WireError(f"share message with {h['arrays']} arrays, expected 1..{MAX_SHARE_ROWS}", field="arrays",
                        header=h)
    n_frames = 1 + (h["arrays"] if kind == "share" else expect.arrays)
    if len(frames) != (n_frames := _FRAMES.get(kind, n_frames)):
        raise WireError(f"{kind} message has {len(frames)} frames, expected {n_frames}",
                        header=h)
    if (sender := _int(h, "sender")) not in expect.neighbours:
        raise WireError(f"sender {sender} is not a neighbour {sorted(expect.neighbours)}",
                        field="sender", header=h)
    if (mh := _field(h, "model_hash", str)) != expect.model_hash:
        raise WireError(f"model hash {mh!r:.80} != ours {expect.model_hash!r}",
                        field="model_hash", header=h)
    if kind == "hello":
        _field(h, "spec_hash", str)
        _int(h, "degree")
        _int(h, "round")
        heard = _field(h, "heard", list)
        if len(heard) > MAX_HEARD or not all(type(i) is int and 0 <= i <= MAX_INT for i in heard):
            raise WireError(f"header field 'heard' must be a list of at most {MAX_HEARD} ids in "
                            f"[0, {MAX_INT}]", field="heard", header=h)
    if kind == "agree":
        _int(h, "step")
        values = _field(h, "values", dict)
        if len(values) > MAX_AGREE_VALUES or not all(
                isinstance(k, str) and len(k) <= 40 and type(v) in (int, float) and v > 0 for k, v in values.items()):
            raise WireError(f"header field 'values' must map at most {MAX_AGREE_VALUES} short names to positive "
                            "numbers", field="values", header=h)
    if kind == "shared":
        _int(h, "count")
    if kind == "share":
        return _share(frames, h, sender, expect)
    if kind != "params":
        return Message(kind, sender, -1, h, None)

    r = _int(h, "round")
    if not expect.round_lo <= r <= expect.round_hi:
        raise WireError(f"round {r} outside window [{expect.round_lo}, {expect.round_hi}]",
                        field="round", header=h)
    if (alg := _field(h, "algorithm", str)) != expect.algorithm:
        raise WireError(f"algorithm {alg!r:.40} != ours {expect.algorithm!r}", field="algorithm",
                        header=h)
    if (dt := _field(h, "dtype", str)) not in expect.dtypes or dt not in _FLOAT_DTYPES:
        raise WireError(f"dtype {dt!r:.40} not allowed (allowed: {sorted(expect.dtypes)})",
                        field="dtype", header=h)
    if _int(h, "arrays") != expect.arrays:
        raise WireError(f"arrays {_short(h['arrays'])} != ours {expect.arrays}", field="arrays", header=h)
    shape = _field(h, "shape", list)
    if not all(type(n) is int for n in shape) or tuple(shape) != tuple(expect.shape):
        raise WireError(f"shape {shape!s:.80} != model shape {list(expect.shape)}", field="shape",
                        header=h)
    dtype = np.dtype(dt).newbyteorder("<")
    return Message(kind, sender, r, h, tuple(_array(f, dtype, expect.shape, h) for f in frames[1:]))


def _share(frames: list, h: dict, sender: int, expect: Expect) -> Message:
    _int(h, "origin")
    meta = _field(h, "meta", dict)
    if len(meta) > MAX_SHARE_META or not all(
            isinstance(k, str) and len(k) <= 40 and (type(v) in (int, float) or (isinstance(v, str) and len(v) <= 40)
                                                     or (isinstance(v, list) and all(type(i) is int for i in v)))
            for k, v in meta.items()):
        raise WireError(f"header field 'meta' must map at most {MAX_SHARE_META} short names to numbers, short "
                        "strings or lists of ints", field="meta", header=h)
    if (dt := _field(h, "dtype", str)) not in ("float32", "float64"):
        raise WireError(f"dtype {dt!r:.40} not allowed in a share (float32 or float64)", field="dtype", header=h)
    width = (math.prod(expect.shape) + SHARE_EXTRA,)
    if (shape := _field(h, "shape", list)) != list(width):
        raise WireError(f"shape {shape!s:.80} != a share row's {list(width)}", field="shape", header=h)
    dtype = np.dtype(dt).newbyteorder("<")
    return Message("share", sender, -1, h, tuple(_array(f, dtype, width, h) for f in frames[1:]))


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
