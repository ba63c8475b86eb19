"""Property-based tests of the wire decoder (hypothesis): whatever a peer sends, ``decode`` returns a
Message or raises WireError, never anything else (no RecursionError, ValueError, OverflowError...)."""
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coordinator_free.wire import Expect, Message, WireError, decode, encode

EXPECT = Expect(neighbours={0, 1, 2}, model_hash="m", algorithm="gt", dtypes={"float32", "float64"}, shape=(4,),
                arrays=2)
VALID = [
    encode({"type": "params", "sender": 1, "round": 3, "algorithm": "gt", "model_hash": "m"},
           (np.arange(4.0), np.ones(4))),
    encode({"type": "hello", "sender": 2, "model_hash": "m", "spec_hash": "s", "degree": 2, "round": 0, "heard": [0],
            "reply": False}),
    encode({"type": "bye", "sender": 0, "model_hash": "m"}),
]
FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _decode_is_total(frames) -> None:
    try:
        assert isinstance(decode(frames, EXPECT), Message)
    except WireError as err:
        assert err.reason and "\n" not in err.reason


@FUZZ
@given(st.lists(st.binary(max_size=300), max_size=4))
def test_arbitrary_frames(frames):
    _decode_is_total(frames)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=30)
fields = st.sampled_from(["v", "type", "sender", "round", "algorithm", "model_hash", "dtype", "shape", "arrays",
                          "spec_keys", "starting",
                          "degree", "heard", "reply", "spec_hash"])


@FUZZ
@given(st.sampled_from(range(len(VALID))), st.dictionaries(fields, json_values, max_size=4),
       st.lists(st.binary(max_size=40), max_size=3))
def test_valid_headers_with_fields_replaced(which, changes, extra_frames):
    header = {**json.loads(bytes(VALID[which][0])), **changes}
    frames = [json.dumps(header).encode(), *(bytes(f) for f in VALID[which][1:]), *extra_frames]
    _decode_is_total(frames)


@FUZZ
@given(st.sampled_from(range(len(VALID))), st.lists(st.tuples(st.integers(0, 10**6), st.binary(max_size=8)),
                                                     min_size=1, max_size=6))
def test_byte_mutations_of_valid_messages(which, edits):
    frames = [bytearray(bytes(f)) for f in VALID[which]]
    for pos, data in edits:
        frame = frames[pos % len(frames)]
        at = pos % (len(frame) + 1)
        frame[at:at + len(data)] = data
    _decode_is_total([bytes(f) for f in frames])


@pytest.mark.parametrize("frame", [b"[" * 1000, b"{" * 100000, b'{"v": ' + b"9" * 5000 + b"}",
                                   b'{"v": 2, "type": "hello", "sender": 1, "model_hash": "m", "spec_hash": "s", '
                                   b'"degree": 1' + b"0" * 400 + b', "round": 0, "heard": [], "reply": false}',
                                   b'{"v": 2, "x": -1e400}', b'{"v": Infinity}'])
def test_the_known_crash_classes_are_clean_wire_errors(frame):
    with pytest.raises(WireError):
        decode([frame], EXPECT)
