"""Tests for coordinator_free.wire: exact round trips and one precise WireError per malformed case."""
import json

import numpy as np
import pytest

from coordinator_free.wire import MESSAGE_TYPES, PROTOCOL_VERSION, TYPES, Expect, WireError, decode, encode, message

SHAPE = (12,)


def expect(**kw) -> Expect:
    base = dict(neighbours={0, 2}, model_hash="m0", algorithm="dgd",
                dtypes={"float32", "float64"}, shape=SHAPE, round_lo=3, round_hi=11)
    return Expect(**{**base, **kw})


def params_header(**kw) -> dict:
    return {"type": "params", "sender": 2, "round": 5, "algorithm": "dgd", "model_hash": "m0", **kw}


def frames(array=None, **kw) -> list:
    """Encoded params frames as the receiver gets them off the wire (bytes)."""
    array = np.arange(12, dtype=np.float32) if array is None else array
    return [bytes(f) for f in encode(params_header(**kw), array)]


def raw(header: dict, payload: bytes = bytes(48)) -> list:
    return [json.dumps({"arrays": 1, **header}).encode(), payload]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_round_trip_is_exact(dtype):
    rng = np.random.default_rng(0)
    a = rng.standard_normal(SHAPE).astype(dtype) * np.array(1e30, dtype)  # exercise all bits
    fr = encode(params_header(), a)
    assert json.loads(fr[0]) == {**params_header(), "v": PROTOCOL_VERSION,
                                 "dtype": np.dtype(dtype).name, "shape": [12], "arrays": 1}
    assert isinstance(fr[1], memoryview) and fr[1].nbytes == a.nbytes  # not a copy
    assert np.shares_memory(np.frombuffer(fr[1], dtype), a)
    msg = decode([bytes(f) for f in fr], expect())
    assert (msg.type, msg.sender, msg.round) == ("params", 2, 5)
    assert msg.arrays[0].dtype == dtype and msg.arrays[0].tobytes() == a.tobytes()
    assert not msg.arrays[0].flags.writeable  # read-only view of the received bytes


def test_big_endian_input_goes_out_little_endian():
    a = np.arange(12, dtype=">f8")
    msg = decode([bytes(f) for f in encode(params_header(), a)], expect())
    assert msg.arrays[0].dtype == np.dtype("<f8")
    np.testing.assert_array_equal(msg.arrays[0], np.arange(12.0))


def test_hello_and_bye_round_trip():
    hello = {"type": "hello", "sender": 0, "model_hash": "m0", "spec_hash": "s", "degree": 2, "round": 0,
             "heard": [1], "reply": False, "device": "pi4"}
    msg = decode(encode(hello), expect())
    assert (msg.type, msg.sender, msg.round, msg.arrays) == ("hello", 0, -1, None)
    assert msg.header["device"] == "pi4" and msg.header["degree"] == 2
    msg = decode(encode({"type": "bye", "sender": 2, "model_hash": "m0"}), expect())
    assert (msg.type, msg.sender) == ("bye", 2)
    msg = decode(encode({"type": "agree", "sender": 2, "model_hash": "m0", "step": 1,
                         "values": {"lr": 0.25, "rounds": 60}}), expect())
    assert (msg.type, msg.header["step"], msg.header["values"]) == ("agree", 1, {"lr": 0.25, "rounds": 60})
    rows = tuple(np.arange(14, dtype=np.float64) + i for i in range(3))  # a share row: P + 2 numbers
    msg = decode(encode(share_header(), rows), expect())
    assert (msg.type, msg.sender, msg.header["origin"], len(msg.arrays)) == ("share", 2, 7, 3)
    assert all(np.array_equal(a, r) for a, r in zip(msg.arrays, rows))
    msg = decode(encode({"type": "shared", "sender": 0, "model_hash": "m0", "count": 8}), expect())
    assert (msg.type, msg.header["count"]) == ("shared", 8)


def share_header(**kw) -> dict:
    return {"type": "share", "sender": 2, "model_hash": "m0", "origin": 7,
            "meta": {"kind": "class-eigen", "n": 30, "class_counts": [15, 15], "rest_trace": 1.5}, **kw}


def share(rows: int = 2, width: int = 14, **kw) -> list:
    return [bytes(f) for f in encode(share_header(**kw), tuple(np.ones(width) for _ in range(rows)))]


BAD = {
    "garbage bytes": ([b"\xff\xfe\x00garbage", bytes(48)], "not valid UTF-8"),
    "non-JSON": ([b"{type: params", bytes(48)], "not valid JSON"),
    "not an object": ([b"[1, 2]", bytes(48)], "not an object"),
    "empty": ([], "empty message"),
    "wrong version": (raw({**params_header(), "v": 1, "dtype": "float32", "shape": [12]}),
                      "protocol version 1 but ours is 2"),
    "huge version": (raw({**params_header(), "v": 10**30, "shape": [12]}), "a number with 31 digits"),
    "deep nesting": ([b"[" * 1000, bytes(48)], "1000 brackets, over the cap"),
    "5000-digit number": ([b'{"v": 2, "sender": ' + b"7" * 5000 + b"}", bytes(48)], "a number with 5000 digits"),
    "huge degree": (encode({"type": "hello", "sender": 0, "model_hash": "m0", "spec_hash": "s",
                            "degree": 10**18, "round": 0, "heard": [], "reply": False}), "'degree' = 1000000000000000000 is outside"),
    "negative round": (frames(round=-1), "'round' = -1 is outside"),
    "infinite float": ([b'{"v": 2, "x": 1e400}', bytes(48)], "not finite or too long"),
    "NaN literal": ([b'{"v": NaN}', bytes(48)], "NaN is not allowed"),
    "missing version": (raw({**params_header(), "dtype": "float32", "shape": [12]}),
                        "missing header field 'v'"),
    "unknown type": (raw({**params_header(type="gossip"), "v": PROTOCOL_VERSION}), "unknown message type 'gossip'"),
    "unknown sender": (frames(sender=7), "sender 7 is not a neighbour [0, 2]"),
    "bool sender": (frames(sender=True), "'sender' must be int, got bool"),
    "wrong model hash": (frames(model_hash="m1"), "model hash 'm1' != ours 'm0'"),
    "wrong algorithm": (frames(algorithm="atc"), "algorithm 'atc' != ours 'dgd'"),
    "wrong shape": (frames(np.zeros(10, np.float32)), "shape [10] != model shape [12]"),
    "2-D shape": (frames(np.zeros((12, 1), np.float32)), "shape [12, 1] != model shape [12]"),
    "wrong dtype": (frames(np.zeros(12, np.float16)), "dtype 'float16' not allowed"),
    "object dtype": (raw({**params_header(), "v": PROTOCOL_VERSION, "dtype": "object", "shape": [12]}),
                     "dtype 'object' not allowed"),
    "byte length": (raw({**params_header(), "v": PROTOCOL_VERSION, "dtype": "float32", "shape": [12]}, bytes(47)),
                    "array frame is 47 bytes, expected 12 x 4"),
    "NaN": (frames(np.array([0.0] * 11 + [np.nan], np.float32)), "1 non-finite values"),
    "inf": (frames(np.array([np.inf, -np.inf] + [0.0] * 10)), "2 non-finite values"),
    "round too old": (frames(round=2), "round 2 outside window [3, 11]"),
    "round too new": (frames(round=12), "round 12 outside window [3, 11]"),
    "string round": (frames(round="5"), "'round' must be int, got str"),
    "extra frame": (frames() + [b"x"], "params message has 3 frames, expected 2"),
    "missing array": (frames()[:1], "params message has 1 frames, expected 2"),
    "wrong array count": (raw({**params_header(), "v": PROTOCOL_VERSION, "dtype": "float32", "shape": [12],
                               "arrays": 2}), "arrays 2 != ours 1"),
    "hello with array": (encode({"type": "hello", "sender": 0, "model_hash": "m0"}) + [b"x"],
                         "hello message has 2 frames, expected 1"),
    "hello without degree": (encode({"type": "hello", "sender": 0, "model_hash": "m0",
                                     "spec_hash": "s", "heard": []}), "missing header field 'degree'"),
    "huge header": ([b" " * 70000 + b"{}", bytes(48)], "over the 65536-byte cap"),
    "agree, negative lr": (encode({"type": "agree", "sender": 0, "model_hash": "m0", "step": 0,
                                   "values": {"lr": -1.0}}), "'values' must map at most 8 short names"),
    "agree, string value": (encode({"type": "agree", "sender": 0, "model_hash": "m0", "step": 0,
                                    "values": {"lr": "0.1"}}), "'values' must map"),
    "agree, too many values": (encode({"type": "agree", "sender": 0, "model_hash": "m0", "step": 0,
                                       "values": {f"k{i}": 1 for i in range(9)}}), "'values' must map"),
    "agree, huge step": (encode({"type": "agree", "sender": 0, "model_hash": "m0", "step": 2**40,
                                 "values": {"lr": 0.1}}), "'step' = 1099511627776 is outside"),
    "share, a row of the wrong width": (share(width=12), "shape [12] != a share row's [14]"),
    "share, too many rows": (share(rows=65), "share message with 65 arrays, expected 1..64"),
    "share, a frame missing": (share()[:-1], "share message has 2 frames, expected 3"),
    "share, nested meta": (share(meta={"x": {"y": 1}}), "'meta' must map at most 16 short names"),
    "share, float ids in meta": (share(meta={"class_counts": [1.5]}), "'meta' must map"),
    "share, no origin": (encode({"type": "share", "sender": 2, "model_hash": "m0", "meta": {}}, np.ones(14)),
                         "missing header field 'origin'"),
    "share, int16": (encode(share_header(), np.ones(14, np.int16)), "dtype 'int16' not allowed in a share"),
    "shared, no count": (encode({"type": "shared", "sender": 0, "model_hash": "m0"}), "missing header field 'count'"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_malformed_message_raises_precise_reason(case):
    fr, reason = BAD[case]
    with pytest.raises(WireError) as info:
        decode(fr, expect())
    assert reason in info.value.reason and reason in str(info.value)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_non_finite_value_is_caught(dtype):
    """The fast finiteness check (a BLAS dot) must see NaN/inf at any position and length."""
    for n in (1, 7, 12, 33, 4099):
        for pos in {0, n // 2, n - 1}:
            for bad in (np.nan, np.inf, -np.inf):
                a = np.ones(n, dtype)
                a[pos] = bad
                fr = [bytes(f) for f in encode(params_header(), a)]
                with pytest.raises(WireError, match="1 non-finite values"):
                    decode(fr, expect(shape=(n,)))


def test_huge_finite_values_are_accepted():
    a = np.full(12, 3e38, np.float32)  # the sum of squares overflows; the values are finite
    msg = decode(frames(a), expect())
    assert msg.arrays[0].tobytes() == a.tobytes()


def test_two_array_message_round_trips_and_counts_are_checked():
    theta, tracker = np.arange(12.0), -np.arange(12.0)
    fr = [bytes(f) for f in encode(params_header(algorithm="gt"), (theta, tracker))]
    assert len(fr) == 3 and json.loads(fr[0])["arrays"] == 2
    msg = decode(fr, expect(algorithm="gt", arrays=2))
    assert [a.tobytes() for a in msg.arrays] == [theta.tobytes(), tracker.tobytes()]
    with pytest.raises(WireError, match="params message has 3 frames, expected 2"):
        decode(fr, expect(algorithm="gt"))
    with pytest.raises(WireError, match="1 non-finite values"):
        decode(fr[:2] + [np.array([np.nan] + [0.0] * 11).tobytes()], expect(algorithm="gt", arrays=2))
    with pytest.raises(ValueError, match="share dtype and shape"):
        encode(params_header(), (theta, tracker[:5]))


def test_wire_error_names_field_and_keeps_header():
    with pytest.raises(WireError) as info:
        decode(frames(model_hash="m1"), expect())
    assert info.value.field == "model_hash" and info.value.header["sender"] == 2


# -- the table of message types (wire.TYPES), read by decode and by the builder wire.message --------------

VALID_FIELDS = {
    "hello": dict(spec_hash="s", degree=2, round=0, heard=[0], reply=False),
    "params": dict(round=5, algorithm="dgd", arrays=np.arange(12, dtype=np.float32)),
    "bye": {},
    "agree": dict(step=1, values={"lr": 0.25, "rounds": 60}),
    "share": dict(origin=7, meta={"kind": "class-eigen", "class_counts": [15, 15]},
                  arrays=tuple(np.arange(14.0) + i for i in range(3))),
    "shared": dict(count=8),
}


def built(kind: str, **changes) -> list:
    return [bytes(f) for f in message(kind, sender=2, model_hash="m0", **{**VALID_FIELDS[kind], **changes})]


def test_the_table_describes_every_message_type():
    assert set(TYPES) == set(VALID_FIELDS) == set(MESSAGE_TYPES)
    assert [f.name for f in TYPES["hello"].optional] == ["spec_keys", "starting"]
    assert {k: [f.name for f in t.required] for k, t in TYPES.items() if t.shape is not None} == {
        "params": ["round", "algorithm", "dtype", "arrays", "shape"],
        "share": ["origin", "meta", "dtype", "shape", "arrays"]}


@pytest.mark.parametrize("kind", sorted(VALID_FIELDS))
def test_a_built_message_decodes_to_its_fields(kind):
    msg = decode(built(kind), expect())
    assert (msg.type, msg.sender, msg.round) == (kind, 2, 5 if kind == "params" else -1)
    fields = {k: v for k, v in VALID_FIELDS[kind].items() if k != "arrays"}
    assert {k: msg.header[k] for k in fields} == fields and msg.header["v"] == PROTOCOL_VERSION
    sent = VALID_FIELDS[kind].get("arrays")
    if sent is None:
        assert msg.arrays is None and len(built(kind)) == 1
    else:
        sent = (sent,) if isinstance(sent, np.ndarray) else sent
        assert [a.tobytes() for a in msg.arrays] == [a.tobytes() for a in sent]


@pytest.mark.parametrize("kind,name", [(k, f.name) for k, t in sorted(TYPES.items()) for f in t.required])
def test_each_types_missing_field_is_named(kind, name):
    fr = built(kind)
    header = json.loads(fr[0])
    del header[name]
    with pytest.raises(WireError) as info:
        decode([json.dumps(header).encode(), *fr[1:]], expect())
    assert info.value.field == name and info.value.reason == f"missing header field '{name}'"


@pytest.mark.parametrize("kind", sorted(VALID_FIELDS))
def test_the_builder_refuses_a_missing_or_unknown_field(kind):
    with pytest.raises(ValueError, match=rf"wire.message\('{kind}'\): unknown field colour"):
        built(kind, colour="red")
    for name in [k for k in VALID_FIELDS[kind] if k != "arrays"]:
        fields = {k: v for k, v in VALID_FIELDS[kind].items() if k != name}
        with pytest.raises(ValueError, match=f"missing field {name}"):
            message(kind, sender=2, model_hash="m0", **fields)


def test_the_builder_refuses_what_decode_would_and_fields_that_encode_fills_in():
    with pytest.raises(ValueError, match="'degree' = -1 is outside"):
        built("hello", degree=-1)
    with pytest.raises(ValueError, match="'values' must map at most 8 short names to positive numbers"):
        built("agree", values={"lr": 0.0})
    with pytest.raises(ValueError, match="share message with 65 arrays, expected 1..64"):
        built("share", arrays=tuple(np.ones(14) for _ in range(65)))
    with pytest.raises(ValueError, match="dtype 'int16' not allowed in a share"):
        built("share", arrays=np.ones(14, np.int16))
    with pytest.raises(ValueError, match=r"dtype 'float16' not allowed \(allowed: \['float32', 'float64'\]\)"):
        built("params", arrays=np.ones(12, np.float16))
    with pytest.raises(WireError, match=r"dtype 'float32' not allowed \(allowed: \['float64'\]\)"):
        decode(built("params"), expect(dtypes={"float64"}))  # a dtype we send, but not this swarm's
    with pytest.raises(ValueError, match="unknown field dtype"):
        built("params", dtype="float32")  # encode writes it from the arrays
    with pytest.raises(ValueError, match="needs arrays"):
        message("params", sender=2, model_hash="m0", round=5, algorithm="dgd")
    with pytest.raises(ValueError, match="needs arrays"):
        built("share", arrays=())
    with pytest.raises(ValueError, match="takes no arrays"):
        built("bye", arrays=np.ones(3))
    with pytest.raises(ValueError, match="unknown message type 'gossip'"):
        message("gossip", sender=2, model_hash="m0")


def test_hello_optional_fields_are_checked_when_present():
    msg = decode(built("hello", spec_keys={"train.dtype": "9f8e7d6c"}, starting=True), expect())
    assert msg.header["starting"] is True and msg.header["spec_keys"] == {"train.dtype": "9f8e7d6c"}
    assert "starting" not in decode(built("hello"), expect()).header  # optional: absent is fine
    cases = {"starting": (1, "header field 'starting' must be bool, got int 1"),
             "spec_keys": ({"train.dtype": 7}, "header field 'spec_keys' must map at most 64 short names")}
    for name, (value, reason) in cases.items():
        header = {**json.loads(built("hello")[0]), name: value}
        with pytest.raises(WireError) as info:
            decode([json.dumps(header).encode()], expect())
        assert info.value.field == name and reason in info.value.reason
        with pytest.raises(ValueError, match=reason):
            built("hello", **{name: value})
    too_many = {**json.loads(built("hello")[0]), "spec_keys": {f"k{i}": "x" for i in range(65)}}
    with pytest.raises(WireError, match="'spec_keys' must map at most 64"):
        decode([json.dumps(too_many).encode()], expect())
